"""The Optuna engine: a study in an RDB storage, one trial at a time, resumable.

Resume rules: a trial counts against the budget once it is complete, pruned,
or failed with a recorded reason. A trial that failed without one was
interrupted (Ctrl-C, kill, power loss; found by Optuna's heartbeat) and is
enqueued again with the same parameters, so grid points are never repeated.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from functools import singledispatch
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search_spaces import SweepSpec
from search_spaces.dists import Choice, Fixed, Grid, Int, LogUniform, Uniform
from trainable import TrialError, to_dict
from trainable.registry import Registry

from .base import ENGINES, RunOptions, RunSummary, SweepError
from .progress import Progress
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
PRUNERS.register("none")(lambda spec: optuna.pruners.NopPruner())
PRUNERS.register("median")(lambda spec: optuna.pruners.MedianPruner(
    n_startup_trials=spec.pruner.startup_trials, n_warmup_steps=spec.pruner.warmup_epochs))
PRUNERS.register("asha")(lambda spec: optuna.pruners.SuccessiveHalvingPruner(
    min_resource=max(spec.pruner.warmup_epochs, 1)))
PRUNERS.register("hyperband")(lambda spec: optuna.pruners.HyperbandPruner(
    min_resource=max(spec.pruner.warmup_epochs, 1), max_resource=spec.base.train.epochs))


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


def sample(spec: SweepSpec, trial: optuna.Trial) -> dict[str, Any]:
    """Values for every active parameter, conditions resolved in order."""
    values: dict[str, Any] = {}
    for p in spec.space:
        if p.active(values):
            values[p.key] = suggest(p.dist, trial, p.name)
    return values


# ---- study bookkeeping ---------------------------------------------------

def fingerprint(spec: SweepSpec) -> str:
    """What makes two runs the same sweep: base config, space, seeds and objective."""
    raw = spec.raw
    key = {k: raw.get(k) for k in ("base", "variants", "space", "seeds", "objective")}
    key["base"] = to_dict(spec.base)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_interrupted(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and "error" not in t.user_attrs


def counts_toward_budget(t: optuna.trial.FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise SweepError(f"--storage: folder {path.parent} does not exist; fix: create it or use --dir")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)
    except Exception as e:  # SQLAlchemy raises many types for a bad URL or server
        raise SweepError(f"--storage: cannot open {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                         "fix: give a SQLAlchemy URL such as sqlite:///runs/name.db or "
                         "postgresql://user@host/db") from None


def open_study(spec: SweepSpec, url: str) -> optuna.Study:
    storage = open_storage(url)
    direction = "minimize" if spec.objective.mode == "min" else "maximize"
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=direction,
                                sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
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
    study.set_user_attr("spec", json.loads(json.dumps(spec.raw, default=str)))  # budget may have grown
    # Offset the sampler seed by the trials already run, so a resumed random
    # search continues instead of replaying its first samples.
    study.sampler = SAMPLERS.get(spec.sampler.name)(spec.sampler.seed + len(study.get_trials(deepcopy=False)))
    study.pruner = PRUNERS.get(spec.pruner.name)(spec)
    return study


def _enqueue_retries(study: optuna.Study, trials) -> None:
    retried = {t.user_attrs.get("retried") for t in trials}
    for t in trials:
        if is_interrupted(t) and t.number not in retried and t.params:
            # The retry resumes from the interrupted run's checkpoints, so it keeps its curves too.
            curves = {k: v for k, v in t.user_attrs.items() if k.startswith("curve.")}
            first = t.user_attrs.get("retry_of", t.number)
            study.enqueue_trial(t.params, user_attrs={"retry_of": first, "retried": t.number, **curves})


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


def _objective(spec: SweepSpec, progress: Progress, run_dir: Path):
    metric = spec.objective.metric

    def objective(trial: optuna.Trial) -> float:
        values = sample(spec, trial)
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

        try:
            return run_seeds(spec, values, on_epoch, on_run, pruned=(optuna.TrialPruned,),
                             checkpoint_dir=checkpoints)
        except TrialError as e:
            trial.set_user_attr("error", str(e))
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a bug: record it so a resume does not retry it forever
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise

    return objective


class OptunaEngine:
    def run(self, spec: SweepSpec, options: RunOptions) -> RunSummary:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines report each trial
        study = open_study(spec, options.storage)
        budget = spec.trials
        deadline = time.monotonic() + 60 * spec.budget.minutes if spec.budget.minutes else None
        trials = study.get_trials(deepcopy=False)
        progress = Progress(spec, budget, sum(map(counts_toward_budget, trials)), quiet=options.quiet)
        objective = _objective(spec, progress, Path(options.run_dir))
        interrupted = False
        try:
            while True:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                _enqueue_retries(study, trials)
                trials = study.get_trials(deepcopy=False)
                finished = sum(map(counts_toward_budget, trials))
                running = sum(t.state == TrialState.RUNNING for t in trials)
                waiting = sum(t.state == TrialState.WAITING for t in trials)
                if (budget is not None and finished >= budget) or (deadline and time.monotonic() > deadline):
                    break
                if budget is not None and finished + running >= budget and not waiting:
                    progress.waiting(running)  # another worker's trial, or a dead run's until its heartbeat expires
                    time.sleep(HEARTBEAT_S)
                    continue
                if not waiting and (point := _next_grid_point(spec, trials)):
                    study.enqueue_trial(point)
                study.optimize(objective, n_trials=1, catch=(TrialError,), callbacks=[progress.trial_done])
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        best = (min if spec.objective.mode == "min" else max)(done, key=lambda t: t.value) if done else None
        return RunSummary(finished=sum(map(counts_toward_budget, trials)), budget=budget, interrupted=interrupted,
                          best_value=best.value if best else None, best_number=best.number if best else None)


ENGINES.register("optuna")(OptunaEngine)
