"""Many worker processes on one storage: SQLite on one machine, a real PostgreSQL server for many."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy

import analysis
import sweeps
from conftest import ROOT, tiny_spec, wait_for
from postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from search_spaces import load_spec
from sweeps.optuna_work import open_study, prepare

CLI = [sys.executable, str(ROOT / "cli.py")]
GRID4 = [0.01, 0.02, 0.03, 0.04]
GRID8 = [0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045]


def grid_spec(values, epochs: int, subset: int = 512) -> dict:
    spec = tiny_spec(sampler={"name": "grid"}, space={"optim.lr": {"grid": list(values)}})
    del spec["budget"]  # a grid runs each point once
    spec["base"]["train"]["epochs"] = epochs
    spec["base"]["data"]["subset"] = subset
    return spec


def trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []
    except sqlalchemy.exc.OperationalError as e:  # the sweep is creating the tables this moment
        if "already exists" not in str(e):
            raise
        return []


def states(url: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials(url):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def start(args: list[str], cwd, log) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)


@contextlib.contextmanager
def worker_log(tmp_path):
    """The workers' shared stderr log and the list they go in; any still running at the end are killed."""
    workers: list[subprocess.Popen] = []
    with open(tmp_path / "workers.log", "w") as log:
        try:
            yield log, workers
        finally:
            for p in workers:
                if p.poll() is None:
                    p.kill()


