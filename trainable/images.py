"""One image file read for training or evaluation: its crop drawn on the header's size, then
decoded (at 1/2, 1/4 or 1/8 scale where a JPEG allows) and resized, as torchvision's
RandomResizedCrop, Resize and CenterCrop do. Image folders (trainable.stream) and tar shards
(trainable.shards) read their images through it, in DataLoader workers.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchcodec.decoders import decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from .config import Augment, Data
from .policies import POLICIES

RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random resized crop (Szegedy et al. 2015)
TORCHCODEC_DECODES = ("JPEG", "PNG", "WEBP")  # PIL's names of the formats torchcodec decodes faster than PIL
STATS_IMAGES = 512      # images sampled for the channel mean and std
JPEG_START = (0xFF, 0xD8)  # the first two bytes of every JPEG file (its SOI marker)


def folder_paths(cfg: Data) -> tuple[Path, Path]:
    base = Path(os.path.expanduser(cfg.root))
    return base / cfg.train_dir, base / cfg.test_dir


def train_policy(augment: Augment):
    """The per-image augmentation policy a loader worker applies after the crop (None: none)."""
    return POLICIES.get(augment.policy.name)(augment.policy) if augment.policy.name != "none" else None


def image_rng(seed: int, epoch: int, image: int, copy: int) -> np.random.Generator:
    """The generator of every draw for one copy of one image in one epoch."""
    return np.random.default_rng((seed, epoch, image, copy))


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of a random resized crop, as torchvision draws one:
    up to 10 tries of an area share in `scale` and a log-uniform aspect ratio, else the centre
    crop of the nearest allowed ratio."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def batched(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack C x H x W views of H x W x C pixels as one channels_last batch, copying each once."""
    return torch.stack([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)


def collate(items: list) -> tuple[torch.Tensor | list[Encoded], torch.Tensor]:
    """(image, label) pairs as one uint8 channels_last batch, or a list where the images are Encoded."""
    images, labels = zip(*items)
    return (list(images) if isinstance(images[0], Encoded) else batched(list(images))), torch.tensor(labels)


def joined(parts: list) -> torch.Tensor | list:
    """Batches (or lists of Encoded images) as one."""
    if len(parts) == 1:
        return parts[0]
    return [e for part in parts for e in part] if isinstance(parts[0], list) else torch.cat(parts)


def _bytes(item: str | bytes) -> bytes:
    if isinstance(item, bytes):
        return item
    with open(item, "rb") as f:
        return f.read()


def decode(data: bytes, img: Image.Image, need: tuple[int, int] | None) -> tuple[torch.Tensor, float]:
    """The image as uint8 RGB C x H x W (pixels laid out H x W x C) and the factor it was shrunk by.

    A JPEG that may shrink at least 2x decodes at 1/2, 1/4 or 1/8 scale in PIL's draft mode,
    keeping both sides at least `need`; otherwise JPEG, PNG and WebP decode with torchcodec
    (straight into a tensor), and other formats with PIL.
    """
    width = img.size[0]
    if need is not None and img.format == "JPEG" and width >= 2 * need[0]:
        img.draft("RGB", (max(1, need[0]), max(1, need[1])))
    elif img.format in TORCHCODEC_DECODES:
        return decode_image(data, mode="RGB"), 1.0
    factor = img.size[0] / width
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1), factor


def train_image(item: str | bytes, size: int, scale: tuple[float, float], rng: np.random.Generator,
                draft: bool = True, flip: bool = False) -> torch.Tensor:
    """A random resized crop of the image (a path or its file's bytes), size x size, uint8
    C x H x W; with `flip`, mirrored half the time. The crop is drawn on the header's size,
    before anything is decoded."""
    data = _bytes(item)
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        left, top, w, h = crop_box(width, height, scale, rng)
        shrink = min(w, h) / size  # decoded just large enough that the crop keeps `size` pixels a side
        need = (math.ceil(width / shrink), math.ceil(height / shrink)) if draft and shrink > 1 else None
        pixels, f = decode(data, img, need)
    top, left, h, w = (round(v * f) for v in (top, left, h, w))
    out = TF.resized_crop(pixels, top, left, h, w, [size, size], antialias=True)
    if flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out


