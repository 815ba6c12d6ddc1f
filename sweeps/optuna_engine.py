"""The Optuna engine: a study in an RDB storage, one trial at a time per process, resumable.

Resume rules: a trial counts against the budget once it is complete, pruned,
or failed with a recorded reason. A trial that failed without one was
interrupted (Ctrl-C, kill, power loss; found by Optuna's heartbeat) and is
enqueued again with the same parameters, so grid points are never repeated.

Many processes may share one storage (`sweep run --workers N`, `sweep worker`).
Work is handed out as WAITING trials, which Optuna pops atomically, and each
is enqueued exactly once: grid points (and, for many workers, free slots for
the sampler) by the one process that prepares the sweep (`prepare`), the retry
of a stale trial by the process whose `fail_stale_trials` flipped it to FAIL
(the storage's stale-trial callback), and the retry of a trial stopped by
Ctrl-C by the worker it ran in. Processes that did not prepare only pop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import time
import warnings
import zlib
from functools import singledispatch
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from search_spaces import SweepSpec
from search_spaces.dists import Choice, Fixed, Grid, Int, LogUniform, Uniform
from trainable import TrialConfig, TrialError, to_dict
from trainable.config import flatten
from trainable.registry import Registry

from . import isolated
from .base import ENGINES, RunOptions, RunSummary, SweepError
from .progress import Progress
from .same_length import SameLengthPruner, varies_epochs
from .storage import sqlite_file
from .trial import median_metrics, run_seeds, versions

HEARTBEAT_S = 2    # a running trial writes a heartbeat this often ...
GRACE_S = 6        # ... and counts as interrupted when none came for this long
SAMPLERS: Registry = Registry("sampler")
PRUNERS: Registry = Registry("pruner")

SAMPLERS.register("random")(lambda seed: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.register("grid")(lambda seed: optuna.samplers.RandomSampler(seed=seed))  # points are enqueued
SAMPLERS.register("tpe")(lambda seed: optuna.samplers.TPESampler(seed=seed))
SAMPLERS.register("qmc")(lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True,
                                                                 warn_independent_sampling=False))
# pruner.name -> builder(spec, epochs): `epochs` is the training length of the trials it compares.
PRUNERS.register("none")(lambda spec, epochs: optuna.pruners.NopPruner())
PRUNERS.register("median")(lambda spec, epochs: optuna.pruners.MedianPruner(
    n_startup_trials=spec.pruner.startup_trials, n_warmup_steps=spec.pruner.warmup_epochs))
PRUNERS.register("asha")(lambda spec, epochs: optuna.pruners.SuccessiveHalvingPruner(
    min_resource=max(spec.pruner.warmup_epochs, 1)))
PRUNERS.register("hyperband")(lambda spec, epochs: optuna.pruners.HyperbandPruner(
    min_resource=max(spec.pruner.warmup_epochs, 1), max_resource=epochs))
PRUNERS.register("pbt")(lambda spec, epochs: optuna.pruners.NopPruner())  # Ray's; the study only mirrors its trials


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; where the space varies train.epochs, one per training length."""
    build = PRUNERS.get(spec.pruner.name)
    if spec.pruner.name in ("none", "pbt") or not varies_epochs(spec):
        return build(spec, spec.base.train.epochs)
    return SameLengthPruner(lambda epochs: build(spec, epochs))


def check_runs_on_optuna(spec: SweepSpec) -> None:
    if spec.pruner.name == "pbt":
        raise SweepError("pruner.name: pbt runs on the Ray engine only (it clones trials through their "
                         "checkpoints); fix: add --engine ray, or use median, asha or hyperband")


# ---- the spec's distributions as Optuna suggestions ----------------------

@singledispatch
def suggest(dist, trial: optuna.Trial, name: str) -> Any:
    raise TypeError(f"no Optuna mapping for {type(dist).__name__}")


@suggest.register
def _(dist: LogUniform, trial, name):
    return trial.suggest_float(name, dist.low, dist.high, log=True)


@suggest.register
def _(dist: Uniform, trial, name):
    return trial.suggest_float(name, dist.low, dist.high)


@suggest.register
def _(dist: Int, trial, name):
    return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)


@suggest.register(Choice)
@suggest.register(Grid)
def _(dist, trial, name):
    return trial.suggest_categorical(name, list(dist.values))


@suggest.register
def _(dist: Fixed, trial, name):
    value = dist.value
    if isinstance(value, (list, tuple)):  # not a categorical value Optuna can store
        trial.set_user_attr(f"fixed.{name}", list(value))
        return value
    return trial.suggest_categorical(name, [value])


def suggested(spec: SweepSpec, trial: optuna.Trial) -> dict[str, Any]:
    """Values for every active sampled parameter, conditions resolved in order."""
    values: dict[str, Any] = {}
    for p in spec.space:
        if not p.derived and p.active(values):
            values[p.key] = suggest(p.dist, trial, p.name)
    return values


