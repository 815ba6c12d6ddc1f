"""Every use of a third-party private API, each behind one small function that says why.

Optuna and Ray offer no public way to do these things; pyproject.toml pins both
below their next major release, and tests/test_compat.py fails when one of
these stops behaving as relied on here, so a new release breaks one test
instead of a sweep.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

ENQUEUED = "fixed_params"   # optuna: the system attr in which enqueue_trial stores a WAITING trial's params


def enqueued_params(trial) -> dict[str, Any]:
    """The params a trial was enqueued with (`study.enqueue_trial`), {} if none.

    Optuna keeps them in a system attr until the trial samples them; a trial
    interrupted before sampling has no params, and its retry (or the grid
    point it holds) is read from here.
    """
    return dict(trial.system_attrs.get(ENQUEUED) or {})


def was_enqueued(trial) -> bool:
    return ENQUEUED in trial.system_attrs


class NothingWaiting(Exception):
    """Another process popped the last WAITING trial first."""


@contextlib.contextmanager
def only_waiting_trials(study):
    """Within it, study.optimize runs a WAITING trial or raises NothingWaiting; it never creates one.

    Optuna's ask() pops a WAITING trial atomically (`Study._pop_waiting_trial_id`)
    but creates a new trial when none is left; when every counted trial is
    enqueued ahead, a process that lost the race for the last one must not add
    one beyond the budget. An Optuna without the method: the budget check
    before each trial still applies.
    """
    pop = getattr(study, "_pop_waiting_trial_id", None)
    if pop is None:
        yield
        return

    def pop_or_stop():
        trial_id = pop()
        if trial_id is None:
            raise NothingWaiting
        return trial_id

    study._pop_waiting_trial_id = pop_or_stop
    try:
        yield
    finally:
        del study._pop_waiting_trial_id


def study_storage(study):
    """The storage behind an optuna.Study (`Study._storage`), to build a filtered view of it.

    A pruner that compares only trials of one training length needs a Study
    over the same storage listing fewer trials; Optuna has no public accessor.
    """
    return study._storage


def searcher_has_trial(searcher, trial_id: str) -> bool:
    """Whether Ray's OptunaSearch suggested `trial_id` (`OptunaSearch._ot_trials`).

    A trial it did not suggest (a restored experiment's, one stopped while
    pending) must not be told to it, and after the time budget only trials it
    already knows may still get their config.
    """
    return trial_id in searcher._ot_trials


def rdb_storage(study):
    """The RDBStorage under a study (Optuna wraps it in a private `_CachedStorage`, `._backend`),
    for its SQLAlchemy engine: a lock, and a query Optuna has no method for."""
    storage = study_storage(study)
    return getattr(storage, "_backend", storage)


def running_without_heartbeat(study) -> list[int]:
    """Ids of the study's RUNNING trials that have no heartbeat row (Optuna's models and `Study._study_id`: no public query).

    Optuna's stale-trial check skips a trial without a heartbeat, so a process killed
    between popping a trial and its first beat would leave it RUNNING forever.
    """
    import sqlalchemy.orm
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    study_id = study._study_id
    with sqlalchemy.orm.Session(rdb_storage(study).engine) as session:
        rows = (session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING,
                        ~models.TrialModel.heartbeats.any())
                .all())
    return [r[0] for r in rows]


SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray: 0 keeps a node on 127.0.0.1


@contextlib.contextmanager
def ray_single_machine():
    """Within it, `ray.init` starts a node whose every server listens on 127.0.0.1.

    On Linux Ray takes the machine's address as the node IP and its servers
    listen on every interface; its single-machine mode (the default on macOS
    and Windows, `ray._private.ray_constants.ENABLE_RAY_CLUSTER` false) uses
    127.0.0.1. Ray reads the switch once, at import: the constant for this
    process, the variable for the processes ray.init starts; both are put
    back after.
    """
    from ray._private import ray_constants

    was, before = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(SINGLE_MACHINE_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[SINGLE_MACHINE_ENV] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was
        if before is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = before