class Encoded(NamedTuple):
    """An image the training device decodes (data.decode: device): its file's bytes, and the crop box
    (top, left, height, width) and flip drawn for it by a worker, or box None for evaluation."""

    data: torch.Tensor  # uint8, the file as it is
    box: tuple[int, int, int, int] | None
    flip: bool


def train_item(item: str | bytes, size: int, scale: tuple[float, float], rng: np.random.Generator, flip: bool,
               on_device: bool) -> torch.Tensor | Encoded:
    """train_image, or with `on_device` the same draws on the header's size and the bytes left encoded."""
    if not on_device:
        return train_image(item, size, scale, rng, flip=flip)
    data = _bytes(item)
    with Image.open(io.BytesIO(data)) as img:
        left, top, w, h = crop_box(*img.size, scale, rng)
    return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), (top, left, h, w),
                   flip and rng.random() < 0.5)


def eval_item(item: str | bytes, size: int, crop: float, on_device: bool) -> torch.Tensor | Encoded:
    if not on_device:
        return eval_image(item, size, crop)
    return Encoded(torch.frombuffer(bytearray(_bytes(item)), dtype=torch.uint8), None, False)


def on_device(xb: torch.Tensor | list[Encoded], size: int, crop: float, device: torch.device) -> torch.Tensor:
    """A batch on `device`: moved, or decoded there (nvJPEG on CUDA, all JPEGs in one call) and cut as
    train_image and eval_image cut on the host."""
    if not isinstance(xb, list):
        return xb.to(device, non_blocking=True)
    jpegs = [i for i, e in enumerate(xb) if tuple(e.data[:2].tolist()) == JPEG_START]
    pixels: list = [None] * len(xb)
    for i, img in zip(jpegs, decode_jpeg([xb[i].data for i in jpegs], mode="RGB", device=device) if jpegs else []):
        pixels[i] = img
    out = []
    for e, img in zip(xb, pixels):
        if img is None:  # PNG, WebP, ...: decoded on the host
            img = decode_image(e.data, mode="RGB").to(device)
        if e.box is None:
            out.append(TF.center_crop(TF.resize(img, [int(size / crop)], antialias=True), [size, size]))
        else:
            cut = TF.resized_crop(img, *e.box, [size, size], antialias=True)
            out.append(cut.flip(-1) if e.flip else cut)
    return batched(out)


def eval_image(item: str | bytes, size: int, crop: float, draft: bool = True) -> torch.Tensor:
    """Resize the shorter side to size / crop, then the centre size x size, uint8 C x H x W
    (torchvision's Resize and CenterCrop)."""
    resize, data = int(size / crop), _bytes(item)
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        short = min(width, height)
        need = (math.ceil(width * resize / short), math.ceil(height * resize / short))
        pixels, _ = decode(data, img, need if draft else None)
    return TF.center_crop(TF.resize(pixels, [resize], antialias=True), [size, size])


def channel_stats(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean and std of uint8 C x H x W images (a sample of the training set, decoded small)."""
    pixels = torch.cat([img.flatten(1).float().div_(255) for img in images], 1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def workers(cfg: Data) -> int:
    """DataLoader workers: data.workers, or (0) every core but the one training."""
    return cfg.workers if cfg.workers else max(1, (os.cpu_count() or 1) - 1)


def loader(dataset, cfg: Data, device: torch.device, persistent: bool = True, **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader over data.workers processes that collates uint8 images into channels_last batches."""
    n = workers(cfg)
    kwargs.setdefault("collate_fn", collate)
    return torch.utils.data.DataLoader(dataset, num_workers=n, persistent_workers=persistent and n > 0,
                                       pin_memory=device.type == "cuda", **kwargs)


class Epochs:
    """What a source gives for training: uint8 batches on the host, in the seeded order of `epoch`."""

    epoch: int  # set by the owner before each epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError
