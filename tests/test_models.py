"""Every registered family at toy size, and the options shared by the residual families."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from trainable import ConfigError
from trainable.config import Model
from trainable.model_info import size
from trainable.models import DEFAULTS, MODELS, build_model
from trainable.models.common import DropPath

# The smallest valid size of each family; a new family must add itself here.
TINY = {
    "resnet_preact": dict(depth=8, base_channels=4),
    "se_resnet_preact": dict(depth=8, base_channels=4, se_reduction=2),
    "resnet": dict(depth=8, base_channels=4),
    "wrn": dict(depth=10, widen=1),
    "vgg": dict(stage_channels=(4, 8), stage_layers=(1, 1)),
    "densenet": dict(depth=10, growth_rate=4),
    "pyramidnet": dict(depth=8, alpha=8),
    "resnext": dict(depth=11, cardinality=2, base_width=2),
    "shake_shake": dict(depth=8, base_channels=4),
    "resnet_imagenet": dict(depth=18),
}
# Families with our DropPath; resnet_imagenet's is timm's (0 at the first block, the rate at the last:
# tests/test_models_imagenet.py).
RESIDUAL = [n for n in MODELS.names() if "drop_path" in DEFAULTS[n] and n != "resnet_imagenet"]


def tiny(name: str, **kw) -> Model:
    return Model(name=name, **{**TINY[name], **kw})


@pytest.mark.parametrize("name", MODELS.names())
def test_family_trains_a_step_on_both_input_shapes(name):
    assert name in TINY, f"add the smallest valid size of {name} to TINY"
    for channels, side in [(1, 28), (3, 32)]:
        torch.manual_seed(0)
        model = build_model(tiny(name), 10, channels)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(torch.randn(4, channels, side, side))
        assert out.shape == (4, 10)
        out.logsumexp(1).mean().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        opt.step()
        model.eval()
        with torch.no_grad():
            x = torch.randn(2, channels, side, side)
            assert torch.equal(model(x), model(x))  # eval mode is deterministic


@pytest.mark.parametrize("name", MODELS.names())
def test_unknown_option_for_a_family_is_one_clear_error(name):
    foreign = "alpha" if name != "pyramidnet" else "growth_rate"
    with pytest.raises(ConfigError, match=rf"model\.{foreign}: {name} does not take"):
        build_model(tiny(name, **{foreign: 4}), 10, 1)


@pytest.mark.parametrize("name", RESIDUAL)
def test_stochastic_depth_rates_rise_linearly_over_blocks(name):
    model = build_model(tiny(name, drop_path=0.4), 10, 1)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) >= 3
    n = len(rates)
    assert rates == pytest.approx([0.4 * (i + 1) / n for i in range(n)])


def test_drop_path_is_identity_in_eval_and_drops_at_its_rate_in_train():
    drop = DropPath(0.3)
    x = torch.ones(20000, 2)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    y = drop(x)
    dropped = (y[:, 0] == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.02
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))  # kept branches are rescaled


def test_zero_init_makes_every_preact_block_the_identity_of_its_shortcut():
    model = build_model(tiny("resnet_preact", zero_init_residual=True, depth=14), 10, 1).eval()
    x = torch.randn(2, 4, 28, 28)
    with torch.no_grad():
        for block in model.stages:
            pre = torch.relu(block.bn_in(x))
            y = block(x)
            assert torch.allclose(y, block.shortcut(pre if block.preact else x), atol=1e-6)
            x = y


@pytest.mark.parametrize("mode", ["kaiming_fan_in", "kaiming_fan_out", "xavier"])
def test_init_modes_give_their_weight_scale(mode):
    model = build_model(Model(name="resnet_preact", depth=20, init=mode), 10, 3)
    conv = model.stages[3].conv1  # 16 -> 32 channels, 3x3
    fan_in, fan_out = 16 * 9, 32 * 9
    expected = {"kaiming_fan_in": (2 / fan_in) ** 0.5, "kaiming_fan_out": (2 / fan_out) ** 0.5,
                "xavier": (2 / (fan_in + fan_out)) ** 0.5}[mode]
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.15)


def test_torchvision_models_by_name():
    model = build_model(Model(name="tv:resnet18", zero_init_residual=True), 10, 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in model.layer1)
    with pytest.raises(ConfigError, match="tv:resnet50"):
        build_model(Model(name="tv:resnet5"), 10, 3)
    with pytest.raises(ConfigError, match="3-channel"):
        build_model(Model(name="tv:resnet18"), 10, 1)


def test_size_counts_parameters_and_multiply_adds():
    params, macs = size(Model(name="resnet_preact", depth=20), "fashion_mnist")
    assert params == sum(p.numel() for p in build_model(Model(depth=20), 10, 1).parameters())
    assert 25e6 < macs < 40e6  # about 31M multiply-adds per 28x28 image


def test_cli_models_lists_every_family_and_counts_one():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "models"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in MODELS.names():
        assert f"{name}:" in out.stdout
    one = subprocess.run([sys.executable, str(ROOT / "cli.py"), "models", "resnet_preact", "--set", "depth=110"],
                         capture_output=True, text=True)
    assert "1,730,522 parameters" in one.stdout and "multiply-adds" in one.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "cli.py"), "models", "resnet_preact", "--set", "depth=21"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "6n+2" in bad.stderr and "Traceback" not in bad.stderr


def test_timm_models_by_name():
    model = build_model(Model(name="timm:resnet18", drop_path=0.1), 10, 1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
