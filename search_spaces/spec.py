"""The sweep spec's typed form (`SweepSpec`) and its top-level blocks."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

from trainable import metrics
from trainable.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, Range, TrialConfig, get_key, opt, with_key
from trainable.errors import ConfigError

from .derive import Derive, ExprError
from .dists import Grid



@dataclass(frozen=True)
class Objective:
    metric: str = opt(metrics.VAL_ERROR, "metric the sampler optimises", metrics.OBJECTIVES)
    mode: str = opt("min", "min | max", ("min", "max"))


@dataclass(frozen=True)
class Budget:
    trials: Optional[int] = opt(None, "finished trials to reach (a grid alone defaults to its size)",
                                check=AT_LEAST_1)
    minutes: Optional[float] = opt(None, "stop starting new trials after this many minutes", check=POSITIVE)


@dataclass(frozen=True)
class Sampler:
    name: str = opt("random", "the sampler (the engine layer checks the name: `sweep validate` lists them)")
    seed: int = opt(0, "sampler seed", check=NON_NEGATIVE)


@dataclass(frozen=True)
class Pruner:
    name: str = opt("none", "early stopping (the engine layer checks the name: `sweep validate` lists them)")
    startup_trials: int = opt(5, "median: trials to finish before pruning starts", check=NON_NEGATIVE)
    warmup_epochs: int = opt(1, "epochs a trial runs before it may be pruned (pbt: before it is perturbed)",
                             check=NON_NEGATIVE)
    interval_epochs: int = opt(2, "pbt: epochs between two exploit/explore steps of a trial", check=AT_LEAST_1)
    quantile: float = opt(0.25, "pbt: the bottom fraction of trials clones the top fraction",
                          check=Range(0, 0.5, low_open=True))
    resample: float = opt(0.25, "pbt: chance that a perturbed value is drawn anew instead of scaled",
                          check=PROBABILITY)


@dataclass(frozen=True)
class Resources:
    cpu: float = opt(1.0, "CPU cores per trial", check=NON_NEGATIVE)
    gpu: float = opt(0.0, "GPUs per trial; fractions pack several trials on one GPU", check=NON_NEGATIVE)
    isolate: str = opt("auto", "auto | always | never: each trial in a fresh process (auto: trials on a GPU, "
                              "so no allocator state leaks from one trial into the next)", ("auto", "always", "never"))


@dataclass(frozen=True)
class Param:
    key: str
    dist: Any
    when: tuple[tuple[str, tuple], ...] = ()
    alternative: bool = False  # one of several distributions of the same key
    path: tuple = field(default=(), compare=False)  # where the spec gives it, for error messages

    @property
    def name(self) -> str:
        """The engine's name for it: engines need a name per distribution, so
        alternatives carry their condition, e.g. 'model.depth[model.name=wrn]'."""
        if not self.alternative:
            return self.key
        return self.key + "[" + ",".join(f"{k}={'|'.join(map(str, v))}" for k, v in self.when) + "]"

    def active(self, values: dict[str, Any]) -> bool:
        return all(k in values and values[k] in allowed for k, allowed in self.when)

    @property
    def needs(self) -> tuple[str, ...]:
        """Keys to know first: the targets of its conditions and the keys its derive names."""
        return tuple(k for k, _ in self.when) + (self.dist.names if self.derived else ())

    @property
    def derived(self) -> bool:
        """Computed from other keys (`derive:`), never sampled by an engine."""
        return isinstance(self.dist, Derive)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str
    engine: str = "optuna"
    objective: Objective = field(default_factory=Objective)
    budget: Budget = field(default_factory=Budget)
    seeds: int = 1
    sampler: Sampler = field(default_factory=Sampler)
    pruner: Pruner = field(default_factory=Pruner)
    resources: Resources = field(default_factory=Resources)
    base: TrialConfig = field(default_factory=TrialConfig)
    space: tuple[Param, ...] = ()
    variants: dict = field(default_factory=dict, compare=False)  # name -> {config key: value}
    presets: tuple[str, ...] = ()
    reference: tuple = ()  # Reference rows (search_spaces.reference), metrics as fractions
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # after presets and --set
    where: Any = field(default=None, compare=False, repr=False)  # errors.Where: file:line of every entry

    def error(self, path: tuple, message: str, fix: str = "", key: str | None = None) -> Exception:
        """A SpecError at the file:line of `path` (e.g. ("pruner", "name")), for checks after loading."""
        if self.where is None:
            from .errors import SpecError
            return SpecError(self.source, None, key or ".".join(map(str, path)), message, fix)
        return self.where.error(path, message, fix, key)

    @property
    def grid_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.space if isinstance(p.dist, Grid))

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid parameters (one empty point when there are none)."""
        keys = [p.key for p in self.grid_params]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.dist.values for p in self.grid_params))]

    @property
    def trials(self) -> int | None:
        """The trial budget; a grid with no explicit budget runs each point once."""
        if self.budget.trials is not None:
            return self.budget.trials
        if self.grid_params and self.budget.minutes is None:
            return len(self.grid_points())
        return None

    def config(self, values: dict[str, Any], seed_index: int = 0) -> TrialConfig:
        """The trial config of sampled values, for the seed_index-th seed."""
        cfg = self.base
        values = dict(values)
        for key, value in self.variants.get(values.pop("variant", None), {}).items():
            cfg = with_key(cfg, key, value)
        for key, value in values.items():
            cfg = with_key(cfg, key, value)
        return with_key(cfg, "train.seed", self.base.train.seed + seed_index)

    def derived(self, values: dict[str, Any]) -> dict[str, Any]:
        """The derived keys whose conditions hold, computed from the config of the sampled `values`.

        Derives come after every sampled parameter in `space` (and after the derives they
        name), so one pass over them sees each input already set. Raises ConfigError (a
        TrialError: the trial fails with this reason, the sweep goes on) naming the key.
        """
        out: dict[str, Any] = {}
        cfg = None
        for p in self.space:
            if not p.derived or not p.active(values):
                continue
            cfg = cfg or self.config(values)
            value = self.derive(p, cfg)
            cfg = with_key(cfg, p.key, value)
            out[p.key] = value
        return out

    @staticmethod
    def derive(p: Param, cfg: TrialConfig) -> Any:
        """The value of derived param `p` in `cfg`; a ConfigError naming its key if it cannot be computed."""
        try:
            return p.dist.evaluate(lambda key: get_key(cfg, key))
        except ExprError as e:
            raise ConfigError(p.key, e.message, e.fix) from None
