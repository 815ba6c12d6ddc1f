"""The original CIFAR ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition").

Post-activation: each block adds its branch to the shortcut and then applies ReLU.
Three stages of 16, 32, 64 channels (times 4 at the output of bottleneck blocks);
a 1x1 conv + BN projection replaces the identity shortcut where the shape changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Depth, family
from .common import RESIDUAL_DEFAULTS, DropPath, classify, conv, finish, stages


class _Block(nn.Module):
    """Shared post-activation logic: out = relu(branch(x) + shortcut(x))."""

    expansion = 1

    def __init__(self, cin, cout, stride, drop):
        super().__init__()
        self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                         if (stride != 1 or cin != cout) else nn.Identity())
        self.drop = DropPath(drop)

    def forward(self, x):
        return F.relu(self.drop(self.branch(x)) + self.shortcut(x))


class Basic(_Block):
    """Two 3x3 convs; the first one strides."""

    def __init__(self, cin, cout, stride, drop):
        super().__init__(cin, cout, stride, drop)
        self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3), nn.BatchNorm2d(cout)
        self.branch_end = self.bn2

    def branch(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4x the stage width."""

    expansion = 4

    def __init__(self, cin, cout, stride, drop):
        super().__init__(cin, cout, stride, drop)
        mid = cout // self.expansion
        self.conv1, self.bn1 = conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = conv(mid, mid, 3, stride), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = conv(mid, cout, 1), nn.BatchNorm2d(cout)
        self.branch_end = self.bn3

    def branch(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


BLOCKS = {"basic": Basic, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """conv3x3-BN-ReLU stem, three stages of n blocks (stride 2 entering stages 2 and 3), pool, linear."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        block, n = BLOCKS[opts.block], opts.blocks
        widths = [opts.base_channels * 2 ** i * block.expansion for i in range(3)]
        self.stem = nn.Sequential(conv(in_channels, opts.base_channels, 3), nn.BatchNorm2d(opts.base_channels),
                                  nn.ReLU(inplace=True))
        self.stages, cin = stages(widths, n, opts.base_channels, lambda stage, i, cin, cout, stride, drop: block(
            cin, cout, stride, drop), opts.drop_path)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classify(self.stages(self.stem(x)), self.fc)


@family("resnet", depths=Depth({"basic": 6, "bottleneck": 9}, 2), depth=110, block="basic", base_channels=16,
        **RESIDUAL_DEFAULTS)
def resnet(opts, num_classes, in_channels):
    """Original post-activation CIFAR ResNet (He et al. 2015): basic 6n+2 or bottleneck 9n+2 layers."""
    return ResNet(opts, num_classes, in_channels)
