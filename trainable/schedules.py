"""Learning-rate schedules as per-iteration multipliers of the initial lr.

A schedule builder gets the config, the post-warm-up length in optimizer steps
and the steps per epoch, and returns `i -> multiplier` for step i after
warm-up (0-based). Some schedules think in progress t = i / span (cosine,
linear, multistep, onecycle), others in epochs (step, exponential, sgdr), so
builders get both lengths. Warm-up is applied in front of any of them, so
adding a schedule is one small function; each builder checks its own keys.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import torch

from .config import Schedule
from .errors import ConfigError
from . import registries

Factor = Callable[[int], float]
SCHEDULES, WARMUPS = registries.SCHEDULES, registries.WARMUPS

# Steps are integers while boundaries come from float products (0.1 epoch *
# 30 steps); a step within this of a boundary counts as on it.
EPS = 1e-9


def _cosine(start: float, stop: float, pct: float) -> float:
    """From `start` at pct 0 to `stop` at pct 1 along half a cosine."""
    return stop + (start - stop) * 0.5 * (1 + math.cos(math.pi * pct))


@SCHEDULES.register("constant")
def constant(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    return lambda i: 1.0


@SCHEDULES.register("step")
def step(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    every = cfg.step_epochs * steps_per_epoch
    return lambda i: cfg.gamma ** math.floor(i / every + EPS)


@SCHEDULES.register("multistep")
def multistep(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    points = sorted(cfg.milestones)
    return lambda i: cfg.gamma ** bisect.bisect_right(points, min(i / span, 1.0))


@SCHEDULES.register("exponential")
def exponential(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    return lambda i: cfg.gamma ** (i / steps_per_epoch)


@SCHEDULES.register("linear")
def linear(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    floor = cfg.min_lr_ratio
    return lambda i: 1 - (1 - floor) * min(i / span, 1.0)


@SCHEDULES.register("cosine")
def cosine(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    return lambda i: _cosine(1.0, cfg.min_lr_ratio, min(i / span, 1.0))


@SCHEDULES.register("sgdr")
def sgdr(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    """Warm restarts: cycle k lasts restart_epochs * restart_mult**k epochs."""
    mult = cfg.restart_mult
    first = cfg.restart_epochs * steps_per_epoch  # in steps

    def cycle_of(i: int) -> int:
        # Cycle k starts at first * (mult**k - 1) / (mult - 1); invert that.
        if mult == 1:
            return math.floor(i / first + EPS)
        return math.floor(math.log1p(i * (mult - 1) / first) / math.log(mult) + EPS)

    def factor(i: int) -> float:
        k = cycle_of(i)
        start = first * k if mult == 1 else first * (mult ** k - 1) / (mult - 1)
        return _cosine(1.0, cfg.min_lr_ratio, max(i - start, 0.0) / (first * mult ** k))

    return factor


@SCHEDULES.register("onecycle")
def onecycle(cfg: Schedule, span: int, steps_per_epoch: int) -> Factor:
    """Cosine up from lr/div to lr, then cosine down to lr/(div*final_div).

    Phase ends sit at steps peak*span - 1 and span - 1, as in torch's OneCycleLR,
    so the last step of training lands exactly on the final lr.
    """
    low, final = 1 / cfg.onecycle_div, 1 / (cfg.onecycle_div * cfg.onecycle_final_div)
    top = cfg.onecycle_peak * span - 1
    end = span - 1

    def factor(i: int) -> float:
        if top > 0 and i <= top:
            return _cosine(low, 1.0, i / top)
        return _cosine(1.0, final, min((i - top) / (end - top), 1.0))

    return factor


@WARMUPS.register("linear")
def linear_warmup(start: float, pct: float) -> float:
    return start + (1 - start) * pct


@WARMUPS.register("exponential")
def exponential_warmup(start: float, pct: float) -> float:
    return start ** (1 - pct)


def factor_fn(cfg: Schedule, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """lr multiplier at optimizer step `step` (0-based); the values are checked by trainable.rules."""
    total = steps_per_epoch * epochs
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm >= total:  # where the data set's size was not known to the rules (an image folder)
        raise ConfigError("schedule.warmup_epochs", f"{cfg.warmup_epochs} epochs ({warm} steps) leave no training "
                          f"after warm-up ({epochs} epochs, {total} steps)", "shorten warm-up below train.epochs")
    warmup = WARMUPS.get(cfg.warmup_mode)
    after = SCHEDULES.get(cfg.name)(cfg, total - warm, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return warmup(cfg.warmup_start, step / warm)
        return after(step - warm)

    return factor


def build(optimizer: torch.optim.Optimizer, schedule_config: Schedule, steps_per_epoch: int,
          epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A torch scheduler to be stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor_fn(schedule_config, steps_per_epoch, epochs))
