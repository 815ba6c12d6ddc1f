"""What an engine costs per trial, against a bare call of `trainable.train`, in one run.

Part 1: the same small trial through each engine (Optuna + SQLite, Optuna +
PostgreSQL when a URL is given, Ray Tune when `--ray`), each run at two budgets
(`--trials A,B`, the fastest of two runs each), so that a sweep's fixed cost (opening the study, starting
Ray and the Tuner) and its cost per trial separate: per trial is the slope
between the two runs, set against the slope of bare calls. The overhead is
also given as a share of a 30-second trial (the size the targets speak of).
Part 2: how the storage-side costs grow with the number of finished trials in
a study (sampling one trial, `sweep status`, `analysis.load`).

    python benchmarks/sweep_overhead.py [--trials 2,12] [--epochs 2] [--ray] [--postgres URL]
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import optuna
import yaml

import analysis
import sweeps
from search_spaces import parse_spec
from sweeps import record
from sweeps.sampling import sample
from sweeps.study import fingerprint
from trainable import train

BASE = {"data": {"subset": 2048, "eval_subset": 512}, "model": {"depth": 8, "base_channels": 8},
        "train": {"batch_size": 128, "precision": "bf16"}}


def spec_text(name: str, trials: int, epochs: int) -> str:
    base = yaml.safe_load(yaml.safe_dump(BASE))
    base["train"]["epochs"] = epochs
    return yaml.safe_dump({"name": name, "budget": {"trials": trials}, "base": base,
                           "space": {"optim.lr": {"loguniform": [0.01, 0.1]}}})


def bare(spec, trials: int) -> float:
    """Seconds for `trials` plain calls of the training function (the reference)."""
    t0 = time.perf_counter()
    for i in range(trials):
        train(spec.config({"optim.lr": 0.01 + 0.005 * i}))
    return time.perf_counter() - t0


def engine(text: str, url: str, run_dir: str) -> float:
    """Seconds for one sweep of the spec `text`, from opening its study to its summary."""
    spec = parse_spec(text, "overhead.yaml")
    t0 = time.perf_counter()
    sweeps.run(spec, url, quiet=True, run_dir=run_dir)
    return time.perf_counter() - t0


def fit(small: int, large: int, time_of, repeats: int = 2) -> tuple[float, float]:
    """(fixed seconds, seconds per trial) from runs of `small` and `large` trials, each the
    fastest of `repeats` (a one-off stall, e.g. Ray's first start in a process, drops out)."""
    a = min(time_of(small) for _ in range(repeats))
    b = min(time_of(large) for _ in range(repeats))
    per_trial = (b - a) / (large - small)
    return a - small * per_trial, per_trial


def growth(n: int, folder: Path) -> dict[str, float]:
    """Storage-side costs once a study holds n finished trials."""
    spec = parse_spec(spec_text(f"growth{n}", n + 1, 1), "growth.yaml")
    url = f"sqlite:///{folder / f'growth{n}.db'}"
    study = optuna.create_study(study_name=spec.name, storage=url)
    study.set_user_attr(record.FINGERPRINT, fingerprint(spec))
    study.set_user_attr(record.SPEC, spec.raw)
    dist = optuna.distributions.FloatDistribution(0.01, 0.1, log=True)
    runs = [{record.SEED: 0, record.STATE: record.COMPLETE, "val_error": 0.1, "test_error": 0.1, "epochs_done": 1}]
    study.add_trials([optuna.trial.create_trial(
        params={"optim.lr": 0.01 + i * 1e-6}, distributions={"optim.lr": dist}, value=0.1 + i * 1e-6,
        user_attrs={record.RUNS: runs, record.curve_key(0): record.merge_curve([], 1, {"val_error": 0.1})},
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
    ap.add_argument("--trials", default="2,12", help="the two budgets whose difference gives the cost per trial")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="also time the Ray engine")
    ap.add_argument("--postgres", help="also time Optuna on this PostgreSQL URL")
    ap.add_argument("--growth", default="100,1000,10000", help="study sizes for part 2")
    args = ap.parse_args()
    small, large = (int(v) for v in args.trials.split(","))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="overhead-"))
    spec = parse_spec(spec_text("overhead", 1, args.epochs), "overhead.yaml")
    train(spec.config({"optim.lr": 0.05}))  # warm-up: data load, kernels
    count, run_id = iter(range(1000)), folder.name.rsplit("-", 1)[-1]

    def sweep(engine_line: str, url_of):
        def time_of(n: int) -> float:
            name = f"overhead{run_id}_{next(count)}"  # a --postgres database outlives the run: new names
            return engine(engine_line + spec_text(name, n, args.epochs), url_of(name), str(folder))
        return time_of

    rows = {"bare trainable.train": fit(small, large, lambda n: bare(spec, n)),
            "optuna + sqlite": fit(small, large, sweep("", lambda name: f"sqlite:///{folder / name}.db"))}
    if args.postgres:
        rows["optuna + postgresql"] = fit(small, large, sweep("", lambda name: args.postgres))
    if args.ray:
        # The whole machine for each trial, as the bare call has (Ray sets a trial's threads from its CPUs).
        ray_line = f"engine: ray\nresources: {{cpu: {os.cpu_count()}}}\n"
        rows["ray tune (actors reused)"] = fit(small, large, sweep(ray_line,
                                                                    lambda name: f"sqlite:///{folder / name}.db"))
    ref = rows["bare trainable.train"][1]
    print(f"# sweep overhead: ResNet-preact-8 on 2,048 Fashion-MNIST images x {args.epochs} epochs, runs of "
          f"{small} and {large} trials, {datetime.date.today()}")
    print("| engine | fixed s per sweep | s per trial | overhead per trial | of a 30-s trial |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for name, (fixed, per) in rows.items():
        print(f"| {name} | {fixed:.2f} | {per:.3f} | {per - ref:+.3f} s ({100 * (per - ref) / ref:+.1f}%) | "
              f"{100 * (per - ref) / 30:+.2f}% |")
    print("\n| finished trials | first sample (cold) | next sample | sweep status | analysis.load |\n"
          "| ---: | ---: | ---: | ---: | ---: |")
    for n in (int(v) for v in args.growth.split(",") if v):
        g = growth(n, folder)
        print(f"| {n:,} | {1e3 * g['first_sample_s']:.0f} ms | {1e3 * g['sample_s']:.0f} ms | "
              f"{1e3 * g['status_s']:.0f} ms | {1e3 * g['load_s']:.0f} ms |")


if __name__ == "__main__":
    main()
