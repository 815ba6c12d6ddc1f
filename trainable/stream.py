"""Image folders streamed from disk: memory that does not grow with the data set.

An ImageNet-layout folder (one subfolder of images per class) too big to hold
decoded is read image by image in DataLoader worker processes: a random
resized crop is drawn on the image's size before it is decoded, a JPEG is
decoded at 1/2, 1/4 or 1/8 scale when the crop is that much larger than the
output, and only the crop is resized. Every draw for an image comes from a
generator seeded by (trial seed, epoch, image), so a seed gives one stream
whatever the number of workers. Whole batches then go to the training device,
where normalization and the float-stage regularizers run batched, as on the
resident path (augment.TrainBatches).
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augment import Normalize, float_stage
from .config import Augment, Data
from .errors import DatasetMissing
from .policies import POLICIES

RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random resized crop (Szegedy et al. 2015)
STATS_IMAGES = 512      # images sampled for the channel mean and std


@functools.lru_cache(maxsize=4)
def scan(folder: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(paths, labels, class names) of a folder of class subfolders, in torchvision's ImageFolder order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    classes, index = find_classes(folder)
    samples = make_dataset(folder, index, IMG_EXTENSIONS, allow_empty=True)
    return tuple(p for p, _ in samples), tuple(c for _, c in samples), tuple(classes)


def folder_paths(cfg: Data) -> tuple[Path, Path]:
    base = Path(os.path.expanduser(cfg.root))
    return base / cfg.train_dir, base / cfg.test_dir


def missing_folder(cfg: Data) -> str | None:
    """Why cfg's image folder cannot be read ("key: message; fix: ..."), or None."""
    for folder in folder_paths(cfg):
        if not folder.is_dir():
            return (f"data.root: {folder} does not exist; fix: point data.root at a folder holding "
                    f"{cfg.train_dir}/ and {cfg.test_dir}/, each with one subfolder of images per class")
    return None


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


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 C x H x W, a view of the pixels as PIL lays them out (H x W x C): batches of these
    stack into N x H x W x C, which is channels_last N x C x H x W without a copy (batched)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def batched(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack C x H x W views of H x W x C pixels as one channels_last batch, copying each once."""
    return torch.stack([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items)
    return batched(list(images)), torch.tensor(labels)


def _decoded(img: Image.Image, need: tuple[int, int] | None) -> tuple[Image.Image, float]:
    """`img` as RGB and the factor it was shrunk by on decode: a JPEG decodes at 1/2, 1/4 or
    1/8 scale directly (draft mode) while both sides stay at least `need`."""
    width = img.size[0]
    if need is not None and img.format == "JPEG":
        img.draft("RGB", (max(1, need[0]), max(1, need[1])))
    factor = img.size[0] / width
    img.load()
    return (img if img.mode == "RGB" else img.convert("RGB")), factor


def train_image(path: str, size: int, scale: tuple[float, float], rng: np.random.Generator,
                draft: bool = True, flip: bool = False) -> torch.Tensor:
    """A random resized crop of the image at `path`, size x size, uint8 C x H x W; with `flip`,
    mirrored half the time."""
    with Image.open(path) as img:
        width, height = img.size
        left, top, w, h = crop_box(width, height, scale, rng)
        shrink = min(w, h) / size  # decoded just large enough that the crop keeps `size` pixels a side
        need = (math.ceil(width / shrink), math.ceil(height / shrink)) if draft and shrink > 1 else None
        rgb, f = _decoded(img, need)
        box = tuple(round(v * f) for v in (left, top, left + w, top + h))
        out = rgb.crop(box).resize((size, size), Image.BILINEAR)  # as torchvision's resized_crop
        if flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out)


def eval_image(path: str, size: int, crop: float, draft: bool = True) -> torch.Tensor:
    """Resize the shorter side to size / crop, then the centre size x size, uint8 C x H x W
    (torchvision's Resize and CenterCrop)."""
    resize = int(size / crop)
    with Image.open(path) as img:
        width, height = img.size
        short = min(width, height)
        need = (math.ceil(width * resize / short), math.ceil(height * resize / short))
        rgb, _ = _decoded(img, need if draft else None)
        width, height = rgb.size
        new = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        return to_tensor(rgb.resize(new, Image.BILINEAR).crop((left, top, left + size, top + size)))


@dataclass(frozen=True)
class Source:
    """A folder split into train / val (seeded, as the resident path splits) and its test folder."""

    train_paths: tuple[str, ...]
    train_labels: tuple[int, ...]
    val_paths: tuple[str, ...]
    val_labels: tuple[int, ...]
    test_paths: tuple[str, ...]
    test_labels: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int = 3


@functools.lru_cache(maxsize=2)
def source(cfg: Data) -> Source:
    train_dir, test_dir = folder_paths(cfg)
    if (reason := missing_folder(cfg)) is not None:  # (the rules said so first, for a config they saw)
        raise DatasetMissing(reason)
    paths, labels, classes = scan(str(train_dir))
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    n_val = int(round(cfg.val_fraction * len(paths)))
    val, train = order[:n_val], order[n_val:]
    if cfg.subset is not None:
        train = train[:cfg.subset]
    test_paths, test_labels, _ = scan(str(test_dir))
    if cfg.eval_subset is not None:
        val, test_paths, test_labels = val[:cfg.eval_subset], test_paths[:cfg.eval_subset], test_labels[:cfg.eval_subset]
    train_paths = tuple(paths[i] for i in train)
    mean, std = _stats(train_paths, cfg.split_seed)
    return Source(train_paths, tuple(labels[i] for i in train), tuple(paths[i] for i in val),
                  tuple(labels[i] for i in val), tuple(test_paths), tuple(test_labels), len(classes), mean, std)


def _stats(paths: tuple[str, ...], seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean and std over a seeded sample of the training images, decoded small."""
    pick = np.random.default_rng(seed).permutation(len(paths))[:STATS_IMAGES]
    pixels = torch.cat([eval_image(paths[i], 32, 1.0).flatten(1).float().div_(255) for i in pick], 1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


class _TrainImages(torch.utils.data.Dataset):
    def __init__(self, src: Source, size: int, augment: Augment, seed: int):
        self.paths, self.labels, self.size, self.seed = src.train_paths, src.train_labels, size, seed
        self.scale, self.flip = tuple(augment.crop_scale), augment.flip
        self.policy = POLICIES.get(augment.policy.name)(augment.policy) if augment.policy.name != "none" else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        i, epoch, copy = key
        rng = np.random.default_rng((self.seed, epoch, i, copy))
        img = train_image(self.paths[i], self.size, self.scale, rng, flip=self.flip)
        if self.policy is not None:
            img = self.policy(img[None], rng)[0]
        return img, self.labels[i]


class _EvalImages(torch.utils.data.Dataset):
    def __init__(self, paths, labels, size: int, crop: float):
        self.paths, self.labels, self.size, self.crop = paths, labels, size, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return eval_image(self.paths[i], self.size, self.crop), self.labels[i]


class _EpochOrder(torch.utils.data.Sampler):
    """Batches of (image, epoch, copy) keys in the epoch's seeded order; the ragged tail is dropped.

    With `repeated` r > 1 a batch holds ceil(batch / r) images, each up to r times (copy 0..r-1,
    each its own crop), tiled and cut at the batch size, as augment.TrainBatches does.
    """

    def __init__(self, n: int, batch_size: int, seed: int, repeated: int = 1):
        self.n, self.batch_size, self.seed, self.repeated = n, batch_size, seed, repeated
        self.epoch = 0  # set by the owner before each epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        distinct = -(-self.batch_size // self.repeated)
        for b in range(len(self)):
            chunk = order[b * distinct:(b + 1) * distinct]
            keys = [(int(i), self.epoch, copy) for copy in range(self.repeated) for i in chunk]
            yield keys[:self.batch_size]


def workers(cfg: Data) -> int:
    """DataLoader workers: data.workers, or (0) every core but the one training."""
    return cfg.workers if cfg.workers else max(1, (os.cpu_count() or 1) - 1)


def _loader(dataset, device: torch.device, cfg: Data, **kwargs) -> torch.utils.data.DataLoader:
    n = workers(cfg)
    return torch.utils.data.DataLoader(dataset, num_workers=n, persistent_workers=n > 0, collate_fn=_collate,
                                       pin_memory=device.type == "cuda", **kwargs)


class StreamBatches:
    """Augmented training batches streamed from a folder; the same interface as TrainBatches."""

    def __init__(self, src: Source, cfg: Data, augment: Augment, batch_size: int, normalize: Normalize,
                 gen: torch.Generator, device: torch.device):
        seed = int(torch.randint(2 ** 62, (1,), device=gen.device, generator=gen))
        self.order = _EpochOrder(len(src.train_paths), batch_size, seed, augment.repeated)
        images = _TrainImages(src, cfg.image_size, augment, seed)
        self.loader = _loader(images, device, cfg, batch_sampler=self.order)
        self.augment, self.normalize, self.gen, self.device = augment, normalize, gen, device

    def __len__(self) -> int:
        return len(self.order)

    @property
    def epoch(self) -> int:
        return self.order.epoch

    @epoch.setter
    def epoch(self, n: int) -> None:
        self.order.epoch = n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self.loader:  # cropped and flipped by the workers
            xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            yield float_stage(xb, self.augment, self.normalize, self.gen), yb


class StreamEval:
    """Validation or test images of a folder, resized and centre-cropped by the loader's workers."""

    def __init__(self, paths, labels, cfg: Data, device: torch.device, batch_size: int):
        images = _EvalImages(paths, labels, cfg.test_size or cfg.image_size, cfg.eval_crop)
        self.loader = _loader(images, device, cfg, batch_size=batch_size)
        self.device = device

    def batches(self, normalize: Normalize) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self.loader:
            yield normalize(xb.to(self.device, non_blocking=True)), yb.to(self.device, non_blocking=True)
