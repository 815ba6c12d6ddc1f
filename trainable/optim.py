"""Optimizers built from the `optim` config section.

SGD, Adam and AdamW are torch's own. AdaBound, LARS and LAMB are written here
from their papers' definitions, so each step can be checked against them by hand.
Trust ratios stay tensors on the parameters' device: no host sync per step.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .compat import SCALER_AWARE, scaler_verdict
from .config import Optim
from . import registries

Builder = Callable[[list[dict], Optim, float], torch.optim.Optimizer]
OPTIMIZERS = registries.OPTIMIZERS

# Normalization layers: their affine parameters set a scale, not a feature, so decaying them only hurts.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# ---- optimizers written from the papers -----------------------------------
# Each step is a fixed number of foreach kernels over all of a group's tensors, whatever
# their number. Under fp16 they take the GradScaler's verdict on the device (found_inf)
# and skip a step with inf/NaN gradients there, as torch's fused optimizers do, so the
# scaler never reads a value back to the host.

def _closure_loss(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _with_grads(group: dict, kind: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = [p for p in group["params"] if p.grad is not None]
    if any(p.grad.is_sparse for p in params):
        raise RuntimeError(f"{kind} does not support sparse gradients")
    return params, [p.grad for p in params]


def _scaled(opt: torch.optim.Optimizer, grads: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """(gradients, keep): keep is None without a GradScaler; with one, a 0-d tensor, 0 when
    this step is to be skipped, and the gradients are unscaled and zero where it is."""
    found, scale = scaler_verdict(opt)
    if found is None:
        return grads, None
    if scale is not None:  # not unscaled by the caller
        grads = torch._foreach_div(grads, scale)
    skip = found > 0
    # No foreach `where`: zero the gradients one tensor at a time (fp16 only; inf * 0 would be NaN).
    return [torch.where(skip, 0, g) for g in grads], (~skip).to(grads[0].dtype)


def _state(opt: torch.optim.Optimizer, params: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    """Each parameter's state tensor `name`, zeros at the first step."""
    out = []
    for p in params:
        state = opt.state[p]
        if name not in state:
            state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out.append(state[name])
    return out


def _trust_ratio(w_norm: torch.Tensor, other_norm: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """`ratio`, or 1 where either norm is 0 (a fresh zero tensor or a zero gradient)."""
    return torch.where((w_norm > 0) & (other_norm > 0), ratio, torch.ones_like(ratio))


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors))


def _adam_moments(opt: torch.optim.Optimizer, params, grads, beta1: float, beta2: float, keep):
    """Update Adam's moments in place; yield (step count, params, first and second moments)
    for each step count (the parameters of a group share one, unless some had no gradient)."""
    steps = []
    for p in params:
        state = opt.state[p]
        state["step"] = state.get("step", 0) + 1
        steps.append(state["step"])
    m, v = _state(opt, params, "exp_avg"), _state(opt, params, "exp_avg_sq")
    if keep is None:
        b1, b2, g = beta1, beta2, grads
    else:  # a skipped step leaves the moments as they were
        b1, b2 = 1 - keep * (1 - beta1), 1 - keep * (1 - beta2)
        g = torch._foreach_mul(grads, keep)
    torch._foreach_mul_(m, b1)
    torch._foreach_add_(m, g, alpha=1 - beta1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1 - beta2)
    for t in sorted(set(steps)):
        pick = [i for i, s in enumerate(steps) if s == t]
        yield t, [params[i] for i in pick], [m[i] for i in pick], [v[i] for i in pick]


