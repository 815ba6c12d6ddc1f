"""A data set written out as image files: `sweep data OUT`.

Two layouts, both what real ImageNet copies come in: an image folder (train/ and
val/, one subfolder of images per class) and tar shards in WebDataset's layout
(train/ and val/, each a set of `shard-NNNNNN.tar` with an index.json). The
source is a registered data set (its images encoded as RGB JPEGs at the size
asked), or an image folder, whose files go into shards byte for byte. It is how
the ImageNet recipes' small presets get real images from the data sets this
machine has, and how a folder becomes shards for network storage.
"""
from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .config import Data
from .data import load
from .images import folder_paths
from .shards import INDEX, LABEL

DONE = ".complete"  # written last: a folder without it was interrupted and is written again
SPLITS = ("train", "val")
SHARD = "shard-{:06d}.tar"

Sample = tuple[int, str, bytes]  # label, file extension, encoded image


@dataclasses.dataclass(frozen=True)
class Split:
    name: str
    classes: tuple[str, ...]
    samples: Iterator[Sample]


def _encoded(source: Data, counts: tuple[int, int], size: tuple[int, int], quality: int, seed: int) -> list[Split]:
    """A registered data set's images as JPEGs at `size`, cycling through each split to its count,
    in a seeded order (a class per shard would make the stream's shuffle buffer mix poorly).

    Grayscale images get a random tint each (seeded), so the three channels differ as in photos
    without telling the class apart.
    """
    splits = load(dataclasses.replace(source, val_fraction=0.0, subset=None, eval_subset=None))
    classes = tuple(f"class{c:03d}" for c in range(splits.num_classes))
    rng = np.random.default_rng(seed)

    def samples(x, y, n) -> Iterator[Sample]:
        for i in np.random.default_rng(seed).permutation(n):
            pixels = x[i % len(y)].permute(1, 2, 0).numpy()
            img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).resize(size, Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim == 2:
                arr = arr[..., None] * rng.uniform(0.5, 1.0, size=3)
            out = io.BytesIO()
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
            yield int(y[i % len(y)]), "jpg", out.getvalue()

    return [Split("train", classes, samples(splits.train_x, splits.train_y, counts[0])),
            Split("val", classes, samples(splits.test_x, splits.test_y, counts[1]))]


def _copied(source: Data, counts: tuple[int | None, int | None], seed: int) -> list[Split]:
    """An image folder's files as they are, in a seeded order (up to each split's count)."""
    from .stream import scan
    out = []
    for name, folder, n in zip(SPLITS, folder_paths(source), counts):
        paths, labels, classes = scan(str(folder))
        pick = np.random.default_rng(seed).permutation(len(paths))[:n]

        def samples(pick=pick, paths=paths, labels=labels) -> Iterator[Sample]:
            for i in pick:
                yield labels[i], Path(paths[i]).suffix.lstrip(".").lower(), Path(paths[i]).read_bytes()
        out.append(Split(name, classes, samples()))
    return out


def _to_folder(split: Split, root: Path) -> None:
    for c in split.classes:
        (root / split.name / c).mkdir(parents=True, exist_ok=True)
    for i, (label, ext, data) in enumerate(split.samples):
        (root / split.name / split.classes[label] / f"{i:07d}.{ext}").write_bytes(data)


def _to_shards(split: Split, root: Path, per_shard: int) -> None:
    """Shards of `per_shard` images in the split's (seeded, random) order, and the index the stream
    reads their counts from."""
    from webdataset import TarWriter
    folder = root / split.name
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    tar = None
    for k, (label, ext, data) in enumerate(split.samples):
        if k % per_shard == 0:
            if tar is not None:
                tar.close()
            shards.append({"file": SHARD.format(len(shards)), "count": 0})
            tar = TarWriter(str(folder / shards[-1]["file"]))
        tar.write({"__key__": f"{k:08d}", ext: data, LABEL: str(label)})
        shards[-1]["count"] += 1
    if tar is not None:
        tar.close()
    (folder / INDEX).write_text(json.dumps({"classes": list(split.classes), "shards": shards}))


def write(root: str | Path, source: Data, train: int | None, test: int | None, size: int | tuple[int, int],
          shards: int = 0, quality: int = 90, seed: int = 0) -> Path:
    """Write `source` under `root` as an image folder, or as shards of `shards` images when that is
    above 0. `train`/`test` cap each split (None: 10,000/2,000 of a registered data set, all of an
    image folder). A folder that already holds a complete copy is returned as it is."""
    root = Path(root).expanduser()
    if (root / DONE).exists():
        return root
    if source.dataset == "image_folder":
        splits = _copied(source, (train, test), seed)
    else:
        w, h = (size, size) if isinstance(size, int) else size
        splits = _encoded(source, (train or 10000, test or 2000), (w, h), quality, seed)
    for split in splits:
        _to_shards(split, root, shards) if shards else _to_folder(split, root)
    (root / DONE).touch()
    return root
