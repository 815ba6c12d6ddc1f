"""Early stopping that compares only trials of the same training length.

At epoch 5 a 10-epoch cosine run has annealed its lr halfway and a 40-epoch
run has barely started, so their errors say nothing about each other. When a
space varies `train.epochs`, each Optuna pruner sees a view of the study
holding only the trials of the pruned trial's length (a storage proxy, so the
view also holds for Hyperband's per-bracket studies), with one pruner per
length (Hyperband's brackets depend on the length).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from search_spaces import SweepSpec

from . import compat, record

COMPARES_NOTHING = ("none", "pbt")  # pruner names that never compare trials at a rung


def varies_epochs(spec: SweepSpec) -> bool:
    return any(p.key == "train.epochs" for p in spec.space) or any(
        "train.epochs" in keys for keys in spec.variants.values())


def per_length(spec: SweepSpec) -> bool:
    """Whether the spec's pruner (or Ray scheduler) needs one instance per training length."""
    return spec.pruner.name not in COMPARES_NOTHING and varies_epochs(spec)


def epochs_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """A trial's training length, from the config it recorded when it started."""
    config = trial.user_attrs.get(record.CONFIG)
    return config["train"]["epochs"] if config else None


class _SameLengthStorage:
    """The study's storage, listing only the trials trained for `epochs` epochs."""

    def __init__(self, storage: optuna.storages.BaseStorage, epochs: int | None):
        self._storage, self._epochs = storage, epochs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None, **kwargs):
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states, **kwargs)
        return [t for t in trials if epochs_of(t) == self._epochs]


class SameLengthPruner(optuna.pruners.BasePruner):
    """One pruner per training length, each judging its trial among trials of that length."""

    def __init__(self, build: Callable[[int], optuna.pruners.BasePruner]):
        self.build, self.pruners = build, {}

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epochs = epochs_of(trial)
        if epochs is None:
            return False
        pruner = self.pruners.setdefault(epochs, self.build(epochs))
        storage = _SameLengthStorage(compat.study_storage(study), epochs)
        view = optuna.Study(study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=pruner)
        return pruner.prune(view, trial)
