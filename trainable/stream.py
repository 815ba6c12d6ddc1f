"""Image data streamed from disk: memory that does not grow with the data set.

An ImageNet-layout folder (one subfolder of images per class) or a set of tar
shards (trainable.shards) too big to hold decoded is read image by image in
DataLoader worker processes (trainable.images: the crop is drawn before the
decode, which shrinks JPEGs where the crop allows). Every draw for an image
comes from a generator seeded by (trial seed, epoch, image, copy). Whole uint8
batches then go to the training device, where normalization and the
float-stage regularizers run batched, as on the resident path
(augment.TrainBatches).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import shards
from .augment import Normalize, float_stage
from .config import Augment, Data
from .errors import DatasetMissing
from .ranks import Place
from .images import (STATS_IMAGES, Epochs, channel_stats, eval_image, eval_item, folder_paths, image_rng, loader,
                     on_device, train_item, train_policy)


@functools.lru_cache(maxsize=4)
def scan(folder: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(paths, labels, class names) of a folder of class subfolders, in torchvision's ImageFolder order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    classes, index = find_classes(folder)
    samples = make_dataset(folder, index, IMG_EXTENSIONS, allow_empty=True)
    return tuple(p for p, _ in samples), tuple(c for _, c in samples), tuple(classes)


def missing_folder(cfg: Data) -> str | None:
    """Why cfg's image folder or shards cannot be read ("key: message; fix: ..."), or None."""
    holding = "tar shards" if cfg.dataset == "image_shards" else "one subfolder of images per class"
    for folder in folder_paths(cfg):
        if not folder.is_dir():
            return (f"data.root: {folder} does not exist; fix: point data.root at a folder holding "
                    f"{cfg.train_dir}/ and {cfg.test_dir}/, each with {holding}")
        if cfg.dataset == "image_shards" and not shards.shard_files(folder):
            return (f"data.root: {folder} holds no .tar shards; fix: write them with `sweep data OUT --shards`, "
                    "or use data.dataset: image_folder for a folder of class subfolders")
    return None


@dataclass(frozen=True)
class FolderSource:
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

    def train_epochs(self, cfg: Data, augment: Augment, batch_size: int, seed: int, device: torch.device,
                     place: Place = Place()) -> Epochs:
        return _FolderEpochs(self, cfg, augment, batch_size, seed, device, place)

    def eval_batches(self, which: str, cfg: Data, batch_size: int, device: torch.device,
                     place: Place = Place()) -> Iterable:
        paths, labels = (self.val_paths, self.val_labels) if which == "val" else (self.test_paths, self.test_labels)
        mine = slice(place.rank, None, place.world)  # each rank evaluates its share
        images = _EvalImages(paths[mine], labels[mine], cfg.test_size or cfg.image_size, cfg.eval_crop, cfg.decode == "device")
        return loader(images, cfg, device, batch_size=batch_size)


def folder_source(cfg: Data) -> FolderSource:
    train_dir, test_dir = folder_paths(cfg)
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
    pick = np.random.default_rng(cfg.split_seed).permutation(len(train_paths))[:STATS_IMAGES]
    mean, std = channel_stats(eval_image(train_paths[i], 32, 1.0) for i in pick)
    return FolderSource(train_paths, tuple(labels[i] for i in train), tuple(paths[i] for i in val),
                        tuple(labels[i] for i in val), tuple(test_paths), tuple(test_labels), len(classes), mean, std)


SOURCES = {"image_folder": folder_source, "image_shards": shards.source}  # keyed by registries.FILE_DATASETS


@functools.lru_cache(maxsize=2)
def source(cfg: Data):
    """The streamed source of cfg's image folder or shards (FolderSource or shards.ShardSource)."""
    if (reason := missing_folder(cfg)) is not None:  # (the rules said so first, for a config they saw)
        raise DatasetMissing(reason)
    return SOURCES[cfg.dataset](cfg)


