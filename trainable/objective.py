"""The training loss of one batch: soft targets, mixing regularizers, dual cutout, distillation.

The objective runs the model itself because dual cutout needs two forward
passes and distillation a second network; the caller only wraps it in autocast.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import cutout
from .config import Augment, Train
from . import registries

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (batch, soft targets, strength, host rng, device generator) -> (mixed batch, mixed targets, what was drawn).
# Scalars (lam, boxes) come from the host rng, permutations from the generator on the batch's device:
# neither waits for the device.
Mixer = Callable[[torch.Tensor, torch.Tensor, float, np.random.Generator, torch.Generator],
                 tuple[torch.Tensor, torch.Tensor, dict]]

LOSSES, MIXERS = registries.LOSSES, registries.MIXERS
STRENGTH = {"mixup": "alpha", "cutmix": "alpha", "ricap": "beta"}  # the field that switches each mixer on


@LOSSES.register("ce")
def soft_cross_entropy(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy against soft targets, mean over the batch."""
    return -(t * F.log_softmax(logits, 1)).sum(1).mean()


@LOSSES.register("bce")
def binary_cross_entropy(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One sigmoid per class, mean over batch and classes (Wightman et al. 2021, ResNet strikes back)."""
    return F.binary_cross_entropy_with_logits(logits, t)


def _perm(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randperm(n, device=gen.device, generator=gen)


@MIXERS.register("mixup")
def mixup(x, t, alpha, rng, gen):
    """Mixup (Zhang et al. 2018): a convex combination of image pairs and of their targets."""
    lam = float(rng.beta(alpha, alpha))
    perm = _perm(gen, len(x))
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm], {"lam": lam, "perm": perm}


@MIXERS.register("cutmix")
def cutmix(x, t, alpha, rng, gen):
    """CutMix (Yun et al. 2019): paste a box of another image; targets weighted by pixel share.

    The box of area share 1 - lam is clipped at the border, so lam is recomputed
    from the area actually pasted.
    """
    h, w = x.shape[2:]
    lam = float(rng.beta(alpha, alpha))
    side = np.sqrt(1 - lam)
    cut = (round(h * side), round(w * side))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = (int(v) for v in np.clip([cy - cut[0] // 2, cy - cut[0] // 2 + cut[0]], 0, h))
    x1, x2 = (int(v) for v in np.clip([cx - cut[1] // 2, cx - cut[1] // 2 + cut[1]], 0, w))
    perm = _perm(gen, len(x))
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)
    return x, lam * t + (1 - lam) * t[perm], {"lam": lam, "perm": perm, "box": (y1, y2, x1, x2), "cut": cut}


@MIXERS.register("ricap")
def ricap(x, t, beta, rng, gen):
    """RICAP (Takahashi et al. 2018): four random crops of four images tile the output.

    A boundary point (bw, bh) splits the image into four rectangles; each is a
    crop (uniform position) of a differently shuffled batch, and the targets
    are weighted by the rectangles' areas.
    """
    h, w = x.shape[2:]
    bw, bh = round(w * rng.beta(beta, beta)), round(h * rng.beta(beta, beta))
    tiles = [(0, 0, bh, bw), (0, bw, bh, w - bw), (bh, 0, h - bh, bw), (bh, bw, h - bh, w - bw)]
    out, mixed = torch.empty_like(x), torch.zeros_like(t)
    perms, offsets, weights = [], [], []
    for top, left, ph, pw in tiles:  # (top, left, height, width) in the output
        perm = _perm(gen, len(x))
        oy, ox = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
        out[:, :, top:top + ph, left:left + pw] = x[perm, :, oy:oy + ph, ox:ox + pw]
        weight = ph * pw / (h * w)
        mixed += weight * t[perm]
        perms.append(perm)
        offsets.append((oy, ox))
        weights.append(weight)
    return out, mixed, {"boundary": (bh, bw), "tiles": tiles, "perms": perms, "offsets": offsets,
                        "weights": weights}


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class Objective:
    """Loss of one training batch with every enabled regularizer.

    `last` describes the mixing drawn for the latest batch (mixer name, lam,
    permutations, box), so tests and logs can check it against the definitions.
    """

    def __init__(self, augment: Augment, train: Train, num_classes: int, gen: torch.Generator,
                 teacher: nn.Module | None = None):
        self.num_classes, self.gen, self.teacher = num_classes, gen, teacher
        self.eps = augment.label_smoothing
        self.loss_fn = LOSSES.get(train.loss)
        self.threshold = train.bce_threshold if train.loss == "bce" else None
        self.mixers = [(name, getattr(getattr(augment, name), field), getattr(augment, name).prob)
                       for name, field in STRENGTH.items() if getattr(getattr(augment, name), field) > 0]
        self.dual = augment.dual_cutout
        self.distill_alpha, self.temperature = train.distill_alpha, train.distill_temperature
        self.rng = None
        if self.mixers:
            # torch's Beta takes no generator: a host RNG seeded once from gen keeps every draw
            # reproducible from the trial seed, without a device sync per batch.
            seed = torch.randint(2 ** 62, (1,), generator=gen, device=gen.device)
            self.rng = np.random.default_rng(int(seed))
        self.last: dict = {"mixer": None}

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, soft targets): one-hot, one enabled mixer (with its prob), then label smoothing."""
        # Not F.one_hot: it reads the labels' range back to the host, a sync every step on a GPU.
        t = torch.zeros(len(y), self.num_classes, device=y.device).scatter_(1, y[:, None], 1.0)
        self.last = {"mixer": None}
        if self.mixers:
            name, strength, prob = self.mixers[int(self.rng.integers(len(self.mixers)))]
            if self.rng.random() < prob:
                fmt = _memory_format(x)
                x, t, drawn = MIXERS.get(name)(x, t, strength, self.rng, self.gen)
                x = x.contiguous(memory_format=fmt)
                self.last = {"mixer": name, **drawn}
        return x, t * (1 - self.eps) + self.eps / self.num_classes

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar float32 loss to backpropagate, logits of the batch for the training-error metric)."""
        x, t = self.mix(x, y)
        if self.threshold is not None:  # timm's BCE target threshold (RSB A1)
            t = (t > self.threshold).to(t.dtype)
        if self.dual.alpha <= 0:
            logits = model(x).float()
            return self._view_loss(logits, t, x), logits
        # Dual cutout: two cutout views, their mean loss plus a consistency term on the softmax.
        fmt = _memory_format(x)
        views = [cutout(x, self.dual.size, 1.0, self.gen).contiguous(memory_format=fmt) for _ in range(2)]
        logits = [model(v).float() for v in views]
        task = (self._view_loss(logits[0], t, views[0]) + self._view_loss(logits[1], t, views[1])) / 2
        consistency = F.mse_loss(logits[0].softmax(1), logits[1].softmax(1))
        return task + self.dual.alpha * consistency, logits[0]

    def _view_loss(self, logits: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Task loss, blended with distillation (Hinton et al. 2015) from the teacher on the same input."""
        loss = self.loss_fn(logits, t)
        a = self.distill_alpha
        if self.teacher is None or a == 0:
            return loss
        with torch.no_grad():
            teacher = self.teacher(x).float()
        temp = self.temperature
        kl = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(teacher / temp, 1),
                      reduction="batchmean", log_target=True)
        return (1 - a) * loss + a * temp ** 2 * kl
