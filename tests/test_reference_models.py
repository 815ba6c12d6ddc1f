"""Every row of the reference CIFAR-10 results table as a config, with its parameter count.

Models are built on the meta device: their shapes are real, their weights
take no memory and no time, so the big ones cost nothing to count.
"""
from __future__ import annotations

import pytest
import torch

from trainable.config import from_flat
from trainable.models import build_model

# (row, model keys, parameters in the paper or None where the paper gives none)
ROWS = [
    ("VGG-15 w/ BN, channel 64", {"name": "vgg", "stage_channels": [64, 128, 256, 512, 512],
                                  "stage_layers": [2, 2, 3, 3, 3]}, None),
    ("ResNet-110", {"name": "resnet", "depth": 110}, 1.7e6),
    ("ResNet-preact-110", {"name": "resnet_preact", "depth": 110}, 1.7e6),
    ("ResNet-preact-164 bottleneck", {"name": "resnet_preact", "depth": 164, "block": "bottleneck"}, 1.7e6),
    ("ResNet-preact-1001 bottleneck", {"name": "resnet_preact", "depth": 1001, "block": "bottleneck"}, 10.2e6),
    ("WRN-28-10", {"name": "wrn", "depth": 28, "widen": 10}, 36.5e6),
    ("WRN-28-10 w/ dropout", {"name": "wrn", "depth": 28, "widen": 10, "dropout": 0.3}, 36.5e6),
    ("DenseNet-100 (k=12)", {"name": "densenet", "depth": 100, "block": "basic", "growth_rate": 12,
                             "compression": 1.0}, 7.0e6),
    ("DenseNet-100 (k=24)", {"name": "densenet", "depth": 100, "block": "basic", "growth_rate": 24,
                             "compression": 1.0}, 27.2e6),
    ("DenseNet-BC-100 (k=12)", {"name": "densenet", "depth": 100, "growth_rate": 12}, 0.8e6),
    ("DenseNet-BC-250 (k=24)", {"name": "densenet", "depth": 250, "growth_rate": 24}, 15.3e6),
    ("DenseNet-BC-190 (k=40)", {"name": "densenet", "depth": 190, "growth_rate": 40}, 25.6e6),
    ("PyramidNet-110 (alpha=84)", {"name": "pyramidnet", "depth": 110, "alpha": 84}, 3.8e6),
    ("PyramidNet-110 (alpha=270)", {"name": "pyramidnet", "depth": 110, "alpha": 270}, 28.3e6),
    ("PyramidNet-164 bottleneck (alpha=270)", {"name": "pyramidnet", "depth": 164, "block": "bottleneck",
                                               "alpha": 270}, 27.0e6),
    ("PyramidNet-272 bottleneck (alpha=200)", {"name": "pyramidnet", "depth": 272, "block": "bottleneck",
                                               "alpha": 200}, 26.0e6),
    ("ResNeXt-29 4x64d", {"name": "resnext", "depth": 29, "cardinality": 4, "base_width": 64}, None),
    ("ResNeXt-29 8x64d", {"name": "resnext", "depth": 29, "cardinality": 8, "base_width": 64}, 34.4e6),
    ("ResNeXt-29 16x64d", {"name": "resnext", "depth": 29, "cardinality": 16, "base_width": 64}, 68.1e6),
    ("shake-shake-26 2x32d (S-S-I)", {"name": "shake_shake", "depth": 26, "base_channels": 32}, 2.9e6),
    ("shake-shake-26 2x64d (S-S-I)", {"name": "shake_shake", "depth": 26, "base_channels": 64}, 11.7e6),
    ("shake-shake-26 2x96d (S-S-I)", {"name": "shake_shake", "depth": 26, "base_channels": 96}, 26.2e6),
    ("ResNet-preact-20, widening factor 4", {"name": "resnet_preact", "depth": 20, "widen": 4}, None),
]


def count(model_keys: dict) -> int:
    cfg = from_flat({f"model.{k}": v for k, v in model_keys.items()})
    with torch.device("meta"):
        model = build_model(cfg.model, 10, 3)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("row,keys,paper", ROWS, ids=[r[0] for r in ROWS])
def test_reference_row_builds_with_the_papers_size(row, keys, paper):
    n = count(keys)
    if paper is None:
        assert n > 0
    else:
        # The papers print one decimal: allow 2% or that rounding, whichever is wider.
        assert abs(n - paper) <= max(0.02 * paper, 0.05e6), f"{row}: {n:,} vs {paper:,.0f}"
