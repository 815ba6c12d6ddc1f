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


class TimmPolicy:
    """A policy of timm's (its RandAugment by a string such as rand-m7-mstd0.5-inc1), image by image.

    timm's operations work on PIL images and draw from Python's `random` and NumPy's global
    generator; each image seeds both from the trial's generator, and the caller's states are
    put back after.
    """

    def __init__(self, config: str):
        self.config = config
        self.transforms: dict[tuple[int, int, int], Callable] = {}

    def transform(self, c: int, h: int, w: int) -> Callable:
        if (c, h, w) not in self.transforms:  # timm sizes translations by the image, as its create_transform does
            from timm.data.auto_augment import rand_augment_transform
            fill = (124, 116, 104) if c == 3 else (124,) * c  # timm's ImageNet mean as the fill
            hparams = {"translate_const": int(min(h, w) * 0.45), "img_mean": fill}
            self.transforms[(c, h, w)] = rand_augment_transform(self.config, hparams)
        return self.transforms[(c, h, w)]

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        import random

        from PIL import Image
        transform = self.transform(*images.shape[-3:])
        out = torch.empty_like(images)
        state, np_state = random.getstate(), np.random.get_state()
        try:
            for i, img in enumerate(images):
                seed = int(rng.integers(2 ** 32))
                random.seed(seed)
                np.random.seed(seed)
                hwc = img.permute(1, 2, 0).numpy()
                pil = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
                done = torch.from_numpy(np.array(transform(pil), dtype=np.uint8))
                out[i] = done[None] if done.dim() == 2 else done.permute(2, 0, 1)
        finally:
            random.setstate(state)
            np.random.set_state(np_state)
        return out


def check_timm(config: str) -> str | None:
    """Why timm refuses the policy string, or None."""
    if config.split("-")[0] != "rand":
        return "not a RandAugment string: it starts with rand-"
    try:
        from timm.data.auto_augment import rand_augment_transform
        rand_augment_transform(config, {"translate_const": 100})
    except Exception as e:  # timm raises assertion and value errors for a string it cannot parse
        return f"{type(e).__name__}: {e}".rstrip(": ")
    return None


@POLICIES.register("timm")
def timm_policy(cfg: PolicyConfig) -> TimmPolicy:
    """timm's RandAugment (Wightman et al. 2021 trained RSB with it): its magnitudes run 0-10."""
    return TimmPolicy(cfg.timm)
