"""Wide Residual Network (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: pre-activation basic blocks, depth d = 6n+4, stage widths 16k, 32k, 64k after
a 16-channel stem; dropout between the two convolutions of each block.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Depth, family
from .common import RESIDUAL_DEFAULTS, DropPath, classify, conv, finish, stages


class WideBasic(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, added to the shortcut.

    Where the shape changes, the 1x1 projection shortcut reads the pre-activated input
    (as in the paper's code), so the block's first BN-ReLU is shared by both paths.
    """

    def __init__(self, cin, cout, stride, dropout, drop):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv(cin, cout, 3, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv(cout, cout, 3)
        self.dropout = nn.Dropout(dropout)
        self.projects = stride != 1 or cin != cout
        self.shortcut = conv(cin, cout, 1, stride) if self.projects else nn.Identity()
        self.drop = DropPath(drop)
        self.branch_end = self.conv2

    def forward(self, x):
        y = F.relu(self.bn1(x))
        skip = self.shortcut(y if self.projects else x)
        y = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(y)))))
        return self.drop(y) + skip


class WideResNet(nn.Module):
    """conv3x3 stem, three stages of n wide blocks, BN-ReLU, global pool, linear."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        n = opts.blocks
        widths = [opts.base_channels * opts.widen * 2 ** i for i in range(3)]
        self.stem = conv(in_channels, opts.base_channels, 3)
        self.stages, cin = stages(widths, n, opts.base_channels, lambda stage, i, cin, cout, stride, drop: WideBasic(
            cin, cout, stride, opts.dropout, drop), opts.drop_path)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classify(F.relu(self.bn(self.stages(self.stem(x)))), self.fc)


@family("wrn", depths=Depth(6, 4), depth=28, widen=10, dropout=0.0, base_channels=16, **RESIDUAL_DEFAULTS)
def wrn(opts, num_classes, in_channels):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): pre-activation, depth 6n+4, widen k."""
    return WideResNet(opts, num_classes, in_channels)