def sample(spec: SweepSpec, trial: optuna.Trial) -> dict[str, Any]:
    """Values for every active parameter, derived keys last. A derived value is no Optuna
    parameter (nothing samples it), so it is recorded as the "derived.<key>" user attr.
    Raises ConfigError (a TrialError) naming a derived key that cannot be computed."""
    values = suggested(spec, trial)
    derived = spec.derived(values)
    for key, value in derived.items():
        trial.set_user_attr(f"derived.{key}", value)
    return {**values, **derived}


# ---- study bookkeeping ---------------------------------------------------

def fingerprint(spec: SweepSpec) -> str:
    """What makes two runs the same sweep: base config, space, seeds and objective.

    The base counts by the keys that differ from the trial config's defaults, so
    a release that adds a config key (at a default that changes nothing) still
    resumes the sweeps made before it.
    """
    raw = spec.raw
    key = {k: raw.get(k) for k in ("base", "variants", "space", "seeds", "objective")}
    defaults = flatten(to_dict(TrialConfig()))
    key["base"] = {k: v for k, v in flatten(to_dict(spec.base)).items() if defaults.get(k, _ABSENT) != v}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


_ABSENT = object()


def is_interrupted(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and "error" not in t.user_attrs


def counts_toward_budget(t: optuna.trial.FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs)


def worker_id() -> str:
    """Who runs a trial: recorded on each trial as its "worker" user attr."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _retryable(t: optuna.trial.FrozenTrial) -> bool:
    """Interrupted, and it had parameters or was enqueued work (a grid point or a free slot); a
    trial of an older sweep that stopped before sampling needs no retry: a new trial replaces it."""
    return is_interrupted(t) and bool(t.params or "fixed_params" in t.system_attrs)


def _retry(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Enqueue the retry of interrupted trial `t`: its parameters (or the work it was given, if it
    stopped before sampling), resuming from its checkpoints, so it keeps its curves too."""
    curves = {k: v for k, v in t.user_attrs.items() if k.startswith("curve.")}
    first = t.user_attrs.get("retry_of", t.number)
    params = dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})
    study.enqueue_trial(params, user_attrs={"retry_of": first, "retried": t.number, **curves})


def _retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Optuna calls this only in the process whose fail_stale_trials flipped the trial from RUNNING
    # to FAIL (the flip is a row-locked update), so each stale trial gets exactly one retry.
    if _retryable(trial):
        _retry(study, trial)


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _begin_immediate(engine) -> None:
    """SQLite: every transaction takes the write lock when it begins.

    pysqlite reads without a lock and locks only at the first write, so two
    processes could both read a trial as WAITING and both set it RUNNING (or
    both fail the same stale trial). BEGIN IMMEDIATE makes Optuna's
    read-then-write updates atomic across processes, as row locks do in
    PostgreSQL; the wait for the lock is the connection's timeout.
    """
    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # no implicit BEGIN: ours below

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks were added


def open_storage(url: str) -> optuna.storages.RDBStorage:
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise SweepError(f"--storage: folder {path.parent} does not exist; fix: create it or use --dir")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
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
    return SweepError(f"--storage: cannot open {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                      "fix: give a SQLAlchemy URL such as sqlite:///runs/name.db or "
                      "postgresql://user@host/db")


def open_study(spec: SweepSpec, url: str, worker: bool = False) -> optuna.Study:
    """Create or open the sweep's study; refuse one made from another spec.

    A `worker` (one of many processes on the storage) draws its own sampler
    seed, so that workers do not all sample the same values, and leaves the
    stored spec alone unless it created the study.
    """
    return _open(spec, url, worker)[0]


def _open(spec: SweepSpec, url: str, worker: bool = False) -> tuple[optuna.Study, bool]:
    """(study, whether this call created it)."""
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
    if "fingerprint" in attrs and attrs["fingerprint"] != mine:
        raise SweepError(
            f"{url} already holds sweep {spec.name!r} made from a different base, space, seeds or objective; "
            f"fix: give this sweep another name (--set name=...), another --dir, or delete the old results")
    if study.direction.name.lower() != direction:
        raise SweepError(f"objective.mode: the stored sweep {spec.name!r} runs in the other direction; "
                         "fix: keep its mode or use another name")
    if "fingerprint" not in attrs:
        study.set_user_attr("fingerprint", mine)
        study.set_user_attr("engine", "optuna")
    if created or not worker:
        study.set_user_attr("spec", json.loads(json.dumps(spec.raw, default=str)))  # budget may have grown
        # Validated, in fractions: `sweep table NAME` compares with them without the spec file.
        study.set_user_attr("reference", json.loads(json.dumps([r.as_dict() for r in spec.reference], default=str)))
    # Offset the sampler seed by the trials already run, so a resumed random
    # search continues instead of replaying its first samples; workers also
    # by who they are, so that workers started together draw different values.
    seed = spec.sampler.seed + len(study.get_trials(deepcopy=False))
    if worker:
        seed = (seed + zlib.crc32(worker_id().encode())) % 2**31
    study.sampler = SAMPLERS.get(spec.sampler.name)(seed)
    study.pruner = pruner(spec)
    return study, created


