"""The study layer every engine shares: storage, the study and its fingerprint, budget, retries, summary.

Resume rules: a trial counts against the budget once it is complete, pruned,
or failed with a recorded reason (record.counts_toward_budget). A trial that
failed without one was interrupted (Ctrl-C, kill, power loss; found by
Optuna's heartbeat) and is enqueued again with the same parameters, so grid
points are never repeated and it resumes from its checkpoints.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import sys
import time
import warnings
import zlib
from typing import TYPE_CHECKING

import optuna
import sqlalchemy
from optuna.trial import TrialState

from trainable.config import non_defaults

from . import compat, record
from .base import RunSummary, SweepError
from .sampling import SAMPLERS
from .storage import masked, shown, sqlite_file

if TYPE_CHECKING:
    from search_spaces import SweepSpec

HEARTBEAT_S = 2    # a running trial writes a heartbeat this often ...
GRACE_S = 6        # ... and counts as interrupted when none came for this long
UNBEATEN_S = 20    # a RUNNING trial that never wrote a heartbeat is dead after this long (its process died
                   # between popping it and the first beat); generous for clocks of machines that differ
STORAGE_WAIT_S = 300  # how long a process waits for a storage that stopped answering (a server restart)
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
WIDEN_ENV = "SWEEP_TEST_ENQUEUE_DELAY"  # tests only: seconds between counting the trials and enqueueing


# ---- the storage --------------------------------------------------------------

def _begin_immediate(engine) -> None:
    """SQLite: every transaction takes the write lock when it begins.

    pysqlite reads without a lock and locks only at the first write, so two
    processes could both read a trial as WAITING and both set it RUNNING (or
    both fail the same stale trial). BEGIN IMMEDIATE makes Optuna's
    read-then-write updates atomic across processes, as row locks do in
    PostgreSQL; the wait for the lock is the connection's timeout.
    """
    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # no implicit BEGIN: ours below

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks were added


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeat outlives a storage that stops answering for a while.

    Optuna's heartbeat thread ends at the first failed write, so a server restart
    would leave a live trial without heartbeats: another process would fail it as
    stale and run it again. A failed beat is skipped here; the next one retries.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except STORAGE_ERRORS:
            pass


def stop_if_full(e: BaseException) -> None:
    """A storage error from a full disk (SQLite's file): waiting is no use, stop (SweepError)."""
    why = f"{e} {e.__cause__}"  # Optuna's StorageInternalError says why in its cause
    if "disk is full" in why or "No space left" in why:
        raise SweepError("disk full: the storage cannot be written; fix: free space under --dir (or "
                         "where --storage is), then run the same command again to resume") from None


def patiently(fn, *args, **kwargs):
    """fn(*args, **kwargs), retried while the storage does not answer, for up to STORAGE_WAIT_S."""
    end = time.monotonic() + STORAGE_WAIT_S
    delay, said = 0.5, False
    while True:
        try:
            return fn(*args, **kwargs)
        except STORAGE_ERRORS as e:
            stop_if_full(e)
            if time.monotonic() > end:
                raise SweepError(f"the storage did not answer for {STORAGE_WAIT_S} s "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                                 "fix: start the database server (or check the network), then run the same "
                                 "command again to resume") from None
            if not said:
                print("warning: the storage does not answer; waiting for it (up to "
                      f"{STORAGE_WAIT_S // 60} min)", file=sys.stderr, flush=True)
                said = True
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The sweep's RDB storage, with heartbeats (and the retry of a stale trial)."""
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise SweepError(f"--storage: folder {path.parent} does not exist; fix: create it or use --dir")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = _Storage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                     grace_period=GRACE_S,
                                                     heartbeat_stale_trial_callback=_retry_stale)
            break
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            # Workers starting together on a new database race to create its tables.
            race = ("already exists", "duplicate key", "unique constraint")
            if attempt == 3 or not any(w in f"{e} {e.__cause__}".lower() for w in race):
                raise _cannot_open(url, e) from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as e:  # SQLAlchemy raises many types for a bad URL or server
            raise _cannot_open(url, e) from None
    if storage.engine.name == "sqlite":
        _begin_immediate(storage.engine)
    return storage


def _cannot_open(url: str, e: Exception) -> SweepError:
    text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    path = sqlite_file(url)
    if path is not None and path.is_file() and "DatabaseError" in text:
        fix = (f"{path} is not a readable sweep database (damaged, or another kind of file): restore it "
               "from a copy, or move it aside and run again (the sweep starts over)")
    elif "No module named" in text:
        fix = ("install the database driver: pip install 'psycopg[binary]' for postgresql://, "
               "pip install psycopg2-binary for postgresql+psycopg2://")
    else:
        fix = ("check that the server runs and the URL, or give a SQLAlchemy URL such as "
               "sqlite:///runs/name.db or postgresql://user:PASSWORD@host/db")
    # Neither the URL nor the driver's message may show the password.
    return SweepError(f"--storage: cannot open {shown(url)!r}: {masked(text, url)}; fix: {fix}")


