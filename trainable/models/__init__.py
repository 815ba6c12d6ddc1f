"""Model registry: each family is one file that registers its builder and defaults.

Files in this package register themselves on import; adding a family is
adding a file. `build_model` fills the family's defaults into the options the
config leaves null and refuses options the family does not take.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from types import SimpleNamespace
from typing import Any, Callable

import torch.nn as nn

from ..config import Model
from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry = Registry("model")
DEFAULTS: dict[str, dict[str, Any]] = {}
PREFIXES: dict[str, Callable[[str, SimpleNamespace, int, int], nn.Module]] = {}  # "tv:" -> builder


def family(name: str, **defaults):
    """Register a builder `(opts, num_classes, in_channels) -> nn.Module` with its option defaults."""
    def add(builder):
        MODELS.register(name)(builder)
        DEFAULTS[name] = defaults
        return builder
    return add


def options(model_config: Model, name: str, defaults: dict[str, Any]) -> SimpleNamespace:
    opts = {}
    for f in dataclasses.fields(Model):
        if f.name == "name":
            continue
        value = getattr(model_config, f.name)
        if f.name in defaults:
            opts[f.name] = defaults[f.name] if value is None else value
        elif value is not None:
            raise ConfigError(f"model.{f.name}", f"{name} does not take this option",
                              f"its options: {', '.join(defaults) or 'none'}; set it to null")
    return SimpleNamespace(**opts)


def build_model(model_config: Model, num_classes: int, in_channels: int) -> nn.Module:
    """Build model_config.name for inputs of in_channels channels and num_classes outputs."""
    name = model_config.name
    prefix, sep, rest = name.partition(":")
    if sep and prefix + ":" in PREFIXES:
        return PREFIXES[prefix + ":"](rest, model_config, num_classes, in_channels)
    if name not in MODELS:
        known = MODELS.unknown(name) + (f"; or a prefix: {', '.join(PREFIXES)}" if PREFIXES else "")
        raise ConfigError("model.name", known, "`sweep models` lists them")
    return MODELS.get(name)(options(model_config, name, DEFAULTS[name]), num_classes=num_classes,
                            in_channels=in_channels)


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")
