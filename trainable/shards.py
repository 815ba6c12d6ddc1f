"""Tar shards in WebDataset's layout (`<key>.jpg` and `<key>.cls` per image), streamed.

Shards suit network storage and many readers: each is one large sequential read
instead of a file per image. Each split is a folder of `.tar` shards with an
`index.json` (the class names and each shard's image count, written by `sweep
data --shards`); shards without one are counted once from their tar headers.
An image is known by its place (shard, position), so the train/val split is
the same seeded permutation over places as the resident and folder paths take,
fixed across trials. An epoch shuffles the shards by (seed, epoch), deals them
to the loader's workers in turn, and mixes each worker's images through a
seeded buffer; every image's draws come from (seed, epoch, place, copy). Only
raw bytes are read from a shard: nothing in one is unpickled.
"""
from __future__ import annotations

import functools
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from webdataset.tariterators import tarfile_samples

from .config import Augment, Data
from .errors import ConfigError
from .ranks import Place
from .images import (STATS_IMAGES, Epochs, channel_stats, collate, eval_image, eval_item, folder_paths, image_rng,
                     joined, loader, train_item, train_policy)

INDEX = "index.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # a sample's image, under the first of these it has
LABEL = "cls"            # a sample's class index, as decimal text
BUFFER = 1000            # images each worker mixes across its shards
MAX_INDEX_BYTES = 16 << 20


def shard_files(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(folder.glob("*.tar")))


@dataclass(frozen=True)
class ShardSet:
    """One split's shards: their files in name order, each one's image count, and the class names."""

    files: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(self.counts)

    def offsets(self) -> np.ndarray:
        """Each shard's first place in the split's numbering."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


@functools.lru_cache(maxsize=4)
def shard_set(folder: str) -> ShardSet:
    """The shards of `folder`, from its index.json or, without one, from their tar headers."""
    files = shard_files(Path(folder))
    index = Path(folder) / INDEX
    if not index.is_file():
        return _counted(files)
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise ConfigError("data.root", f"{index} is larger than {MAX_INDEX_BYTES >> 20} MiB",
                          "remove it to count the shards from their headers")
    try:
        meta = json.loads(index.read_text())
        counts = {str(s["file"]): int(s["count"]) for s in meta["shards"]}
        classes = tuple(str(c) for c in meta["classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("data.root", f"{index} is not a shard index ({e})", "remove it to count the shards "
                          "from their headers, or write the shards again with `sweep data --shards`") from None
    if sorted(counts) != [f.name for f in files]:
        raise ConfigError("data.root", f"{index} lists other shards than the .tar files beside it",
                          "write the shards again with `sweep data --shards`, or remove the index")
    return ShardSet(tuple(str(f) for f in files), tuple(counts[f.name] for f in files), classes)


def _counted(files: tuple[Path, ...]) -> ShardSet:
    """Count each shard's samples and read their labels: tar headers and the small label members only."""
    counts, top = [], -1
    for f in files:
        keys = set()
        with tarfile.open(f) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                keys.add(key)
                if ext == LABEL and member.isfile():
                    top = max(top, int(tar.extractfile(member).read()))
        counts.append(len(keys))
    return ShardSet(tuple(str(f) for f in files), tuple(counts), tuple(str(c) for c in range(top + 1)))


def _image(sample: dict, where: str) -> tuple[bytes, int]:
    """A sample's image bytes and label."""
    data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
    if data is None or LABEL not in sample:
        raise ConfigError("data.root", f"{where}: sample {sample.get('__key__')!r} has no image or no .{LABEL}",
                          f"each sample needs <key>.jpg (or {', '.join(IMAGE_EXTENSIONS[1:])}) and <key>.{LABEL}")
    return data, int(sample[LABEL])


def read(shards: ShardSet, order, keep: np.ndarray) -> Iterator[tuple[int, bytes, int]]:
    """(place, image bytes, label) of the kept images of the shards at `order`, in tar order."""
    offsets = shards.offsets()
    for s in order:
        file, first, count = shards.files[s], offsets[s], shards.counts[s]
        seen = 0
        for pos, sample in enumerate(tarfile_samples([{"url": file}])):
            seen = pos + 1
            if seen > count:
                break
            if keep[first + pos]:
                yield (int(first + pos), *_image(sample, file))
        if seen != count:
            raise ConfigError("data.root", f"{file} holds {'more' if seen > count else seen} images, its index "
                              f"says {count}", "write the shards again with `sweep data --shards`, or remove the index")


