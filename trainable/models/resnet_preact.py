"""Pre-activation ResNet (He et al. 2016) with the PyramidNet-style unit options."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Model
from ..errors import ConfigError
from . import MODELS


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class _Unit(nn.Module):
    """Shared pre-activation logic; subclasses define the branch convolutions."""

    expansion = 1

    def __init__(self, cin, cout, stride, preact, cfg: Model):
        super().__init__()
        self.preact, self.first_relu = preact, not cfg.remove_first_relu
        self.bn_in = nn.BatchNorm2d(cin)
        self.shortcut = _conv(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.bn_last = nn.BatchNorm2d(cout) if cfg.add_last_bn else nn.Identity()

    def _activate(self, x):
        x = self.bn_in(x)
        return F.relu(x) if self.first_relu else x

    def forward(self, x):
        y = self._activate(x)
        if self.preact:  # the shortcut also sees the pre-activated input
            x = y
        return self.bn_last(self.branch(y)) + self.shortcut(x)


class Basic(_Unit):
    def __init__(self, cin, cout, stride, preact, cfg):
        super().__init__(cin, cout, stride, preact, cfg)
        self.conv1, self.bn2, self.conv2 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout), _conv(cout, cout, 3)

    def branch(self, y):
        return self.conv2(F.relu(self.bn2(self.conv1(y))))


class Bottleneck(_Unit):
    expansion = 4

    def __init__(self, cin, cout, stride, preact, cfg):
        super().__init__(cin, cout, stride, preact, cfg)
        mid = cout // self.expansion
        self.conv1, self.bn2 = _conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv2, self.bn3 = _conv(mid, mid, 3, stride), nn.BatchNorm2d(mid)
        self.conv3 = _conv(mid, cout, 1)

    def branch(self, y):
        y = self.conv2(F.relu(self.bn2(self.conv1(y))))
        return self.conv3(F.relu(self.bn3(y)))


BLOCKS = {"basic": (Basic, 6), "bottleneck": (Bottleneck, 9)}


class ResNetPreact(nn.Module):
    """Pre-activation ResNet for 28x28 and 32x32 inputs (basic 6n+2, bottleneck 9n+2)."""

    def __init__(self, cfg: Model, num_classes: int, in_channels: int):
        super().__init__()
        block, per_block = BLOCKS[cfg.block]
        if cfg.depth < per_block + 2 or (cfg.depth - 2) % per_block:
            valid = ", ".join(str(per_block * n + 2) for n in range(1, 5))
            raise ConfigError("model.depth", f"resnet_preact {cfg.block} needs depth {per_block}n+2, got {cfg.depth}",
                              f"use one of {valid}, ...")
        if len(cfg.preact_stage) != 3:
            raise ConfigError("model.preact_stage", f"needs 3 values (one per stage), got {len(cfg.preact_stage)}",
                              "use e.g. [true, false, false]")
        n = (cfg.depth - 2) // per_block
        widths = [cfg.base_channels * cfg.widen * 2 ** i * block.expansion for i in range(3)]
        self.stem = _conv(in_channels, cfg.base_channels, 3)
        layers, cin = [], cfg.base_channels
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                layers.append(block(cin, cout, stride, i == 0 and cfg.preact_stage[stage], cfg))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stages(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS.register("resnet_preact")(ResNetPreact)