@pytest.mark.slow
def test_run_with_two_workers_runs_every_grid_point_once(write_spec, tmp_path):
    path = write_spec(grid_spec(GRID4, epochs=6))
    runs = tmp_path / "runs"
    done = subprocess.run(CLI + ["run", str(path), "--workers", "2", "--dir", str(runs), "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4/4 trials finished" in done.stdout
    assert sum(line.startswith("trial ") for line in done.stdout.splitlines()) == 4  # one line per trial
    url = f"sqlite:///{runs / 'tiny.db'}"
    assert states(url) == {"COMPLETE": 4}
    assert sorted(t.params["optim.lr"] for t in trials(url)) == GRID4
    assert len({t.user_attrs["worker"] for t in trials(url)}) == 2  # both workers ran trials
    frame = analysis.load("tiny", directory=runs)
    assert len(frame) == 4 and (frame["state"] == "complete").all()


def test_the_summary_of_many_workers_counts_what_this_run_finished_and_failed(write_spec, tmp_path):
    spec = load_spec(write_spec(grid_spec([0.05, 1.0e8], epochs=1)))  # the second diverges
    url = sweeps.resolve(spec.name, None, tmp_path / "runs", create=True)
    summary = sweeps.run(spec, url, quiet=True, workers=2, run_dir=str(tmp_path / "runs"))
    assert (summary.finished, summary.ran, summary.failed) == (2, 2, 1)
    again = sweeps.run(spec, url, quiet=True, workers=2, run_dir=str(tmp_path / "runs"))
    assert (again.finished, again.ran, again.failed) == (2, 0, 0)


@pytest.mark.slow
def test_budget_holds_with_three_workers_on_a_random_space(write_spec, tmp_path):
    spec = tiny_spec(budget={"trials": 5})
    spec["base"]["train"]["epochs"] = 2
    path = write_spec(spec)
    runs = tmp_path / "runs"
    done = subprocess.run(CLI + ["run", str(path), "--workers", "3", "--dir", str(runs), "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{runs / 'tiny.db'}"
    assert states(url) == {"COMPLETE": 5}
    assert len({t.params["optim.lr"] for t in trials(url)}) == 5  # workers do not replay one another's draws
    again = subprocess.run(CLI + ["run", str(path), "--workers", "3", "--dir", str(runs), "--quiet"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "5/5 trials finished" in again.stdout
    assert states(url) == {"COMPLETE": 5}  # budget reached: nothing new, nothing left waiting


@pytest.mark.parametrize("resources, trials, expected", [
    ({}, 100, lambda cores: cores),                  # one 1-core trial per core
    ({"cpu": 2}, 100, lambda cores: max(1, cores // 2)),
    ({}, 1, lambda cores: 1),                        # never more than the budget
    ({"gpu": 0.25}, 100, lambda cores: 4),           # four trials share a GPU
])
def test_auto_workers_packs_trials_where_it_pays(write_spec, resources, trials, expected):
    import os

    from sweeps.workers import AUTO_MAX, auto_workers
    spec = load_spec(write_spec(tiny_spec(resources=resources, budget={"trials": trials})))
    assert auto_workers(spec) == min(expected(os.cpu_count()), AUTO_MAX)


def test_cli_workers_takes_a_number_or_auto(capsys):
    from cli import main
    with pytest.raises(SystemExit) as stop:
        main(["run", "spec.yaml", "--workers", "two"])
    assert stop.value.code == 2 and "'two' is not a number of workers" in capsys.readouterr().err


def test_a_worker_refuses_a_different_spec(write_spec, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    url = f"sqlite:///{runs / 'tiny.db'}"
    open_study(load_spec(write_spec(tiny_spec())), url)
    changed = write_spec(tiny_spec(space={"optim.lr": {"loguniform": [0.001, 0.01]}}), "changed.yaml")
    out = subprocess.run(CLI + ["worker", str(changed), "--storage", url, "--dir", str(runs)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "different" in out.stderr and "Traceback" not in out.stderr
    assert trials(url) == []


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_the_rerun_runs_each_grid_point_once(write_spec, tmp_path):
    path = write_spec(grid_spec(GRID4, epochs=30, subset=256))  # long trials: the interrupt lands mid-trial
    runs = tmp_path / "runs"
    url = f"sqlite:///{runs / 'tiny.db'}"
    cmd = CLI + ["run", str(path), "--workers", "2", "--dir", str(runs), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (runs / "tiny.db").exists() and sum(
            t.state.name == "RUNNING" and len(t.user_attrs.get("curve.0", [])) >= 1 for t in trials(url)) == 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "resume" in err and "Traceback" not in err
    stopped = [t for t in trials(url) if t.state.name == "FAIL"]
    assert len(stopped) == 2 and all("error" not in t.user_attrs for t in stopped)
    retries = [t for t in trials(url) if t.state.name == "WAITING" and "retried" in t.user_attrs]
    assert sorted(t.user_attrs["retried"] for t in retries) == sorted(t.number for t in stopped)  # one each
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert states(url) == {"FAIL": 2, "COMPLETE": 4}
    frame = analysis.load("tiny", directory=runs)
    assert sorted(frame["optim.lr"]) == GRID4 and (frame["state"] == "complete").all()
    for t in stopped:  # each retry resumed from its checkpoints: one unbroken curve, the saved epochs kept
        retry = next(r for r in trials(url) if r.user_attrs.get("retried") == t.number)
        curve, before = retry.user_attrs["curve.0"], t.user_attrs["curve.0"]
        assert [c["epoch"] for c in curve] == list(range(1, 31))
        assert before and curve[:len(before) - 1] == before[:-1]


def test_workers_die_with_a_killed_run(write_spec, tmp_path):
    path = write_spec(grid_spec(GRID4, epochs=300, subset=256))  # trials of a minute or more: they outlive the wait
    runs = tmp_path / "runs"
    url = f"sqlite:///{runs / 'tiny.db'}"
    cmd = CLI + ["run", str(path), "--workers", "2", "--dir", str(runs), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = wait_for(lambda: (runs / "tiny.db").exists() and [
            t for t in trials(url) if t.state.name == "RUNNING" and "worker" in t.user_attrs] or None)
        assert running
    finally:
        proc.kill()  # SIGKILL: no chance to stop its workers itself
        proc.wait()
    pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in running}

    def alive(pid: int) -> bool:  # a zombie (dead, not yet reaped by its new parent) counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
        except OSError:
            return False

    try:
        assert wait_for(lambda: not any(alive(p) for p in pids), timeout=10), "a worker outlived its killed run"
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (set(states(url)) - {"RUNNING", "WAITING", "COMPLETE"})  # the next run retries the stale trials


@pytest.mark.slow
def test_four_workers_on_postgres_one_killed_mid_trial(write_spec, tmp_path, postgres_url):
    epochs = 8
    path = write_spec(grid_spec(GRID8, epochs=epochs, subset=1024))
    url = postgres_url
    prepare(open_study(load_spec(path), url)[0], load_spec(path), slots=True)  # the study, its grid enqueued
    assert states(url) == {"WAITING": 8}
    with worker_log(tmp_path) as (log, workers):
        workers += [start(["worker", str(path), "--storage", url, "--dir", str(tmp_path / "runs"), "--quiet"],
                          tmp_path, log) for _ in range(4)]
        by_pid = {str(p.pid): p for p in workers}

        def mid_trial():
            for t in trials(url):
                curve = t.user_attrs.get("curve.0", [])
                if t.state.name == "RUNNING" and 1 <= len(curve) <= epochs - 3:
                    return t
            return None

        victim = wait_for(mid_trial)
        assert victim, "no trial got to its second epoch"
        killed = by_pid[victim.user_attrs["worker"].rsplit(":", 1)[1]]
        killed.send_signal(signal.SIGKILL)
        codes = [p.wait(timeout=300) for p in workers]
    assert sorted(codes) == sorted([0, 0, 0, -signal.SIGKILL]), (tmp_path / "workers.log").read_text()
    assert states(url) == {"COMPLETE": 8, "FAIL": 1}
    frame = analysis.load("tiny", url)
    assert len(frame) == 8 and sorted(frame["optim.lr"]) == GRID8  # every grid point exactly once
    everything = trials(url)
    dead = next(t for t in everything if t.state.name == "FAIL")
    assert dead.number == victim.number and "error" not in dead.user_attrs
    retry = [t for t in everything if t.user_attrs.get("retried") == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["retry_of"] == dead.number
    assert retry[0].user_attrs["worker"] != dead.user_attrs["worker"]  # another worker took it over
    # It resumed from the killed run's checkpoint: one unbroken curve, and the epochs that
    # were saved before the kill are the killed run's own (their measured speed included).
    curve, before = retry[0].user_attrs["curve.0"], dead.user_attrs["curve.0"]
    assert [c["epoch"] for c in curve] == list(range(1, epochs + 1))
    assert before and curve[:len(before) - 1] == before[:-1]
    assert len({t.user_attrs["worker"] for t in everything}) >= 3


def test_workers_starting_together_on_an_empty_postgres_keep_the_budget(write_spec, tmp_path, postgres_url):
    spec = tiny_spec(budget={"trials": 5})
    spec["base"]["train"]["epochs"] = 2
    path = write_spec(spec)
    with worker_log(tmp_path) as (log, workers):
        workers += [start(["worker", str(path), "--storage", postgres_url, "--dir", str(tmp_path / "runs")],
                          tmp_path, log) for _ in range(3)]
        codes = [p.wait(timeout=300) for p in workers]
    assert codes == [0, 0, 0], (tmp_path / "workers.log").read_text()
    assert states(postgres_url) == {"COMPLETE": 5}  # the first enqueued the budget, the others only popped
    assert len({t.params["optim.lr"] for t in trials(postgres_url)}) == 5


def _two_runs_at_once(path, args: list[str], cwd, delay: float = 1.0) -> list[subprocess.CompletedProcess]:
    """Two `sweep run` of one spec started at the same instant, the window between counting
    the trials and enqueueing widened to `delay` seconds (a test hook, study.WIDEN_ENV)."""
    env = dict(os.environ, SWEEP_TEST_ENQUEUE_DELAY=str(delay))
    procs = [subprocess.Popen(CLI + ["run", str(path), *args, "--quiet"], cwd=cwd, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _each_point_once(url: str, grid) -> None:
    everything = trials(url)
    done = sorted(t.params["optim.lr"] for t in everything if t.state.name == "COMPLETE")
    assert done == sorted(grid), states(url)  # every grid point ran, none twice
    assert not [t for t in everything if t.state.name in ("WAITING", "RUNNING")]


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_two_runs_started_together_enqueue_the_grid_once_on_sqlite(write_spec, tmp_path, workers):
    path = write_spec(grid_spec(GRID4, epochs=1, subset=128))
    runs = tmp_path / "runs"
    for done in _two_runs_at_once(path, ["--workers", workers, "--dir", str(runs)], tmp_path):
        assert done.returncode == 0, done.stderr
    _each_point_once(f"sqlite:///{runs / 'tiny.db'}", GRID4)


@pytest.mark.slow
def test_two_runs_started_together_enqueue_the_grid_once_on_postgres(write_spec, tmp_path, postgres_url):
    path = write_spec(grid_spec(GRID4, epochs=1, subset=128))
    args = ["--workers", "2", "--storage", postgres_url, "--dir", str(tmp_path / "runs")]
    for done in _two_runs_at_once(path, args, tmp_path):
        assert done.returncode == 0, done.stderr
    _each_point_once(postgres_url, GRID4)


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(write_spec, tmp_path):
    path = write_spec(grid_spec(GRID4[:2], epochs=1, subset=128))
    runs = tmp_path / "runs"
    runs.mkdir()
    url = f"sqlite:///{runs / 'tiny.db'}"
    spec = load_spec(path)
    study = open_study(spec, url)[0]
    prepare(study, spec, slots=False)
    popped = study.ask()  # WAITING -> RUNNING, as a worker pops it; it dies before its heartbeat thread starts
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # popped a minute ago (study.UNBEATEN_S is 20 s)
        conn.execute(sqlalchemy.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :i"),
                     {"t": "2000-01-01 00:00:00", "i": popped._trial_id})
    engine.dispose()
    done = subprocess.run(CLI + ["run", str(path), "--workers", "1", "--dir", str(runs), "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2/2 trials finished" in done.stdout
    dead = next(t for t in trials(url) if t.number == popped.number)
    assert dead.state.name == "FAIL" and "error" not in dead.user_attrs  # interrupted ...
    retry = [t for t in trials(url) if t.user_attrs.get("retried") == popped.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"  # ... and retried once
    _each_point_once(url, GRID4[:2])
