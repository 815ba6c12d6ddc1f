"""vgg, resnet and wrn: shapes, gradients, paper parameter counts, errors, zero-init, dropout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainable.config import Model
from trainable.errors import ConfigError
from trainable.models import build_model

TINY = [
    Model(name="vgg", stage_channels=(4, 8, 8), stage_layers=(1, 2, 1), dropout=0.2),
    Model(name="resnet", depth=8, base_channels=4),
    Model(name="resnet", depth=11, block="bottleneck", base_channels=2, drop_path=0.2),
    Model(name="wrn", depth=10, widen=2, base_channels=4, dropout=0.3, drop_path=0.1),
]


def count(model_config: Model) -> int:
    return sum(p.numel() for p in build_model(model_config, 10, 3).parameters())


@pytest.mark.parametrize("cfg", TINY, ids=lambda c: f"{c.name}-{c.block or c.depth}")
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32)])
def test_forward_backward(cfg, shape):
    torch.manual_seed(0)
    model = build_model(cfg, 10, shape[1])
    out = model(torch.randn(shape))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("cfg, paper", [
    (Model(name="resnet", depth=110), 1.7e6),
    (Model(name="resnet", depth=56), 0.85e6),
    (Model(name="resnet", depth=164, block="bottleneck"), 1.7e6),
    (Model(name="wrn", depth=28, widen=10), 36.5e6),
    (Model(name="wrn", depth=40, widen=4), 8.9e6),
    (Model(name="wrn", depth=16, widen=8), 11.0e6),
], ids=lambda v: f"{v.name}-{v.depth}" if isinstance(v, Model) else "")
def test_paper_parameter_counts(cfg, paper):
    assert abs(count(cfg) - paper) / paper < 0.02


def test_defaults_are_the_reference_configs():
    assert count(Model(name="resnet")) == count(Model(name="resnet", depth=110, block="basic"))
    assert count(Model(name="wrn")) == count(Model(name="wrn", depth=28, widen=10))
    vgg = build_model(Model(name="vgg"), 10, 3)
    convs = [m for m in vgg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]


@pytest.mark.parametrize("cfg, rule", [
    (Model(name="resnet", depth=21, block="bottleneck"), "9n+2"),
    (Model(name="resnet", depth=21), "6n+2"),
    (Model(name="wrn", depth=27), "6n+4"),
])
def test_invalid_depth(cfg, rule):
    with pytest.raises(ConfigError, match=rule.replace("+", r"\+")) as err:
        build_model(cfg, 10, 3)
    assert err.value.key == "model.depth"


def test_vgg_stage_lists_must_match():
    with pytest.raises(ConfigError, match="one layer count per stage"):
        build_model(Model(name="vgg", stage_channels=(8, 16, 32), stage_layers=(1, 1)), 10, 3)


def test_resnet_zero_init_residual_blocks_pass_the_shortcut():
    torch.manual_seed(0)
    model = build_model(Model(name="resnet", depth=14, base_channels=4, zero_init_residual=True), 10, 3).eval()
    blocks = list(model.stages)
    x = F.relu(torch.randn(2, 4, 16, 16))  # blocks see post-ReLU input
    # Identity shortcut: the block is the identity on its (non-negative) input.
    assert torch.allclose(blocks[1](x), x)
    # Projection block (first of stage 2): relu(shortcut(x)), the branch adds nothing.
    x = F.relu(torch.randn(2, 4, 16, 16))
    assert torch.allclose(blocks[2](x), F.relu(blocks[2].shortcut(x)))


def test_wrn_zero_init_residual_blocks_pass_the_shortcut():
    torch.manual_seed(0)
    model = build_model(Model(name="wrn", depth=16, widen=2, base_channels=4, zero_init_residual=True),
                        10, 3).eval()
    blocks = list(model.stages)
    x = torch.randn(2, 8, 16, 16)
    assert torch.allclose(blocks[1](x), x)
    # First block of a stage projects the pre-activated input.
    assert torch.allclose(blocks[2](x), blocks[2].shortcut(F.relu(blocks[2].bn1(x))))


def test_wrn_dropout_is_random_in_training_only():
    torch.manual_seed(0)
    model = build_model(Model(name="wrn", depth=10, widen=1, base_channels=4, dropout=0.3), 10, 3)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    # Without dropout, training-mode passes agree: the randomness above is the dropout.
    plain = build_model(Model(name="wrn", depth=10, widen=1, base_channels=4), 10, 3).train()
    assert torch.equal(plain(x), plain(x))
