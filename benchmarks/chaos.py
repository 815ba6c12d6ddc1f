"""Kill, restart and starve a many-worker Optuna sweep; check that nothing is lost, repeated or left running.

Real engines and servers only: `sweep run` as a user runs it (cli.py, its own
worker processes), SQLite files and a throwaway PostgreSQL server (as
tests/postgres.py starts one). A grid of 8 tiny trials (3 epochs) per sweep.

(a) `sweep run --workers 4` gets SIGKILL at a random moment (its workers die
    with it), or one of its workers does, `kills` times each, on SQLite and on
    PostgreSQL; the same command resumes after each kill, then runs to the end.
(b) the PostgreSQL server is stopped mid-sweep and started again 5 s later:
    the workers wait and go on.
(c) the disk under --dir (a tmpfs mounted here) fills up mid-sweep: the trial
    fails with "disk full", the sweep stops, the SQLite file passes
    `PRAGMA integrity_check`, and a rerun after freeing space finishes.
(d) two `sweep run` of the same spec start together, `races` times.
And benchmarks/chaos_ray.py (the Ray engine, when present).

Counted for every sweep (each must be 0): lost (finished before a kill,
missing after), twice (a grid point run more than once), missing (a grid
point never run), left (RUNNING or WAITING once it ended), overshoot (trials
counted beyond the grid) and broken (a complete trial whose curve is not
epochs 1..n: a resumed trial continues its curve).

    python benchmarks/chaos.py [--quick] [--kills 20] [--races 20] [--no-ray]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # postgres.py: the throwaway server

GRID = [0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045]
EPOCHS = 3
SUBSET = 1024                 # a trial of a few seconds on one core: kills land mid-epoch too
KILL_AFTER_S = (1.0, 10.0)    # after a start: in start-up, mid-epoch, between trials, in the last trial
WORKER_KILL_AFTER_S = (2.0, 8.0)
FINISH_TIMEOUT_S = 600
COUNTS = ("lost", "twice", "missing", "left", "overshoot", "broken")


def spec(name: str, grid=GRID, epochs: int = EPOCHS) -> dict:
    return {"name": name, "sampler": {"name": "grid"},
            "base": {"data": {"dataset": "fashion_mnist", "subset": SUBSET, "eval_subset": 256},
                     "model": {"name": "resnet_preact", "depth": 8, "base_channels": 4},
                     "train": {"epochs": epochs, "batch_size": 64, "precision": "fp32", "threads": 1},
                     "optim": {"lr": 0.05}},
            "space": {"optim.lr": {"grid": list(grid)}}}


class Sweep:
    """One sweep: its spec file, storage and the command that runs (and resumes) it."""

    def __init__(self, work: Path, name: str, storage: str | None, workers: int = 4, grid=GRID,
                 epochs: int = EPOCHS):
        self.name, self.grid, self.epochs = name, list(grid), epochs
        self.dir = work / "runs"
        self.path = work / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(spec(name, grid, epochs), sort_keys=False))
        self.url = storage or f"sqlite:///{self.dir / (name + '.db')}"
        self.command = [sys.executable, str(ROOT / "cli.py"), "run", str(self.path), "--workers", str(workers),
                        "--dir", str(self.dir), "--quiet"] + (["--storage", storage] if storage else [])
        self.finished_before: set[int] = set()
        self.cwd = work

    def start(self, **kwargs) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", **kwargs.pop("env", {}))
        return subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, **kwargs)

    def finish(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command, cwd=self.cwd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              capture_output=True, text=True, timeout=FINISH_TIMEOUT_S)

    def trials(self):
        import optuna
        import sqlalchemy
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            return optuna.load_study(study_name=self.name, storage=self.url).get_trials(deepcopy=False)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            return []  # not created yet

    def note_finished(self) -> None:
        self.finished_before |= {t.number for t in self.trials() if t.state.name == "COMPLETE"}

    def counts(self) -> dict[str, int]:
        from sweeps import record
        trials = self.trials()
        done = [t for t in trials if t.state.name == "COMPLETE"]
        points = collections.Counter(t.params.get("optim.lr") for t in done)
        return {"lost": len(self.finished_before - {t.number for t in done}),
                "twice": sum(n - 1 for n in points.values() if n > 1),
                "missing": sum(p not in points for p in self.grid),
                "left": sum(t.state.name in ("RUNNING", "WAITING") for t in trials),
                "overshoot": max(0, sum(map(record.counts_toward_budget, trials)) - len(self.grid)),
                "broken": sum(_broken(t, self.epochs) for t in done)}


def _broken(trial, epochs: int) -> bool:
    curve = trial.user_attrs.get("curve.0")
    return not curve or [p["epoch"] for p in curve] != list(range(1, epochs + 1))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _reap(pids, timeout: float = 15) -> int:
    """Wait for `pids` to die (a killed run's workers die with it); SIGKILL and count the ones left."""
    end = time.time() + timeout
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return len(left)


def _total(sweeps: list[Sweep]) -> dict[str, int]:
    out = dict.fromkeys(COUNTS, 0)
    for s in sweeps:
        for k, v in s.counts().items():
            out[k] += v
    return out


# ---- (a) kills ---------------------------------------------------------------------

def kill_runs(work: Path, storage: str | None, kills: int, rng: random.Random, tag: str) -> dict:
    """SIGKILL `sweep run --workers 4` `kills` times at random moments, resuming each time."""
    started, landed, sweeps, orphans, moments = time.time(), 0, [], 0, []
    while landed < kills:
        sweep = Sweep(work, f"{tag}-run{len(sweeps)}", storage)
        sweeps.append(sweep)
        while landed < kills:
            proc, after = sweep.start(), round(rng.uniform(*KILL_AFTER_S), 1)
            try:
                proc.wait(timeout=after)
                break  # the sweep finished first: the next kills go to a new sweep
            except subprocess.TimeoutExpired:
                pass
            workers = _children(proc.pid)
            proc.kill()
            proc.wait()
            landed += 1
            moments.append(after)
            orphans += _reap(workers)
            sweep.note_finished()
    finals = [s.finish() for s in sweeps]
    return {"kills": landed, "sweeps": len(sweeps), "orphans": orphans,
            "failed_finals": sum(f.returncode != 0 for f in finals), **_total(sweeps),
            "wall_s": round(time.time() - started)}


def kill_workers(work: Path, storage: str | None, kills: int, rng: random.Random, tag: str) -> dict:
    """SIGKILL a random worker of `sweep run --workers 4` `kills` times; rerun the command when none is left."""
    started, landed, sweeps = time.time(), 0, []
    while landed < kills:
        sweep = Sweep(work, f"{tag}-worker{len(sweeps)}", storage)
        sweeps.append(sweep)
        done = False
        while landed < kills and not done:
            proc = sweep.start()
            while landed < kills:
                try:
                    proc.wait(timeout=rng.uniform(*WORKER_KILL_AFTER_S))
                    done = proc.returncode == 0  # finished; else every worker was killed: start it again
                    break
                except subprocess.TimeoutExpired:
                    pass
                workers = [p for p in _children(proc.pid) if _alive(p)]
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    landed += 1
                    sweep.note_finished()
            if proc.poll() is None:
                proc.wait(timeout=FINISH_TIMEOUT_S)  # the rest of this sweep runs on the workers left
                done = proc.returncode == 0
    finals = [s.finish() for s in sweeps]
    return {"kills": landed, "sweeps": len(sweeps), "orphans": 0,
            "failed_finals": sum(f.returncode != 0 for f in finals), **_total(sweeps),
            "wall_s": round(time.time() - started)}


# ---- (b) a database restart ------------------------------------------------------------

def restart_postgres(work: Path, server, outage_s: float = 5.0) -> dict:
    started = time.time()
    sweep = Sweep(work, "restart", server.createdb("restart"))
    proc = sweep.start()
    end = time.time() + 120
    while time.time() < end and not any(t.state.name == "COMPLETE" for t in sweep.trials()):
        time.sleep(0.5)  # mid-sweep: a trial finished, others running
    sweep.note_finished()
    server.stop()
    time.sleep(outage_s)
    server.start()
    _, err = proc.communicate(timeout=FINISH_TIMEOUT_S)
    return {"returncode": proc.returncode, "waited": "storage does not answer" in err, **sweep.counts(),
            "wall_s": round(time.time() - started), **({"stderr": err[-600:]} if proc.returncode else {})}


# ---- (c) a full disk ---------------------------------------------------------------

def fill_disk(work: Path, size_mb: int = 12) -> dict:
    """A sweep whose --dir is a small tmpfs that fills up mid-sweep (root only: mount/umount)."""
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a tmpfs"}
    started = time.time()
    mnt = work / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True)
    try:
        sweep = Sweep(mnt, "full", None, workers=2)
        proc = sweep.start()
        end = time.time() + 120
        while time.time() < end and not any(t.state.name == "COMPLETE" for t in sweep.trials()):
            time.sleep(0.3)
        sweep.note_finished()
        filler = mnt / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        _, err = proc.communicate(timeout=FINISH_TIMEOUT_S)
        db = sweep.dir / "full.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        reasons = [str(t.user_attrs.get("error", "")) for t in sweep.trials()]
        tmp_left = len(list(sweep.dir.rglob("*.tmp")))
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        filler.unlink()  # space freed
        again = sweep.finish()
        return {"returncode": proc.returncode, "error_line": (lines or [""])[-1][:160],
                "disk_full": any(r.startswith("disk full") for r in reasons) or "disk full" in err,
                "traceback": "Traceback" in err, "integrity": integrity, "tmp_left": tmp_left,
                **({"stderr": err[-3000:]} if "Traceback" in err else {}),
                "rerun_returncode": again.returncode, **sweep.counts(), "wall_s": round(time.time() - started)}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # -l: this process may still hold the .db open


