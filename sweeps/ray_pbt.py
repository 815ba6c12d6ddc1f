"""Population based training on Ray: a population drawn from the spec, then
exploited and explored through the trials' checkpoints by Ray's scheduler.

Ray's PBT refuses a search algorithm, so the population is drawn up front by
the same define-by-run `sample` on an in-memory Optuna study (the spec's
sampler; grid points first) and handed to Ray's BasicVariantGenerator. PBT
perturbs the space's unconditional continuous parameters (loguniform,
uniform): scaled by 0.8 or 1.2, or drawn anew with `pruner.resample`, then
clipped into the spec's bounds so every recorded value lies in its
distribution. A clone resumes its donor's checkpoint under its own new
hyperparameters (`Training.load_state_dict` keeps the config's lr and decay).
"""
from __future__ import annotations

from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

from search_spaces import SweepSpec
from search_spaces.dists import LogUniform, Uniform

from . import sampling

DOMAINS = {LogUniform: tune.loguniform, Uniform: tune.uniform}


def perturbed(spec: SweepSpec) -> dict[str, tuple[Any, float, float]]:
    """name -> (Ray domain, low, high) of each parameter PBT may perturb."""
    return {p.name: (DOMAINS[type(p.dist)](p.dist.low, p.dist.high), p.dist.low, p.dist.high)
            for p in spec.space if type(p.dist) in DOMAINS and not p.when and not p.alternative}


class _Clip:
    """Keeps explored values inside the spec's bounds (a class, so the scheduler pickles)."""

    def __init__(self, bounds: dict[str, tuple[float, float]]):
        self.bounds = bounds

    def __call__(self, config: dict) -> dict:
        for name, (low, high) in self.bounds.items():
            if name in config:
                config[name] = min(max(float(config[name]), low), high)
        return config


def check(spec: SweepSpec) -> None:
    """What PBT needs of a spec: something to perturb and a population."""
    if not perturbed(spec):
        raise spec.error(("pruner", "name"), "pbt perturbs continuous parameters, and this space has none "
                         "(unconditional loguniform or uniform)",
                         "add one, e.g. optim.lr: {loguniform: [...]}, or use asha")
    if spec.trials is None or spec.trials < 2:
        raise spec.error(("budget", "trials"), "pbt needs a population of at least 2 trials",
                         "set budget.trials, e.g. 8")


def scheduler(spec: SweepSpec) -> PopulationBasedTraining:
    p = spec.pruner
    check(spec)
    mutations = perturbed(spec)
    return PopulationBasedTraining(
        time_attr="epoch", metric=spec.objective.metric, mode=spec.objective.mode,
        perturbation_interval=p.interval_epochs, burn_in_period=p.warmup_epochs,
        hyperparam_mutations={name: domain for name, (domain, _, _) in mutations.items()},
        quantile_fraction=p.quantile, resample_probability=p.resample,
        custom_explore_fn=_Clip({name: (low, high) for name, (_, low, high) in mutations.items()}))


def population(spec: SweepSpec, sampler: optuna.samplers.BaseSampler, grid: list[dict],
               n: int) -> tuple[BasicVariantGenerator, dict[str, None]]:
    """n configs by Optuna names (grid points first), drawn as the Optuna engine draws them, and
    the param_space Ray wants beside them (every name; a name a point lacks, i.e. an inactive
    conditional parameter, is None in that trial's config and is ignored)."""
    study = optuna.create_study(sampler=sampler, direction="minimize" if spec.objective.mode == "min" else "maximize")
    for point in grid[:n]:
        study.enqueue_trial(point)
    points = []
    for _ in range(n):
        trial = study.ask()
        sampling.sample(spec, trial)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return BasicVariantGenerator(points_to_evaluate=points), {name: None for point in points for name in point}
