"""Model registry: each family is one file that registers its builder by name."""
from __future__ import annotations

import torch.nn as nn

from ..config import Model
from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry = Registry("model")


def build_model(model_config: Model, num_classes: int, in_channels: int) -> nn.Module:
    """Build model_config.name for inputs of in_channels channels and num_classes outputs."""
    if model_config.name not in MODELS:
        raise ConfigError("model.name", MODELS.unknown(model_config.name), "`sweep models` lists them")
    return MODELS.get(model_config.name)(model_config, num_classes=num_classes, in_channels=in_channels)


from . import resnet_preact  # noqa: E402,F401  (registers its family)
