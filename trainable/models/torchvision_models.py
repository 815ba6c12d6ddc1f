"""ImageNet-style models by name: `tv:resnet50` (torchvision), `timm:resnet50d` (timm).

Weights are never downloaded: a sweep trains from scratch, and nothing may
fetch files at run time.
"""
from __future__ import annotations

import difflib
import inspect

import torch.nn as nn

from ..config import Model
from ..errors import ConfigError
from . import PREFIXES, Prefix, Shape

# Options a prefixed model may accept (Model key -> the builder's keyword); every other Model key stays null.
TORCHVISION_KEYS = {"zero_init_residual": "zero_init_residual", "dropout": "dropout",
                    "drop_path": "stochastic_depth_prob"}
TIMM_KEYS = {"dropout": "drop_rate", "drop_path": "drop_path_rate"}


def _only(cfg: Model, name: str, takes) -> None:
    for key in Model.__dataclass_fields__:
        if key not in ("name", *takes) and getattr(cfg, key) is not None:
            raise ConfigError(f"model.{key}", f"{name} does not take this option",
                              f"its options: {', '.join(takes)}; set it to null")


def _given(cfg: Model, keys: dict[str, str]) -> dict[str, object]:
    return {keys[k]: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def _tv_check(arch: str, cfg: Model, shape: Shape | None) -> None:
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=1)
        raise ConfigError("model.name", f"torchvision has no classification model {arch!r}",
                          f"did you mean 'tv:{close[0]}'?" if close else "see torchvision.models.list_models()")
    _only(cfg, f"tv:{arch}", TORCHVISION_KEYS)
    if shape is not None and shape[0] != 3:
        raise ConfigError("model.name", f"tv:{arch} expects 3-channel images, the dataset has {shape[0]}",
                          "use a CIFAR-style family (`sweep models`) or a 3-channel dataset")
    # The model class must take each option given: its builder passes **kwargs on to it.
    model_class = inspect.signature(tvm.get_model_builder(arch)).return_annotation
    if not inspect.isclass(model_class):
        return
    taken = inspect.signature(model_class).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in taken.values()):
        return  # takes anything by name: its builder refuses what it cannot use
    for key, keyword in TORCHVISION_KEYS.items():
        if getattr(cfg, key) is not None and keyword not in taken:
            raise ConfigError(f"model.{key}", f"tv:{arch} does not take this option", "set it to null")


def _torchvision(arch: str, cfg: Model, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model_builder(arch)(weights=None, num_classes=num_classes, **_given(cfg, TORCHVISION_KEYS))


def _timm_check(arch: str, cfg: Model, shape: Shape | None) -> None:
    import timm
    _only(cfg, f"timm:{arch}", TIMM_KEYS)
    if not timm.is_model(arch):
        raise ConfigError("model.name", f"timm has no model {arch!r}", "see timm.list_models()")


def _timm(arch: str, cfg: Model, num_classes: int, in_channels: int) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                             **_given(cfg, TIMM_KEYS))


PREFIXES["tv:"] = Prefix(_tv_check, _torchvision)
PREFIXES["timm:"] = Prefix(_timm_check, _timm)
