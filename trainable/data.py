"""Datasets as whole uint8 tensors, split into train / val / test.

A trial holds its images as one uint8 tensor on the training device and
augments whole batches there, so no per-image Python runs in the loop.
"""
from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Data
from .errors import ConfigError, DatasetMissing
from . import registries

# Debian's dataset-fashion-mnist package installs the IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_test, y_test
# A loader reads the `data` section and returns the raw splits and the number of classes.
DATASETS = registries.DATASETS
# The `data` keys that decide a dataset's raw tensors; the split and the caps apply after the cache.
SOURCE_KEYS = ("dataset", "root", "download", "synthetic_shape", "synthetic_classes", "synthetic_size",
               "synthetic_seed")
RESIDENT_SHARE = 0.25  # data.storage auto: a folder is held decoded when that takes under this share of RAM


@dataclass(frozen=True)
class Facts:
    """What is known of a data set before it is loaded: the rules read it (batch and image sizes)."""

    shape: tuple[int, int, int]  # channels, height, width
    train_images: int            # before the validation split
    classes: int
    folder: str = ""             # torchvision: the subfolder of data.root that holds it


FACTS: dict[str, Facts] = {}


def dataset(name: str, facts: Facts | None = None):
    """Register a loader (data section -> raw splits and classes) and what is known of its data."""
    def add(loader):
        DATASETS.register(name)(loader)
        if facts is not None:
            FACTS[name] = facts
        return loader
    return add


def reads_files(cfg: Data) -> bool:
    """Whether the data set is a folder or shards of image files (trainable.stream), not a registered loader."""
    return cfg.dataset in registries.FILE_DATASETS


def image_shape(cfg: Data) -> tuple[int, int, int] | None:
    """The shape of one training image as the model sees it (None: not known before loading)."""
    if cfg.dataset == "synthetic":
        return tuple(cfg.synthetic_shape) if len(cfg.synthetic_shape) == 3 else None
    if reads_files(cfg):
        return (3, cfg.image_size, cfg.image_size)
    return FACTS[cfg.dataset].shape if cfg.dataset in FACTS else None


def train_images(cfg: Data) -> int | None:
    """Training images after the validation split and data.subset (None: not known before loading)."""
    total = cfg.synthetic_size if cfg.dataset == "synthetic" else getattr(FACTS.get(cfg.dataset), "train_images", None)
    if total is None:
        return None
    n = total - int(round(cfg.val_fraction * total))
    return min(n, cfg.subset) if cfg.subset is not None else n


