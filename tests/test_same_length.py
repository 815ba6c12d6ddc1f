"""Pruners compare a trial only with trials of its training length, on both engines."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from conftest import tiny_spec
from search_spaces import load_spec
from sweeps.optuna_work import pruner


def spec_with(write_spec, pruner_block: dict, space: dict):
    return load_spec(write_spec(tiny_spec(pruner=pruner_block, space=space)))


def config(epochs: int) -> dict:
    return {"train": {"epochs": epochs}}


def test_optuna_median_pruner_compares_only_trials_of_the_same_length(write_spec, tmp_path):
    spec = spec_with(write_spec, {"name": "median", "startup_trials": 1, "warmup_epochs": 0},
                     {"train.epochs": {"choice": [2, 8]}})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/p.db", study_name="p", pruner=pruner(spec))
    # Short runs anneal fast and are good at epoch 1; long ones are still poor there.
    for epochs, value in ((2, 0.3), (2, 0.3), (2, 0.3), (8, 0.9), (8, 0.9), (8, 0.9)):
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=value,
                                                  intermediate_values={1: value}, user_attrs={"config": config(epochs)},
                                                  distributions={}, params={}))

    def pruned(epochs: int, value: float) -> bool:
        trial = study.ask()
        trial.set_user_attr("config", config(epochs))
        trial.report(value, 1)
        return trial.should_prune()

    # The median over all six trials would be 0.6, pruning neither.
    assert pruned(2, 0.5)        # worse than the other 2-epoch runs
    assert not pruned(8, 0.5)    # better than the other 8-epoch runs


def test_a_space_with_one_length_keeps_the_plain_pruner(write_spec):
    spec = spec_with(write_spec, {"name": "median"}, {"optim.lr": {"loguniform": [0.01, 0.1]}})
    assert isinstance(pruner(spec), optuna.pruners.MedianPruner)


def test_ray_asha_compares_only_trials_of_the_same_length(write_spec):
    pytest.importorskip("ray")
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from sweeps.ray_engine import _Epochs
    from sweeps.ray_schedulers import SameLengthScheduler, scheduler

    spec = spec_with(write_spec, {"name": "asha", "warmup_epochs": 1}, {"train.epochs": {"choice": [2, 8]}})
    sched = scheduler(spec, _Epochs(spec))
    assert isinstance(sched, SameLengthScheduler)
    short, long = (Trial("fake", config={"train.epochs": e}, stub=True) for e in (2, 8))
    for t in (short, long):
        sched.on_trial_add(None, t)
    # One rung for every trial would stop the long run: 0.9 is worse than the short run's 0.3.
    assert sched.on_trial_result(None, short, {"epoch": 1, "val_error": 0.3}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, long, {"epoch": 1, "val_error": 0.9}) == TrialScheduler.CONTINUE
    worse_long = Trial("fake", config={"train.epochs": 8}, stub=True)
    sched.on_trial_add(None, worse_long)
    assert sched.on_trial_result(None, worse_long, {"epoch": 1, "val_error": 0.95}) == TrialScheduler.STOP
    assert sorted(sched.by_length) == [2, 8]
