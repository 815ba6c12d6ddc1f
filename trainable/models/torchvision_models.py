"""ImageNet-style models by name: `tv:resnet50` (torchvision), `timm:...` (when timm is installed).

Weights are never downloaded: a sweep trains from scratch, and nothing may
fetch files at run time.
"""
from __future__ import annotations

import torch.nn as nn

from ..config import Model
from ..errors import ConfigError
from . import PREFIXES

# Options a prefixed model accepts; every other Model key must stay null.
TAKES = ("zero_init_residual", "dropout", "drop_path")


def _check(cfg: Model, name: str) -> None:
    for key in Model.__dataclass_fields__:
        if key not in ("name", *TAKES) and getattr(cfg, key) is not None:
            raise ConfigError(f"model.{key}", f"{name} does not take this option",
                              f"its options: {', '.join(TAKES)}; set it to null")


def _torchvision(arch: str, cfg: Model, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        import difflib
        close = difflib.get_close_matches(arch, names, n=1)
        raise ConfigError("model.name", f"torchvision has no classification model {arch!r}",
                          f"did you mean 'tv:{close[0]}'?" if close else "see torchvision.models.list_models()")
    _check(cfg, f"tv:{arch}")
    if in_channels != 3:
        raise ConfigError("model.name", f"tv:{arch} expects 3-channel images, the dataset has {in_channels}",
                          "use a CIFAR-style family (`sweep models`) or a 3-channel dataset")
    builder = tvm.get_model_builder(arch)
    kwargs = {"weights": None, "num_classes": num_classes}
    extra = {"zero_init_residual": cfg.zero_init_residual, "dropout": cfg.dropout,
             "stochastic_depth_prob": cfg.drop_path}
    for key, value in extra.items():
        if value is not None:
            kwargs[key] = value
    try:
        return builder(**kwargs)
    except TypeError as e:  # the model class refused one of the options
        given = next((k for k in extra if k in str(e)), "zero_init_residual")
        key = "drop_path" if given == "stochastic_depth_prob" else given
        raise ConfigError(f"model.{key}", f"tv:{arch} does not take this option", "set it to null") from None


def _timm(arch: str, cfg: Model, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError("model.name", f"timm:{arch} needs the timm package",
                          "pip install 'recipe-sweep[timm]'") from None
    _check(cfg, f"timm:{arch}")
    if not timm.is_model(arch):
        raise ConfigError("model.name", f"timm has no model {arch!r}", "see timm.list_models()")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if cfg.dropout is not None:
        kwargs["drop_rate"] = cfg.dropout
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    return timm.create_model(arch, **kwargs)


PREFIXES["tv:"] = _torchvision
PREFIXES["timm:"] = _timm
