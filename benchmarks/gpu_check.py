"""The GPU path on a real GPU, in one short run: what the CPU-side guards (tests/test_gpu_path.py)
can only stand in for.

    python benchmarks/gpu_check.py [--throughput] [--images] [--device cuda|cpu]

1. host syncs: an epoch of every option set (tests/option_sets.py) after a warm-up epoch,
   under torch.cuda.set_sync_debug_mode("warn"); the syncs of an epoch of 4 steps and of
   8 steps must be the same number (the ones at the epoch's end: its metrics, the
   divergence check, the fp16 scale), i.e. none per step;
2. a checkpoint round trip on CUDA: save after one epoch, resume in a new run, and train on;
3. workers on GPUs: a 4-trial grid on `--workers` 1 per GPU (2 on one GPU when there is one),
   each trial's worker and GPU as recorded;
4. reflect and replicate padding of uint8 images on the GPU;
5. with --throughput, benchmarks/trial_throughput.py --device cuda;
6. with --images, benchmarks/image_pipeline.py --device cuda --decode workers,device: JPEGs decoded
   on the GPU (nvJPEG) against decoded in the loader's workers.

Without CUDA it prints one line and exits 0; `--device cpu` runs 1-4 on the CPU (no sync
counting there), to try the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the option sets and the tiny base the guards use

import torch  # noqa: E402

from conftest import TINY_BASE  # noqa: E402
from option_sets import OPTION_SETS  # noqa: E402
from trainable import ConfigError, from_flat  # noqa: E402
from trainable.config import flatten  # noqa: E402
from trainable.run import Training  # noqa: E402


def config(device: str, **changes):
    base = {**flatten(TINY_BASE), "train.device": device, "train.threads": 0, "data.eval_subset": 256}
    return from_flat({**base, **changes})


def syncs_per_epoch(device: str, changes: dict, steps: int) -> int | None:
    """Host syncs during an epoch of `steps` steps of 64, after a warm-up epoch (None on CPU)."""
    run = Training(config(device, **{**changes, "data.subset": 64 * steps, "train.epochs": 2}))
    run.epoch()
    if device != "cuda":
        run.epoch()
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run.epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def check_syncs(device: str) -> dict:
    out = {}
    for name, changes in OPTION_SETS.items():
        try:
            few, more = syncs_per_epoch(device, changes, 4), syncs_per_epoch(device, changes, 8)
            out[name] = {"syncs_4_steps": few, "syncs_8_steps": more,
                         "ok": few == more if device == "cuda" else "ran (syncs not counted on CPU)"}
        except ConfigError as e:  # fp16 on the CPU
            out[name] = {"ok": "skipped", "why": str(e)[:120]}
        except Exception as e:  # one broken option set must not hide the others
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(f"  {name}: {out[name]}", flush=True)
    return out


def check_resume(device: str) -> dict:
    cfg = config(device, **{"train.epochs": 2, "data.subset": 512})
    whole = Training(cfg)
    whole.epoch()
    whole.epoch()
    first = Training(cfg)
    first.epoch()
    with tempfile.TemporaryDirectory() as tmp:
        first.save(Path(tmp) / "c.pt")
        resumed = Training(cfg)
        loaded = resumed.load(Path(tmp) / "c.pt")
        second = resumed.epoch()
    # cuDNN's autotuned kernels may differ between runs: close, not always equal
    return {"loaded": loaded, "val_loss_whole": whole.history[-1]["val_loss"], "val_loss_resumed": second["val_loss"]}


def check_workers(device: str) -> dict:
    import optuna
    import yaml

    import sweeps
    from search_spaces import load_spec
    count = torch.cuda.device_count() if device == "cuda" else 0
    gpu_share = 1.0 if count >= 2 else 0.5
    workers = max(2, count)
    raw = {"name": "gpu_check", "budget": {"trials": 4},
           "base": {**{k: v for k, v in TINY_BASE.items()}, "train": {**TINY_BASE["train"], "device": device}},
           "space": {"optim.lr": {"grid": [0.01, 0.02, 0.04, 0.08]}},
           "resources": {"gpu": gpu_share if device == "cuda" else 0}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(raw))
        url = f"sqlite:///{tmp}/s.db"
        t0 = time.perf_counter()
        sweeps.run(load_spec(path), url, quiet=True, workers=workers, run_dir=f"{tmp}/runs")
        trials = optuna.load_study(study_name="gpu_check", storage=url).get_trials()
    return {"gpus": count, "workers": workers, "resources.gpu": raw["resources"]["gpu"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "trials": [{"state": t.state.name, "worker": t.user_attrs.get("worker")} for t in trials]}


def check_padding(device: str) -> dict:
    from trainable.augment import pad_images
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device=device)
    out = {}
    for mode in ("reflect", "replicate", "constant"):
        try:
            out[mode] = list(pad_images(x, 4, mode).shape)
        except Exception as e:
            out[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--throughput", action="store_true", help="also run trial_throughput.py --device cuda")
    ap.add_argument("--images", action="store_true", help="also run image_pipeline.py on the GPU, both decodes")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; skipped (run it where one is, or --device cpu)")
        return 0
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"gpu_check on {torch.cuda.device_count()} x {props.name} (compute capability "
              f"{props.major}.{props.minor}), torch {torch.__version__}", flush=True)
    report = {"device": args.device}
    print("1. host syncs per epoch (4 and 8 steps):", flush=True)
    report["syncs"] = check_syncs(args.device)
    for name, check in (("resume", check_resume), ("workers", check_workers), ("padding", check_padding)):
        print(f"{name}:", flush=True)
        try:
            report[name] = check(args.device)
        except Exception as e:
            report[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(f"  {json.dumps(report[name])}", flush=True)
    if args.throughput and args.device == "cuda":
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trial_throughput.py"), "--device", "cuda",
                        "--dataset", "synthetic", "--repeats", "1"], check=False)
    if args.images and args.device == "cuda":
        workers = str(max(1, min(8, (os.cpu_count() or 2) - 1)))
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "image_pipeline.py"), "--device", "cuda",
                        "--decode", "workers,device", "--workers", workers], check=False)
    failed = [n for n, r in report["syncs"].items() if r["ok"] is False]
    ran = [n for n, r in report["syncs"].items() if r["ok"] != "skipped"]
    what = "without a per-step sync" if args.device == "cuda" else "ran (syncs are counted on CUDA only)"
    print(f"gpu_check: {len(ran) - len(failed)} of {len(report['syncs'])} option sets {what}"
          + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