# ---- (d) two runs at once ------------------------------------------------------------

def races(work: Path, storage: str | None, n: int, tag: str) -> dict:
    started, sweeps, failed = time.time(), [], 0
    for i in range(n):
        sweep = Sweep(work, f"{tag}-race{i}", storage, workers=1, grid=GRID[:2], epochs=1)
        sweeps.append(sweep)
        procs = [sweep.start() for _ in range(2)]
        for p in procs:
            p.communicate(timeout=FINISH_TIMEOUT_S)
            failed += p.returncode != 0
    return {"races": n, "failed_runs": failed, **_total(sweeps), "wall_s": round(time.time() - started)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 kills, 2 races, 1 Ray kill")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--races", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--only", default="abcdr", help="parts to run (a, b, c, d, r for Ray), e.g. ad")
    args = ap.parse_args()
    kills, n_races, ray_kills = (2, 2, 1) if args.quick else (args.kills, args.races, 5)
    from postgres import serve
    rng = random.Random(0)
    rows: list[tuple[str, dict]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="chaos-") as folder, serve() as server:
        work = Path(folder)
        pg = server.createdb("chaos")
        for label, storage in (("sqlite", None), ("postgres", pg)):
            if "a" in args.only:
                rows.append((f"(a) kill -9 sweep run, {label}", kill_runs(work, storage, kills, rng, label)))
                _say(rows[-1])
                rows.append((f"(a) kill -9 a worker, {label}", kill_workers(work, storage, kills, rng, label)))
                _say(rows[-1])
            if "d" in args.only:
                rows.append((f"(d) two runs at once, {label}", races(work, storage, n_races, label)))
                _say(rows[-1])
        if "b" in args.only:
            rows.append(("(b) postgres restarted mid-sweep", restart_postgres(work, server)))
            _say(rows[-1])
        if "c" in args.only:
            rows.append(("(c) disk full under --dir", fill_disk(work)))
            _say(rows[-1])
    if "r" in args.only and not args.no_ray and (ROOT / "benchmarks" / "chaos_ray.py").exists():
        from benchmarks import chaos_ray
        ray = chaos_ray.run(kills=ray_kills)
        ray.update(twice=ray.get("repeated"), left=ray.get("running"), broken=ray.get("broken_curves"),
                   missing=ray.get("budget", 0) - ray.get("finished", 0) + ray.get("repeated", 0))
        rows.append((f"(a) kill -9 the Ray driver", ray))
        _say(rows[-1])
    print(f"\n{datetime.date.today()}  {os.cpu_count()} cores  total {time.time() - started:.0f} s")
    print(_table(rows))


def _say(row) -> None:
    print(f"{row[0]}: {row[1]}", flush=True)


def _table(rows) -> str:
    keys = ["kills", "races", *COUNTS, "orphans", "failed_finals", "failed_runs", "returncode", "wall_s"]
    keys = [k for k in keys if any(k in r for _, r in rows)]
    lines = ["| part | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, r in rows:
        lines.append(f"| {label} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
