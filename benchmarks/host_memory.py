"""What keeping freed host memory (trainable/host_memory.py) is worth: CPU training with and without it.

Each measurement is a fresh process (glibc's malloc settings are per process)
that trains one warm-up epoch and then times a second: images/s, page faults
per step, and the seconds the kernel spent on the process (faulting in and
zeroing pages). Rounds alternate the two settings so the machine's drift hits
both alike; the medians and their ratio are shown.

    python benchmarks/host_memory.py [--images 2048] [--depths 8,20] [--threads 1,2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("glibc default", "kept")


def child(setting: str, images: int, depth: int, threads: int) -> None:
    """Train in this process and print one JSON line of measurements."""
    sys.path.insert(0, str(ROOT))
    import trainable.run as run
    from trainable import from_flat

    if setting == "glibc default":
        run.keep_freed_memory = lambda: False
    cfg = from_flat({"data.dataset": "fashion_mnist", "data.subset": images, "data.eval_subset": 1,
                     "model.depth": depth, "train.batch_size": 128, "train.epochs": 2, "train.threads": threads,
                     "train.precision": "bf16", "train.channels_last": True})
    training = run.Training(cfg)
    with run.cpu_threads(threads):
        training.epoch()  # warm-up: kernels, allocator, the heap's working size
        before = resource.getrusage(resource.RUSAGE_SELF)
        metrics = training.epoch()
        after = resource.getrusage(resource.RUSAGE_SELF)
    steps = len(training.batches)
    print(json.dumps({"images_per_s": metrics["images_per_s"],
                      "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                      "kernel_s_per_step": (after.ru_stime - before.ru_stime) / steps}))


def measure(setting: str, args, depth: int, threads: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", setting, "--images", str(args.images),
                          "--depths", str(depth), "--threads", str(threads)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--depths", default="8,20", help="ResNet-preact depths, one table row each")
    ap.add_argument("--threads", default="1,2", help="torch threads of the trial, one table row each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.images, int(args.depths), int(args.threads))
    print(f"# ResNet-preact, Fashion-MNIST, {args.images} images, batch 128, bf16 + channels_last")
    print("| depth | threads | setting | images/s | page faults per step | kernel ms per step | images/s vs default |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for depth, threads in itertools.product(_ints(args.depths), _ints(args.threads)):
        rounds = [{s: measure(s, args, depth, threads) for s in SETTINGS} for _ in range(args.repeats)]
        med = {s: {k: statistics.median(r[s][k] for r in rounds) for k in rounds[0][s]} for s in SETTINGS}
        base = med[SETTINGS[0]]["images_per_s"]
        for s in SETTINGS:
            m = med[s]
            print(f"| {depth} | {threads} | {s} | {m['images_per_s']:,.0f} | {m['faults_per_step']:,.0f} | "
                  f"{1000 * m['kernel_s_per_step']:.1f} | {m['images_per_s'] / base:.3f}x |")


if __name__ == "__main__":
    main()
