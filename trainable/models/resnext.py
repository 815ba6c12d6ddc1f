"""ResNeXt for CIFAR (Xie et al. 2017): ResNet bottlenecks whose 3x3 conv is split
into `cardinality` groups, so width grows by adding parallel paths, not channels."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Depth, family
from .common import RESIDUAL_DEFAULTS, DropPath, classify, conv, finish, stages

STEM_CHANNELS = 64
STAGE_OUT = (256, 512, 1024)  # fixed by the paper; cardinality and base_width set the inner width only


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, grouped conv3x3-BN-ReLU, conv1x1-BN; added to the shortcut, then ReLU."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int, cardinality: int, drop: float):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, inner, 1), nn.BatchNorm2d(inner)
        # The stride sits on the grouped conv, as in the paper's CIFAR code.
        self.conv2, self.bn2 = conv(inner, inner, 3, stride, groups=cardinality), nn.BatchNorm2d(inner)
        self.conv3, self.bn3 = conv(inner, cout, 1), nn.BatchNorm2d(cout)
        self.branch_end = self.bn3
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()
        self.drop = DropPath(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(self.drop(y) + self.shortcut(x))


class ResNeXt(nn.Module):
    """ResNeXt-(9n+2) CxWd: three stages of n bottlenecks, outputs 256/512/1024 channels."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        n = opts.blocks
        self.stem = nn.Sequential(conv(in_channels, STEM_CHANNELS, 3), nn.BatchNorm2d(STEM_CHANNELS), nn.ReLU())

        def make(stage, i, cin, cout, stride, drop):
            inner = opts.cardinality * opts.base_width * 2 ** stage
            return Bottleneck(cin, inner, cout, stride, opts.cardinality, drop)

        self.stages, cin = stages(list(STAGE_OUT), n, STEM_CHANNELS, make, opts.drop_path)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classify(self.stages(self.stem(x)), self.fc)


@family("resnext", depths=Depth(9, 2), depth=29, cardinality=8, base_width=64, **RESIDUAL_DEFAULTS)
def resnext(opts, num_classes, in_channels):
    """ResNeXt (Xie et al. 2017): grouped-conv bottlenecks, depth 9n+2; default ResNeXt-29 8x64d."""
    return ResNeXt(opts, num_classes, in_channels)
