"""The Optuna engine's trial loop, as each process runs it: `sweep run` and every worker.

Many processes may share one storage (`sweep run --workers N`, `sweep worker`).
Work is handed out as WAITING trials, which Optuna pops atomically, and each
is enqueued exactly once: grid points (and, for many workers, free slots for
the sampler) by the one process that prepares the sweep (`prepare`), the retry
of a stale trial by the process whose `fail_stale_trials` flipped it to FAIL
(the storage's stale-trial callback, study.py), and the retry of a trial
stopped by Ctrl-C by the worker it ran in. Processes that did not prepare only pop.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search_spaces import SweepSpec
from trainable import TrialError, to_dict
from trainable.registry import Registry

from . import compat, isolated, record, sampling, study as studies
from .base import SweepError
from .progress import Progress
from .same_length import SameLengthPruner, per_length
from .trial import median_metrics, versions

PRUNERS: Registry = Registry("pruner")
# pruner.name -> builder(spec, epochs): `epochs` is the training length of the trials it compares.
PRUNERS.register("none")(lambda spec, epochs: optuna.pruners.NopPruner())
PRUNERS.register("median")(lambda spec, epochs: optuna.pruners.MedianPruner(
    n_startup_trials=spec.pruner.startup_trials, n_warmup_steps=spec.pruner.warmup_epochs))
PRUNERS.register("asha")(lambda spec, epochs: optuna.pruners.SuccessiveHalvingPruner(
    min_resource=max(spec.pruner.warmup_epochs, 1)))
PRUNERS.register("hyperband")(lambda spec, epochs: optuna.pruners.HyperbandPruner(
    min_resource=max(spec.pruner.warmup_epochs, 1), max_resource=epochs))
PRUNERS.register("pbt")(lambda spec, epochs: optuna.pruners.NopPruner())  # refused by check(); Ray's


def check(spec: SweepSpec) -> None:
    """What the Optuna engine refuses in a spec."""
    sampling.check(spec)
    if spec.pruner.name not in PRUNERS:
        raise spec.error(("pruner", "name"), PRUNERS.unknown(spec.pruner.name), "use median")
    if spec.pruner.name == "pbt":
        raise spec.error(("pruner", "name"), "pbt runs on the Ray engine only (it clones trials through their "
                         "checkpoints)", "add --engine ray, or use median, asha or hyperband")


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; where the space varies train.epochs, one per training length."""
    build = PRUNERS.get(spec.pruner.name)
    if per_length(spec):
        return SameLengthPruner(lambda epochs: build(spec, epochs))
    return build(spec, spec.base.train.epochs)


def open_study(spec: SweepSpec, url: str, worker: bool = False) -> tuple[optuna.Study, bool]:
    """(study, created), with the spec's sampler and pruner (see study.open_study)."""
    study, created = studies.open_study(spec, url, "optuna", worker)
    study.pruner = pruner(spec)
    return study, created


def prepare(study: optuna.Study, spec: SweepSpec, slots: bool) -> None:
    """Enqueue the work that processes pop: retries of interrupted trials that have none,
    then grid points up to the budget (cycling through the grid; only the grid parameters are
    fixed, the sampler fills the rest), or with `slots` empty trials up to the budget for a space
    without a grid. The one process that creates or (re)starts the sweep runs it, before other
    processes pop: enqueued once, each WAITING trial runs once, so the budget holds."""
    studies.fail_stale(study)
    with studies.enqueue_lock(study):  # two `sweep run` of one spec at once: one counts and enqueues, then the other
        studies.enqueue_retries(study, study.get_trials(deepcopy=False))
        budget = spec.trials
        if budget is None or not (spec.grid_params or slots):
            return
        trials = study.get_trials(deepcopy=False)
        pending = sum(record.counts_toward_budget(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)
                      for t in trials)
        points = sampling.grid_queue(spec, trials, budget - pending) or [{}] * (budget - pending)
        studies.widen_window()
        for point in points:
            study.enqueue_trial(point)


def _enqueue_next(study: optuna.Study, spec: SweepSpec) -> None:
    """The process that enqueues as it goes: the next grid point (or a free slot, with a trial
    budget) when nothing waits and the budget leaves room, counted again under the lock."""
    with studies.enqueue_lock(study):
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        point = sampling.next_grid_point(spec, trials)
        if spec.trials is None:
            if point:
                study.enqueue_trial(point)
            return
        busy = sum(t.state == TrialState.RUNNING for t in trials)
        if studies.finished(trials) + busy < spec.trials:
            study.enqueue_trial(point or {})