def _enqueue_retries(study: optuna.Study, trials) -> None:
    """Retry every interrupted trial that has no retry yet (run by the process that prepares)."""
    retried = {t.user_attrs.get("retried") for t in trials}
    for t in trials:
        if _retryable(t) and t.number not in retried:
            _retry(study, t)


def prepare(study: optuna.Study, spec: SweepSpec, slots: bool) -> None:
    """Enqueue the work that processes pop: retries of interrupted trials that have none,
    then grid points up to the budget (cycling through the grid; only the grid parameters are
    fixed, the sampler fills the rest), or with `slots` empty trials up to the budget for a space
    without a grid. The one process that creates or (re)starts the sweep runs it, before other
    processes pop: enqueued once, each WAITING trial runs once, so the budget holds."""
    _fail_stale(study)
    _enqueue_retries(study, study.get_trials(deepcopy=False))
    budget = spec.trials
    if budget is None or not (spec.grid_params or slots):
        return
    trials = study.get_trials(deepcopy=False)
    pending = sum(counts_toward_budget(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    for _ in range(budget - pending):
        study.enqueue_trial(_next_grid_point(spec, trials) or {})
        trials = study.get_trials(deepcopy=False)


def _next_grid_point(spec: SweepSpec, trials) -> dict[str, Any] | None:
    """The grid point run least so far (interrupted runs count through their retry)."""
    if not spec.grid_params:
        return None
    points = spec.grid_points()
    used = [0] * len(points)
    keys = [p.key for p in spec.grid_params]
    index = {tuple(repr(pt[k]) for k in keys): i for i, pt in enumerate(points)}
    for t in trials:
        if is_interrupted(t):
            continue
        source = t.params or t.system_attrs.get("fixed_params", {})
        i = index.get(tuple(repr(source.get(k)) for k in keys))
        if i is not None:
            used[i] += 1
    return points[used.index(min(used))]


def _objective(spec: SweepSpec, progress: Progress, run_dir: Path, current: dict | None = None):
    """The trial function; it notes the number of the trial it runs in `current`["number"]."""
    metric = spec.objective.metric
    current = {} if current is None else current

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        trial.set_user_attr("worker", worker_id())
        try:
            return run(trial)
        except TrialError as e:
            trial.set_user_attr("error", str(e))
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a bug: record it so a resume does not retry it forever
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise

    def run(trial: optuna.Trial) -> float:
        values = sample(spec, trial)  # a derive that cannot be computed fails the trial with its reason
        trial.set_user_attr("config", to_dict(spec.config(values)))
        trial.set_user_attr("versions", versions())
        progress.trial_started(trial.number, values)
        # A retried trial resumes from the checkpoints of the run it replaces.
        first = trial.user_attrs.get("retry_of", trial.number)
        checkpoints = run_dir / spec.name / f"trial-{first}"
        curves: list[list] = [list(trial.user_attrs.get(f"curve.{i}", [])) for i in range(spec.seeds)]

        def on_epoch(epoch, per_seed):
            for i, metrics in enumerate(per_seed):
                curves[i] = [c for c in curves[i] if c["epoch"] < epoch] + [{"epoch": epoch, **metrics}]
                trial.set_user_attr(f"curve.{i}", curves[i])
            median = median_metrics(per_seed)
            progress.epoch(epoch, median)
            # The seeds of a config are one unit: the pruner sees their median.
            if metric in median:
                trial.report(median[metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        def on_run(runs):
            trial.set_user_attr("runs", runs)

        return run_seeds(spec, values, on_epoch, on_run, pruned=(optuna.TrialPruned,), checkpoint_dir=checkpoints,
                         isolate=isolated.wanted(spec, values))

    return objective


class _NothingWaiting(Exception):
    """Another process popped the last WAITING trial first."""


@contextlib.contextmanager
def _only_waiting_trials(study: optuna.Study):
    """Within it, study.optimize runs a WAITING trial or raises _NothingWaiting; it never creates one.

    Optuna's ask() pops a WAITING trial atomically but creates a new trial when
    none is left; when every counted trial is enqueued ahead, a process that
    lost the race for the last one must not add one beyond the budget.
    """
    pop = getattr(study, "_pop_waiting_trial_id", None)
    if pop is None:  # an Optuna without it: the budget check before each trial still applies
        yield
        return

    def pop_or_stop():
        trial_id = pop()
        if trial_id is None:
            raise _NothingWaiting
        return trial_id

    study._pop_waiting_trial_id = pop_or_stop
    try:
        yield
    finally:
        del study._pop_waiting_trial_id


def _retry_own(study: optuna.Study, number: int | None, always: bool) -> None:
    """After Ctrl-C: enqueue the retry of the trial this process was running (Optuna failed it
    here, so no other process retries it), always or when other trials are running."""
    if number is None:
        return
    trials = study.get_trials(deepcopy=False)
    t = next((t for t in trials if t.number == number), None)
    if t is None or not _retryable(t) or any(u.user_attrs.get("retried") == number for u in trials):
        return
    if always or any(u.state == TrialState.RUNNING for u in trials):
        _retry(study, t)


def work(study: optuna.Study, spec: SweepSpec, progress: Progress, run_dir: Path, *, enqueue: bool,
         retry_own: bool, deadline: float | None = None) -> bool:
    """Run trials of the study until the budget (or the deadline) is reached; True if stopped by Ctrl-C.

    With a trial budget this process only pops WAITING trials, and only while
    the finished and running trials leave room in the budget. `enqueue` (the
    process that prepared the sweep, when it also runs trials) adds the next
    grid point or a free slot when nothing waits; other workers wait for work.
    After Ctrl-C the retry of the trial in flight here is enqueued with
    `retry_own`, or when other processes are running trials (they take it);
    a lone `sweep run` leaves it to its next run.
    """
    budget = spec.trials
    current: dict = {}
    objective = _objective(spec, progress, run_dir, current)
    idle_said = False
    try:
        while True:
            _fail_stale(study)  # a stale trial's retry is enqueued by whoever flips it
            trials = study.get_trials(deepcopy=False)
            finished = sum(map(counts_toward_budget, trials))
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if (budget is not None and finished >= budget) or (deadline and time.monotonic() > deadline):
                break
            if budget is None:  # a time budget: trials are created as they go; a grid cycles
                if not waiting and (point := _next_grid_point(spec, trials)):
                    study.enqueue_trial(point)
                study.optimize(objective, n_trials=1, catch=(TrialError,), callbacks=[progress.trial_done])
                continue
            if finished + running >= budget:
                progress.waiting(running)  # another worker's trial, or a dead run's until its heartbeat expires
                time.sleep(HEARTBEAT_S)
                continue
            if not waiting:
                if not enqueue:
                    if not idle_said:
                        progress.write(f"nothing to run yet ({finished}/{budget} finished): waiting for "
                                       "`sweep run` to enqueue trials")
                        idle_said = True
                    time.sleep(HEARTBEAT_S)
                    continue
                study.enqueue_trial(_next_grid_point(spec, trials) or {})
            idle_said = False
            current.clear()
            try:
                with _only_waiting_trials(study):
                    study.optimize(objective, n_trials=1, catch=(TrialError,), callbacks=[progress.trial_done])
            except _NothingWaiting:
                continue
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the retry
        try:
            _retry_own(study, current.get("number"), always=retry_own)
        finally:
            signal.signal(signal.SIGINT, previous)
        return True
    return False


def summary(study: optuna.Study, spec: SweepSpec, interrupted: bool) -> RunSummary:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = (min if spec.objective.mode == "min" else max)(done, key=lambda t: t.value) if done else None
    return RunSummary(finished=sum(map(counts_toward_budget, trials)), budget=spec.trials, interrupted=interrupted,
                      best_value=best.value if best else None, best_number=best.number if best else None)


class OptunaEngine:
    def run(self, spec: SweepSpec, options: RunOptions) -> RunSummary:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines report each trial
        check_runs_on_optuna(spec)
        if options.workers is None:
            from .workers import auto_workers
            options = dataclasses.replace(options, workers=auto_workers(spec))
        if options.workers < 1:
            raise SweepError(f"--workers: must be at least 1, got {options.workers}; fix: use e.g. --workers 2")
        if options.workers > 1:
            from .workers import run_workers
            return run_workers(spec, options)
        study = open_study(spec, options.storage)
        # Grid points are enqueued now, free slots of a space without a grid one at a
        # time as trials start (so a stopped run leaves nothing waiting).
        prepare(study, spec, slots=False)
        deadline = time.monotonic() + 60 * spec.budget.minutes if spec.budget.minutes else None
        trials = study.get_trials(deepcopy=False)
        progress = Progress(spec, spec.trials, sum(map(counts_toward_budget, trials)), quiet=options.quiet)
        try:
            interrupted = work(study, spec, progress, Path(options.run_dir), enqueue=True, retry_own=False,
                               deadline=deadline)
        finally:
            progress.close()
        return summary(study, spec, interrupted)


ENGINES.register("optuna")(OptunaEngine)
