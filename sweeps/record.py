"""The stored record of a sweep: what every engine writes into the Optuna study and analysis reads.

This module is the record's one home: each user attr,
study attr and run-row key is named here once, with the small rules that
build or read them (a curve's merge, the row of a complete or partial run,
the text of a bug, which trials count against the budget). Torch-free and
Optuna-free: `import analysis` reads results through it without the trainable.

Layout (schema 1; schema 0 is the same layout without the "schema" study
attr, written by releases before it):

study attrs   "fingerprint", "engine", "spec", "reference", "schema"
trial attrs   "config" (the trial config), "versions", "worker",
              "runs" (one row per seed, RUN_KEYS plus seed/state/error),
              "curve.{i}" (seed i's per-epoch metrics, each point with "epoch"),
              "error" (why it failed; absent on a trial that was interrupted),
              "retry_of"/"retried" (a retry and the trial it replaces),
              "fixed.{key}"/"derived.{key}" (values that are no Optuna param),
              Ray only: "ray_trial_id", "ray_experiment", "pbt_history"
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from trainable import metrics

SCHEMA_VERSION = 1

# ---- study attrs ------------------------------------------------------------
FINGERPRINT, ENGINE, SPEC, REFERENCE, SCHEMA = "fingerprint", "engine", "spec", "reference", "schema"

# ---- trial attrs ------------------------------------------------------------
CONFIG, VERSIONS, WORKER, RUNS, ERROR = "config", "versions", "worker", "runs", "error"
RETRY_OF, RETRIED = "retry_of", "retried"
RAY_TRIAL_ID, RAY_EXPERIMENT, PBT_HISTORY = "ray_trial_id", "ray_experiment", "pbt_history"
PBT_PARAMS = "params"   # a pbt_history step: {"epoch": the epoch it (re)started from, "params": its params}
CURVE = "curve."
FIXED, DERIVED = "fixed.", "derived."   # prefixes of values stored as attrs, not as Optuna params

# ---- a run row (one seed of a trial) and a curve point ----------------------
SEED, STATE, EPOCH = "seed", "state", "epoch"
COMPLETE, PRUNED, FAILED, RUNNING = "complete", "pruned", "failed", "running"
RUN_KEYS = (metrics.VAL_ERROR, metrics.BEST_VAL_ERROR, metrics.TEST_ERROR, metrics.EPOCHS_DONE,
            metrics.DURATION_S, metrics.IMAGES_PER_S, metrics.TRAIN_LOSS, metrics.TRAIN_ERROR, metrics.VAL_LOSS,
            metrics.WORLD_SIZE)
INTERRUPTED = "interrupted"   # a failed run's reason when none was recorded
DISK_FULL = "disk full"       # the start of the reason of a trial stopped by a full disk (Training.save)


def curve_key(seed_index: int) -> str:
    return f"{CURVE}{seed_index}"


def curves(attrs: Mapping[str, Any]) -> dict[int, list[dict]]:
    """Seed index -> curve, from a trial's user attrs."""
    return {int(k[len(CURVE):]): v for k, v in attrs.items() if k.startswith(CURVE)}


def curve_attrs(attrs: Mapping[str, Any]) -> dict[str, list[dict]]:
    return {k: v for k, v in attrs.items() if k.startswith(CURVE)}


def value_attr(prefix: str, key: str) -> str:
    """The attr of a fixed (FIXED) or derived (DERIVED) value of config key `key`."""
    return prefix + key


def value_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed and derived value attrs of a trial, by attr name."""
    return {k: v for k, v in attrs.items() if k.startswith((FIXED, DERIVED))}


def recorded_values(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed and derived values of a trial by config key."""
    return {k.partition(".")[2]: v for k, v in value_attrs(attrs).items()}


def base_seed(attrs: Mapping[str, Any]) -> int:
    """The seed of a trial's first run (seed i runs with base_seed + i)."""
    return int(attrs.get(CONFIG, {}).get("train", {}).get("seed", 0))


def pbt_step(epoch: int, params: Mapping[str, Any]) -> dict:
    """One step of a trial's "pbt_history": the params it (re)started with at `epoch`."""
    return {EPOCH: epoch, PBT_PARAMS: dict(params)}


def schema(study_attrs: Mapping[str, Any]) -> int:
    """The record layout a study was written with; 0 for studies of releases before the attr."""
    return int(study_attrs.get(SCHEMA, 0))


def merge_curve(curve: Sequence[dict], epoch: int, point: Mapping[str, float]) -> list[dict]:
    """`curve` with `point` as epoch `epoch`: a resumed run that repeats an epoch replaces it and what followed."""
    return [c for c in curve if c[EPOCH] < epoch] + [{EPOCH: epoch, **point}]


def complete_row(seed: int, result: Mapping[str, Any]) -> dict:
    """The row of a run that trained to the end; `result` is its final metrics."""
    return {SEED: seed, **{k: result[k] for k in RUN_KEYS}, STATE: COMPLETE, ERROR: None}


def partial_row(seed: int, history: Sequence[Mapping[str, Any]], state: str, error: str | None = None) -> dict:
    """The row of a run that stopped early (pruned, failed, interrupted, still running) from
    its per-epoch metrics (a history or a curve): the last epoch's values and the best val_error."""
    last = history[-1] if history else {}
    return {SEED: seed, **{k: last[k] for k in RUN_KEYS if k in last}, STATE: state,
            metrics.EPOCHS_DONE: len(history),
            metrics.BEST_VAL_ERROR: min((h[metrics.VAL_ERROR] for h in history), default=None), ERROR: error}


def bug_text(error: BaseException) -> str:
    """A failure that is not a TrialError (a bug), recorded so a resume does not retry it forever."""
    return f"{type(error).__name__}: {error}"


def worker_id(node: str | None = None) -> str:
    """Who runs a trial: the "worker" attr (host:pid, the GPU it was pinned to, and the Ray node
    where there is one)."""
    from .gpus import VISIBLE
    gpu = os.environ.get(VISIBLE)
    return f"{socket.gethostname()}:{os.getpid()}" + (f" gpu {gpu}" if gpu else "") + (f" node {node}" if node else "")


def _state(t) -> str:
    return t.state.name  # an optuna TrialState, by name: no optuna import here


def is_interrupted(t) -> bool:
    """Failed without a recorded reason (stopped by Ctrl-C, a kill or a lost heartbeat), or stopped by
    a full disk (not the config's fault): it is retried, from its last checkpoint, when the sweep resumes."""
    return _state(t) == "FAIL" and (ERROR not in t.user_attrs or stopped_by_full_disk(t))


def stopped_by_full_disk(t) -> bool:
    return _state(t) == "FAIL" and str(t.user_attrs.get(ERROR, "")).startswith(DISK_FULL)


def counts_toward_budget(t) -> bool:
    """Complete, pruned, or failed with a recorded reason (other than a full disk)."""
    return _state(t) in ("COMPLETE", "PRUNED") or failed_with_reason(t)


def failed_with_reason(t) -> bool:
    return _state(t) == "FAIL" and ERROR in t.user_attrs and not stopped_by_full_disk(t)