def objective(spec: SweepSpec, progress: Progress, run_dir: Path, current: dict | None = None):
    """The trial function; it notes the number of the trial it runs in `current`["number"]."""
    metric = spec.objective.metric
    current = {} if current is None else current

    patiently = studies.patiently  # each write waits out a storage that stops answering for a while

    def run_trial(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        patiently(trial.set_user_attr, record.WORKER, record.worker_id())
        try:
            return run(trial)
        except TrialError as e:
            patiently(trial.set_user_attr, record.ERROR, str(e))
            raise
        except (optuna.TrialPruned, SweepError, *studies.STORAGE_ERRORS):  # the storage's fault, not the config's
            raise
        except Exception as e:  # a bug: record it so a resume does not retry it forever
            patiently(trial.set_user_attr, record.ERROR, record.bug_text(e))
            raise

    def run(trial: optuna.Trial) -> float:
        values = sampling.sample(spec, trial)  # a derive that cannot be computed fails the trial with its reason
        patiently(trial.set_user_attr, record.CONFIG, to_dict(spec.config(values)))
        patiently(trial.set_user_attr, record.VERSIONS, versions())
        progress.trial_started(trial.number, values)
        # A retried trial resumes from the checkpoints of the run it replaces.
        first = trial.user_attrs.get(record.RETRY_OF, trial.number)
        checkpoints = run_dir / spec.name / f"trial-{first}"
        curves: list[list] = [list(trial.user_attrs.get(record.curve_key(i), [])) for i in range(spec.seeds)]

        def on_epoch(epoch, per_seed):
            for i, metrics in enumerate(per_seed):
                curves[i] = record.merge_curve(curves[i], epoch, metrics)
                patiently(trial.set_user_attr, record.curve_key(i), curves[i])
            median = median_metrics(per_seed)
            progress.epoch(epoch, median)
            # The seeds of a config are one unit: the pruner sees their median.
            if metric in median:
                trial.report(median[metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        def on_run(runs):
            trial.set_user_attr(record.RUNS, runs)

        return isolated.run(spec, values, on_epoch, on_run, pruned=(optuna.TrialPruned,), checkpoint_dir=checkpoints)

    return run_trial


def _optimize_one(study: optuna.Study, run_trial, progress: Progress) -> None:
    try:
        study.optimize(run_trial, n_trials=1, catch=(TrialError,), callbacks=[progress.trial_done])
    except AssertionError as e:  # Optuna's _run_trial ends so when recording the trial's end failed
        if isinstance(e.__context__, studies.STORAGE_ERRORS):
            raise e.__context__ from None  # the storage's error, which work() waits out
        raise


def _stop_if_disk_full(study: optuna.Study, current: dict) -> None:
    """A trial of this process stopped on a full disk: stop here (SweepError) rather than fail the next."""
    number = current.get("number")
    if number is not None:
        mine = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if error := studies.full_disk(mine):
            raise error


def work(study: optuna.Study, spec: SweepSpec, progress: Progress, run_dir: Path, *, enqueue: bool,
         retry_own: bool) -> bool:
    """Run trials of the study until the budget (or budget.minutes) is reached; True if stopped by Ctrl-C.

    With a trial budget this process only pops WAITING trials, and only while
    the finished and running trials leave room in the budget. `enqueue` (the
    process that prepared the sweep, when it also runs trials) adds the next
    grid point or a free slot when nothing waits; other workers wait for work.
    After Ctrl-C the retry of the trial in flight here is enqueued with
    `retry_own`, or when other processes are running trials (they take it);
    a lone `sweep run` leaves it to its next run.
    """
    budget = spec.trials
    deadline = studies.deadline(spec)
    current: dict = {}
    run_trial = objective(spec, progress, run_dir, current)
    idle_said = False

    def step() -> bool:
        """One turn of the loop: run a trial, wait, or (False) stop."""
        nonlocal idle_said
        studies.fail_stale(study)  # a stale trial's retry is enqueued by whoever flips it
        trials = study.get_trials(deepcopy=False)
        finished = studies.finished(trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if (budget is not None and finished >= budget) or studies.past(deadline):
            return False
        if budget is None:  # a time budget: trials are created as they go; a grid cycles
            if not waiting:
                _enqueue_next(study, spec)
            current.clear()
            _optimize_one(study, run_trial, progress)
            _stop_if_disk_full(study, current)
            return True
        if finished + running >= budget:
            progress.waiting(running)  # another worker's trial, or a dead run's until its heartbeat expires
            time.sleep(studies.HEARTBEAT_S)
            return True
        if not waiting:
            if not enqueue:
                if not idle_said:
                    progress.write(f"nothing to run yet ({finished}/{budget} finished): waiting for "
                                   "`sweep run` to enqueue trials")
                    idle_said = True
                time.sleep(studies.HEARTBEAT_S)
                return True
            _enqueue_next(study, spec)
        idle_said = False
        current.clear()
        try:
            with compat.only_waiting_trials(study):
                _optimize_one(study, run_trial, progress)
        except compat.NothingWaiting:
            return True
        _stop_if_disk_full(study, current)
        return True

    failures = 0  # storage errors in a row: an error that is not an outage must not loop forever
    try:
        while True:
            try:
                if not step():
                    break
                failures = 0
            except studies.STORAGE_ERRORS as e:  # the storage stopped answering (a server restart): wait, go on
                studies.stop_if_full(e)
                failures += 1
                if failures > 20:
                    raise
                studies.patiently(study.get_trials, deepcopy=False)
                # A trial of ours that Optuna failed meanwhile is retried (by us or another worker).
                studies.patiently(studies.retry_own, study, current.get("number"), always=True)
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the retry
        try:
            studies.retry_own(study, current.get("number"), always=retry_own)
        finally:
            signal.signal(signal.SIGINT, previous)
        return True
    return False
