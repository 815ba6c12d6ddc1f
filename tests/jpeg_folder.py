"""Fashion-MNIST written out as an ImageNet-layout folder of RGB JPEGs (train/ and val/, one
subfolder per class), at the size a test or benchmark needs: the only real image data this
machine has, in the format real image folders come in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from trainable.config import Data
from trainable.data import load


def write_jpeg_folder(root: Path, train: int, test: int, size: int | tuple[int, int], quality: int = 90,
                      seed: int = 0) -> Path:
    """`train` and `test` images (cycling through Fashion-MNIST), upscaled to `size` (w, h) RGB JPEGs.

    Each class gets a tint, so colour carries some of the label as in natural images.
    Written once: a folder that already holds them is returned as it is.
    """
    w, h = (size, size) if isinstance(size, int) else size
    done = root / ".complete"
    if done.exists():
        return root
    splits = load(Data(dataset="fashion_mnist", val_fraction=0.0))
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0.5, 1.0, size=(10, 3))
    for split, n, x, y in (("train", train, splits.train_x, splits.train_y), ("val", test, splits.test_x, splits.test_y)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            j = i % len(y)
            grey = Image.fromarray(x[j, 0].numpy()).resize((w, h), Image.BILINEAR)
            label = int(y[j])
            rgb = (np.asarray(grey, dtype=np.float32)[..., None] * tints[label]).clip(0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / f"class{label}" / f"{i:06d}.jpg", quality=quality)
    done.touch()
    return root
