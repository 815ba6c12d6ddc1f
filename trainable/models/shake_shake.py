"""Shake-Shake regularization (Gastaldi 2017): two residual branches mixed with random
weights, with independent random weights in the backward pass, on the 26-layer CIFAR net."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import Depth, family
from .common import conv, finish

STEM_CHANNELS = 16


class ShakeMix(torch.autograd.Function):
    """alpha*b1 + (1-alpha)*b2 forward; the gradient is split by beta, not alpha."""

    @staticmethod
    def forward(ctx, b1, b2, alpha, beta):
        ctx.save_for_backward(beta)
        return alpha * b1 + (1 - alpha) * b2

    @staticmethod
    def backward(ctx, grad):
        (beta,) = ctx.saved_tensors
        return grad * beta, grad * (1 - beta), None, None


class Branch(nn.Module):
    """ReLU-conv3x3-BN-ReLU-conv3x3-BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3), nn.BatchNorm2d(cout)
        self.branch_end = self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(F.relu(x))))))


class Shortcut(nn.Module):
    """The paper's projection: ReLU, two stride-s 1x1 paths (the second shifted by a pixel
    so the two halves sample different positions), concatenated, then BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1, self.conv2 = conv(cin, cout // 2, 1), conv(cin, cout // 2, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        a = F.avg_pool2d(x, 1, self.stride)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        b = F.avg_pool2d(shifted, 1, self.stride)
        return self.bn(torch.cat([self.conv1(a), self.conv2(b)], dim=1))


class ShakeBlock(nn.Module):
    """Two branches mixed by random weights while training, averaged in eval, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, opts):
        super().__init__()
        self.branch1, self.branch2 = Branch(cin, cout, stride), Branch(cin, cout, stride)
        self.shortcut = Shortcut(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.shake_forward, self.shake_backward = opts.shake_forward, opts.shake_backward
        self.shake_image = opts.shake_image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.branch1(x), self.branch2(x)
        if not self.training:
            mixed = 0.5 * (b1 + b2)
        else:
            shape = (b1.shape[0] if self.shake_image else 1, 1, 1, 1)
            if self.shake_forward:
                alpha = torch.rand(shape, device=b1.device, dtype=b1.dtype)
            else:
                alpha = torch.full(shape, 0.5, device=b1.device, dtype=b1.dtype)
            beta = torch.rand(shape, device=b1.device, dtype=b1.dtype) if self.shake_backward else alpha
            mixed = ShakeMix.apply(b1, b2, alpha, beta)
        return mixed + self.shortcut(x)


class ShakeShake(nn.Module):
    """Shake-Shake-(6n+2) 2xNd: three stages of n blocks with widths N, 2N, 4N."""

    def __init__(self, opts, num_classes: int, in_channels: int):
        super().__init__()
        n, width = opts.blocks, opts.base_channels
        self.stem = nn.Sequential(conv(in_channels, STEM_CHANNELS, 3), nn.BatchNorm2d(STEM_CHANNELS))
        layers, cin = [], STEM_CHANNELS
        for stage in range(3):
            cout = width * 2 ** stage
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                layers.append(ShakeBlock(cin, cout, stride, opts))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        finish(self, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stages(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _even_width(opts, shape) -> None:
    if opts.base_channels < 2 or opts.base_channels % 2:
        raise ConfigError("model.base_channels", f"shake_shake needs an even width >= 2, got {opts.base_channels}",
                          "use 32, 64, 96 or 128 (the paper's 2x32d ... 2x128d)")


@family("shake_shake", depths=Depth(6, 2), check=_even_width, depth=26, base_channels=32, shake_forward=True, shake_backward=True, shake_image=True,
        zero_init_residual=False, init="kaiming_fan_out")
def shake_shake(opts, num_classes, in_channels):
    """Shake-Shake (Gastaldi 2017): two randomly mixed branches per block, depth 6n+2; default 26 2x32d S-S-I."""
    return ShakeShake(opts, num_classes, in_channels)
