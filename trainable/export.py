"""A data set written out as an image folder (ImageNet's layout: train/ and val/, one subfolder of
RGB JPEGs per class): `sweep data images`. It is how the ImageNet recipes' small presets get
real images in the format real image folders come in, from the data sets this machine has."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from .config import Data
from .data import load

DONE = ".complete"  # written last: a folder without it was interrupted and is written again


def write_image_folder(root: str | Path, source: Data, train: int, test: int, size: int | tuple[int, int],
                       quality: int = 90, seed: int = 0) -> Path:
    """`train` and `test` images of `source` (cycling through it), resized to `size` (w, h), as JPEGs.

    Grayscale images get a random tint each (seeded), so the three channels differ as in photos
    without telling the class apart. A folder that already holds a complete copy is returned as it is.
    """
    root = Path(root).expanduser()
    w, h = (size, size) if isinstance(size, int) else size
    if (root / DONE).exists():
        return root
    splits = load(dataclasses.replace(source, val_fraction=0.0, subset=None, eval_subset=None))
    rng = np.random.default_rng(seed)
    for split, n, x, y in (("train", train, splits.train_x, splits.train_y),
                           ("val", test, splits.test_x, splits.test_y)):
        for c in range(splits.num_classes):
            (root / split / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            j, label = i % len(y), int(y[i % len(y)])
            pixels = x[j].permute(1, 2, 0).numpy()
            img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim == 2:
                arr = arr[..., None] * rng.uniform(0.5, 1.0, size=3)
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / split / f"class{label:03d}" / f"{i:07d}.jpg",
                                                                    quality=quality)
    (root / DONE).touch()
    return root