# ---- the study ----------------------------------------------------------------

def fingerprint(spec: SweepSpec) -> str:
    """What makes two runs the same sweep: base config, space, seeds and objective.

    The base counts by the keys that differ from the trial config's defaults (as a
    checkpoint's identity does: `non_defaults`), so a release that adds a config key
    (at a default that changes nothing) still resumes the sweeps made before it, and
    their trials in flight resume from their checkpoints.
    """
    raw = spec.raw
    key = {k: raw.get(k) for k in ("base", "variants", "space", "seeds", "objective")}
    key["base"] = non_defaults(spec.base)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_study(spec: SweepSpec, url: str, engine: str, worker: bool = False) -> tuple[optuna.Study, bool]:
    """(study, whether this call created it): the sweep's study, refusing one made from another spec.

    A `worker` (one of many processes on the storage) draws its own sampler
    seed, so that workers do not all sample the same values, and leaves the
    stored spec alone unless it created the study. `engine` is recorded on a new study.
    """
    storage = open_storage(url)
    direction = "minimize" if spec.objective.mode == "min" else "maximize"
    try:  # created or found atomically: the study name is unique in the storage
        study = optuna.create_study(study_name=spec.name, storage=storage, direction=direction,
                                    sampler=optuna.samplers.RandomSampler())
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler())
        created = False
    attrs = study.user_attrs
    mine = fingerprint(spec)
    if record.FINGERPRINT in attrs and attrs[record.FINGERPRINT] != mine:
        raise SweepError(
            f"{shown(url)} already holds sweep {spec.name!r} made from a different base, space, seeds or objective; "
            f"fix: give this sweep another name (--set name=...), another --dir, or delete the old results")
    if study.direction.name.lower() != direction:
        raise SweepError(f"objective.mode: the stored sweep {spec.name!r} runs in the other direction; "
                         "fix: keep its mode or use another name")
    if record.FINGERPRINT not in attrs:
        study.set_user_attr(record.FINGERPRINT, mine)
        study.set_user_attr(record.SCHEMA, record.SCHEMA_VERSION)
        study.set_user_attr(record.ENGINE, engine)
    if created or not worker:
        study.set_user_attr(record.SPEC, json.loads(json.dumps(spec.raw, default=str)))  # budget may have grown
        # Validated, in fractions: `sweep table NAME` compares with them without the spec file.
        study.set_user_attr(record.REFERENCE,
                            json.loads(json.dumps([r.as_dict() for r in spec.reference], default=str)))
    # Offset the sampler seed by the trials already run, so a resumed random
    # search continues instead of replaying its first samples; workers also
    # by who they are, so that workers started together draw different values.
    seed = spec.sampler.seed + len(study.get_trials(deepcopy=False))
    if worker:
        seed = (seed + zlib.crc32(record.worker_id().encode())) % 2**31
    study.sampler = SAMPLERS.get(spec.sampler.name)(seed)
    return study, created


# ---- the budget ---------------------------------------------------------------

def deadline(spec: SweepSpec) -> float | None:
    """When (time.monotonic) budget.minutes stops new trials from starting; None without it."""
    return time.monotonic() + 60 * spec.budget.minutes if spec.budget.minutes else None


def past(when: float | None) -> bool:
    return when is not None and time.monotonic() > when


def finished(trials) -> int:
    """Trials that count against the budget."""
    return sum(map(record.counts_toward_budget, trials))


def counted(study: optuna.Study) -> set[int]:
    """Numbers of the trials counted so far: what an invocation started from (see summary)."""
    return {t.number for t in study.get_trials(deepcopy=False) if record.counts_toward_budget(t)}