class AdaBound(torch.optim.Optimizer):
    """Adam with each element's step size clipped into bounds closing on final_lr (Luo et al. 2019).

    It starts as Adam and ends as SGD with momentum at final_lr. As in the paper's
    code, final_lr follows the lr schedule (times lr / base_lr, base_lr being the
    group's lr when added) and weight decay is L2, added to the gradient.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), final_lr: float = 0.1,
                 gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0):
        if not lr > 0 or not final_lr > 0 or not gamma > 0:
            raise ValueError(f"AdaBound needs lr, final_lr and gamma > 0, got {lr}, {final_lr}, {gamma}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), final_lr=final_lr, gamma=gamma, eps=eps,
                                      weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        # Recorded before any scheduler rescales lr (warm-up may start it at 0).
        self.param_groups[-1].setdefault("base_lr", self.param_groups[-1]["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params, grads = _with_grads(group, "AdaBound")
            if not params:
                continue
            grads, keep = _scaled(self, grads)
            beta1, beta2 = group["betas"]
            lr, gamma, wd = group["lr"], group["gamma"], group["weight_decay"]
            final_lr = group["final_lr"] * lr / group["base_lr"]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            for t, ps, m, v in _adam_moments(self, params, grads, beta1, beta2, keep):
                adam_lr = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                lower = final_lr * (1 - 1 / (gamma * t + 1))
                upper = final_lr * (1 + 1 / (gamma * t))
                step_size = torch._foreach_sqrt(v)
                torch._foreach_add_(step_size, group["eps"])
                torch._foreach_reciprocal_(step_size)
                torch._foreach_mul_(step_size, adam_lr)
                torch._foreach_clamp_min_(step_size, lower)
                torch._foreach_clamp_max_(step_size, upper)
                torch._foreach_mul_(step_size, m)
                if keep is not None:
                    torch._foreach_mul_(step_size, keep)
                torch._foreach_sub_(ps, step_size)
        return loss


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise lr from each tensor's trust ratio (You et al. 2017).

    v <- momentum * v + lr * ratio * (g + wd * w);  w <- w - v, with
    ratio = trust_coefficient * ||w|| / (||g|| + wd * ||w|| + eps), 1 when either norm is 0.
    Groups with lars_exclude=True (BN parameters, biases) take a plain momentum-SGD
    step without weight decay, as the paper prescribes.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, eps: float = 1e-8):
        if not lr >= 0 or not 0 <= momentum < 1 or not trust_coefficient > 0:
            raise ValueError(f"LARS needs lr >= 0, 0 <= momentum < 1 and trust_coefficient > 0, "
                             f"got {lr}, {momentum}, {trust_coefficient}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params, grads = _with_grads(group, "LARS")
            if not params:
                continue
            grads, keep = _scaled(self, grads)
            wd, momentum = group["weight_decay"], group["momentum"]
            if not group["lars_exclude"]:  # excluded: no trust ratio and no weight decay
                w_norm, g_norm = _norms(params), _norms(grads)
                ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                grads = torch._foreach_add(grads, params, alpha=wd)
                torch._foreach_mul_(grads, _trust_ratio(w_norm, g_norm, ratio).unbind())
            buf = _state(self, params, "momentum_buffer")
            if keep is not None:  # a skipped step leaves buffers and weights as they were
                grads = torch._foreach_mul(grads, keep)
                momentum = 1 - keep * (1 - momentum)
            torch._foreach_mul_(buf, momentum)
            torch._foreach_add_(buf, grads, alpha=group["lr"])
            torch._foreach_sub_(params, buf if keep is None else torch._foreach_mul(buf, keep))
        return loss


class LAMB(torch.optim.Optimizer):
    """Adam moments, decoupled decay and a layer-wise trust ratio (You et al. 2019).

    r = m_hat / (sqrt(v_hat) + eps) + wd * w;  w <- w - lr * ||w|| / ||r|| * r,
    the ratio being 1 when either norm is 0. Groups with adapt=False (BN parameters and
    biases under optim.no_decay_bn_bias, as timm's LAMB leaves its undecayed groups, which
    RSB trained with) take the step without the trust ratio.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if not lr >= 0:
            raise ValueError(f"LAMB needs lr >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params, grads = _with_grads(group, "LAMB")
            if not params:
                continue
            grads, keep = _scaled(self, grads)
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            for t, ps, m, v in _adam_moments(self, params, grads, beta1, beta2, keep):
                r = torch._foreach_div(m, 1 - beta1 ** t)
                denom = torch._foreach_div(v, 1 - beta2 ** t)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, group["eps"])
                torch._foreach_div_(r, denom)
                if wd:
                    torch._foreach_add_(r, ps, alpha=wd)
                if group["adapt"]:
                    w_norm, r_norm = _norms(ps), _norms(r)
                    ratio = _trust_ratio(w_norm, r_norm, w_norm / r_norm)
                    torch._foreach_mul_(r, (ratio if keep is None else ratio * keep).unbind())
                elif keep is not None:
                    torch._foreach_mul_(r, keep)
                torch._foreach_add_(ps, r, alpha=-group["lr"])
        return loss


