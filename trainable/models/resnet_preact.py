"""Pre-activation ResNet (He et al. 2016) with the PyramidNet-style unit options,
and its squeeze-and-excitation variant (Hu et al. 2018)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Depth, family
from .common import RESIDUAL_DEFAULTS, DropPath, classify, conv, finish, stages


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 1), 1)
        self.fc2 = nn.Conv2d(max(channels // reduction, 1), channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class _Unit(nn.Module):
    """Shared pre-activation logic; subclasses define the branch convolutions."""

    expansion = 1

    def __init__(self, cin, cout, stride, preact, opts, drop):
        super().__init__()
        self.preact, self.first_relu = preact, not opts.remove_first_relu
        self.bn_in = nn.BatchNorm2d(cin)
        self.shortcut = conv(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.bn_last = nn.BatchNorm2d(cout) if opts.add_last_bn else nn.Identity()
        reduction = getattr(opts, "se_reduction", None)
        self.se = SqueezeExcite(cout, reduction) if reduction else nn.Identity()
        self.drop = DropPath(drop)

    def forward(self, x):
        y = self.bn_in(x)
        if self.first_relu:
            y = F.relu(y)
        if self.preact:  # the shortcut also sees the pre-activated input
            x = y
        return self.drop(self.se(self.bn_last(self.branch(y)))) + self.shortcut(x)

    def _end(self, last_conv):
        self.branch_end = self.bn_last if isinstance(self.bn_last, nn.BatchNorm2d) else last_conv


class Basic(_Unit):
    def __init__(self, cin, cout, stride, preact, opts, drop):
        super().__init__(cin, cout, stride, preact, opts, drop)
        self.conv1, self.bn2, self.conv2 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout), conv(cout, cout, 3)
        self._end(self.conv2)

    def branch(self, y):
        return self.conv2(F.relu(self.bn2(self.conv1(y))))


class Bottleneck(_Unit):
    expansion = 4

    def __init__(self, cin, cout, stride, preact, opts, drop):
        super().__init__(cin, cout, stride, preact, opts, drop)
        mid = cout // self.expansion
        self.conv1, self.bn2 = conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv2, self.bn3 = conv(mid, mid, 3, stride), nn.BatchNorm2d(mid)
        self.conv3 = conv(mid, cout, 1)
        self._end(self.conv3)

    def branch(self, y):
        y = self.conv2(F.relu(self.bn2(self.conv1(y))))
        return self.conv3(F.relu(self.bn3(y)))


BLOCKS = {"basic": Basic, "bottleneck": Bottleneck}
DEPTHS = Depth({"basic": 6, "bottleneck": 9}, 2)


class ResNetPreact(nn.Module):
    """Pre-activation ResNet for 28x28 and 32x32 inputs (basic 6n+2, bottleneck 9n+2)."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        block, n = BLOCKS[opts.block], opts.blocks
        widths = [opts.base_channels * opts.widen * 2 ** i * block.expansion for i in range(3)]
        self.stem = conv(in_channels, opts.base_channels, 3)
        self.stages, cin = stages(widths, n, opts.base_channels, lambda stage, i, cin, cout, stride, drop: block(
            cin, cout, stride, i == 0 and opts.preact_stage[stage], opts, drop), opts.drop_path)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classify(F.relu(self.bn(self.stages(self.stem(x)))), self.fc)


PREACT_DEFAULTS = dict(depth=20, block="basic", base_channels=16, widen=1, remove_first_relu=False,
                       add_last_bn=False, preact_stage=(True, False, False), **RESIDUAL_DEFAULTS)


@family("resnet_preact", depths=DEPTHS, **PREACT_DEFAULTS)
def resnet_preact(opts, num_classes, in_channels):
    """Pre-activation ResNet (He et al. 2016): basic 6n+2 or bottleneck 9n+2 layers."""
    return ResNetPreact(opts, num_classes, in_channels)


@family("se_resnet_preact", depths=DEPTHS, **PREACT_DEFAULTS, se_reduction=16)
def se_resnet_preact(opts, num_classes, in_channels):
    """Pre-activation ResNet with squeeze-and-excitation in every block (Hu et al. 2018)."""
    return ResNetPreact(opts, num_classes, in_channels)
