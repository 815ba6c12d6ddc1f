"""Optimizers against their papers' definitions, computed by hand on tiny tensors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import refused
from trainable import optim, rules
from trainable.config import Optim, TrialConfig

@pytest.fixture(autouse=True)
def _float64():
    """Hand computations are compared to ~1e-12."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


class ConvBNLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def backward(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 2, 4, 4, generator=gen)
    target = torch.randn(4, 2, generator=gen)
    model.zero_grad()
    ((model(x) - target) ** 2).mean().backward()


def snapshot(model):
    return {n: (p.detach().clone(), p.grad.detach().clone()) for n, p in model.named_parameters()}


def single(name, p, **cfg):
    """One optimizer from the registry over a single tensor."""
    cfg = Optim(name=name, **cfg)
    return optim.OPTIMIZERS.get(name)([{"params": [p]}], cfg, cfg.lr)


# ---- LARS ----------------------------------------------------------------------

def test_lars_steps_follow_the_trust_ratio_and_exclusions():
    torch.manual_seed(0)
    model = ConvBNLinear()
    nn.init.normal_(model.bn.weight, 1.0, 0.1)  # so its step would differ under a trust ratio
    nn.init.normal_(model.bn.bias, 0.0, 0.1)
    lr, mom, wd, tc, eps = 0.5, 0.9, 0.01, 0.02, 1e-8
    cfg = Optim(name="lars", lr=lr, momentum=mom, weight_decay=wd, trust_coefficient=tc, eps=eps)
    opt = optim.build(model, cfg, batch_size=256)
    excluded = {"conv.bias", "bn.weight", "bn.bias", "fc.bias"}

    def expected_update(w, g, name, buf):
        if name in excluded:
            return mom * buf + lr * g
        ratio = tc * w.norm() / (g.norm() + wd * w.norm() + eps)
        return mom * buf + lr * ratio * (g + wd * w)

    bufs = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for seed in (0, 1):  # the second step checks the momentum buffer
        backward(model, seed)
        before = snapshot(model)
        opt.step()
        for name, p in model.named_parameters():
            w, g = before[name]
            bufs[name] = expected_update(w, g, name, bufs[name])
            torch.testing.assert_close(p.detach(), w - bufs[name], rtol=1e-12, atol=1e-14, msg=name)


def test_lars_excluded_params_match_plain_momentum_sgd():
    torch.manual_seed(0)
    model = ConvBNLinear()
    reference = ConvBNLinear()
    reference.load_state_dict(model.state_dict())
    opt = optim.build(model, Optim(name="lars", lr=0.3, momentum=0.9, weight_decay=0.1), batch_size=256)
    ref_params = [reference.conv.bias, reference.bn.weight, reference.bn.bias, reference.fc.bias]
    sgd = torch.optim.SGD(ref_params, lr=0.3, momentum=0.9)
    for seed in range(3):
        with torch.no_grad():  # same LARS-scaled weights, so the same gradients
            reference.conv.weight.copy_(model.conv.weight)
            reference.fc.weight.copy_(model.fc.weight)
        backward(model, seed)
        backward(reference, seed)
        opt.step()
        sgd.step()
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        torch.testing.assert_close(model.get_parameter(name), reference.get_parameter(name))


def test_lars_exclude_skips_decay_even_when_the_group_sets_it():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.3, 0.1])
    optim.LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.5}], lr=0.1).step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 0.03, -2.0 - 0.01]))


def test_trust_ratio_is_one_for_a_zero_tensor():
    g = torch.tensor([0.3, -0.4])
    p = nn.Parameter(torch.zeros(2))
    p.grad = g.clone()
    single("lars", p, lr=0.1, momentum=0.0, weight_decay=0.5).step()
    torch.testing.assert_close(p.detach(), -0.1 * g)
    p = nn.Parameter(torch.zeros(2))
    p.grad = g.clone()
    single("lamb", p, lr=0.1, weight_decay=0.5, eps=0.0).step()
    torch.testing.assert_close(p.detach(), -0.1 * g.sign())


# ---- LAMB ----------------------------------------------------------------------

def test_lamb_steps_match_the_definition():
    torch.manual_seed(0)
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.95), 1e-6, 0.1
    p = nn.Parameter(torch.randn(3, 4))
    opt = single("lamb", p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = v = torch.zeros_like(p)
    for t in (1, 2):
        w, g = p.detach().clone(), torch.randn(3, 4)
        p.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps) + wd * w
        torch.testing.assert_close(p.detach(), w - lr * w.norm() / r.norm() * r, rtol=1e-12, atol=1e-14)


# ---- AdaBound --------------------------------------------------------------------

