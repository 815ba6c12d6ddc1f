"""One sampled config run over its seeds, the same for every engine.

Engines pass hooks: `on_epoch(seed_index, epoch, metrics)` (recording and
pruning; may raise) and `on_run(runs)` after each seed ends (complete, pruned
or failed with a reason), with every run so far.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import torch

from search_spaces import SweepSpec
from trainable import TrialError, train

RUN_KEYS = ("val_error", "best_val_error", "val_loss", "train_loss", "train_error", "test_error",
            "epochs_done", "duration_s", "images_per_s")


def versions() -> dict[str, str]:
    def v(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"
    return {"recipe_sweep": v("recipe-sweep"), "torch": torch.__version__, "optuna": v("optuna")}


def run_seeds(spec: SweepSpec, values: Mapping[str, Any],
              on_epoch: Callable[[int, int, Mapping[str, float]], None],
              on_run: Callable[[list[dict]], None], pruned: tuple[type[BaseException], ...] = ()) -> float:
    """Train `values` once per seed; the objective is the median over seeds.

    `pruned` names the exceptions by which the engine's on_epoch stops a trial.
    """
    runs: list[dict] = []
    metric = spec.objective.metric
    for i in range(spec.seeds):
        config = spec.config(dict(values), i)
        curve: list[Mapping[str, float]] = []

        def report(epoch, metrics, _i=i, _curve=curve):
            _curve.append(metrics)
            on_epoch(_i, epoch, metrics)

        row = {"seed": config.train.seed}
        try:
            result = train(config, report)
        except BaseException as e:
            last = dict(curve[-1]) if curve else {}
            state = "pruned" if isinstance(e, pruned) else "failed"
            row.update({k: last.get(k) for k in RUN_KEYS if k in last}, state=state, epochs_done=len(curve),
                       best_val_error=min((c["val_error"] for c in curve), default=None),
                       error=str(e) if isinstance(e, TrialError) else None)
            if state == "pruned" or isinstance(e, TrialError):
                runs.append(row)
                on_run(runs)
            raise
        row.update({k: result[k] for k in RUN_KEYS}, state="complete", error=None)
        runs.append(row)
        on_run(runs)
    return statistics.median(r[metric] for r in runs)