def missing(cfg: Data) -> str | None:
    """Why cfg's data set cannot be loaded on this machine without a download, or None."""
    if reads_files(cfg):
        from .stream import missing_folder
        return missing_folder(cfg)
    root = _root(cfg)
    facts = FACTS.get(cfg.dataset)
    if facts is None or not facts.folder or cfg.download or (root / facts.folder).exists():
        return None
    if cfg.dataset == "fashion_mnist":
        if (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
            return None
        return ("data.dataset: fashion_mnist is not installed; fix: `apt-get install dataset-fashion-mnist` "
                "(Debian/Ubuntu), or set data.download=true to fetch it with torchvision")
    return (f"data.dataset: {cfg.dataset} is not in {root}; fix: set data.download=true to fetch it with "
            "torchvision, or point data.root at a folder that holds it")


@dataclass(frozen=True)
class Splits:
    train_x: torch.Tensor  # uint8, N x C x H x W
    train_y: torch.Tensor  # int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_split(folder: Path) -> Raw:
    def load(prefix):
        x = torch.from_numpy(_read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").copy()).unsqueeze(1)
        y = torch.from_numpy(_read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
        return x, y
    return (*load("train"), *load("t10k"))


def _root(cfg: Data) -> Path:
    return Path(os.path.expanduser(cfg.root))


def _torchvision(cls_name: str, cfg: Data, name: str) -> tuple[Raw, int]:
    import torchvision.datasets as tvd

    cls, root, download = getattr(tvd, cls_name), _root(cfg), cfg.download
    try:
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DatasetMissing(
            f"data.dataset: {name} is not in {root}; fix: set data.download=true to fetch it with "
            f"torchvision, or point data.root at a folder that holds it") from e

    def tensors(ds):
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # CIFAR is N x H x W x C
        return x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    return (*tensors(train), *tensors(test)), FACTS[name].classes


@dataset("fashion_mnist", Facts((1, 28, 28), 60000, 10, "FashionMNIST"))
def fashion_mnist(cfg: Data) -> tuple[Raw, int]:
    if (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        return _idx_split(DEBIAN_FASHION_MNIST), FACTS["fashion_mnist"].classes
    if (reason := missing(cfg)) is not None:
        raise DatasetMissing(reason)
    return _torchvision("FashionMNIST", cfg, "fashion_mnist")


for _name, _cls, _facts in (("mnist", "MNIST", Facts((1, 28, 28), 60000, 10, "MNIST")),
                            ("kmnist", "KMNIST", Facts((1, 28, 28), 60000, 10, "KMNIST")),
                            ("cifar10", "CIFAR10", Facts((3, 32, 32), 50000, 10, "cifar-10-batches-py")),
                            ("cifar100", "CIFAR100", Facts((3, 32, 32), 50000, 100, "cifar-100-python"))):
    dataset(_name, _facts)(functools.partial(_torchvision, _cls, name=_name))


@dataset("synthetic")
def synthetic(cfg: Data) -> tuple[Raw, int]:
    """Random uint8 images of data.synthetic_shape, for benchmarks where no real data is installed.

    Each pixel is uniform noise in 0..127 plus a level in 0..127 that its class
    sets per channel, so a model can learn the classes (a smoke run shows error
    below chance) at the cost of real images of that shape. The test split
    holds a fifth as many images as the training split, as CIFAR-10 does;
    data.synthetic_seed fixes both.
    """
    shape, classes, size = tuple(cfg.synthetic_shape), cfg.synthetic_classes, cfg.synthetic_size
    gen = torch.Generator().manual_seed(cfg.synthetic_seed)
    # Evenly spaced levels, shuffled on their own in each channel, so classes never share all levels.
    spaced = torch.linspace(0, 127, classes).round().to(torch.uint8)
    levels = torch.stack([spaced[torch.randperm(classes, generator=gen)] for _ in range(shape[0])], 1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=gen)
        x = torch.randint(0, 128, (n, *shape), dtype=torch.uint8, generator=gen)
        return x.add_(levels[y][:, :, None, None]), y  # both parts below 128: the sum stays a uint8

    return (*split(size), *split(max(1, size // 5))), classes


@functools.lru_cache(maxsize=4)
def _raw(source: Data) -> tuple[Raw, int]:
    return DATASETS.get(source.dataset)(source)


def _ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _stored_size(cfg: Data) -> int:
    """The side of the square a resident folder stores each image at (both resolutions cut from it)."""
    return round(max(cfg.image_size, cfg.test_size or cfg.image_size) / cfg.eval_crop)


def resident_bytes(cfg: Data) -> int:
    """What an image folder takes held decoded in memory (train, val and test)."""
    from .images import folder_paths
    from .stream import scan
    train_dir, test_dir = folder_paths(cfg)
    n = sum(len(scan(str(d))[0]) for d in (train_dir, test_dir) if d.is_dir())
    return n * 3 * _stored_size(cfg) ** 2


def streams(cfg: Data) -> bool:
    """Whether the data set is read from disk each epoch (trainable.stream) instead of held in memory."""
    if cfg.dataset == "image_shards":
        return True
    if cfg.dataset != "image_folder" or cfg.storage == "resident":
        return False
    return cfg.storage == "stream" or resident_bytes(cfg) > RESIDENT_SHARE * _ram()


@functools.lru_cache(maxsize=2)
def _folder(root: str, train_dir: str, test_dir: str, stored: int) -> tuple[Raw, int]:
    """Decode every image once into a stored x stored uint8 square (shorter side resized, centre crop)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2 import functional as TF

    base = Path(os.path.expanduser(root))
    parts = []
    for sub in (train_dir, test_dir):
        folder = base / sub
        if not folder.is_dir():
            raise DatasetMissing(missing(Data(dataset="image_folder", root=root, train_dir=train_dir,
                                              test_dir=test_dir)))
        ds = ImageFolder(str(folder))
        need = len(ds) * 3 * stored * stored
        if need > 0.5 * _ram():
            raise ConfigError("data.storage", f"{len(ds)} images at {stored}px need {need / 2**30:.1f} GiB "
                              "held in memory", "use data.storage: stream (or auto), or a lower data.image_size")
        x = torch.empty(len(ds), 3, stored, stored, dtype=torch.uint8)
        for i, (path, _) in enumerate(ds.samples):
            img = TF.pil_to_tensor(ds.loader(path))  # PIL, RGB
            x[i] = TF.center_crop(TF.resize(img, [stored], antialias=True), [stored, stored])
        parts += [x, torch.tensor(ds.targets, dtype=torch.int64)]
        classes = len(ds.classes)
    return tuple(parts), classes


def _eval_view(x: torch.Tensor, size: int, share: float) -> torch.Tensor:
    """The evaluation crop of stored images: the centre `share` of each side, resized to `size`."""
    from torchvision.transforms.v2 import functional as TF
    crop = round(x.shape[-1] * share)
    return TF.resize(TF.center_crop(x, [crop, crop]), [size, size], antialias=True)


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images resized (bilinear, antialiased) to size x size."""
    from torchvision.transforms.v2 import functional as TF
    return TF.resize(x, [size, size], antialias=True)


def load(cfg: Data) -> Splits:
    """The seeded train/val/test split of cfg.dataset, on the CPU (its values checked by trainable.rules)."""
    if cfg.dataset == "image_folder":
        test_size = cfg.test_size or cfg.image_size
        (x, y, test_x, test_y), num_classes = _folder(cfg.root, cfg.train_dir, cfg.test_dir, _stored_size(cfg))
    else:
        source = Data(**{k: getattr(cfg, k) for k in SOURCE_KEYS})  # equal sources share one cache entry
        (x, y, test_x, test_y), num_classes = _raw(source)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.split_seed))
    n_val = int(round(cfg.val_fraction * len(x)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if cfg.subset is not None:
        train_idx = train_idx[: cfg.subset]
    if cfg.eval_subset is not None:
        val_idx = val_idx[: cfg.eval_subset]
        test_x, test_y = test_x[: cfg.eval_subset], test_y[: cfg.eval_subset]
    train_x, val_x = x[train_idx], x[val_idx]
    if cfg.dataset == "image_folder":
        val_x, test_x = _eval_view(val_x, test_size, cfg.eval_crop), _eval_view(test_x, test_size, cfg.eval_crop)
    elif cfg.test_size is not None and cfg.test_size != x.shape[-1]:  # FixRes: evaluated at another size
        val_x, test_x = (_resized(t, cfg.test_size) for t in (val_x, test_x))
    scaled = train_x[:60000].float().div_(255)  # a random sample bounds the cost on big folders
    mean = tuple(scaled.mean(dim=(0, 2, 3)).tolist())
    std = tuple(scaled.std(dim=(0, 2, 3)).tolist())
    return Splits(train_x, y[train_idx], val_x, y[val_idx], test_x, test_y, num_classes, mean, std)
