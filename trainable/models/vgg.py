"""VGG-style plain CNN with batch norm (Simonyan & Zisserman 2015; BN from Ioffe & Szegedy 2015).

A non-residual baseline: stages of conv3x3-BN-ReLU separated by 2x2 max-pools, then
global average pooling (not VGG's big fully connected head) so that 28x28 and 32x32
inputs share one network.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import family
from .common import conv, finish


def _check(opts, shape) -> None:
    channels, layers = opts.stage_channels, opts.stage_layers
    if not channels or len(channels) != len(layers):
        raise ConfigError("model.stage_layers",
                          f"vgg needs one layer count per stage: stage_channels has {len(channels)} "
                          f"entries, stage_layers has {len(layers)}",
                          "give both lists the same (non-zero) length, e.g. [64, 128, 256, 512] and [2, 2, 2, 2]")
    # A max-pool halves the map between stages (28 -> 14 -> 7 -> 3 -> 1): one stage more than halvings.
    if shape is not None and shape[1] is not None and 2 ** (len(channels) - 1) > min(shape[1:]):
        most = min(shape[1:]).bit_length()
        raise ConfigError("model.stage_channels", f"vgg takes at most {most} stages on {shape[1]}x{shape[2]} input, "
                          f"got {len(channels)}", f"use 1 to {most} stages")


class VGG(nn.Module):
    """conv3x3-BN-ReLU stages with max-pool between them, global pool, dropout, linear."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        channels, layers = opts.stage_channels, opts.stage_layers
        body, cin = [], in_channels
        for stage, (cout, n) in enumerate(zip(channels, layers)):
            if stage > 0:
                body.append(nn.MaxPool2d(2))
            for _ in range(n):
                body += [conv(cin, cout, 3), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*body)
        self.dropout = nn.Dropout(opts.dropout)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.fc(self.dropout(x))


@family("vgg", check=_check, stage_channels=(64, 128, 256, 512), stage_layers=(2, 2, 2, 2), dropout=0.0,
        init="kaiming_fan_out")
def vgg(opts, num_classes, in_channels):
    """VGG-style plain CNN with batch norm: conv3x3-BN-ReLU stages, max-pool between them."""
    return VGG(opts, num_classes, in_channels)
