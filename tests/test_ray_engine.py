"""Real Ray Tune sweeps on a local Ray instance: results land in the Optuna study like the Optuna engine's."""
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
from search_spaces import SpecError, load_spec

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray for the module; the engine uses it and leaves it running."""
    started = not ray.is_initialized()
    if started:
        from sweeps import ray_engine
        ray_engine.start_local_ray(2)  # on loopback, as a sweep's own
    yield
    if started:
        ray.shutdown()


def run(write_spec, tmp_path, spec: dict, engine: str = "ray", **options):
    spec_obj = load_spec(write_spec(spec, f"{engine}.yaml"), [f"engine={engine}"])
    runs = tmp_path / engine
    url = sweeps.resolve(spec_obj.name, None, runs, create=True)
    return spec_obj, url, sweeps.run(spec_obj, url, quiet=True, run_dir=str(runs), **options)


def test_importing_sweeps_does_not_import_ray():
    code = "import sys, sweeps; assert 'ray' in sweeps.ENGINES and 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_ray_sweep_fills_the_study_like_the_optuna_engine(write_spec, tmp_path):
    spec = tiny_spec(budget={"trials": 3})
    spec_obj, url, summary = run(write_spec, tmp_path, spec)
    assert summary.finished == 3 and summary.budget == 3 and not summary.interrupted
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs["engine"] == "ray" and "fingerprint" in study.user_attrs
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert len({t.user_attrs["ray_trial_id"] for t in study.trials}) == 3
    for t in study.trials:
        assert 0.01 <= t.params["optim.lr"] <= 0.1
        assert t.user_attrs["config"]["optim"]["lr"] == t.params["optim.lr"]
        assert {"recipe_sweep", "torch", "optuna"} <= set(t.user_attrs["versions"])
        assert t.intermediate_values == {1: t.value}
        assert [c["epoch"] for c in t.user_attrs["curve.0"]] == [1]
        assert t.user_attrs["runs"][0]["state"] == "complete"
    assert summary.best_value == min(t.value for t in study.trials)

    frame = analysis.load(spec_obj, url)
    assert len(frame) == 3 and (frame["state"] == "complete").all() and frame["test_error"].between(0, 1).all()
    long = analysis.curves(spec_obj, url)
    assert set(long["trial"]) == {0, 1, 2} and {"val_error", "train_loss", "lr"} <= set(long["metric"])

    # Figures and the report read a Ray sweep as they read an Optuna one.
    from analysis import figures
    from analysis.report import report
    drawn = {kind: figures.plot(kind, frame) for kind in figures.kinds_for(frame)}
    assert {"lr", "curves", "history"} <= set(drawn) and all(fig.data for fig in drawn.values())
    page, count = report(spec_obj, url)
    assert count == len(drawn) and "on ray" in page

    # The same spec on the Optuna engine gives the same frame layout.
    optuna_spec, optuna_url, _ = run(write_spec, tmp_path, spec, engine="optuna")
    reference = analysis.load(optuna_spec, optuna_url)
    assert set(frame.columns) == set(reference.columns) and list(frame.columns) == list(reference.columns)
    assert set(long.columns) == set(analysis.curves(optuna_spec, optuna_url).columns)
    assert set(long["metric"]) == set(analysis.curves(optuna_spec, optuna_url)["metric"])

    # Budget reached: running again adds nothing (and starts no Ray experiment).
    _, _, again = run(write_spec, tmp_path, spec)
    assert again.finished == 3 and len(optuna.load_study(study_name="tiny", storage=url).trials) == 3


def test_a_diverging_config_is_recorded_as_failed_and_the_sweep_goes_on(write_spec, tmp_path):
    spec = tiny_spec(sampler={"name": "grid"}, space={"optim.lr": {"grid": [1.0e8, 0.05]}})
    del spec["budget"]
    spec_obj, url, summary = run(write_spec, tmp_path, spec)
    assert summary.finished == 2 and not summary.interrupted
    frame = analysis.load(spec_obj, url).set_index("optim.lr")
    assert frame.loc[1.0e8, "state"] == "failed"
    assert frame.loc[1.0e8, "error"].startswith("diverged at epoch 1, step")
    assert frame.loc[0.05, "state"] == "complete"
    study = optuna.load_study(study_name="tiny", storage=url)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["error"].startswith("diverged at epoch 1, step")
    assert "failed 1" in analysis.status(spec_obj, url)


@pytest.mark.slow
def test_a_grown_budget_runs_a_further_experiment_that_continues_the_grid(write_spec, tmp_path):
    spec = tiny_spec(sampler={"name": "grid"}, space={"optim.lr": {"grid": [0.05, 0.1]}})
    del spec["budget"]
    _, url, first = run(write_spec, tmp_path, spec)
    assert first.finished == 2
    _, _, grown = run(write_spec, tmp_path, {**spec, "budget": {"trials": 3}})
    assert grown.finished == 3 and not grown.interrupted
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.user_attrs["ray_experiment"] for t in trials] == ["tiny", "tiny", "tiny-2"]
    assert sorted(t.params["optim.lr"] for t in trials) == [0.05, 0.05, 0.1]  # the next cycle starts


@pytest.mark.slow
def test_asha_stops_a_config_that_cannot_learn(write_spec, tmp_path):
    spec = tiny_spec(sampler={"name": "grid"}, pruner={"name": "asha", "warmup_epochs": 1},
                     space={"optim.lr": {"grid": [0.1, 1.0e-9]}})
    del spec["budget"]
    spec["base"]["train"]["epochs"] = 4
    spec["base"]["data"]["subset"] = 1024
    spec_obj, url, summary = run(write_spec, tmp_path, spec)
    assert summary.finished == 2
    frame = analysis.load(spec_obj, url).set_index("optim.lr")
    assert frame.loc[0.1, "state"] == "complete" and frame.loc[0.1, "epochs_done"] == 4
    assert frame.loc[1.0e-9, "state"] == "pruned" and frame.loc[1.0e-9, "epochs_done"] < 4
    study = optuna.load_study(study_name="tiny", storage=url)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len(pruned) == 1 and pruned[0].params["optim.lr"] == 1.0e-9
    assert pruned[0].last_step == len(pruned[0].user_attrs["curve.0"]) < 4


def test_pbt_clones_the_best_trials_and_perturbs_the_continuous_parameters_within_their_bounds(write_spec, tmp_path):
    low, high = 1.0e-4, 0.5
    spec = tiny_spec(budget={"trials": 4}, sampler={"name": "random", "seed": 3},
                     pruner={"name": "pbt", "warmup_epochs": 1, "interval_epochs": 1, "quantile": 0.5},
                     space={"optim.lr": {"loguniform": [low, high]}, "train.batch_size": {"choice": [32, 64]}})
    spec["base"]["train"]["epochs"] = 4
    spec_obj, url, summary = run(write_spec, tmp_path, spec, workers=2)
    assert summary.finished == 4 and not summary.interrupted
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    for t in trials:
        assert low <= t.params["optim.lr"] <= high and t.params["train.batch_size"] in (32, 64)
        assert t.user_attrs["config"]["optim"]["lr"] == t.params["optim.lr"]
        assert [c["epoch"] for c in t.user_attrs["curve.0"]] == [1, 2, 3, 4]  # a clone continues its donor's curve
    explored = [t for t in trials if "pbt_history" in t.user_attrs]
    assert explored, "PBT exploited no trial"
    for t in explored:
        history = t.user_attrs["pbt_history"]
        assert history[0]["epoch"] == 0 and any(h["epoch"] > 0 for h in history)
        restarts = [h for h in history if h["epoch"] > 0]
        assert restarts[-1]["params"]["optim.lr"] == pytest.approx(t.params["optim.lr"])
        assert all(low <= h["params"]["optim.lr"] <= high for h in history)
        assert t.params["train.batch_size"] in (32, 64)  # discrete parameters are cloned, not perturbed


def test_pbt_is_refused_where_it_cannot_run(write_spec, tmp_path):
    pbt = {"name": "pbt"}
    with pytest.raises(SpecError, match=r"optuna\.yaml:\d+ pruner\.name: pbt runs on the Ray engine only"):
        run(write_spec, tmp_path, tiny_spec(pruner=pbt), engine="optuna")
    with pytest.raises(SpecError, match="this space has none"):
        run(write_spec, tmp_path, tiny_spec(pruner=pbt, space={"train.batch_size": {"choice": [32, 64]}}))
    with pytest.raises(SpecError, match=r"ray.yaml:\d+ pruner.quantile: must be in \(0, 0.5\]"):
        run(write_spec, tmp_path, tiny_spec(pruner={**pbt, "quantile": 0.7}))
    assert not list(tmp_path.glob("*/*.db"))  # refused before anything was stored


def _finished(db) -> list[tuple[str, str]]:
    """(state, ray trial id) of every trial in the study."""
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT t.state, a.value_json FROM trials t JOIN trial_user_attributes a "
                               "ON a.trial_id = t.trial_id AND a.key = 'ray_trial_id'").fetchall()
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_a_killed_driver_resumes_without_losing_or_repeating_trials(write_spec, tmp_path):
    grid = [0.01, 0.02, 0.03]
    spec = tiny_spec(sampler={"name": "grid"}, space={"optim.lr": {"grid": grid}})
    del spec["budget"]
    spec["base"]["train"]["epochs"] = 6  # a few seconds a trial, so the kill lands mid-trial
    spec["base"]["data"]["subset"] = 1024
    path = write_spec(spec)
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(path), "--engine", "ray", "--workers", "1", "--dir", str(runs),
           "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user gets
    db = runs / "tiny.db"
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        assert wait_for(lambda: db.exists() and len(_finished(db)) >= 1), "no trial finished"
        time.sleep(1.5)  # into the second trial's epochs
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        before = _finished(db)
        assert 1 <= len(before) < 3
        started = {p.name.removeprefix("trial_") for p in (runs / "ray" / "tiny").glob("trial_*")}
        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "3/3 trials finished" in again.stdout
    finally:
        try:  # what the killed driver's Ray left behind (its agents), by the group this test started
            os.killpg(first.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    ids = [t.user_attrs["ray_trial_id"] for t in study.trials]
    assert len(set(ids)) == 3 and set(before) <= {("COMPLETE", f'"{i}"') for i in ids}
    assert sorted(t.params["optim.lr"] for t in study.trials) == grid  # every grid point once
    # The trial in flight at the kill was resumed (same Ray trial), its curve unbroken.
    assert len(started & set(ids)) >= 2
    for t in study.trials:
        assert [c["epoch"] for c in t.user_attrs["curve.0"]] == list(range(1, 7))
    frame = analysis.load("tiny", directory=runs)
    assert len(frame) == 3 and (frame["state"] == "complete").all()
    assert not list((runs / "ray" / "tiny").glob("trial_*/checkpoint_*"))  # dropped once written


@pytest.mark.slow
def test_a_driver_killed_at_a_random_moment_resumes_without_losing_repeating_or_overshooting(tmp_path):
    from benchmarks import chaos_ray
    report = chaos_ray.run(kills=1, workdir=tmp_path)
    assert report["returncode"] == 0, report.get("stderr_tail")
    assert report["kills_landed"] == 1 and report["finished"] == report["budget"]
    zeros = ("lost", "repeated", "running", "overshoot", "broken_curves", "leftover_ray_processes")
    assert {k: report[k] for k in zeros} == dict.fromkeys(zeros, 0)
