"""Real Optuna sweeps on SQLite files: budget, failures, pruning, seeds, resume, analysis."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

import analysis
import sweeps
from conftest import ROOT, tiny_spec, wait_for
from search_spaces import load_spec

CONTRACT = ["trial", "seed", "state", "val_error", "best_val_error", "test_error", "epochs_done", "duration_s",
            "images_per_s", "error"]


def run(path, tmp_path, **kw):
    spec = load_spec(path, kw.pop("sets", []))
    url = sweeps.resolve(spec.name, None, tmp_path / "runs", create=True)
    return spec, url, sweeps.run(spec, url, quiet=True)


def test_sweep_runs_its_budget_and_stores_everything(write_spec, tmp_path):
    spec, url, summary = run(write_spec(tiny_spec(budget={"trials": 3})), tmp_path)
    assert summary.finished == 3 and not summary.interrupted
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    t = study.trials[0]
    assert t.user_attrs["config"]["optim"]["lr"] == t.params["optim.lr"]
    assert {"recipe_sweep", "torch", "optuna"} <= set(t.user_attrs["versions"])
    assert 0.01 <= t.params["optim.lr"] <= 0.1
    assert t.intermediate_values == {1: t.value}
    frame = analysis.load(spec, url)
    assert list(frame.columns[:3]) == ["trial", "seed", "state"] and set(CONTRACT) <= set(frame.columns)
    assert "optim.lr" in frame.columns and len(frame) == 3
    assert (frame["state"] == "complete").all() and frame["test_error"].between(0, 1).all()
    long = analysis.curves(spec, url)
    assert set(long["metric"]) >= {"val_error", "train_loss", "lr"} and set(long["trial"]) == {0, 1, 2}


def test_diverging_and_pruned_trials_are_recorded_and_the_sweep_goes_on(write_spec, tmp_path):
    spec = tiny_spec(sampler={"name": "grid"}, budget={"trials": 3},
                     pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 0},
                     space={"optim.lr": {"grid": [0.1, 1.0e-7, 1.0e8]}})
    spec["base"]["train"]["epochs"] = 2
    spec["base"]["data"]["subset"] = 1024
    spec_obj, url, summary = run(write_spec(spec), tmp_path)
    assert summary.finished == 3 and summary.ran == 3 and summary.failed == 1  # this invocation's trials
    frame = analysis.load(spec_obj, url).set_index("optim.lr")
    assert frame.loc[0.1, "state"] == "complete"
    assert frame.loc[1.0e-7, "state"] == "pruned" and frame.loc[1.0e-7, "epochs_done"] == 1
    assert frame.loc[1.0e8, "state"] == "failed"
    assert frame.loc[1.0e8, "error"].startswith("diverged at epoch 1, step")
    assert frame.loc[0.1, "error"] is None or frame.loc[0.1, "error"] != frame.loc[0.1, "error"]
    status = analysis.status(spec_obj, url)
    assert "complete 1" in status and "failed 1" in status and "pruned 1" in status and "diverged" in status


def test_seeds_give_one_row_each_and_the_objective_is_their_median(write_spec, tmp_path):
    spec, url, _ = run(write_spec(tiny_spec(seeds=3, budget={"trials": 1})), tmp_path)
    frame = analysis.load(spec, url)
    assert sorted(frame["seed"]) == [0, 1, 2] and frame["trial"].nunique() == 1
    value = optuna.load_study(study_name="tiny", storage=url).trials[0].value
    assert value == pytest.approx(frame["val_error"].median())
    table = analysis.summary(frame, metric="test_error")
    assert table.loc[0, "runs"] == 3


def test_running_again_resumes_and_keeps_finished_trials(write_spec, tmp_path):
    path = write_spec(tiny_spec(budget={"trials": 2}))
    _, url, _ = run(path, tmp_path)
    before = optuna.load_study(study_name="tiny", storage=url).trials
    _, _, again = run(path, tmp_path)  # budget reached: nothing new
    assert again.finished == 2 and again.ran == 0
    _, _, more = run(path, tmp_path, sets=["budget.trials=3"])
    after = optuna.load_study(study_name="tiny", storage=url).trials
    assert more.finished == 3 and more.ran == 1 and more.failed == 0 and len(after) == 3
    assert [(t.number, t.params) for t in after[:2]] == [(t.number, t.params) for t in before]
    assert after[2].params != after[0].params  # the resumed sampler does not replay its first draw


def test_a_changed_space_on_the_same_storage_is_refused(write_spec, tmp_path):
    _, url, _ = run(write_spec(tiny_spec(budget={"trials": 1})), tmp_path)
    changed = tiny_spec(budget={"trials": 1}, space={"optim.lr": {"loguniform": [0.001, 0.01]}})
    with pytest.raises(sweeps.SweepError, match="different"):
        run(write_spec(changed, "other.yaml"), tmp_path)


def test_a_release_that_adds_a_config_key_still_resumes_the_sweep(write_spec, tmp_path, monkeypatch):
    from sweeps import study
    from trainable import config
    path = write_spec(tiny_spec(budget={"trials": 1}))
    spec, _, _ = run(path, tmp_path)
    before = study.fingerprint(spec)
    real = config.to_dict

    def with_a_new_key(cfg):  # every config now has one more key, at a default that changes nothing
        tree = real(cfg)
        if isinstance(cfg, config.TrialConfig):
            tree["train"]["new_option"] = 0
        return tree

    # The fingerprint and a checkpoint's identity both count a config by config.non_defaults.
    monkeypatch.setattr(config, "to_dict", with_a_new_key)
    assert study.fingerprint(spec) == before
    _, _, more = run(path, tmp_path, sets=["budget.trials=2"])
    assert more.finished == 2
    changed = tiny_spec(budget={"trials": 2})
    changed["base"]["optim"]["weight_decay"] = 1.0e-3
    with pytest.raises(sweeps.SweepError, match="different"):
        run(write_spec(changed, "changed.yaml"), tmp_path)


def _counts(db):
    try:
        with sqlite3.connect(db) as con:
            return dict(con.execute("select state, count(*) from trials group by state").fetchall())
    except sqlite3.OperationalError:  # the file exists, its tables not yet
        return {}


def _running_has_an_epoch(db) -> bool:
    """The running trial has recorded at least one epoch (and so has a checkpoint to resume)."""
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from trials t join trial_user_attributes a using (trial_id) "
                           "where t.state = 'RUNNING' and a.key = 'curve.0'").fetchone()[0] > 0


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_loses_nothing_and_repeats_no_grid_point(write_spec, tmp_path):
    spec = tiny_spec(sampler={"name": "grid"}, space={"optim.lr": {"grid": [0.01, 0.02, 0.03, 0.04]}})
    del spec["budget"]
    spec["base"]["train"]["epochs"] = 8  # a few seconds a trial, so the kill lands mid-trial
    spec["base"]["data"]["subset"] = 1024
    path = write_spec(spec)
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(path), "--workers", "1", "--dir",
           str(tmp_path / "runs"), "--quiet"]
    db = tmp_path / "runs" / "tiny.db"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: db.exists() and _counts(db).get("COMPLETE", 0) >= 1
                         and _counts(db).get("RUNNING", 0) == 1 and _running_has_an_epoch(db), timeout=120), \
            "the sweep never got to its second trial"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _counts(db).get("RUNNING") == 1  # the killed trial is left running with a stale heartbeat
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    frame = analysis.load("tiny", directory=tmp_path / "runs")
    assert len(frame) == 4 and (frame["state"] == "complete").all()
    assert sorted(frame["optim.lr"]) == [0.01, 0.02, 0.03, 0.04]  # every grid point once
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(interrupted) == 1 and "error" not in interrupted[0].user_attrs
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert len(retry) == 1 and retry[0].params == interrupted[0].params
    # The retry resumed from the killed run's checkpoint: one unbroken curve, no epoch twice.
    killed_epochs = [c["epoch"] for c in interrupted[0].user_attrs.get("curve.0", [])]
    assert [c["epoch"] for c in retry[0].user_attrs["curve.0"]] == list(range(1, 9))
    assert killed_epochs and retry[0].datetime_start > interrupted[0].datetime_start
    assert not (tmp_path / "runs" / "tiny").exists() or not any((tmp_path / "runs" / "tiny").iterdir())


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(write_spec, tmp_path):
    spec = tiny_spec(budget={"trials": 2})
    spec["base"]["train"]["epochs"] = 40  # about 4 s a trial: the interrupt lands mid-trial
    path = write_spec(spec)
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(path), "--workers", "1", "--dir",
           str(tmp_path / "runs"), "--quiet"]
    db = tmp_path / "runs" / "tiny.db"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: db.exists() and _counts(db).get("RUNNING", 0) == 1, timeout=120)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "resume" in err and "Traceback" not in err
    assert _counts(db) == {"FAIL": 1}
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _counts(db) == {"FAIL": 1, "COMPLETE": 2}
    frame = analysis.load("tiny", directory=tmp_path / "runs")
    assert len(frame) == 2 and (frame["state"] == "complete").all()


def test_cli_status_and_table(write_spec, tmp_path):
    path = write_spec(tiny_spec(seeds=2, budget={"trials": 2}, space={"train.batch_size": {"grid": [32, 64]}}))
    runs = str(tmp_path / "runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, str(ROOT / "cli.py")]
    done = subprocess.run(cli + ["run", str(path), "--dir", runs, "--quiet"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2/2 trials finished" in done.stdout
    status = subprocess.run(cli + ["status", "tiny", "--dir", runs], capture_output=True, text=True, env=env)
    assert "complete 2" in status.stdout and "best: trial" in status.stdout
    table = subprocess.run(cli + ["table", str(path), "--dir", runs, "--by", "train.batch_size", "--format", "csv"],
                           capture_output=True, text=True, env=env)
    lines = table.stdout.strip().splitlines()
    assert lines[0].startswith("train.batch_size,runs,test_error_median,test_error_std")
    assert len(lines) == 3 and all(line.split(",")[1] == "2" for line in lines[1:])
    missing = subprocess.run(cli + ["status", "nope", "--dir", runs], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no sweep 'nope'" in missing.stderr and "Traceback" not in missing.stderr


def test_an_out_of_memory_trial_is_recorded_and_the_sweep_goes_on(write_spec, tmp_path):
    spec = tiny_spec(sampler={"name": "grid"}, space={"model.base_channels": {"grid": [200000, 4]}})
    del spec["budget"]
    spec_obj, url, summary = run(write_spec(spec), tmp_path)
    assert summary.finished == 2
    frame = analysis.load(spec_obj, url).set_index("model.base_channels")
    assert frame.loc[200000, "state"] == "failed" and frame.loc[200000, "error"].startswith("out of memory")
    assert frame.loc[4, "state"] == "complete"