def summary(study: optuna.Study, spec: SweepSpec, interrupted: bool, before: set[int] = frozenset()) -> RunSummary:
    """The sweep's state; `ran` and `failed` count the trials finished since `before` (counted())."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = (min if spec.objective.mode == "min" else max)(done, key=lambda t: t.value) if done else None
    new = [t for t in trials if record.counts_toward_budget(t) and t.number not in before]
    return RunSummary(finished=finished(trials), budget=spec.trials, interrupted=interrupted,
                      best_value=best.value if best else None, best_number=best.number if best else None,
                      ran=len(new), failed=sum(map(record.failed_with_reason, new)))


def full_disk(trials, before: set[int] = frozenset()) -> SweepError | None:
    """The error that stops the sweep when a trial (not in `before`) was stopped by a full disk:
    the next trials would fail the same way. The trial is retried when the sweep resumes."""
    for t in trials:
        if record.stopped_by_full_disk(t) and t.number not in before:
            return SweepError(f"trial {t.number} stopped: {t.user_attrs[record.ERROR].split('; fix:')[0]}; "
                              "fix: free space under --dir, then run the same command again to resume")
    return None


# ---- retries of interrupted trials -------------------------------------------

def retryable(t: optuna.trial.FrozenTrial) -> bool:
    """Interrupted, and it had parameters or was enqueued work (a grid point or a free slot); a
    trial of an older sweep that stopped before sampling needs no retry: a new trial replaces it."""
    return record.is_interrupted(t) and bool(t.params or compat.was_enqueued(t))


def retry(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Enqueue the retry of interrupted trial `t`: its parameters (or the work it was given, if it
    stopped before sampling), resuming from its checkpoints, so it keeps its curves too."""
    first = t.user_attrs.get(record.RETRY_OF, t.number)
    params = dict(t.params) or compat.enqueued_params(t)
    study.enqueue_trial(params, user_attrs={record.RETRY_OF: first, record.RETRIED: t.number,
                                            **record.curve_attrs(t.user_attrs)})


def _retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Optuna calls this only in the process whose fail_stale_trials flipped the trial from RUNNING
    # to FAIL (the flip is a row-locked update); under the enqueue lock, and only if a `sweep run`
    # preparing at the same time (enqueue_retries) did not retry it first: one retry each.
    with enqueue_lock(study):
        if retryable(trial) and not _has_retry(study, trial.number):
            retry(study, trial)


def _has_retry(study: optuna.Study, number: int) -> bool:
    return any(u.user_attrs.get(record.RETRIED) == number for u in study.get_trials(deepcopy=False))


def fail_stale(study: optuna.Study) -> None:
    """Mark trials whose heartbeat stopped as interrupted (their retry is enqueued by _retry_stale),
    and trials that never wrote one: their process died between popping them and the first beat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = compat.study_storage(study)
    since = datetime.datetime.now() - datetime.timedelta(seconds=UNBEATEN_S)  # as FrozenTrial: local, naive
    for trial_id in compat.running_without_heartbeat(study):
        started = storage.get_trial(trial_id).datetime_start
        if started is None or started > since:
            continue
        try:  # a row-locked update: of processes doing this at once, one flips it
            flipped = storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if flipped:
            _retry_stale(study, storage.get_trial(trial_id))


def enqueue_retries(study: optuna.Study, trials) -> None:
    """Retry every interrupted trial that has no retry yet (run by the process that prepares,
    under enqueue_lock)."""
    retried = {t.user_attrs.get(record.RETRIED) for t in trials}
    for t in trials:
        if retryable(t) and t.number not in retried:
            retry(study, t)


# ---- one process enqueues at a time -------------------------------------------

_held: dict[tuple[str, str], int] = {}  # locks this process holds (re-entrant: a retry inside prepare)


@contextlib.contextmanager
def enqueue_lock(study: optuna.Study):
    """Across processes, one at a time counts the study's trials and enqueues work.

    Optuna's transactions are one statement each, so two `sweep run` preparing at
    the same instant could both count 0 of 4 grid points and enqueue 8. SQLite
    (one machine): an flock on NAME.db.lock beside the file; PostgreSQL: a
    transaction-level advisory lock keyed by the study name on a connection of
    its own. Both are released when the process dies. Other databases: none.
    """
    engine = compat.rdb_storage(study).engine
    key = (str(engine.url), study.study_name)
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    with contextlib.ExitStack() as stack:
        if engine.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            fd = os.open(f"{engine.url.database}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by os.close, or by the process's death
        elif engine.name == "postgresql":
            conn = stack.enter_context(engine.connect())  # its transaction ends (rolled back) on exit
            lock_id = zlib.crc32(f"recipe-sweep enqueue {study.study_name}".encode()) - 2**31
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})
        _held[key] = 1
        try:
            yield
        finally:
            _held[key] = 0


def widen_window() -> None:
    """Tests only: hold the enqueue lock longer, so that a missing lock shows as double work."""
    delay = float(os.environ.get(WIDEN_ENV) or 0)
    if delay:
        time.sleep(delay)


def retry_own(study: optuna.Study, number: int | None, always: bool) -> None:
    """After Ctrl-C: enqueue the retry of the trial this process was running (Optuna failed it
    here, so no other process retries it), always or when other trials are running."""
    if number is None:
        return
    with enqueue_lock(study):
        trials = study.get_trials(deepcopy=False)
        t = next((t for t in trials if t.number == number), None)
        if t is None or not retryable(t) or any(u.user_attrs.get(record.RETRIED) == number for u in trials):
            return
        if always or any(u.state == TrialState.RUNNING for u in trials):
            retry(study, t)
