"""DenseNet and DenseNet-BC (Huang et al. 2017) for 28x28 and 32x32 inputs.

Every layer sees the concatenation of all earlier feature maps of its block and
adds `growth_rate` new channels; transitions between the three blocks compress
the channels and halve the resolution. DenseNet has no residual branches, so it
takes neither drop_path nor zero_init_residual.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Depth, family
from .common import conv, finish


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class BasicLayer(nn.Module):
    """BN-ReLU-conv3x3 producing k new channels."""

    def __init__(self, cin: int, k: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = conv(cin, k, 3)
        self.drop = _dropout(dropout)

    def forward(self, x):
        return torch.cat([x, self.drop(self.conv(F.relu(self.bn(x))))], 1)


class BottleneckLayer(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k): the 1x1 caps the cost of a wide input."""

    def __init__(self, cin: int, k: int, dropout: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv(cin, 4 * k, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * k), conv(4 * k, k, 3)
        self.drop1, self.drop2 = _dropout(dropout), _dropout(dropout)

    def forward(self, x):
        y = self.drop1(self.conv1(F.relu(self.bn1(x))))
        y = self.drop2(self.conv2(F.relu(self.bn2(y))))
        return torch.cat([x, y], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compressing) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = conv(cin, cout, 1)
        self.drop = _dropout(dropout)

    def forward(self, x):
        # ceil_mode keeps 7x7 (28x28 input) at 4x4 rather than dropping a row and column
        return F.avg_pool2d(self.drop(self.conv(F.relu(self.bn(x)))), 2, ceil_mode=True)


BLOCKS = {"basic": BasicLayer, "bottleneck": BottleneckLayer}


class DenseNet(nn.Module):
    """Stem conv, three dense blocks joined by transitions, BN-ReLU, pooling, classifier."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        layer, n = BLOCKS[opts.block], opts.blocks
        k = opts.growth_rate
        bc = opts.block == "bottleneck" and opts.compression < 1.0
        channels = 2 * k if bc else 16
        self.stem = conv(in_channels, channels, 3)
        stages = []
        for stage in range(3):
            for _ in range(n):
                stages.append(layer(channels, k, opts.dropout))
                channels += k
            if stage < 2:
                out = max(1, math.floor(channels * opts.compression))
                stages.append(Transition(channels, out, opts.dropout))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.features(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# depth counts the stem, the classifier and the two transition convs
@family("densenet", depths=Depth({"basic": 3, "bottleneck": 6}, 4), depth=100, block="bottleneck", growth_rate=12, compression=0.5, dropout=0.0,
        init="kaiming_fan_out")
def densenet(opts, num_classes, in_channels):
    """DenseNet / DenseNet-BC (Huang et al. 2017): basic 3n+4 or bottleneck 6n+4 layers."""
    return DenseNet(opts, num_classes, in_channels)