def test_adabound_step_stays_in_bounds_and_becomes_sgd_at_final_lr():
    lr, final_lr, gamma = 1e-3, 0.1, 0.1
    g = torch.tensor([1e-4, 1e-2, 1.0, 100.0])  # Adam's step size is far above, near, and below final_lr
    p = nn.Parameter(torch.zeros(4))
    opt = single("adabound", p, lr=lr, final_lr=final_lr, bound_gamma=gamma, weight_decay=0.0)
    clipped_low = clipped_high = False
    for t in range(1, 2001):
        w = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        m = opt.state[p]["exp_avg"]
        eta = (w - p.detach()) / m  # the effective per-element step size
        lower, upper = final_lr * (1 - 1 / (gamma * t + 1)), final_lr * (1 + 1 / (gamma * t))
        assert bool((eta >= lower * (1 - 1e-12)).all() and (eta <= upper * (1 + 1e-12)).all()), t
        clipped_low |= bool(torch.isclose(eta, torch.tensor(lower), rtol=1e-9).any())
        clipped_high |= bool(torch.isclose(eta, torch.tensor(upper), rtol=1e-9).any())
    assert clipped_low and clipped_high
    # m -> g for a constant gradient, so the step is SGD's final_lr * g within the bounds' 0.5%.
    torch.testing.assert_close(w - p.detach(), final_lr * g, rtol=6e-3, atol=0)
    # The bounds follow the lr schedule: half the lr, half the final step size.
    opt.param_groups[0]["lr"] = lr / 2
    w = p.detach().clone()
    opt.step()
    torch.testing.assert_close(w - p.detach(), final_lr / 2 * g, rtol=6e-3, atol=0)


# ---- Adam / AdamW ----------------------------------------------------------------------

def test_adamw_differs_from_adam_by_the_decoupled_decay_only():
    torch.manual_seed(0)
    lr, wd = 0.01, 0.2
    start = torch.randn(5)
    grads = [torch.randn(5) for _ in range(3)]
    plain, decayed, l2 = (nn.Parameter(start.clone()) for _ in range(3))
    adam = single("adam", plain, lr=lr, weight_decay=0.0)
    adamw = single("adamw", decayed, lr=lr, weight_decay=wd)
    adam_l2 = single("adam", l2, lr=lr, weight_decay=wd)
    reference = nn.Parameter(start.clone())
    adam_ref = single("adam", reference, lr=lr, weight_decay=0.0)
    for g in grads:
        before_plain, before_decayed = plain.detach().clone(), decayed.detach().clone()
        before_l2 = l2.detach().clone()
        plain.grad, decayed.grad = g.clone(), g.clone()
        adam.step()
        adamw.step()
        update = before_plain - plain.detach()  # Adam's update for these gradients
        torch.testing.assert_close(decayed.detach(), before_decayed - lr * wd * before_decayed - update)
        # adam's decay is L2: the same as plain Adam on g + wd * w.
        l2.grad, reference.grad = g.clone(), g + wd * before_l2
        reference.data.copy_(before_l2)
        adam_l2.step()
        adam_ref.step()
        torch.testing.assert_close(l2.detach(), reference.detach())


# ---- SGD ----------------------------------------------------------------------

@pytest.mark.parametrize("momentum,dampening", [(0.9, 0.1), (0.0, 0.0)])
def test_nesterov_needs_momentum_and_no_dampening(momentum, dampening):
    cfg = Optim(name="sgd", nesterov=True, momentum=momentum, dampening=dampening)
    assert refused(TrialConfig(optim=cfg)).key == "optim.nesterov"
    without = dataclasses.replace(cfg, nesterov=False)
    rules.check(TrialConfig(optim=without), rules.Context(device="cpu"))
    optim.build(nn.Linear(2, 1), without, batch_size=128)


# ---- param_groups, scaled_lr, build, clip_gradients ------------------------------

class WithNorms(ConvBNLinear):
    def __init__(self):
        super().__init__()
        self.gn = nn.GroupNorm(1, 3)
        self.ln = nn.LayerNorm(2)
        self.gain = nn.Parameter(torch.ones(2))  # 1-d but no norm parameter nor bias: decayed
        self.head = nn.Linear(2, 2, bias=False)
        self.tied = nn.Linear(2, 2)
        self.tied.weight = self.head.weight  # shared: must appear once


