"""Every schedule, read off a real SGD optimizer, against its closed form."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import refused
from trainable import rules
from trainable.config import Data, Schedule, Train, TrialConfig
from trainable.schedules import SCHEDULES, build

BASE_LR = 0.4
SPE, EPOCHS = 10, 20  # 200 steps
TOTAL = SPE * EPOCHS


def multipliers(cfg: Schedule, spe: int = SPE, epochs: int = EPOCHS, base: float = BASE_LR) -> list[float]:
    """The lr of each optimizer step of training, divided by the base lr."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = build(opt, cfg, spe, epochs)
    out = []
    for _ in range(spe * epochs):
        out.append(opt.param_groups[0]["lr"] / base)
        opt.step()
        sched.step()
    return out


def cos_down(floor: float, pct: float) -> float:
    return floor + (1 - floor) * (1 + math.cos(math.pi * pct)) / 2


def linear_warm(start: float, warm: int):
    return lambda i: start + (1 - start) * i / warm


def exp_warm(start: float, warm: int):
    return lambda i: start * (1 / start) ** (i / warm)


def sgdr_form(floor: float, first: int, mult: int):
    """Walk the cycles one by one (integer lengths in steps)."""
    def form(i: int) -> float:
        start, length = 0, first
        while i >= start + length:
            start, length = start + length, length * mult
        return cos_down(floor, (i - start) / length)
    return form


