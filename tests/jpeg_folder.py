"""Fashion-MNIST as an ImageNet-layout folder of RGB JPEGs, for tests and benchmarks (trainable.export)."""
from __future__ import annotations

from pathlib import Path

from trainable.config import Data
from trainable.export import write


def write_jpeg_folder(root: Path, train: int, test: int, size: int | tuple[int, int]) -> Path:
    return write(root, Data(dataset="fashion_mnist"), train, test, size)
