"""Learning-rate schedules as per-iteration multipliers of the initial lr.

Each schedule is a function of progress t in [0, 1] after warm-up; warm-up is
applied in front of any of them, so adding a schedule is one small function.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import torch

from .config import Schedule
from .registry import Registry

SCHEDULES: Registry[Callable[[Schedule], Callable[[float], float]]] = Registry("schedule")


@SCHEDULES.register("cosine")
def cosine(cfg: Schedule):
    floor = cfg.min_lr_ratio
    return lambda t: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("multistep")
def multistep(cfg: Schedule):
    points = sorted(cfg.milestones)
    return lambda t: cfg.gamma ** bisect.bisect_right(points, t)


def factor_fn(cfg: Schedule, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """lr multiplier at optimizer step `step` (0-based)."""
    total = steps_per_epoch * epochs
    warm = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
    after = SCHEDULES.get(cfg.name)(cfg)
    span = max(total - warm, 1)

    def factor(step: int) -> float:
        if step < warm:
            return cfg.warmup_start + (1 - cfg.warmup_start) * step / warm
        return after(min((step - warm) / span, 1.0))

    return factor


def build(optimizer: torch.optim.Optimizer, schedule_config: Schedule, steps_per_epoch: int,
          epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A torch scheduler to be stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor_fn(schedule_config, steps_per_epoch, epochs))