def names_of(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = [by_id[id(p)] for p in params]
    assert len(names) == len(set(names)), "duplicated parameter"
    return set(names)


def test_param_groups_split_norm_parameters_and_biases():
    model = WithNorms()
    exempt = {"conv.bias", "bn.weight", "bn.bias", "fc.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias",
              "tied.bias"}
    every = {n for n, _ in model.named_parameters()}
    decayed_group, exempt_group = optim.param_groups(model, Optim(name="sgd", no_decay_bn_bias=True,
                                                                  weight_decay=0.3))
    assert names_of(model, exempt_group["params"]) == exempt
    assert names_of(model, decayed_group["params"]) == every - exempt == {"conv.weight", "fc.weight", "gain",
                                                                         "head.weight"}
    assert exempt_group["weight_decay"] == 0.0 and decayed_group["weight_decay"] == 0.3
    assert "lars_exclude" not in exempt_group
    built = optim.build(model, Optim(name="sgd", no_decay_bn_bias=True, weight_decay=0.3), batch_size=128)
    assert [g["weight_decay"] for g in built.param_groups] == [0.3, 0.0]

    (single_group,) = optim.param_groups(model, Optim(name="adamw", no_decay_bn_bias=False))
    assert names_of(model, single_group["params"]) == every

    for flag in (False, True):  # LARS always exempts them, from the trust ratio too
        decayed_group, exempt_group = optim.param_groups(model, Optim(name="lars", no_decay_bn_bias=flag))
        assert names_of(model, exempt_group["params"]) == exempt
        assert exempt_group["lars_exclude"] is True and exempt_group["weight_decay"] == 0.0


def test_scaled_lr_follows_the_linear_rule():
    cfg = Optim(lr=0.1, scale_lr=True, reference_batch=256)
    assert optim.scaled_lr(cfg, 512) == pytest.approx(0.2)
    assert optim.scaled_lr(cfg, 64) == pytest.approx(0.025)
    assert optim.scaled_lr(dataclasses.replace(cfg, scale_lr=False), 512) == 0.1
    opt = optim.build(nn.Linear(2, 1), cfg, batch_size=1024)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)


def test_rules_refuse_unknown_names_and_bad_values():
    error = refused(TrialConfig(optim=Optim(name="adagrad")))
    assert error.key == "optim.name" and "adabound, adam, adamw, lamb, lars, sgd" in str(error)
    assert refused(TrialConfig(optim=Optim(betas=(0.9,)))).key == "optim.betas"


def test_clip_gradients_limits_the_global_norm():
    model = nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    optim.clip_gradients(model, Optim(grad_clip=None))
    assert all(bool((p.grad == 2.0).all()) for p in model.parameters())
    optim.clip_gradients(model, Optim(grad_clip=0.5))
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm.item() == pytest.approx(0.5)
    optim.clip_gradients(model, Optim(grad_clip=10.0))  # below the limit: untouched
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm.item() == pytest.approx(0.5)


# ---- every optimizer learns ---------------------------------------------------------

SETTINGS = {"sgd": {"lr": 0.05}, "adam": {"lr": 0.05}, "adamw": {"lr": 0.05},
            "adabound": {"lr": 0.05, "final_lr": 0.05}, "lars": {"lr": 1.0, "trust_coefficient": 0.02},
            "lamb": {"lr": 0.05}}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", optim.OPTIMIZERS.names())
def test_every_optimizer_fits_least_squares(name, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=gen)
    y = x @ torch.randn(5, 1, generator=gen) + 0.5
    x, y = x.to(device), y.to(device)
    torch.manual_seed(0)
    model = nn.Linear(5, 1).to(device)
    opt = optim.build(model, Optim(name=name, weight_decay=1e-4, **SETTINGS.get(name, {})), batch_size=256)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(50):
        last = opt.step(closure)
    assert last.item() < 0.2 * first, (first, last.item())


def test_lamb_as_rsb_runs_it_leaves_the_trust_ratio_off_for_undecayed_parameters():
    """timm's LAMB adapts only its decayed groups: with no_decay_bn_bias, BN weights and biases take
    the plain bias-corrected Adam direction times lr."""
    from trainable import from_flat
    from trainable.optim import build
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    cfg = from_flat({"optim.name": "lamb", "optim.lr": 0.01, "optim.weight_decay": 0.02,
                     "optim.no_decay_bn_bias": True}).optim
    opt = build(model, cfg, 128)
    model(torch.randn(8, 4)).square().mean().backward()
    bn, linear = model[1].weight, model[0].weight
    before = {n: p.detach().clone() for n, p in (("bn", bn), ("linear", linear))}
    grads = {"bn": bn.grad.clone(), "linear": linear.grad.clone()}
    opt.step()
    r = grads["bn"] / (grads["bn"].abs() + cfg.eps)  # the first step: m_hat = g, sqrt(v_hat) = |g|
    assert torch.allclose(bn.detach(), before["bn"] - 0.01 * r, atol=1e-7)
    r = grads["linear"] / (grads["linear"].abs() + cfg.eps) + 0.02 * before["linear"]
    ratio = before["linear"].norm() / r.norm()
    assert torch.allclose(linear.detach(), before["linear"] - 0.01 * ratio * r, atol=1e-6)