for _cls in (AdaBound, LARS, LAMB):  # GradScaler hands them its verdict as tensors (_scaled)
    setattr(_cls, SCALER_AWARE, True)


# ---- the registry ----------------------------------------------------------

FUSED_DEVICES = ("cuda", "cpu")


def _fused(groups: list[dict]) -> bool:
    """Torch's fused kernels where they exist: one kernel for the whole step, and under fp16 the
    GradScaler hands them its inf check on the device instead of reading it back every step."""
    return all(p.device.type in FUSED_DEVICES and p.is_floating_point() for g in groups for p in g["params"])


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, dampening=cfg.dampening,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, fused=_fused(groups))


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                            fused=_fused(groups))


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=_fused(groups))


@OPTIMIZERS.register("adabound")
def adabound(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return AdaBound(groups, lr=lr, betas=cfg.betas, final_lr=cfg.final_lr, gamma=cfg.bound_gamma, eps=cfg.eps,
                    weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("lars")
def lars(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                trust_coefficient=cfg.trust_coefficient, eps=cfg.eps)


@OPTIMIZERS.register("lamb")
def lamb(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return LAMB(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


# ---- public entry points -----------------------------------------------------

def scaled_lr(cfg: Optim, batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr is given per reference_batch images."""
    return cfg.lr * batch_size / cfg.reference_batch if cfg.scale_lr else cfg.lr


def param_groups(model: nn.Module, cfg: Optim) -> list[dict]:
    """All parameters once each, split into decayed and exempt groups.

    Exempt are every normalization layer's parameters and every bias, found by
    module type and name (a 1-d weight may be a real feature). They get weight
    decay 0 with no_decay_bn_bias, and always under LARS, which also skips their
    trust ratio (lars_exclude), as in the LARS paper; LAMB skips it for them too (adapt=False).
    """
    is_lars = cfg.name == "lars"
    params = list(model.parameters())
    if not (cfg.no_decay_bn_bias or is_lars):
        return [{"params": params}]
    exempt_ids = {id(p) for module in model.modules() for name, p in module.named_parameters(recurse=False)
                  if isinstance(module, NORM_TYPES) or name.endswith("bias")}
    decayed = {"params": [p for p in params if id(p) not in exempt_ids], "weight_decay": cfg.weight_decay}
    exempt = {"params": [p for p in params if id(p) in exempt_ids], "weight_decay": 0.0}
    if is_lars:
        exempt["lars_exclude"] = True
    if cfg.name == "lamb":
        exempt["adapt"] = False
    return [g for g in (decayed, exempt) if g["params"]]


def build(model: nn.Module, cfg: Optim, batch_size: int) -> torch.optim.Optimizer:
    """The optimizer for `model`, its lr scaled to `batch_size` when optim.scale_lr is on
    (its values checked by trainable.rules)."""
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg), cfg, scaled_lr(cfg, batch_size))


def clip_gradients(model: nn.Module, cfg: Optim) -> None:
    """Clip the gradients' global norm to optim.grad_clip (call after GradScaler.unscale_)."""
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
