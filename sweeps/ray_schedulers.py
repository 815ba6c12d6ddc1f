"""The spec's pruner as a Ray Tune scheduler, rungs counted in epochs.

Where the space varies `train.epochs`, trials of each training length get a
scheduler of their own (`SameLengthScheduler`): ASHA, HyperBand and the
median rule then compare a trial only with trials of its length, as the
Optuna engine's pruners do (see same_length.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                 TrialScheduler)

from search_spaces import SweepSpec
from trainable import metrics
from trainable.registry import Registry

from . import ray_pbt
from .same_length import per_length

SCHEDULERS: Registry = Registry("Ray scheduler")  # pruner.name -> builder(spec, epochs of the trials it sees)
SCHEDULERS.register("none")(lambda spec, epochs: FIFOScheduler())
SCHEDULERS.register("median")(lambda spec, epochs: MedianStoppingRule(
    time_attr="epoch", metric=spec.objective.metric, mode=spec.objective.mode,
    grace_period=max(spec.pruner.warmup_epochs, 1), min_samples_required=max(spec.pruner.startup_trials, 1)))
# stop_last_trials=False: a trial that reaches max_t ends by itself, with its final result.
SCHEDULERS.register("asha")(lambda spec, epochs: ASHAScheduler(
    time_attr="epoch", metric=spec.objective.metric, mode=spec.objective.mode, max_t=epochs,
    grace_period=min(max(spec.pruner.warmup_epochs, 1), epochs), stop_last_trials=False))
SCHEDULERS.register("hyperband")(lambda spec, epochs: HyperBandScheduler(
    time_attr="epoch", metric=spec.objective.metric, mode=spec.objective.mode, max_t=epochs,
    stop_last_trials=False))
SCHEDULERS.register("pbt")(lambda spec, epochs: ray_pbt.scheduler(spec))


def check(spec: SweepSpec) -> None:
    """What the Ray engine refuses in a spec's pruner."""
    if spec.pruner.name not in SCHEDULERS:
        raise spec.error(("pruner", "name"), SCHEDULERS.unknown(spec.pruner.name), "use asha")
    if spec.pruner.name == "pbt":
        if spec.objective.metric not in metrics.EPOCH:
            raise spec.error(("objective", "metric"), f"pbt compares trials every epoch, and "
                             f"{spec.objective.metric} is measured once at the end",
                             f"use one of {', '.join(metrics.PER_EPOCH_OBJECTIVES)}")
        ray_pbt.check(spec)


def scheduler(spec: SweepSpec, epochs_of: Callable[[dict], int]) -> TrialScheduler:
    """The spec's scheduler; `epochs_of(config)` is a Ray trial's training length."""
    if spec.objective.metric not in metrics.EPOCH:  # like the Optuna engine: no per-epoch metric, no pruning
        return FIFOScheduler()
    if per_length(spec):
        return SameLengthScheduler(spec, epochs_of)
    return SCHEDULERS.get(spec.pruner.name)(spec, spec.base.train.epochs)


class SameLengthScheduler(TrialScheduler):
    """One scheduler per training length; each trial's events go to its length's scheduler."""

    def __init__(self, spec: SweepSpec, epochs_of: Callable[[dict], int]):
        super().__init__()
        self.spec, self.epochs_of = spec, epochs_of
        self.by_length: dict[int, TrialScheduler] = {}
        self._metric, self._mode = spec.objective.metric, spec.objective.mode

    def _of(self, trial) -> TrialScheduler:
        epochs = self.epochs_of(trial.config)
        if epochs not in self.by_length:
            self.by_length[epochs] = SCHEDULERS.get(self.spec.pruner.name)(self.spec, epochs)
        return self.by_length[epochs]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each scheduler has the spec's metric and mode already

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        for inner in list(self.by_length.values()):
            trial = inner.choose_trial_to_run(tune_controller)
            if trial is not None:
                return trial
        return None

    def debug_string(self) -> str:
        return "; ".join(f"{epochs} epochs: {s.debug_string()}" for epochs, s in self.by_length.items())
