"""Model registry: each family is one file that registers its builder, its option defaults,
its valid depths and any further rule of its own.

Files in this package register themselves on import; adding a family is
adding a file. `check_model` runs every rule a family declares (the trial
config's one validation pass calls it); `build_model` fills the family's
defaults into the options the config leaves null and builds it.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import torch.nn as nn

from .. import registries
from ..config import Model
from ..errors import ConfigError

MODELS = registries.MODELS
Shape = tuple  # (channels, height, width) of the input; height and width may be None (not known yet)


@dataclasses.dataclass(frozen=True)
class Depth:
    """Valid depths: per_block * n + extra, n >= 1 blocks per stage; per_block may depend on model.block."""

    per_block: int | Mapping[str, int]
    extra: int

    def blocks(self, name: str, depth: int, block: str | None = None) -> int:
        """Blocks per stage, or a ConfigError listing valid depths."""
        per = self.per_block[block] if isinstance(self.per_block, Mapping) else self.per_block
        if depth < per + self.extra or (depth - self.extra) % per:
            valid = ", ".join(str(per * n + self.extra) for n in range(1, 5))
            kind = f"{name} {block}" if isinstance(self.per_block, Mapping) else name
            raise ConfigError("model.depth", f"{kind} needs depth {per}n+{self.extra}, got {depth}",
                              f"use one of {valid}, ...")
        return (depth - self.extra) // per


@dataclasses.dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]
    defaults: dict[str, Any]
    depths: Depth | None = None
    check: Callable[[SimpleNamespace, Shape | None], None] | None = None  # raises ConfigError


class Prefix(NamedTuple):
    """Models named `PREFIX:arch` from another library: a check (arch, config, shape) and a builder."""

    check: Callable[[str, Model, Shape | None], None]
    build: Callable[[str, Model, int, int], nn.Module]


FAMILIES: dict[str, Family] = {}
DEFAULTS: dict[str, dict[str, Any]] = {}  # name -> option defaults (`sweep models`)
PREFIXES: dict[str, Prefix] = {}  # "tv:" -> Prefix


def family(name: str, depths: Depth | None = None, check=None, **defaults):
    """Register a builder `(opts, num_classes, in_channels) -> nn.Module` with its option defaults,
    its valid depths (the builder finds blocks per stage in `opts.blocks`) and a check of its own."""
    def add(builder):
        MODELS.register(name)(builder)
        FAMILIES[name] = Family(builder, defaults, depths, check)
        DEFAULTS[name] = defaults
        return builder
    return add


def options(model_config: Model, name: str) -> SimpleNamespace:
    """The family's options: the config's values over its defaults; refuses options it does not take."""
    fam = FAMILIES[name]
    opts = {}
    for f in dataclasses.fields(Model):
        if f.name == "name":
            continue
        value = getattr(model_config, f.name)
        if f.name in fam.defaults:
            opts[f.name] = fam.defaults[f.name] if value is None else value
        elif value is not None:
            raise ConfigError(f"model.{f.name}", f"{name} does not take this option",
                              f"its options: {', '.join(fam.defaults) or 'none'}; set it to null")
    if fam.depths is not None:
        opts["blocks"] = fam.depths.blocks(name, opts["depth"], opts.get("block"))
    return SimpleNamespace(**opts)


def _prefix(name: str) -> tuple[Prefix, str] | None:
    prefix, sep, rest = name.partition(":")
    return (PREFIXES[prefix + ":"], rest) if sep and prefix + ":" in PREFIXES else None


def check_model(model_config: Model, shape: Shape | None) -> None:
    """Every rule of model_config's family, for inputs of `shape` (None: not known yet)."""
    name = model_config.name
    if (found := _prefix(name)) is not None:
        found[0].check(found[1], model_config, shape)
        return
    if name not in MODELS:
        known = MODELS.unknown(name) + (f"; or a prefix: {', '.join(PREFIXES)}" if PREFIXES else "")
        raise ConfigError("model.name", known, "`sweep models` lists them")
    opts = options(model_config, name)
    if FAMILIES[name].check is not None:
        FAMILIES[name].check(opts, shape)


def build_model(model_config: Model, num_classes: int, in_channels: int) -> nn.Module:
    """Build model_config.name for inputs of in_channels channels and num_classes outputs.

    The family's rules run first (the same `check_model` the trial config's rules run), so a
    model built in code is refused as a spec would be.
    """
    check_model(model_config, (in_channels, None, None))
    if (found := _prefix(model_config.name)) is not None:
        return found[0].build(found[1], model_config, num_classes, in_channels)
    name = model_config.name
    return FAMILIES[name].build(options(model_config, name), num_classes=num_classes, in_channels=in_channels)


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")
