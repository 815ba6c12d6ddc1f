"""Every use of a private torch or torchvision API in the trainable, each behind one small
function that says why (sweeps/compat.py holds Optuna's and Ray's). tests/test_compat.py fails
when one of these stops behaving as relied on here.
"""
from __future__ import annotations

import torch

# torch.amp.GradScaler: an optimizer class with this attribute set to True gets the scaler's
# verdict as tensors (`found_inf`, and `grad_scale` unless the caller unscaled) instead of the
# scaler reading found_inf back to the host to decide whether to call step() at all.
SCALER_AWARE = "_step_supports_amp_scaling"


def scaler_verdict(opt: torch.optim.Optimizer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(found_inf, grad_scale) as an enabled GradScaler set them for this step; (None, None) without one."""
    return getattr(opt, "found_inf", None), getattr(opt, "grad_scale", None)


def policy_ops(transform) -> dict:
    """torchvision v2 policy: its operations, name -> (magnitudes(bins, height, width), signed)."""
    return transform._AUGMENTATION_SPACE


def autoaugment_sub_policies(transform) -> list:
    """torchvision v2 AutoAugment: its learned sub-policies, each ((op, probability, magnitude bin), ...)."""
    return transform._policies


def apply_policy_op(transform, image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One of the policy's operations on one image, as torchvision's own forward applies it."""
    return transform._apply_image_or_video_transform(image, op, magnitude, interpolation=transform.interpolation,
                                                     fill=transform._fill)
