"""PyramidNet (Han et al. 2017) for 28x28 and 32x32 inputs.

Instead of doubling the width at each downsampling, every block widens by
alpha/N (N blocks in all), so the width grows linearly from 16 to 16 + alpha.
The shortcut stays parameter-free: identity with zero-padded extra channels,
average-pooled where the block downsamples.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Depth, family
from .common import RESIDUAL_DEFAULTS, DropPath, conv, drop_rates, finish


class _Unit(nn.Module):
    """Shared shortcut and stochastic depth; subclasses define `branch` ending in `branch_end` (a BN)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, drop: float):
        super().__init__()
        self.stride, self.pad = stride, cout - cin
        self.drop = DropPath(drop)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # ceil_mode matches the strided conv's output size on odd inputs (7x7 -> 4x4)
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def forward(self, x):
        return self.drop(self.branch(x)) + self.shortcut(x)


class Basic(_Unit):
    """BN-conv3x3-BN-ReLU-conv3x3-BN: no ReLU at the start, a BN at the end."""

    def __init__(self, cin, width, stride, drop):
        super().__init__(cin, width, stride, drop)
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv(cin, width, 3, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), conv(width, width, 3)
        self.bn3 = self.branch_end = nn.BatchNorm2d(width)

    def branch(self, x):
        y = self.conv1(self.bn1(x))
        return self.bn3(self.conv2(F.relu(self.bn2(y))))


class Bottleneck(_Unit):
    """BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1(x4)-BN."""

    expansion = 4

    def __init__(self, cin, width, stride, drop):
        super().__init__(cin, width * self.expansion, stride, drop)
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv(cin, width, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), conv(width, width, 3, stride)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), conv(width, width * self.expansion, 1)
        self.bn4 = self.branch_end = nn.BatchNorm2d(width * self.expansion)

    def branch(self, x):
        y = self.conv1(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(y)))
        return self.bn4(self.conv3(F.relu(self.bn3(y))))


BLOCKS = {"basic": Basic, "bottleneck": Bottleneck}


class PyramidNet(nn.Module):
    """Stem conv-BN, 3 stages of n blocks with linearly growing width, BN-ReLU, pooling, classifier."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        block, n = BLOCKS[opts.block], opts.blocks
        total = 3 * n
        rates = drop_rates(opts.drop_path, total)
        self.stem = conv(in_channels, 16, 3)
        self.stem_bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i in range(total):
            stride = 2 if i in (n, 2 * n) else 1
            # floor of the exact linear width (no float accumulation); flooring, not rounding,
            # is what reproduces the paper's parameter counts
            width = 16 + int(opts.alpha * (i + 1) // total)
            layers.append(block(cin, width, stride, rates[i]))
            cin = width * block.expansion
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.stem_bn(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@family("pyramidnet", depths=Depth({"basic": 6, "bottleneck": 9}, 2), depth=110, block="basic", alpha=84, **RESIDUAL_DEFAULTS)
def pyramidnet(opts, num_classes, in_channels):
    """PyramidNet (Han et al. 2017): width grows linearly by alpha; basic 6n+2 or bottleneck 9n+2."""
    return PyramidNet(opts, num_classes, in_channels)
