"""Learned and random augmentation policies, drawn per image from the trial's own generator.

torchvision's v2 policies pick their operations and magnitudes from torch's
global RNG, which dropout, drop path and shake-shake also draw from, and they
read each draw back as a Python number. Here the same operations (torchvision
applies each one) are picked from a NumPy generator seeded from the trial's,
so a policy can run in a thread of its own on the host, beside the training
step, without touching the RNG the training draws from (augment.TrainBatches).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import registries
from .compat import apply_policy_op, autoaugment_sub_policies, policy_ops
from .config import Policy as PolicyConfig

POLICIES = registries.POLICIES

# (generator, image height, width) -> the operations for one image: (torchvision's op name, magnitude)
Draw = Callable[[np.random.Generator, int, int], list[tuple[str, float]]]


@dataclass
class Policy:
    transform: torch.nn.Module  # torchvision's policy: its tables of operations, and their code
    draw: Draw

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Each uint8 image of the batch with its own draw of operations."""
        h, w = images.shape[-2:]
        out = torch.empty_like(images)
        for i, img in enumerate(images):
            for op, magnitude in self.draw(rng, h, w):
                img = apply_policy_op(self.transform, img, op, magnitude)
            out[i] = img
        return out


def _magnitude(space: dict, op: str, bins: int, index: int, rng: np.random.Generator, h: int, w: int) -> float:
    """The magnitude of bin `index` of `op`, negated half the time for a signed op (as torchvision does)."""
    magnitudes_fn, signed = space[op]
    magnitudes = magnitudes_fn(bins, h, w)
    if magnitudes is None:
        return 0.0
    value = float(magnitudes[index])
    return -value if signed and rng.random() <= 0.5 else value


@POLICIES.register("autoaugment")
def autoaugment(cfg: PolicyConfig) -> Policy:
    """AutoAugment's CIFAR-10 policy (Cubuk et al. 2019): one of 25 learned sub-policies per image."""
    from torchvision.transforms import v2
    t = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    sub_policies, space = autoaugment_sub_policies(t), policy_ops(t)

    def draw(rng, h, w):
        sub_policy = sub_policies[int(rng.integers(len(sub_policies)))]
        return [(op, _magnitude(space, op, 10, index, rng, h, w) if index is not None else 0.0)
                for op, prob, index in sub_policy if rng.random() <= prob]
    return Policy(t, draw)


@POLICIES.register("randaugment")
def randaugment(cfg: PolicyConfig) -> Policy:
    """RandAugment (Cubuk et al. 2020): num_ops uniform operations at one fixed magnitude."""
    from torchvision.transforms import v2
    t = v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude)
    space = policy_ops(t)
    ops = list(space)

    def draw(rng, h, w):
        picked = [ops[int(i)] for i in rng.integers(len(ops), size=t.num_ops)]
        return [(op, _magnitude(space, op, t.num_magnitude_bins, t.magnitude, rng, h, w)) for op in picked]
    return Policy(t, draw)


@POLICIES.register("trivialaugment")
def trivialaugment(cfg: PolicyConfig) -> Policy:
    """TrivialAugment (Müller & Hutter 2021): one uniform operation at a uniform magnitude."""
    from torchvision.transforms import v2
    t = v2.TrivialAugmentWide()
    space = policy_ops(t)
    ops = list(space)

    def draw(rng, h, w):
        op = ops[int(rng.integers(len(ops)))]
        bins = t.num_magnitude_bins
        return [(op, _magnitude(space, op, bins, int(rng.integers(bins)), rng, h, w))]
    return Policy(t, draw)
