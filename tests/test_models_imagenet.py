"""The ImageNet ResNet and its Bag of Tricks tweaks (model.tweak a-d), built by timm."""
from __future__ import annotations

import pytest
import timm
import torch

from trainable import ConfigError
from trainable.config import Model
from trainable.models import build_model

# Parameters of ResNet-50 for 1000 classes: 25.6M in He et al. 2016 and in ResNet strikes back's tables.
PAPER_M = 25.6


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tweak, timm_name", [("a", "resnet50"), ("b", "resnet50"), ("c", "resnet50c"),
                                              ("d", "resnet50d")])
def test_resnet50_and_its_tweaks_have_timms_and_the_papers_parameter_counts(tweak, timm_name):
    ours = build_model(Model(name="resnet_imagenet", depth=50, tweak=tweak), 1000, 3)
    reference = timm.create_model(timm_name, pretrained=False)
    assert params(ours) == params(reference)
    assert round(params(ours) / 1e6, 1) == PAPER_M
    assert [tuple(v.shape) for v in ours.state_dict().values()] == \
        [tuple(v.shape) for v in reference.state_dict().values()]


def test_the_tweaks_are_where_the_paper_puts_them():
    a, b, c, d = (build_model(Model(name="resnet_imagenet", tweak=t), 10, 3) for t in "abcd")
    first = lambda m: m.layer2[0]  # noqa: E731  (a downsampling bottleneck)
    assert first(a).conv1.stride == (2, 2) and first(a).conv2.stride == (1, 1)  # a: on the 1x1
    assert first(b).conv1.stride == (1, 1) and first(b).conv2.stride == (2, 2)  # b: on the 3x3
    assert isinstance(b.conv1, torch.nn.Conv2d) and b.conv1.kernel_size == (7, 7)
    assert isinstance(c.conv1, torch.nn.Sequential) and c.conv1[0].kernel_size == (3, 3)  # c: deep stem
    assert isinstance(first(c).downsample[0], torch.nn.Conv2d)
    assert isinstance(first(d).downsample[0], torch.nn.AvgPool2d)  # d: average-pool shortcut
    x = torch.randn(2, 3, 64, 64)
    for m in (a, b, c, d):
        assert m.eval()(x).shape == (2, 10)


def test_stochastic_depth_and_zero_gamma_reach_the_blocks():
    m = build_model(Model(name="resnet_imagenet", depth=18, drop_path=0.1), 10, 3)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for stage in (m.layer1, m.layer2, m.layer3, m.layer4) for b in stage]
    assert rates == pytest.approx([0.1 * i / 7 for i in range(8)])  # linear, the rate at the last block
    assert torch.all(m.layer1[0].bn2.weight == 0)  # zero_init_residual: true by default (Bag of Tricks' zero gamma)
    m = build_model(Model(name="resnet_imagenet", depth=18, zero_init_residual=False), 10, 3)
    assert torch.all(m.layer1[0].bn2.weight == 1)


def test_a_depth_it_does_not_have_is_refused_with_the_ones_it_has():
    with pytest.raises(ConfigError, match="resnet_imagenet has depths 18, 34, 50, 101, 152, got 20"):
        build_model(Model(name="resnet_imagenet", depth=20), 10, 3)