# (config, warm-up closed form, post-warm-up closed form of i = step - warm, warm-up steps)
W = 2 * SPE  # two epochs of warm-up
SPAN = TOTAL - W
CASES = {
    "constant": (Schedule(name="constant", warmup_epochs=2, warmup_start=0.1),
                 linear_warm(0.1, W), lambda i: 1.0),
    "step": (Schedule(name="step", warmup_epochs=2, step_epochs=3, gamma=0.5),
             linear_warm(0.0, W), lambda i: 0.5 ** (i // 30)),
    "step_fractional": (Schedule(name="step", step_epochs=0.3, gamma=0.9),
                        None, lambda i: 0.9 ** (i // 3)),
    "multistep": (Schedule(name="multistep", warmup_epochs=2, warmup_mode="exponential", warmup_start=0.01,
                           milestones=(0.5, 0.25), gamma=0.1),
                  exp_warm(0.01, W), lambda i: 0.1 ** ((i >= 45) + (i >= 90))),
    "exponential": (Schedule(name="exponential", warmup_epochs=2, warmup_mode="exponential", warmup_start=0.05,
                             gamma=0.9),
                    exp_warm(0.05, W), lambda i: 0.9 ** (i / SPE)),
    "linear": (Schedule(name="linear", warmup_epochs=2, warmup_start=0.2, min_lr_ratio=0.2),
               linear_warm(0.2, W), lambda i: 1 - 0.8 * i / SPAN),
    "cosine": (Schedule(name="cosine", warmup_epochs=2, min_lr_ratio=0.1),
               linear_warm(0.0, W), lambda i: cos_down(0.1, i / SPAN)),
    "sgdr": (Schedule(name="sgdr", warmup_epochs=2, restart_epochs=3, restart_mult=2, min_lr_ratio=0.05),
             linear_warm(0.0, W), sgdr_form(0.05, 30, 2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_multiplier_matches_closed_form_at_chosen_steps(case):
    cfg, warm_form, form = CASES[case]
    got = multipliers(cfg)
    warm = int(round(cfg.warmup_epochs * SPE))
    chosen = [0, 1, warm // 2, warm - 1, warm, warm + 1, warm + 29, warm + 30, warm + 44, warm + 45, warm + 89,
              warm + 90, 150, TOTAL - 1]
    for s in sorted(set(c for c in chosen if 0 <= c < TOTAL)):
        want = warm_form(s) if s < warm else form(s - warm)
        assert got[s] == pytest.approx(want, rel=1e-12, abs=1e-15), (case, s)


def test_every_registered_schedule_is_covered():
    assert {c.name for c, _, _ in CASES.values()} | {"onecycle"} == set(SCHEDULES.names())


def test_warmups_reach_one_exactly_where_the_schedule_starts():
    for mode in ("linear", "exponential"):
        got = multipliers(Schedule(name="constant", warmup_epochs=1.5, warmup_mode=mode, warmup_start=0.01))
        assert got[0] == pytest.approx(0.01) and got[15] == 1.0 and got[14] < 1.0
        assert all(a < b for a, b in zip(got[:15], got[1:16]))
    # exponential: equal ratios between steps
    got = multipliers(Schedule(name="constant", warmup_epochs=1, warmup_mode="exponential", warmup_start=0.001))
    ratios = [b / a for a, b in zip(got[:10], got[1:11])]
    assert ratios == pytest.approx([1000 ** 0.1] * 10, rel=1e-12)


def restarts(got: list[float], warm: int = 0) -> list[int]:
    """Steps after warm-up where the lr jumps up."""
    return [i for i in range(warm + 1, len(got)) if got[i] > got[i - 1]]


def test_sgdr_restarts_exactly_at_growing_cycle_boundaries():
    got = multipliers(Schedule(name="sgdr", restart_epochs=1, restart_mult=2, min_lr_ratio=0.0))
    assert restarts(got) == [10, 30, 70, 150]  # cycles of 10, 20, 40, 80 steps
    for start, length in [(0, 10), (10, 20), (30, 40), (70, 80)]:
        assert got[start] == 1.0 and got[start + length // 2] == pytest.approx(0.5, abs=1e-12)
        assert got[start + length - 1] == pytest.approx(cos_down(0.0, (length - 1) / length), rel=1e-12)
    assert got[150] == 1.0 and got[199] == pytest.approx(cos_down(0.0, 49 / 160), rel=1e-12)


def test_sgdr_with_equal_cycles_and_warmup_and_fractional_lengths():
    got = multipliers(Schedule(name="sgdr", warmup_epochs=1, restart_epochs=2.5, restart_mult=1))
    assert restarts(got, warm=10) == list(range(35, TOTAL, 25))
    assert all(got[s] == 1.0 for s in range(10, TOTAL, 25))
    assert got[10:TOTAL] == pytest.approx([sgdr_form(0.0, 25, 1)(i) for i in range(TOTAL - 10)], rel=1e-12)
    got = multipliers(Schedule(name="sgdr", restart_epochs=0.3, restart_mult=1, min_lr_ratio=0.1), epochs=3)
    assert restarts(got) == list(range(3, 30, 3))
    assert got[:3] == pytest.approx([1.0, cos_down(0.1, 1 / 3), cos_down(0.1, 2 / 3)], rel=1e-12)


def test_sgdr_boundaries_survive_float_rounding():
    # With restart_mult 3 the cycle index, found through a logarithm, comes out
    # as 0.9999999999999998 at step 5; the restart must still be there.
    got = multipliers(Schedule(name="sgdr", restart_epochs=0.5, restart_mult=3), epochs=10)
    assert restarts(got) == [5, 20, 65]
    assert [got[s] for s in (0, 5, 20, 65)] == [1.0] * 4
    assert got == pytest.approx([sgdr_form(0.0, 5, 3)(i) for i in range(100)], rel=1e-12, abs=1e-15)


def torch_onecycle(total: int, peak: float, div: float, final_div: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=BASE_LR, total_steps=total, pct_start=peak, div_factor=div, final_div_factor=final_div,
        anneal_strategy="cos", three_phase=False, cycle_momentum=False)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("spe,epochs,peak,div,final_div", [(10, 10, 0.3, 25.0, 1e4), (37, 1, 0.25, 10.0, 100.0),
                                                           (7, 3, 0.5, 4.0, 1e3)])
def test_onecycle_matches_torch_every_step(spe, epochs, peak, div, final_div):
    cfg = Schedule(name="onecycle", onecycle_peak=peak, onecycle_div=div, onecycle_final_div=final_div)
    ours = [m * BASE_LR for m in multipliers(cfg, spe, epochs)]
    theirs = torch_onecycle(spe * epochs, peak, div, final_div)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=0)
    assert ours[0] == pytest.approx(BASE_LR / div) and ours[-1] == pytest.approx(BASE_LR / (div * final_div))


def test_onecycle_after_warmup_is_onecycle_over_the_rest():
    cfg = Schedule(name="onecycle", warmup_epochs=2, warmup_start=0.0)
    got = multipliers(cfg)
    theirs = torch_onecycle(SPAN, 0.3, 25.0, 1e4)
    assert got[:W] == pytest.approx([i / W for i in range(W)])
    assert [m * BASE_LR for m in got[W:]] == pytest.approx(theirs, rel=1e-9, abs=0)


BAD = [
    (dict(warmup_epochs=25), "schedule.warmup_epochs"),
    (dict(warmup_epochs=20), "schedule.warmup_epochs"),
    (dict(warmup_epochs=-1), "schedule.warmup_epochs"),
    (dict(warmup_epochs=1, warmup_mode="exponential", warmup_start=0.0), "schedule.warmup_start"),
    (dict(warmup_epochs=1, warmup_start=-0.1), "schedule.warmup_start"),
    (dict(warmup_mode="cubic"), "schedule.warmup_mode"),
    (dict(name="cosin"), "schedule.name"),
    (dict(name="step", step_epochs=0), "schedule.step_epochs"),
    (dict(name="step", step_epochs=-3), "schedule.step_epochs"),
    (dict(name="step", gamma=0.0), "schedule.gamma"),
    (dict(name="multistep", gamma=-0.1), "schedule.gamma"),
    (dict(name="exponential", gamma=0.0), "schedule.gamma"),
    (dict(name="multistep", milestones=(0.5, 1.5)), "schedule.milestones"),
    (dict(name="multistep", milestones=(-0.1,)), "schedule.milestones"),
    (dict(name="sgdr", restart_epochs=0), "schedule.restart_epochs"),
    (dict(name="sgdr", restart_epochs=-1), "schedule.restart_epochs"),
    (dict(name="sgdr", restart_mult=0.5), "schedule.restart_mult"),
    (dict(name="onecycle", onecycle_peak=0.0), "schedule.onecycle_peak"),
    (dict(name="onecycle", onecycle_peak=1.0), "schedule.onecycle_peak"),
    (dict(name="onecycle", onecycle_peak=1.5), "schedule.onecycle_peak"),
    (dict(name="onecycle", onecycle_div=0.0), "schedule.onecycle_div"),
]


def _trial(schedule: Schedule) -> TrialConfig:
    """A trial of EPOCHS epochs of SPE steps under `schedule`."""
    return TrialConfig(schedule=schedule, train=Train(epochs=EPOCHS), data=Data(subset=SPE * Train().batch_size))


@pytest.mark.parametrize("changes,key", BAD, ids=[f"{k}={list(c.values())[-1]}" for c, k in BAD])
def test_bad_values_are_config_errors_naming_key_and_fix(changes, key):
    error = refused(_trial(Schedule(**changes)))
    assert error.key == key and str(error).startswith(key + ":") and error.fix


def test_keys_of_other_schedules_are_not_checked():
    # a sweep over schedule.name may carry values only another schedule uses
    cfg = Schedule(name="cosine", gamma=0.0, step_epochs=0, restart_mult=0.5, onecycle_peak=2.0)
    rules.check(_trial(cfg), rules.Context(device="cpu"))
    build(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR), cfg, SPE, EPOCHS)
