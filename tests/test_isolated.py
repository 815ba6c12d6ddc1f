"""Trials in a process of their own (resources.isolate): same results, same outcomes, a clean start."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import optuna
import pytest

from trainable import metrics

import sweeps
from conftest import tiny_spec
from search_spaces import load_spec
from sweeps.isolated import run as run_trial
from sweeps.isolated import wanted
from trainable import TrialError
from trainable.rules import Context


def grid_sweep(write_spec, tmp_path, isolate: str):
    spec = load_spec(write_spec(tiny_spec(
        f"iso_{isolate}", sampler={"name": "grid"}, resources={"isolate": isolate},
        pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 0},
        space={"optim.lr": {"grid": [0.05, 1.0e8, 1.0e-9]}}, budget={"trials": 3}), f"{isolate}.yaml"))
    url = sweeps.resolve(spec.name, None, tmp_path, create=True)
    sweeps.run(spec, url, quiet=True, run_dir=str(tmp_path))
    return {t.params["optim.lr"]: t for t in optuna.load_study(study_name=spec.name, storage=url).trials}


@pytest.mark.slow
def test_an_isolated_sweep_records_what_an_in_process_sweep_records(write_spec, tmp_path):
    isolated = grid_sweep(write_spec, tmp_path, "always")
    in_process = grid_sweep(write_spec, tmp_path, "never")
    good, bad, flat = isolated[0.05], isolated[1.0e8], isolated[1.0e-9]
    assert good.state.name == "COMPLETE" and good.value == in_process[0.05].value  # CPU training is deterministic
    untimed = [{k: v for k, v in c.items() if k not in metrics.TIMED}
               for c in (good.user_attrs["curve.0"][0], in_process[0.05].user_attrs["curve.0"][0])]
    assert untimed[0] == untimed[1]
    assert good.user_attrs["runs"][0]["state"] == "complete"
    assert bad.state.name == "FAIL" and bad.user_attrs["error"].startswith("diverged at epoch 1")
    assert bad.user_attrs["error"] == in_process[1.0e8].user_attrs["error"]
    assert flat.state.name == in_process[1.0e-9].state.name
    if flat.state.name == "PRUNED":
        assert flat.user_attrs["runs"][0]["state"] == "pruned"


def test_a_trial_whose_process_dies_fails_with_that_reason(write_spec):
    spec = load_spec(write_spec(tiny_spec(resources={"isolate": "always"})))

    def kill_the_trial(epoch, per_seed):
        for child in mp.active_children():
            if child.name == "sweep-trial":
                os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(TrialError, match=r"the trial's process died \(exit code -9\)"):
        run_trial(spec, {"optim.lr": 0.05}, kill_the_trial, lambda rows: None, isolate=True)


@pytest.mark.parametrize("resources, device, isolate", [
    ({"isolate": "always"}, "cpu", True),
    ({"isolate": "never", "gpu": 1}, "cuda", False),
    ({"gpu": 0.5}, "auto", True),           # a GPU trial: its own process
    ({}, "cpu", False),                     # auto on a CPU: in the engine's process
])
def test_which_trials_get_a_process_of_their_own(write_spec, resources, device, isolate):
    base = tiny_spec()["base"]
    base["train"]["device"] = device
    # as on a machine with a GPU, where the trials could run
    spec = load_spec(write_spec(tiny_spec(resources=resources, base=base)), context=Context(device="cuda"))
    assert wanted(spec, {}) is isolate
