"""What an engine costs per trial, against a bare call of `trainable.train`, in one run.

Part 1: the same small trial N times through each engine (Optuna + SQLite,
Optuna + PostgreSQL when a URL is given, Ray Tune when `--ray`), reported as
seconds per trial and as overhead over the bare call.
Part 2: how the storage-side costs grow with the number of finished trials in
a study (sampling one trial, `sweep status`, `analysis.load`).

    python benchmarks/sweep_overhead.py [--trials 10] [--epochs 2] [--ray] [--postgres URL]
"""
from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import optuna
import yaml

import analysis
import sweeps
from search_spaces import parse_spec
from sweeps.optuna_engine import fingerprint, sample
from trainable import train

BASE = {"data": {"subset": 2048, "eval_subset": 512}, "model": {"depth": 8, "base_channels": 8},
        "train": {"batch_size": 128, "precision": "bf16"}}


def spec_text(name: str, trials: int, epochs: int) -> str:
    base = yaml.safe_load(yaml.safe_dump(BASE))
    base["train"]["epochs"] = epochs
    return yaml.safe_dump({"name": name, "budget": {"trials": trials}, "base": base,
                           "space": {"optim.lr": {"loguniform": [0.01, 0.1]}}})


def bare(spec, trials: int) -> float:
    """Seconds per trial for plain calls of the training function (the reference)."""
    train(spec.config({"optim.lr": 0.05}))  # warm-up: data load, kernels
    t0 = time.perf_counter()
    for i in range(trials):
        train(spec.config({"optim.lr": 0.01 + 0.005 * i}))
    return (time.perf_counter() - t0) / trials


def engine(spec, url: str, trials: int, run_dir: str) -> float:
    t0 = time.perf_counter()
    sweeps.run(spec, url, quiet=True, run_dir=run_dir)
    return (time.perf_counter() - t0) / trials


def growth(n: int, folder: Path) -> dict[str, float]:
    """Storage-side costs once a study holds n finished trials."""
    spec = parse_spec(spec_text(f"growth{n}", n + 1, 1), "growth.yaml")
    url = f"sqlite:///{folder / f'growth{n}.db'}"
    study = optuna.create_study(study_name=spec.name, storage=url)
    study.set_user_attr("fingerprint", fingerprint(spec))
    study.set_user_attr("spec", spec.raw)
    dist = optuna.distributions.FloatDistribution(0.01, 0.1, log=True)
    runs = [{"seed": 0, "state": "complete", "val_error": 0.1, "test_error": 0.1, "epochs_done": 1}]
    study.add_trials([optuna.trial.create_trial(
        params={"optim.lr": 0.01 + i * 1e-6}, distributions={"optim.lr": dist}, value=0.1 + i * 1e-6,
        user_attrs={"runs": runs, "curve.0": [{"epoch": 1, "val_error": 0.1}]},
        intermediate_values={1: 0.1}) for i in range(n)])
    out = {}
    for key in ("first_sample_s", "sample_s"):  # the first loads the study into Optuna's cache
        t0 = time.perf_counter()
        trial = study.ask()
        sample(spec, trial)
        study.tell(trial, 0.1)
        out[key] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analysis.status(spec.name, url)
    out["status_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analysis.load(spec.name, url)
    out["load_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="also time the Ray engine")
    ap.add_argument("--postgres", help="also time Optuna on this PostgreSQL URL")
    ap.add_argument("--growth", default="100,1000,10000", help="study sizes for part 2")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="overhead-"))
    spec = parse_spec(spec_text("overhead", args.trials, args.epochs), "overhead.yaml")
    ref = bare(spec, args.trials)
    rows = {"bare trainable.train": ref,
            "optuna + sqlite": engine(spec, f"sqlite:///{folder / 'o.db'}", args.trials, str(folder))}
    if args.postgres:
        rows["optuna + postgresql"] = engine(spec, args.postgres, args.trials, str(folder))
    if args.ray:
        ray_spec = parse_spec(spec_text("overhead_ray", args.trials, args.epochs).replace("name:", "engine: ray\nname:"),
                              "overhead.yaml")
        rows["ray tune"] = engine(ray_spec, f"sqlite:///{folder / 'r.db'}", args.trials, str(folder))
    print(f"# sweep overhead, {args.trials} trials of ResNet-preact-8 on 2,048 Fashion-MNIST images x "
          f"{args.epochs} epochs, {datetime.date.today()}")
    print("| engine | s per trial | overhead vs bare |\n| --- | ---: | ---: |")
    for name, s in rows.items():
        print(f"| {name} | {s:.2f} | {100 * (s - ref) / ref:+.1f}% |")
    print("\n| finished trials | first sample (cold) | next sample | sweep status | analysis.load |\n"
          "| ---: | ---: | ---: | ---: | ---: |")
    for n in (int(v) for v in args.growth.split(",") if v):
        g = growth(n, folder)
        print(f"| {n:,} | {1e3 * g['first_sample_s']:.0f} ms | {1e3 * g['sample_s']:.0f} ms | "
              f"{1e3 * g['status_s']:.0f} ms | {1e3 * g['load_s']:.0f} ms |")


if __name__ == "__main__":
    main()
