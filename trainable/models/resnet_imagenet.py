"""The ImageNet ResNet (He et al. 2016) and the Bag of Tricks tweaks (He et al. 2019), built by timm.

The recipe papers (Bag of Tricks, ResNet strikes back) train these; timm is
the library those recipes were run with. The tweaks, by `model.tweak`:
a, the original: a downsampling block strides in its first 1x1 conv;
b: the stride moves to the 3x3 conv (timm's and torchvision's default);
c: b, and the 7x7 stem becomes three 3x3 convs (timm's deep stem);
d: c, and a downsampling shortcut averages 2x2 before its 1x1 conv.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch.nn as nn

from ..errors import ConfigError
from . import Shape, family

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _check(opts: SimpleNamespace, shape: Shape | None) -> None:
    if opts.depth not in LAYERS:
        raise ConfigError("model.depth", f"resnet_imagenet has depths {', '.join(map(str, LAYERS))}, got {opts.depth}",
                          "use 50 (ResNet-50) or another of them")


def _stride_on_1x1(model: nn.Module) -> None:
    """Tweak a: each downsampling bottleneck strides in its 1x1 conv instead of its 3x3 (the weights'
    shapes are the same, only where the stride sits moves)."""
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        if hasattr(block, "conv3"):  # bottleneck (a basic block has no 1x1 conv to move it to)
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


@family("resnet_imagenet", check=_check, depth=50, tweak="b", drop_path=0.0, zero_init_residual=True)
def resnet_imagenet(opts: SimpleNamespace, num_classes: int, in_channels: int) -> nn.Module:
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    model = ResNet(block=Bottleneck if opts.depth >= 50 else BasicBlock, layers=LAYERS[opts.depth],
                   num_classes=num_classes, in_chans=in_channels, stem_width=32 if opts.tweak in "cd" else 64,
                   stem_type="deep" if opts.tweak in "cd" else "", avg_down=opts.tweak == "d",
                   drop_path_rate=opts.drop_path, zero_init_last=opts.zero_init_residual)
    if opts.tweak == "a":
        _stride_on_1x1(model)
    return model
