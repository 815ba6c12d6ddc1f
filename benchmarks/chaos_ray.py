"""Kill a Ray sweep's driver at random moments and check that resuming loses and repeats nothing.

A small grid sweep runs as a user runs it (`python cli.py run SPEC --engine ray
--dir D --quiet`, its own local Ray); `kills` times, at a seeded random moment,
its whole process group (driver, GCS, raylet, workers) gets SIGKILL and the same
command starts again; the last start runs to the end. Then, from the study:

- lost: trials finished before a kill that are missing after;
- repeated: grid points run more than once;
- running: trials left RUNNING in the study;
- overshoot: finished trials beyond the budget (the grid's size);
- broken_curves: trials whose curve.{i} epochs are not exactly 1..n (a resumed
  trial continues its curve; a complete one has every epoch).

All must be 0.

    python benchmarks/chaos_ray.py [--kills 5] [--dir D]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout this script is in, not an installed copy

SEED = 0
GRID = [0.01, 0.02, 0.03, 0.05, 0.08, 0.1]
EPOCHS = 3
KILL_AFTER_S = (4.0, 16.0)   # after a start: in Ray's start-up (~8 s), a trial's epoch, or between trials
FINISH_TIMEOUT_S = 600
TAG = "CHAOS_RAY_TAG"        # in the environment of every process the sweep starts: how leftovers are found
SPEC = {"name": "chaos", "sampler": {"name": "grid"},
        "base": {"data": {"dataset": "fashion_mnist", "subset": 256, "eval_subset": 256},
                 "model": {"name": "resnet_preact", "depth": 8, "base_channels": 4},
                 "train": {"epochs": EPOCHS, "batch_size": 64, "precision": "fp32", "threads": 1},
                 "optim": {"lr": 0.05}},
        "space": {"optim.lr": {"grid": GRID}}}


def run(kills: int = 5, workdir=None) -> dict:
    """Run the sweep, killed `kills` times, to its end; the counts (all 0 when resume is sound)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="chaos-ray-") as folder:
            return run(kills, folder)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    spec, runs = work / "chaos.yaml", work / "runs"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    command = [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--engine", "ray", "--dir", str(runs),
               "--quiet"]
    db = runs / f"{SPEC['name']}.db"
    rng = random.Random(SEED)
    started = time.time()
    finished_before: set[str] = set()
    moments: list[float] = []  # seconds after each start that a kill landed (a sweep that ended first: none)
    leftovers = 0
    for _ in range(kills):
        after = round(rng.uniform(*KILL_AFTER_S), 1)
        if _start_and_kill(command, work, after):
            moments.append(after)
        leftovers += _end_leftovers()
        finished_before |= set(_finished(db))
    final = subprocess.run(command, cwd=work, env=_env(), capture_output=True, text=True, timeout=FINISH_TIMEOUT_S)
    leftovers += _end_leftovers()
    return {"kills": kills, "kills_landed": len(moments), "kill_moments_s": moments, "returncode": final.returncode,
            **_counts(db, finished_before), "leftover_ray_processes": leftovers,
            "wall_s": round(time.time() - started, 1),
            **({"stderr_tail": final.stderr[-2000:]} if final.returncode else {})}


_TAG = uuid.uuid4().hex


def _env() -> dict[str, str]:
    # Its own local Ray, as a user gets; the tag marks every process of this run.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, TAG: _TAG, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}


def _start_and_kill(command: list[str], cwd: Path, after_s: float) -> bool:
    """Start the sweep; SIGKILL its process group `after_s` seconds later. False when it ended first."""
    driver = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        driver.wait(timeout=after_s)
        return False
    except subprocess.TimeoutExpired:
        pass
    _kill_session(driver.pid)
    driver.wait(timeout=60)
    return True


def _kill_session(leader: int) -> None:
    """SIGKILL the driver's process group, and the Ray workers that raylet puts in groups of
    their own: all of the session the driver leads."""
    psutil = _psutil()
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == leader:
                process.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass


def _end_leftovers() -> int:
    """SIGKILL what the sweep started and outlived its session (found by the tag in its
    environment); their number, which should be 0."""
    psutil = _psutil()

    def tagged():
        found = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get(TAG) == _TAG:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    left = tagged()
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=30)
    still = tagged()
    if still:
        raise RuntimeError(f"Ray processes outlived SIGKILL: {[p.pid for p in still]}")
    return len(left)


def _psutil():
    import ray  # noqa: F401  (puts its copy of psutil on sys.path when psutil is not installed)
    import psutil
    return psutil


def _finished(db: Path) -> list[str]:
    """Ray trial ids of the trials in the study (the engine writes finished trials only)."""
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT a.value_json FROM trials t JOIN trial_user_attributes a "
                               "ON a.trial_id = t.trial_id AND a.key = 'ray_trial_id' "
                               "WHERE t.state IN ('COMPLETE', 'FAIL', 'PRUNED')").fetchall()
    except sqlite3.Error:  # not created yet
        return []
    return [json.loads(value) for (value,) in rows]


def _counts(db: Path, finished_before: set[str]) -> dict[str, int]:
    import optuna
    trials = optuna.load_study(study_name=SPEC["name"], storage=f"sqlite:///{db}").trials
    done = [t for t in trials if t.state.is_finished()]
    points = collections.Counter(t.params.get("optim.lr") for t in done)
    return {"finished": len(done), "budget": len(GRID),
            "lost": len(finished_before - {t.user_attrs.get("ray_trial_id") for t in done}),
            "repeated": sum(n - 1 for n in points.values()),
            "running": sum(t.state.name == "RUNNING" for t in trials),
            "overshoot": len(done) - len(GRID),
            "broken_curves": sum(_broken(t) for t in done)}


def _broken(trial) -> bool:
    curves = [v for k, v in trial.user_attrs.items() if k.startswith("curve.")]
    for curve in curves:
        epochs = [point["epoch"] for point in curve]
        if epochs != list(range(1, len(epochs) + 1)) or (trial.state.name == "COMPLETE" and len(epochs) != EPOCHS):
            return True
    return not curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--dir", default=None, help="work folder (kept); default a temporary one")
    args = parser.parse_args()
    print(json.dumps(run(args.kills, args.dir), indent=1))


if __name__ == "__main__":
    main()
