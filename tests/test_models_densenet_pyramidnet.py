"""DenseNet and PyramidNet: shapes on both inputs, paper parameter counts, options and errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import refused
from trainable.config import Model, TrialConfig
from trainable.errors import ConfigError
from trainable.models import DEFAULTS, build_model
from trainable.models.common import DropPath
from trainable.models.pyramidnet import _Unit

TINY = [
    Model(name="densenet", depth=10, growth_rate=4),                                  # BC, n=1
    Model(name="densenet", depth=7, block="basic", growth_rate=4, compression=1.0, dropout=0.2),
    Model(name="pyramidnet", depth=8, alpha=12),                                      # basic, n=1
    Model(name="pyramidnet", depth=11, block="bottleneck", alpha=12, drop_path=0.2),
]


def count(cfg: Model) -> float:
    return sum(p.numel() for p in build_model(cfg, 10, 3).parameters()) / 1e6


@pytest.mark.parametrize("cfg", TINY, ids=lambda c: f"{c.name}-{c.depth}")
def test_tiny_forward_backward_on_both_inputs(cfg):
    torch.manual_seed(0)
    for channels, size in ((1, 28), (3, 32)):
        model = build_model(cfg, 10, channels)
        out = model(torch.randn(2, channels, size, size))
        assert out.shape == (2, 10)
        out.sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing


# (config, the paper's figure in millions). Huang et al. 2017 Table 2; Han et al. 2017 Table 4.
PAPER = [
    (Model(name="densenet"), 0.8),
    (Model(name="densenet", depth=250, growth_rate=24), 15.3),
    (Model(name="densenet", depth=190, growth_rate=40), 25.6),
    (Model(name="densenet", depth=40, block="basic", compression=1.0), 1.0),
    (Model(name="densenet", depth=100, block="basic", compression=1.0), 7.0),
    (Model(name="pyramidnet"), 3.8),
    (Model(name="pyramidnet", alpha=270), 28.3),
    (Model(name="pyramidnet", depth=164, block="bottleneck", alpha=270), 27.0),
    (Model(name="pyramidnet", depth=272, block="bottleneck", alpha=200), 26.0),
]


@pytest.mark.parametrize("cfg,paper", PAPER, ids=lambda x: x.name if isinstance(x, Model) else str(x))
def test_paper_parameter_counts(cfg, paper):
    # Within 2%, or within the paper's printed precision (0.05M): DenseNet-BC-100 has 0.769M,
    # which the paper prints as 0.8M.
    assert abs(count(cfg) - paper) <= max(0.02 * paper, 0.05)


@pytest.mark.parametrize("cfg,rule", [
    (Model(name="densenet", depth=99), "densenet bottleneck needs depth 6n+4, got 99"),
    (Model(name="densenet", depth=41, block="basic"), "densenet basic needs depth 3n+4, got 41"),
    (Model(name="pyramidnet", depth=111), "pyramidnet basic needs depth 6n+2, got 111"),
    (Model(name="pyramidnet", depth=112, block="bottleneck"), "pyramidnet bottleneck needs depth 9n+2, got 112"),
])
def test_invalid_depth_names_the_rule(cfg, rule):
    with pytest.raises(ConfigError) as err:
        build_model(cfg, 10, 3)
    assert err.value.key == "model.depth" and rule in err.value.message


@pytest.mark.parametrize("cfg,key", [
    (Model(name="densenet", compression=0.0), "model.compression"),
    (Model(name="densenet", block="wide"), "model.block"),
    (Model(name="densenet", dropout=1.0), "model.dropout"),
    (Model(name="pyramidnet", block="wide"), "model.block"),
    (Model(name="pyramidnet", alpha=-1), "model.alpha"),
    (Model(name="pyramidnet", drop_path=1.0), "model.drop_path"),
])
def test_invalid_options(cfg, key):
    assert refused(TrialConfig(model=cfg)).key == key


@pytest.mark.parametrize("key", ["drop_path", "zero_init_residual"])
def test_densenet_refuses_residual_options(key):
    assert key not in DEFAULTS["densenet"]
    with pytest.raises(ConfigError) as err:
        build_model(Model(name="densenet", depth=10, **{key: 0.1 if key == "drop_path" else True}), 10, 3)
    assert err.value.key == f"model.{key}" and "does not take" in err.value.message


@pytest.mark.parametrize("cfg,stem", [
    (Model(name="densenet", depth=10, growth_rate=5), 10),                          # BC: 2k
    (Model(name="densenet", depth=10, growth_rate=5, compression=1.0), 16),         # DenseNet-B
    (Model(name="densenet", depth=7, block="basic", growth_rate=5), 16),
])
def test_densenet_stem_width(cfg, stem):
    assert build_model(cfg, 10, 3).stem.out_channels == stem


def test_densenet_transitions_compress():
    model = build_model(Model(name="densenet", depth=10, growth_rate=4), 10, 3)
    # stem 8, +4 per block layer, halved at each transition: 12 -> 6, 10 -> 5, final 9
    convs = [m.conv.out_channels for m in model.features if type(m).__name__ == "Transition"]
    assert convs == [6, 5] and model.fc.in_features == 9


def test_pyramidnet_width_grows_linearly():
    model = build_model(Model(name="pyramidnet", depth=20, alpha=36), 10, 3)   # N=9, +4 per block
    widths = [b.bn3.num_features for b in model.blocks]
    assert widths == [16 + 4 * (i + 1) for i in range(9)]


def test_pyramidnet_drop_path_rates_and_eval_determinism():
    torch.manual_seed(0)
    model = build_model(Model(name="pyramidnet", depth=14, alpha=12, drop_path=0.5), 10, 1)  # N=6
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.5 * (i + 1) / 6 for i in range(6)])
    assert rates[0] == pytest.approx(0.5 / 6) and rates[-1] == pytest.approx(0.5)
    x = torch.randn(4, 1, 28, 28)
    model.train()
    model(x)  # give BN running stats something other than the init values
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        outs = [model(x) for _ in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def _shortcut(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The expected parameter-free shortcut, written independently of the model."""
    if x.shape[-1] != out.shape[-1]:
        x = F.avg_pool2d(x, 2, ceil_mode=True)
    return F.pad(x, (0, 0, 0, 0, 0, out.shape[1] - x.shape[1]))


@pytest.mark.parametrize("block,depth", [("basic", 8), ("bottleneck", 11)])
@pytest.mark.parametrize("size", [28, 32])
def test_pyramidnet_zero_init_blocks_return_shortcut(block, depth, size):
    torch.manual_seed(0)
    model = build_model(Model(name="pyramidnet", depth=depth, block=block, alpha=12,
                              zero_init_residual=True), 10, 1)
    model.eval()
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
             for m in model.modules() if isinstance(m, _Unit)]
    with torch.no_grad():
        model(torch.randn(2, 1, size, size))
    for h in hooks:
        h.remove()
    assert len(seen) == 3
    for x, out in seen:
        assert out.shape[1] > x.shape[1]
        assert torch.equal(out, _shortcut(x, out))
