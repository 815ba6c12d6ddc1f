"""What `sweep models` prints: families with their options, and a model's size and cost."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Model
from .data import NUM_CLASSES
from .models import DEFAULTS, MODELS, PREFIXES, build_model

INPUT = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "kmnist": (1, 28, 28),
         "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


def families_text() -> str:
    lines = []
    for name in MODELS.names():
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        lines.append(f"{name}: {doc[0] if doc else ''}")
        opts = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in DEFAULTS[name].items())
        lines.append(f"    {opts}")
    lines.append("prefixes: " + ", ".join(f"{p}NAME" for p in PREFIXES)
                 + " (torchvision / timm classification models, trained from scratch)")
    return "\n".join(lines)


def size(model_config: Model, dataset: str = "cifar10", image_size: int = 224) -> tuple[int, int]:
    """(parameters, multiply-adds of one forward pass on one image), counted by torch."""
    shape = INPUT.get(dataset, (3, image_size, image_size))
    model = build_model(model_config, NUM_CLASSES.get(dataset, 1000), shape[0]).eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return params, counter.get_total_flops() // 2
