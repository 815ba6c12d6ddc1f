"""ResNeXt and Shake-Shake: shapes, gradients, paper parameter counts, depth errors, shake behaviour."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from conftest import refused
from trainable.config import Model, TrialConfig
from trainable.errors import ConfigError
from trainable.models import build_model
from trainable.models.shake_shake import ShakeBlock

TINY = {
    "resnext": Model(name="resnext", depth=11, cardinality=2, base_width=4, drop_path=0.1),
    "shake_shake": Model(name="shake_shake", depth=8, base_channels=8),
}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32)])
def test_forward_backward(name, shape):
    torch.manual_seed(0)
    model = build_model(TINY[name], num_classes=10, in_channels=shape[1])
    out = model(torch.randn(*shape))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("config, paper", [
    (Model(name="resnext"), 34.4e6),                                     # ResNeXt-29 8x64d (default)
    (Model(name="resnext", depth=29, cardinality=16, base_width=64), 68.1e6),
    (Model(name="shake_shake"), 2.9e6),                                  # 26 2x32d (default)
    (Model(name="shake_shake", base_channels=64), 11.7e6),
    (Model(name="shake_shake", base_channels=96), 26.2e6),
])
def test_paper_parameter_counts(config, paper):
    count = n_params(build_model(config, num_classes=10, in_channels=3))
    assert abs(count - paper) / paper < 0.02, count


@pytest.mark.parametrize("name, depth, rule", [("resnext", 30, "9n+2"), ("shake_shake", 27, "6n+2")])
def test_invalid_depth(name, depth, rule):
    with pytest.raises(ConfigError, match=re.escape(f"{name} needs depth {rule}, got {depth}")) as err:
        build_model(Model(name=name, depth=depth), num_classes=10, in_channels=3)
    assert err.value.key == "model.depth"


def test_resnext_invalid_cardinality():
    assert refused(TrialConfig(model=Model(name="resnext", depth=11, cardinality=0))).key == "model.cardinality"


@pytest.mark.parametrize("name", sorted(TINY))
def test_zero_init_residual_zeros_branch_ends(name):
    config = dataclasses.replace(TINY[name], zero_init_residual=True)
    model = build_model(config, num_classes=10, in_channels=3)
    ends = [m.branch_end for m in model.modules() if getattr(m, "branch_end", None) is not None]
    assert ends and all(bool((e.weight == 0).all()) for e in ends)
    if name == "shake_shake":  # both branches of every block
        assert len(ends) == 2 * sum(isinstance(m, ShakeBlock) for m in model.modules())


def test_shake_shake_odd_width():
    with pytest.raises(ConfigError, match="even width") as err:
        build_model(Model(name="shake_shake", depth=8, base_channels=7), num_classes=10, in_channels=3)
    assert err.value.key == "model.base_channels"


class _Opts:
    def __init__(self, forward=True, backward=True, image=True):
        self.shake_forward, self.shake_backward, self.shake_image = forward, backward, image


def _block(**kw) -> ShakeBlock:
    torch.manual_seed(0)
    block = ShakeBlock(4, 8, 2, _Opts(**kw))
    block(torch.randn(4, 4, 8, 8))  # give BN non-trivial running stats
    return block


def _eval_formula(block, x):
    return 0.5 * (block.branch1(x) + block.branch2(x)) + block.shortcut(x)


def test_shake_eval_averages_branches():
    block = _block().eval()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), _eval_formula(block, x), atol=1e-6)


def test_shake_forward_is_random_in_training():
    block = _block().train()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(block(x), block(x))


def test_even_keep_training_equals_eval_formula():
    block = _block(forward=False, backward=False).train()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        # Branches see the same batch in both calls, so train-mode BN gives the same values.
        assert torch.allclose(block(x), _eval_formula(block, x), atol=1e-6)


def _weights(block, x):
    """Per-image forward weight alpha (recovered from the outputs) and backward weight beta
    (the gradient reaching branch1's output when d out = 1)."""
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            seen[name] = output
        return hook

    hooks = [block.branch1.register_forward_hook(keep("b1")), block.branch2.register_forward_hook(keep("b2")),
             block.shortcut.register_forward_hook(keep("sc"))]
    out = block(x)
    out.backward(torch.ones_like(out))
    for h in hooks:
        h.remove()
    b1, b2, sc = seen["b1"].detach(), seen["b2"].detach(), seen["sc"].detach()
    alpha = ((out.detach() - sc - b2) * (b1 - b2)).flatten(1).sum(1) / (b1 - b2).square().flatten(1).sum(1)
    beta = seen["b1"].grad
    assert torch.allclose(beta, beta[:, :1, :1, :1].expand_as(beta))  # one weight per image
    assert torch.allclose(seen["b2"].grad, 1 - beta)
    return alpha, beta[:, 0, 0, 0]


def test_shake_backward_draws_independent_weights():
    block = _block().train()
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    alpha1, beta1 = _weights(block, x)
    alpha2, beta2 = _weights(block, x)
    assert not torch.allclose(beta1, beta2)  # random per call
    assert not torch.allclose(alpha1, beta1, atol=1e-3)  # not the forward weights
    assert not torch.allclose(beta1, beta1[:1].expand_as(beta1))  # per image


def test_keep_backward_uses_forward_weights():
    block = _block(backward=False).train()
    alpha, beta = _weights(block, torch.randn(3, 4, 8, 8))
    assert torch.allclose(alpha, beta, atol=1e-4)


def test_shake_batch_uses_one_weight():
    block = _block(image=False).train()
    alpha, beta = _weights(block, torch.randn(3, 4, 8, 8))
    assert torch.allclose(alpha, alpha[:1].expand_as(alpha), atol=1e-4)
    assert torch.allclose(beta, beta[:1].expand_as(beta))
