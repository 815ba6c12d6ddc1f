"""Each private third-party API in sweeps/compat.py and trainable/compat.py still behaves as relied on (one test per use)."""
from __future__ import annotations

import os

import optuna
import pytest

from sweeps import compat


def test_enqueued_params_are_read_from_the_waiting_trial():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.5})
    waiting = study.get_trials(deepcopy=False)[0]
    assert compat.was_enqueued(waiting) and compat.enqueued_params(waiting) == {"x": 1.5}
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    assert study.trials[0].params == {"x": 1.5}
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    assert not compat.was_enqueued(study.trials[1]) and compat.enqueued_params(study.trials[1]) == {}


def test_only_waiting_trials_runs_a_waiting_trial_and_never_creates_one():
    assert hasattr(optuna.Study, "_pop_waiting_trial_id")  # else the guard silently does nothing
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    with compat.only_waiting_trials(study):
        study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
        with pytest.raises(compat.NothingWaiting):
            study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert "_pop_waiting_trial_id" not in vars(study)  # the patch is undone


def test_study_storage_is_the_storage_the_study_was_made_with(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage = compat.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    view = optuna.Study(study_name="s", storage=storage)  # what same_length builds over a filtered storage
    assert [t.params for t in view.trials] == [t.params for t in study.trials]


def _space(trial) -> None:
    trial.suggest_float("x", 0, 1)


def test_searcher_has_trial_knows_the_trials_optuna_search_suggested():
    pytest.importorskip("ray")
    import warnings

    from ray.tune.search.optuna import OptunaSearch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = OptunaSearch(space=_space, metric="loss", mode="min")
    assert not compat.searcher_has_trial(searcher, "a")
    assert "x" in searcher.suggest("a")
    assert compat.searcher_has_trial(searcher, "a") and not compat.searcher_has_trial(searcher, "b")


def test_ray_single_machine_switches_ray_s_cluster_constant_and_puts_it_back():
    pytest.importorskip("ray")
    from ray._private import ray_constants
    before = ray_constants.ENABLE_RAY_CLUSTER
    assert isinstance(before, bool)  # Ray still has the switch (its loopback test is in test_ray_security.py)
    with compat.ray_single_machine():
        assert ray_constants.ENABLE_RAY_CLUSTER is False and os.environ[compat.SINGLE_MACHINE_ENV] == "0"
    assert ray_constants.ENABLE_RAY_CLUSTER is before and compat.SINGLE_MACHINE_ENV not in os.environ


def test_rdb_storage_reaches_the_sqlalchemy_engine(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    assert compat.rdb_storage(study).engine.dialect.name == "sqlite"


def test_running_without_heartbeat_lists_a_running_trial_until_it_beats(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    assert compat.running_without_heartbeat(study) == [trial._trial_id]
    storage.record_heartbeat(trial._trial_id)
    assert compat.running_without_heartbeat(study) == []


# ---- torch and torchvision (trainable/compat.py) -----------------------------

def test_an_optimizer_marked_scaler_aware_gets_the_scalers_verdict_as_tensors():
    import torch

    from trainable import compat

    seen = []

    class Recording(torch.optim.Optimizer):
        def step(self, closure=None):
            seen.append(compat.scaler_verdict(self))
    setattr(Recording, compat.SCALER_AWARE, True)
    w = torch.nn.Parameter(torch.ones(3))
    opt, scaler = Recording([w], {}), torch.amp.GradScaler("cpu")
    scaler.scale((w * float("inf")).sum()).backward()
    scaler.step(opt)  # not unscaled: the scale comes along
    found, scale = seen[0]
    assert torch.is_tensor(found) and float(found) > 0 and float(scale) == scaler.get_scale()
    assert compat.scaler_verdict(opt) == (None, None)  # only during the step


def test_torchvision_policies_expose_the_tables_and_the_operation_relied_on():
    import torch
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    from trainable import compat

    for transform in (v2.AutoAugment(), v2.RandAugment(), v2.TrivialAugmentWide()):
        space = compat.policy_ops(transform)
        assert "Rotate" in space and all(callable(fn) and isinstance(signed, bool) for fn, signed in space.values())
    sub = compat.autoaugment_sub_policies(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    assert len(sub) == 25 and all(len(p) == 2 and len(p[0]) == 3 for p in sub)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    rotated = compat.apply_policy_op(v2.RandAugment(), img, "Rotate", 30.0)
    assert torch.equal(rotated, TF.rotate(img, 30.0, interpolation=v2.InterpolationMode.NEAREST, fill=None))