class _TrainImages(torch.utils.data.Dataset):
    def __init__(self, src: FolderSource, cfg: Data, augment: Augment, seed: int):
        self.paths, self.labels, self.size, self.seed = src.train_paths, src.train_labels, cfg.image_size, seed
        self.scale, self.flip, self.policy = tuple(augment.crop_scale), augment.flip, train_policy(augment)
        self.on_device = cfg.decode == "device"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        i, epoch, copy = key
        rng = image_rng(self.seed, epoch, i, copy)
        img = train_item(self.paths[i], self.size, self.scale, rng, self.flip, self.on_device)
        if self.policy is not None:  # (rules.device_decode_takes_no_policy)
            img = self.policy(img[None], rng)[0]
        return img, self.labels[i]


class _EvalImages(torch.utils.data.Dataset):
    def __init__(self, paths, labels, size: int, crop: float, on_device: bool):
        self.paths, self.labels, self.size, self.crop, self.on_device = paths, labels, size, crop, on_device

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return eval_item(self.paths[i], self.size, self.crop, self.on_device), self.labels[i]


class _EpochOrder(torch.utils.data.Sampler):
    """Batches of (image, epoch, copy) keys in the epoch's seeded order; the ragged tail is dropped.

    With `repeated` r > 1 a batch holds ceil(batch / r) images, each up to r times (copy 0..r-1,
    each its own crop), tiled and cut at the batch size, as augment.TrainBatches does.
    """

    def __init__(self, n: int, batch_size: int, seed: int, repeated: int = 1, place: Place = Place()):
        self.n, self.batch_size, self.seed, self.repeated, self.place = n, batch_size, seed, repeated, place
        self.epoch = 0  # set by the owner before each epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        distinct = -(-self.batch_size // self.repeated)
        for b in range(len(self)):
            chunk = order[b * distinct:(b + 1) * distinct]
            keys = [(int(i), self.epoch, copy) for copy in range(self.repeated) for i in chunk]
            yield keys[:self.batch_size][self.place.share(self.batch_size)]  # this rank's share


class _FolderEpochs(Epochs):
    """A folder's images in random access: any worker count gives one stream for a seed."""

    def __init__(self, src: FolderSource, cfg: Data, augment: Augment, batch_size: int, seed: int,
                 device: torch.device, place: Place):
        self.order = _EpochOrder(len(src.train_paths), batch_size, seed, augment.repeated, place)
        self.loader = loader(_TrainImages(src, cfg, augment, seed), cfg, device, batch_sampler=self.order)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.order.epoch = self.epoch
        return iter(self.loader)


class StreamBatches:
    """Augmented training batches streamed from a source; the same interface as TrainBatches."""

    def __init__(self, src, cfg: Data, augment: Augment, batch_size: int, normalize: Normalize,
                 gen: torch.Generator, device: torch.device, order_gen: torch.Generator | None = None,
                 place: Place = Place()):
        order_gen = order_gen if order_gen is not None else gen  # (drawn alike on every rank)
        seed = int(torch.randint(2 ** 62, (1,), device=order_gen.device, generator=order_gen))
        self.epochs = src.train_epochs(cfg, augment, batch_size, seed, device, place)
        self.augment, self.normalize, self.gen, self.device = augment, normalize, gen, device
        self.size, self.crop = cfg.image_size, cfg.eval_crop

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def epoch(self) -> int:
        return self.epochs.epoch

    @epoch.setter
    def epoch(self, n: int) -> None:
        self.epochs.epoch = n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self.epochs:  # cropped and flipped by the workers, or (data.decode: device) here
            xb, yb = on_device(xb, self.size, self.crop, self.device), yb.to(self.device, non_blocking=True)
            yield float_stage(xb, self.augment, self.normalize, self.gen), yb


class StreamEval:
    """Validation or test images of a source, resized and centre-cropped by the loader's workers."""

    def __init__(self, src, which: str, cfg: Data, device: torch.device, batch_size: int, place: Place = Place()):
        self.loader = src.eval_batches(which, cfg, batch_size, device, place)
        self.device, self.size, self.crop = device, cfg.test_size or cfg.image_size, cfg.eval_crop

    def batches(self, normalize: Normalize) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self.loader:
            yield normalize(on_device(xb, self.size, self.crop, self.device)), yb.to(self.device, non_blocking=True)
