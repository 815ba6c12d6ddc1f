"""What `sweep models` prints: families with their options, and a model's size and cost."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Data, Model
from .data import FACTS, image_shape
from .models import DEFAULTS, MODELS, PREFIXES, build_model



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
    shape = image_shape(Data(dataset=dataset, image_size=image_size))
    classes = FACTS[dataset].classes if dataset in FACTS else 1000
    model = build_model(model_config, classes, shape[0]).eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return params, counter.get_total_flops() // 2
