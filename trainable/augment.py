"""Augmentation of whole uint8 batches on the training device.

One gather per batch replaces a per-image PIL pipeline: the padded dataset is
kept resident and each batch is cut out of it at random offsets.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .config import Augment


def random_crop(padded: torch.Tensor, idx: torch.Tensor, size: tuple[int, int], pad: int,
                gen: torch.Generator) -> torch.Tensor:
    """Crop images idx of a pre-padded N x C x (H+2p) x (W+2p) tensor at random offsets."""
    b, dev = len(idx), padded.device
    h, w = size
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=gen)
    rows = (oy + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox + torch.arange(w, device=dev))[:, None, None, :]
    chans = torch.arange(padded.shape[1], device=dev)[None, :, None, None]
    return padded[idx[:, None, None, None], chans, rows, cols]


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image crops of random area share and aspect ratio, resized to size x size.

    One roi_align call crops and bilinearly resizes the whole batch; a crop
    that would not fit is clamped to the image.
    """
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen) * h * w
    log_r = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(1, w)
    ch = torch.sqrt(area / aspect).clamp(1, h)
    x0 = torch.rand(b, device=dev, generator=gen) * (w - cw)
    y0 = torch.rand(b, device=dev, generator=gen) * (h - ch)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1)
    return roi_align(x.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def cutout(x: torch.Tensor, size: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): zero a size x size square centred at a uniform point.

    The square is clipped at the border, so patches near an edge are smaller,
    as in the paper. Works on any batch (uint8 or normalized float).
    """
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b, 1, 1), device=dev, generator=gen)
    cx = torch.randint(0, w, (b, 1, 1), device=dev, generator=gen)
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    patch = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    patch &= (torch.rand(b, 1, 1, device=dev, generator=gen) < prob)
    return x.masked_fill(patch[:, None], 0)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class Normalize:
    """uint8 -> float, (x/255 - mean) / std as one fused multiply-add."""

    def __init__(self, mean, std, enabled: bool, device, channels_last: bool):
        mean = torch.tensor(mean if enabled else [0.0] * len(mean), device=device)
        std = torch.tensor(std if enabled else [1.0] * len(std), device=device)
        self.scale = (1.0 / (255.0 * std))[None, :, None, None]
        self.shift = (-mean / std)[None, :, None, None]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale)


class TrainBatches:
    """Shuffled, augmented training batches from a resident uint8 tensor."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, cfg: Augment,
                 normalize: Normalize, gen: torch.Generator, out_size: int | None = None):
        self.pad, self.flip = cfg.crop_padding, cfg.flip
        self.rrc = (out_size, tuple(cfg.crop_scale)) if cfg.random_resized_crop else None
        self.size = tuple(x.shape[2:])
        self.x = F.pad(x, [self.pad] * 4) if self.pad else x
        self.y, self.batch_size, self.normalize, self.gen = y, batch_size, normalize, gen

    def __len__(self) -> int:
        return len(self.y) // self.batch_size  # the ragged tail would give BN a tiny batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), device=self.x.device, generator=self.gen)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = random_crop(self.x, idx, self.size, self.pad, self.gen) if self.pad else self.x[idx]
            if self.rrc:
                xb = random_resized_crop(xb, *self.rrc, self.gen)
            if self.flip:
                xb = random_flip(xb, self.gen)
            yield self.normalize(xb), self.y[idx]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, normalize: Normalize):
    for i in range(0, len(y), batch_size):
        yield normalize(x[i:i + batch_size]), y[i:i + batch_size]
