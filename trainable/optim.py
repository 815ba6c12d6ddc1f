"""Optimizers built from the `optim` config section.

SGD, Adam and AdamW are torch's own. AdaBound, LARS and LAMB are written here
from their papers' definitions, so each step can be checked against them by hand.
Trust ratios stay tensors on the parameters' device: no host sync per step.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn

from .config import Optim
from . import registries

Builder = Callable[[list[dict], Optim, float], torch.optim.Optimizer]
OPTIMIZERS = registries.OPTIMIZERS

# Normalization layers: their affine parameters set a scale, not a feature, so decaying them only hurts.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# ---- optimizers written from the papers -----------------------------------

def _closure_loss(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _with_grad(group: dict, kind: str) -> Iterator[torch.Tensor]:
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{kind} does not support sparse gradients")
        yield p


def _trust_ratio(w_norm: torch.Tensor, other_norm: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """`ratio`, or 1 where either norm is 0 (a fresh zero tensor or a zero gradient)."""
    return torch.where((w_norm > 0) & (other_norm > 0), ratio, torch.ones_like(ratio))


def _adam_moments(state: dict, p: torch.Tensor, grad: torch.Tensor, beta1: float, beta2: float):
    """Update and return Adam's first and second moments and the step count of one parameter."""
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_(grad, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    return m, v, state["step"]


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
            beta1, beta2 = group["betas"]
            lr, gamma, wd = group["lr"], group["gamma"], group["weight_decay"]
            final_lr = group["final_lr"] * lr / group["base_lr"]
            for p in _with_grad(group, "AdaBound"):
                grad = p.grad.add(p, alpha=wd) if wd else p.grad
                m, v, t = _adam_moments(self.state[p], p, grad, beta1, beta2)
                adam_lr = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                lower = final_lr * (1 - 1 / (gamma * t + 1))
                upper = final_lr * (1 + 1 / (gamma * t))
                step_size = (adam_lr / (v.sqrt() + group["eps"])).clamp_(lower, upper)
                p.sub_(step_size.mul_(m))
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
            wd = group["weight_decay"]
            for p in _with_grad(group, "LARS"):
                grad = p.grad
                if not group["lars_exclude"]:  # excluded: no trust ratio and no weight decay
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    grad = grad.add(p, alpha=wd).mul_(_trust_ratio(w_norm, g_norm, ratio))
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad, alpha=group["lr"])
                p.sub_(buf)
        return loss


class LAMB(torch.optim.Optimizer):
    """Adam moments, decoupled decay and a layer-wise trust ratio (You et al. 2019).

    r = m_hat / (sqrt(v_hat) + eps) + wd * w;  w <- w - lr * ||w|| / ||r|| * r,
    the ratio being 1 when either norm is 0.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if not lr >= 0:
            raise ValueError(f"LAMB needs lr >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            for p in _with_grad(group, "LAMB"):
                m, v, t = _adam_moments(self.state[p], p, p.grad, beta1, beta2)
                m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
                r = m_hat.div_(v_hat.sqrt_().add_(group["eps"]))
                if wd:
                    r.add_(p, alpha=wd)
                w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
                ratio = _trust_ratio(w_norm, r_norm, w_norm / r_norm)
                p.sub_(r.mul_(ratio), alpha=group["lr"])
        return loss


# ---- the registry ----------------------------------------------------------

@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, dampening=cfg.dampening,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: Optim, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


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
    trust ratio (lars_exclude), as in the LARS paper.
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
    return [g for g in (decayed, exempt) if g["params"]]


def build(model: nn.Module, cfg: Optim, batch_size: int) -> torch.optim.Optimizer:
    """The optimizer for `model`, its lr scaled to `batch_size` when optim.scale_lr is on
    (its values checked by trainable.rules)."""
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg), cfg, scaled_lr(cfg, batch_size))


def clip_gradients(model: nn.Module, cfg: Optim) -> None:
    """Clip the gradients' global norm to optim.grad_clip (call after GradScaler.unscale_)."""
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
