"""Optimizer registry."""
from __future__ import annotations

import torch

from .config import Optim
from .registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(params, cfg: Optim) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def build(model: torch.nn.Module, cfg: Optim) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(model.parameters(), cfg)