def mixed(items: Iterator, rng: np.random.Generator, size: int = BUFFER) -> Iterator:
    """`items` shuffled through a buffer of `size`: each one out is drawn at random from the buffer."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _chunks(items: Iterator[tuple[torch.Tensor, int]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)


@dataclass(frozen=True)
class ShardSource:
    """Train/val places over the train shards (seeded split), and the test shards."""

    train: ShardSet
    test: ShardSet
    train_keep: np.ndarray  # bool per place of `train`
    val_keep: np.ndarray
    test_keep: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int = 3

    def train_epochs(self, cfg: Data, augment: Augment, batch_size: int, seed: int, device: torch.device,
                     place: Place = Place()):
        return _ShardEpochs(self, cfg, augment, batch_size, seed, device, place)

    def eval_batches(self, which: str, cfg: Data, batch_size: int, device: torch.device, place: Place = Place()):
        shards, keep = (self.train, self.val_keep) if which == "val" else (self.test, self.test_keep)
        images = _EvalShards(shards, keep, cfg.test_size or cfg.image_size, cfg.eval_crop, batch_size,
                             cfg.decode == "device", place)
        return loader(images, cfg, device, persistent=False, batch_size=None, collate_fn=None)


def source(cfg: Data) -> ShardSource:
    train_dir, test_dir = folder_paths(cfg)
    train, test = shard_set(str(train_dir)), shard_set(str(test_dir))
    order = torch.randperm(train.size, generator=torch.Generator().manual_seed(cfg.split_seed)).numpy()
    n_val = int(round(cfg.val_fraction * train.size))
    val, chosen = order[:n_val], order[n_val:]
    if cfg.subset is not None:
        chosen = chosen[:cfg.subset]
    if cfg.eval_subset is not None:
        val = val[:cfg.eval_subset]
    train_keep, val_keep = np.zeros(train.size, bool), np.zeros(train.size, bool)
    train_keep[chosen], val_keep[val] = True, True
    test_keep = np.arange(test.size) < (cfg.eval_subset if cfg.eval_subset is not None else test.size)
    # The channel statistics sample the first training images of the shards in a seeded order.
    files = np.random.default_rng(cfg.split_seed).permutation(len(train.files))
    sample = (eval_image(data, 32, 1.0) for _, data, _ in read(train, files, train_keep))
    mean, std = channel_stats(img for img, _ in zip(sample, range(STATS_IMAGES)))
    return ShardSource(train, test, train_keep, val_keep, test_keep, len(train.classes), mean, std)


class _TrainShards(torch.utils.data.IterableDataset):
    """One worker's share of an epoch: its shards in the epoch's order, mixed, cropped, in chunks."""

    def __init__(self, src: ShardSource, cfg: Data, augment: Augment, seed: int, chunk: int, place: Place):
        self.place = place
        self.shards, self.keep, self.size, self.seed, self.chunk = src.train, src.train_keep, cfg.image_size, seed, chunk
        self.on_device = cfg.decode == "device"
        self.scale, self.flip, self.repeated = tuple(augment.crop_scale), augment.flip, augment.repeated
        self.policy = train_policy(augment)
        self.epoch = self.cycle = 0  # set before each pass's workers start (they are not persistent)

    def _images(self) -> Iterator[tuple[torch.Tensor, int]]:
        worker, workers = _worker()
        order = np.random.default_rng((self.seed, self.epoch, self.cycle)).permutation(len(self.shards.files))
        mine = order[self.place.rank::self.place.world][worker::workers]  # dealt to the ranks, then the workers
        items = read(self.shards, mine, self.keep)
        draws = np.random.default_rng((self.seed, self.epoch, self.cycle, self.place.rank, worker))
        for place, data, label in mixed(items, draws):
            for copy in range(self.repeated):
                rng = image_rng(self.seed, self.epoch, place, copy)
                img = train_item(data, self.size, self.scale, rng, self.flip, self.on_device)
                if self.policy is not None:
                    img = self.policy(img[None], rng)[0]
                yield img, label

    def __iter__(self):
        return _chunks(self._images(), self.chunk)


class _EvalShards(torch.utils.data.IterableDataset):
    def __init__(self, shards: ShardSet, keep: np.ndarray, size: int, crop: float, chunk: int, on_device: bool,
                 place: Place):
        self.shards, self.keep, self.size, self.crop, self.chunk = shards, keep, size, crop, chunk
        self.on_device, self.place = on_device, place

    def __iter__(self):
        worker, workers = _worker()
        mine = range(self.place.rank, len(self.shards.files), self.place.world)[worker::workers]
        items = read(self.shards, mine, self.keep)
        return _chunks(((eval_item(data, self.size, self.crop, self.on_device), label) for _, data, label in items),
                       self.chunk)


class _ShardEpochs(Epochs):
    """Fixed-size batches from the workers' chunks: an epoch is len(self) batches whatever each
    worker's share, the ragged tail dropped (with repeated copies, it ends before every image is read).
    With several ranks each reads the shards dealt to it, a share of each batch; a rank whose shards
    run out first reads them again in another order, so every rank takes the epoch's number of steps."""

    def __init__(self, src: ShardSource, cfg: Data, augment: Augment, batch_size: int, seed: int,
                 device: torch.device, place: Place):
        if place.world > len(src.train.files):
            raise ConfigError("train.devices", f"{place.world} ranks and {len(src.train.files)} training shards: a "
                              "rank would read none", "write more, smaller shards (sweep data --shards N)")
        self.share = batch_size // place.world
        self.images = _TrainShards(src, cfg, augment, seed, self.share, place)
        self.loader = loader(self.images, cfg, device, persistent=False, batch_size=None, collate_fn=None)
        self.n, self.batch_size, self.epoch = int(src.train_keep.sum()), batch_size, 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def _chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.images.epoch = self.epoch  # the workers start with each pass and copy it
        for cycle in range(len(self) + 1):  # a pass yields at least one image, so this many are enough
            self.images.cycle = cycle
            yield from self.loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        held_x, held_y, have, made = [], [], 0, 0
        for xb, yb in self._chunks():
            held_x.append(xb)
            held_y.append(yb)
            have += len(yb)
            while have >= self.share and made < len(self):
                x, y = joined(held_x), joined(held_y)
                yield x[:self.share], y[:self.share]
                made += 1
                held_x, held_y = ([x[self.share:]], [y[self.share:]]) if len(y) > self.share else ([], [])
                have -= self.share
            if made == len(self):
                return
