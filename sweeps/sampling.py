"""Sampling, the same for every engine: the spec's distributions as Optuna suggestions,
the sampler registry, and the one queue of grid points (least run first)."""
from __future__ import annotations

from functools import singledispatch
from typing import TYPE_CHECKING, Any

import optuna

from search_spaces.dists import Choice, Fixed, Grid, Int, LogUniform, Uniform
from trainable.registry import Registry

from . import compat, record

if TYPE_CHECKING:
    from search_spaces import SweepSpec

SAMPLERS: Registry = Registry("sampler")  # sampler.name -> builder(seed)
SAMPLERS.register("random")(lambda seed: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.register("grid")(lambda seed: optuna.samplers.RandomSampler(seed=seed))  # points come from grid_queue
SAMPLERS.register("tpe")(lambda seed: optuna.samplers.TPESampler(seed=seed))
SAMPLERS.register("qmc")(lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True,
                                                                 warn_independent_sampling=False))


def check(spec: SweepSpec) -> None:
    if spec.sampler.name not in SAMPLERS:
        raise spec.error(("sampler", "name"), SAMPLERS.unknown(spec.sampler.name), "use random")


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
        trial.set_user_attr(record.value_attr(record.FIXED, name), list(value))
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
        trial.set_user_attr(record.value_attr(record.DERIVED, key), value)
    return {**values, **derived}


# ---- grid points --------------------------------------------------------------

def grid_queue(spec: SweepSpec, trials, n: int) -> list[dict[str, Any]]:
    """The next n grid points, least run first: every point once per cycle, continuing the
    cycle of the trials in the study (enqueued, running or finished; an interrupted trial
    counts through its retry). Empty without grid parameters."""
    if not spec.grid_params:
        return []
    points = spec.grid_points()  # grid params are never conditional: their names are their keys
    keys = [p.key for p in spec.grid_params]
    index = {tuple(repr(pt[k]) for k in keys): i for i, pt in enumerate(points)}
    used = [0] * len(points)
    for t in trials:
        if record.is_interrupted(t):
            continue
        source = t.params or compat.enqueued_params(t)
        i = index.get(tuple(repr(source.get(k)) for k in keys))
        if i is not None:
            used[i] += 1
    queue = []
    for _ in range(n):
        i = used.index(min(used))
        used[i] += 1
        queue.append(points[i])
    return queue


def next_grid_point(spec: SweepSpec, trials) -> dict[str, Any] | None:
    """The grid point run least so far; None without grid parameters."""
    return next(iter(grid_queue(spec, trials, 1)), None)
