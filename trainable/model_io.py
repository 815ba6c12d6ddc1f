"""Saving a trained model with its config, and loading it back (e.g. as a distillation teacher).

The file holds only tensors and plain values, so it loads with
`torch.load(weights_only=True)`: no pickled code runs on load.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .config import Model, from_flat, flatten, to_dict
from .errors import ConfigError
from .models import build_model


def save_model(path: str | Path, model: nn.Module, model_config: Model, num_classes: int, in_channels: int) -> None:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": to_dict(model_config), "num_classes": num_classes, "in_channels": in_channels,
                "state_dict": state}, path)


SAVED_KEYS = ("model", "num_classes", "in_channels", "state_dict")


def read_model_file(path: str | Path, key: str = "train.teacher") -> dict:
    """A file written by save_model, loaded as tensors and plain values; a ConfigError naming `key`
    for a missing file or any other file (no pickled code runs either way)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(key, f"no model file {str(path)!r}", "train one with --set train.save_model=PATH first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not its own (or was tampered with)
        raise ConfigError(key, f"{str(path)!r} is not a model file saved by train.save_model "
                          f"({type(e).__name__})", "point it at a file written with --set train.save_model=PATH") \
            from None
    if not isinstance(saved, dict) or any(k not in saved for k in SAVED_KEYS):
        raise ConfigError(key, f"{str(path)!r} is not a model file saved by train.save_model",
                          "point it at a file written with --set train.save_model=PATH")
    return saved


def load_model(path: str | Path, device: torch.device, key: str = "train.teacher") -> nn.Module:
    """The saved model in eval mode on `device`, its parameters frozen."""
    saved = read_model_file(path, key)
    model_config = from_flat({f"model.{k}": v for k, v in flatten(saved["model"]).items()}).model
    model = build_model(model_config, saved["num_classes"], saved["in_channels"])
    model.load_state_dict(saved["state_dict"])
    model.requires_grad_(False)
    return model.to(device).eval()
