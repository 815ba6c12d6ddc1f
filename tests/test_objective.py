"""The training objective against the papers' definitions, on tiny tensors and models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import refused
from trainable.augment import cutout
from trainable.config import from_flat
from trainable.objective import Objective

B, C, H, W, K = 6, 3, 8, 8, 5


def objective(seed: int = 0, teacher: nn.Module | None = None, **flat) -> Objective:
    cfg = from_flat(flat)
    return Objective(cfg.augment, cfg.train, K, torch.Generator().manual_seed(seed), teacher)


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g), torch.randint(0, K, (B,), generator=g)


def coded() -> torch.Tensor:
    """Pixel (i, ., r, c) holds i*10000 + r*100 + c, so every value names its source exactly."""
    i, r, c = torch.meshgrid(torch.arange(B), torch.arange(H), torch.arange(W), indexing="ij")
    return (i * 10000 + r * 100 + c).float()[:, None].expand(B, C, H, W).contiguous()


def one_hot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, K).float()


def close(a, b) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_nothing_enabled_is_cross_entropy(eps):
    model, (x, y) = linear(), batch()
    loss, logits = objective(**{"augment.label_smoothing": eps})(model, x, y)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    close(loss, F.cross_entropy(model(x), y, label_smoothing=eps))
    close(logits, model(x))


def test_mixup_loss_is_the_convex_combination_of_two_cross_entropies():
    model, (x, y), obj = linear(), batch(), objective(**{"augment.mixup.alpha": 1.0})
    for _ in range(3):
        loss, _ = obj(model, x, y)
        lam, perm = obj.last["lam"], obj.last["perm"]
        assert obj.last["mixer"] == "mixup" and 0 < lam < 1
        out = model(lam * x + (1 - lam) * x[perm])
        close(loss, lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm]))


def test_cutmix_lam_is_the_share_of_own_pixels_including_clipped_boxes():
    x, y = coded(), torch.arange(B) % K
    obj = objective(**{"augment.cutmix.alpha": 1.0})
    clipped = unclipped = 0
    for _ in range(40):
        xm, t = obj.mix(x, y)
        lam, perm, (y1, y2, x1, x2) = obj.last["lam"], obj.last["perm"], obj.last["box"]
        own = (xm == x).all(1)
        pasted = (xm == x[perm]).all(1)
        inside = torch.zeros(H, W, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert (own | pasted).all()
        assert pasted[:, inside].all() and own[:, ~inside].all()
        moved = perm != torch.arange(B)
        assert moved.any()
        close(own[moved].float().mean(), torch.tensor(lam))
        close(t, lam * one_hot(y) + (1 - lam) * one_hot(y[perm]))
        if (y2 - y1, x2 - x1) != obj.last["cut"]:
            clipped += 1
        elif 0 < lam < 1:
            unclipped += 1
    assert clipped and unclipped


def test_ricap_tiles_four_crops_weighted_by_area():
    x, y = coded(), torch.arange(B) % K
    obj = objective(**{"augment.ricap.beta": 0.3})
    four = 0
    for _ in range(20):
        xm, t = obj.mix(x, y)
        drawn = obj.last
        v = xm[:, 0].long()
        src, row, col = v // 10000, (v // 100) % 100, v % 100
        covered = torch.zeros(H, W, dtype=torch.long)
        for (top, left, ph, pw), perm, (oy, ox) in zip(drawn["tiles"], drawn["perms"], drawn["offsets"]):
            covered[top:top + ph, left:left + pw] += 1
            region = (slice(None), slice(top, top + ph), slice(left, left + pw))
            assert (src[region] == perm[:, None, None]).all()
            assert (row[region] == torch.arange(oy, oy + ph)[:, None]).all()
            assert (col[region] == torch.arange(ox, ox + pw)).all()
        assert (covered == 1).all()
        areas = [ph * pw / (H * W) for _, _, ph, pw in drawn["tiles"]]
        assert drawn["weights"] == pytest.approx(areas) and sum(drawn["weights"]) == pytest.approx(1)
        close(t, sum(w * one_hot(y[p]) for w, p in zip(drawn["weights"], drawn["perms"])))
        four += all(a > 0 for a in areas)
    assert four


@pytest.mark.parametrize("key", ["augment.mixup.alpha", "augment.cutmix.alpha", "augment.ricap.beta"])
def test_loss_is_soft_cross_entropy_of_the_drawn_mix(key):
    model, (x, y) = linear(), batch()
    flat = {key: 1.0, "augment.label_smoothing": 0.1}
    xm, t = objective(seed=5, **flat).mix(x, y)  # same seed: the same draw as the call below
    loss, logits = objective(seed=5, **flat)(model, x, y)
    close(logits, model(xm))
    close(loss, -(t * F.log_softmax(model(xm), 1)).sum(1).mean())


@pytest.mark.parametrize("key", ["augment.mixup.alpha", "augment.cutmix.alpha", "augment.ricap.beta"])
def test_label_smoothing_composes_with_mixing(key):
    eps, (x, y) = 0.1, batch()
    obj = objective(**{key: 1.0, "augment.label_smoothing": eps})
    _, t = obj.mix(x, y)
    plain = objective(**{key: 1.0}).mix(x, y)[1]  # same seed, same draw, no smoothing
    close(t.sum(1), torch.ones(B))
    assert t.min() >= eps / K - 1e-7
    close(t, plain * (1 - eps) + eps / K)


@pytest.mark.parametrize("mix", [0.0, 1.0])
def test_bce_is_binary_cross_entropy_on_the_soft_targets(mix):
    model, (x, y) = linear(), batch()
    flat = {"train.loss": "bce", "augment.mixup.alpha": mix, "augment.label_smoothing": 0.1}
    xm, t = objective(seed=2, **flat).mix(x, y)
    loss, _ = objective(seed=2, **flat)(model, x, y)
    close(loss, F.binary_cross_entropy_with_logits(model(xm), t))
    if not mix:
        close(t, one_hot(y) * 0.9 + 0.1 / K)


def test_prob_zero_never_mixes():
    model, (x, y) = linear(), batch()
    obj = objective(**{"augment.mixup.alpha": 1.0, "augment.mixup.prob": 0.0})
    loss, _ = obj(model, x, y)
    assert obj.last["mixer"] is None
    close(loss, F.cross_entropy(model(x), y))


def test_dual_cutout_is_mean_view_loss_plus_consistency():
    model, (x, y) = linear(), batch()
    obj = objective(**{"augment.dual_cutout.alpha": 0.1, "augment.dual_cutout.size": 4})
    state = obj.gen.get_state()
    loss, logits = obj(model, x, y)
    replay = torch.Generator().set_state(state)
    v1, v2 = cutout(x, 4, 1.0, replay), cutout(x, 4, 1.0, replay)
    assert (v1 == 0).any() and not torch.equal(v1, v2)
    z1, z2 = model(v1), model(v2)
    expected = (F.cross_entropy(z1, y) + F.cross_entropy(z2, y)) / 2 \
        + 0.1 * ((z1.softmax(1) - z2.softmax(1)) ** 2).mean()
    close(loss, expected)
    close(logits, z1)


def test_distillation_blends_task_loss_and_kl_to_the_teacher():
    model, teacher, (x, y) = linear(0), linear(1).eval(), batch()
    s, tl = model(x), teacher(x).detach()

    def kl(temp):
        p = F.softmax(tl / temp, 1)
        return (p * (p.log() - F.log_softmax(s / temp, 1))).sum(1).mean()

    only_kl, _ = objective(teacher=teacher, **{"train.distill_alpha": 1.0, "train.distill_temperature": 1.0})(
        model, x, y)
    close(only_kl, kl(1.0))
    only_task, _ = objective(teacher=teacher, **{"train.distill_alpha": 0.0})(model, x, y)
    close(only_task, F.cross_entropy(s, y))
    blend, _ = objective(teacher=teacher, **{"train.distill_alpha": 0.3, "train.distill_temperature": 4.0,
                                              "augment.label_smoothing": 0.1})(model, x, y)
    close(blend, 0.7 * F.cross_entropy(s, y, label_smoothing=0.1) + 0.3 * 16 * kl(4.0))


def test_same_seed_same_losses():
    flat = {"augment.mixup.alpha": 1.0, "augment.cutmix.alpha": 1.0, "augment.ricap.beta": 0.3,
            "augment.label_smoothing": 0.1, "augment.dual_cutout.alpha": 0.1, "augment.dual_cutout.size": 4}
    model, (x, y) = linear(), batch()

    def run(seed):
        obj = objective(seed=seed, **flat)
        return [obj(model, x, y)[0].item() for _ in range(6)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sgd_steps_with_every_mixer_stay_finite_and_keep_channels_last():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, K)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    obj = objective(**{"augment.mixup.alpha": 1.0, "augment.cutmix.alpha": 1.0, "augment.ricap.beta": 0.3,
                       "augment.label_smoothing": 0.1})
    seen = set()
    for step in range(15):
        x, y = batch(step)
        x = x.contiguous(memory_format=torch.channels_last)
        assert obj.mix(x, y)[0].is_contiguous(memory_format=torch.channels_last)
        seen.add(obj.last["mixer"])
        loss, logits = obj(model, x, y)
        seen.add(obj.last["mixer"])
        assert torch.isfinite(loss) and logits.shape == (B, K)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert seen == {"mixup", "cutmix", "ricap"}


@pytest.mark.parametrize("key, value", [
    ("augment.mixup.alpha", -1.0), ("augment.mixup.prob", 1.5), ("augment.cutmix.alpha", -0.5),
    ("augment.cutmix.prob", -0.1), ("augment.ricap.beta", -0.3), ("augment.ricap.prob", 2.0),
    ("augment.dual_cutout.alpha", -0.1), ("augment.label_smoothing", 1.0), ("augment.label_smoothing", -0.1),
    ("train.distill_alpha", 1.2), ("train.distill_alpha", -0.2), ("train.distill_temperature", 0.0),
])
def test_bad_values_name_the_key_and_the_fix(key, value):
    error = refused(from_flat({key: value}))
    assert error.key == key and error.fix


def test_dual_cutout_needs_a_positive_size_and_loss_a_known_name():
    assert refused(from_flat({"augment.dual_cutout.alpha": 0.1, "augment.dual_cutout.size": 0})).key == \
        "augment.dual_cutout.size"
    assert refused(from_flat({"train.loss": "focal"})).key == "train.loss"


def test_the_bce_target_threshold_makes_mixed_targets_zero_or_one():
    """timm's BCE with a target threshold (RSB A1: 0.2): after mixing, a target above it is 1."""
    import torch.nn.functional as F

    from trainable.config import Augment, Mixup, Train
    from trainable.objective import Objective
    torch.manual_seed(0)
    obj = Objective(Augment(mixup=Mixup(alpha=1.0, prob=1.0)), Train(loss="bce", bce_threshold=0.2), 4,
                    torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, logits = obj(model, x, y)
    lam, perm = obj.last["lam"], obj.last["perm"]
    mixed = lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y[perm], 4).float()
    target = (mixed > 0.2).float()
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, target))
    assert set(target.unique().tolist()) <= {0.0, 1.0}
