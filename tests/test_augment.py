"""Batch augmentations against their definitions: pads, cutout, random erasing, policies, repeats."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY_BASE, refused
from trainable import from_flat, train
from trainable.augment import (POLICIES, Normalize, TrainBatches, cutout, erasing_boxes,
                               pad_images, random_erasing)
from trainable.config import Augment, Cutout, Data, Policy, RandomErasing, Train, TrialConfig, flatten


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def plain(**changes) -> Augment:
    """No augmentation unless asked for."""
    return Augment(**{"crop_padding": 0, "flip": False, **changes})


def batches(x, cfg: Augment, batch_size: int, seed: int = 0, mean=None, std=None, channels_last=False):
    """TrainBatches over x with labels 0..N-1, so each label names its source image."""
    c = x.shape[1]
    norm = Normalize(mean or [0.5] * c, std or [0.25] * c, True, "cpu", channels_last)
    return TrainBatches(x, torch.arange(len(x)), batch_size, cfg, norm, gen(seed), x.shape[-1])


def texture(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen(seed))


def changed_box(changed: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the changed pixels; asserts they fill exactly that rectangle."""
    rows, cols = changed.any(1).nonzero(as_tuple=True), changed.any(0).nonzero(as_tuple=True)
    top, bottom, left, right = int(rows[0][0]), int(rows[0][-1]), int(cols[0][0]), int(cols[0][-1])
    h, w = bottom - top + 1, right - left + 1
    assert changed[top:bottom + 1, left:right + 1].all() and changed.sum() == h * w
    return top, left, h, w


# ---- padding --------------------------------------------------------------

@pytest.mark.parametrize("mode, np_mode", [("reflect", "reflect"), ("replicate", "edge"),
                                           ("constant", "constant")])
def test_pad_modes_match_their_definitions(mode, np_mode):
    x = torch.arange(2 * 16, dtype=torch.uint8).view(1, 2, 4, 4)
    out = pad_images(x, 2, mode, fill=7)
    kw = {"constant_values": 7} if mode == "constant" else {}
    assert np.array_equal(out.numpy(), np.pad(x.numpy(), [(0, 0), (0, 0), (2, 2), (2, 2)], mode=np_mode, **kw))
    assert out.dtype == torch.uint8
    top_row = {"reflect": x[0, :, 2], "replicate": x[0, :, 0],
               "constant": torch.full((2, 4), 7, dtype=torch.uint8)}
    assert torch.equal(out[0, :, 0, 2:6], top_row[mode])  # the row above the image
    assert torch.equal(out[0, :, 2:6, 2:6], x[0])


def test_train_batches_pad_once_with_the_configured_mode_and_crop_from_it():
    x = texture(8, 1, 6, 6)
    tb = batches(x, plain(crop_padding=3, pad_mode="replicate"), 8)
    assert torch.equal(tb.x, pad_images(x, 3, "replicate"))
    tb = batches(x, plain(crop_padding=2, pad_mode="constant", pad_fill=200), 8)
    assert tb.x.shape == (8, 1, 10, 10) and (tb.x[:, :, 0] == 200).all() and (tb.x[:, :, :, -1] == 200).all()


@pytest.mark.parametrize("changes, key", [
    ({"crop_padding": 6, "pad_mode": "reflect"}, "augment.crop_padding"),
    ({"pad_fill": 256}, "augment.pad_fill"),
    ({"repeated": 9}, "augment.repeated"),
    ({"random_erasing": RandomErasing(prob=0.5, area=(0.5, 0.2))}, "augment.random_erasing.area"),
    ({"policy": Policy(name="randaugment", magnitude=31)}, "augment.policy.magnitude"),
])
def test_unusable_values_are_config_errors_naming_the_key(changes, key):
    cfg = TrialConfig(augment=plain(**changes), train=Train(batch_size=8),
                      data=Data(dataset="synthetic", synthetic_shape=(1, 6, 6), synthetic_size=64))
    assert refused(cfg).key == key


# ---- cutout ---------------------------------------------------------------

def test_cutout_changes_only_a_clipped_square_of_zeros():
    size, x = 6, torch.rand(200, 3, 16, 16) + 1  # no zeros, so every patch pixel changes
    out = cutout(x, size, 1.0, gen())
    for xi, oi in zip(x, out):
        changed = oi != xi
        assert (changed == changed[0]).all() and (oi[changed] == 0).all()
        _, _, h, w = changed_box(changed[0])
        assert size - size // 2 <= min(h, w) and max(h, w) <= size  # clipped at most to half
    assert torch.equal(cutout(x, size, 0.0, gen()), x)
    some = cutout(x, size, 0.5, gen())
    assert 0.3 < (some != x).flatten(1).any(1).float().mean() < 0.7


def test_cutout_in_train_batches_sets_the_patch_to_the_dataset_mean():
    x = texture(32, 3, 12, 12)
    mean, std = [0.2, 0.5, 0.7], [0.3, 0.2, 0.1]
    tb = batches(x, plain(cutout=Cutout(size=4, prob=1.0)), 16, mean=mean, std=std)
    norm = Normalize(mean, std, True, "cpu", False)
    for xb, y in tb:
        clean = norm(x[y])
        patch = xb != clean
        assert (xb[patch] == 0).all()  # 0 after normalizing is the mean before it
        assert (patch.flatten(1).sum(1) >= 3 * (4 - 2) ** 2).all()


# ---- random erasing -------------------------------------------------------

@pytest.mark.parametrize("value", ["zero", "random"])
def test_random_erasing_fills_one_rectangle_of_the_configured_area_and_aspect(value):
    area, ratio, (H, W) = (0.05, 0.3), (0.3, 3.3), (32, 40)
    x = torch.rand(128, 3, H, W) + 10  # far from both fills
    out = random_erasing(x, 1.0, area, ratio, value, gen(1))
    top, left, eh, ew, found = erasing_boxes(128, H, W, area, ratio, gen(1))
    assert found.all()
    for i, (xi, oi) in enumerate(zip(x, out)):
        changed = oi != xi
        assert (changed == changed[0]).all()
        box = changed_box(changed[0])
        assert box == (int(top[i]), int(left[i]), int(eh[i]), int(ew[i]))
        h, w = box[2:]
        slack = 0.5 * (h + w) + 0.75  # h and w are rounded to whole pixels
        assert area[0] * H * W - slack <= h * w <= area[1] * H * W + slack
        tol = math.log((h + 0.5) / (h - 0.5)) + math.log((w + 0.5) / (w - 0.5))
        assert math.log(ratio[0]) - tol <= math.log(h / w) <= math.log(ratio[1]) + tol
        if value == "zero":
            assert (oi[changed] == 0).all()
        else:
            assert oi[changed].abs().max() < 7 and oi[changed].std() > 0.5


def test_random_erasing_prob_zero_is_identity_and_prob_one_erases_each_image_whose_candidate_fits():
    x = torch.rand(256, 1, 8, 8) + 10
    assert torch.equal(random_erasing(x, 0.0, (0.02, 0.4), (0.3, 3.3), "random", gen()), x)
    area, ratio = (0.5, 1.0), (0.1, 10.0)  # big and elongated: often nothing fits
    *_, found = erasing_boxes(256, 8, 8, area, ratio, gen(2))
    assert 10 < found.sum() < 246
    erased = (random_erasing(x, 1.0, area, ratio, "zero", gen(2)) != x).flatten(1).any(1)
    assert torch.equal(erased, found)


def test_random_erasing_prob_half_erases_about_half():
    x = torch.rand(2000, 1, 8, 8) + 10
    erased = (random_erasing(x, 0.5, (0.02, 0.4), (0.3, 3.3), "zero", gen()) != x).flatten(1).any(1)
    assert 0.45 < erased.float().mean() < 0.55


# ---- policies -------------------------------------------------------------

@pytest.mark.parametrize("name", ["autoaugment", "randaugment", "trivialaugment"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_policies_keep_uint8_shape_and_draw_per_image(name, shape):
    x = texture(1, *shape).expand(24, *shape).contiguous()  # one image, many times
    state = torch.get_rng_state()
    out = POLICIES.get(name)(Policy(name=name))(x, np.random.default_rng(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert len({o.numpy().tobytes() for o in out}) >= 6  # a batch-wide op would give one
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is not drawn from
    assert torch.equal(POLICIES.get(name)(Policy(name=name))(x, np.random.default_rng(0)), out)


# ---- repeated augmentation ------------------------------------------------

def test_repeated_augmentation_repeats_each_image_r_times_with_independent_crops():
    x, r, bs, pad = texture(96, 1, 8, 8), 4, 16, 3
    tb = batches(x, plain(crop_padding=pad, repeated=r), bs)
    padded = pad_images(x, pad, "constant")
    out = list(tb)
    assert len(tb) == len(out) == 96 // bs
    seen, groups_with_two_crops = [], 0
    for xb, y in out:
        labels, counts = y.unique(return_counts=True)
        assert len(labels) == bs // r and (counts == r).all()
        seen += labels.tolist()
        for label in labels:
            offsets = set()
            for copy in (x_ := xb[y == label]):
                raw = ((copy * 0.25 + 0.5) * 255).round().to(torch.uint8)  # undo Normalize
                offsets |= {(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                            if torch.equal(padded[label, :, oy:oy + 8, ox:ox + 8], raw)}
            assert len(offsets) >= 1 and len(x_) == r
            groups_with_two_crops += len(offsets) > 1
    assert len(set(seen)) == len(seen) == 96 // r  # an epoch sees len(y) / r distinct images
    assert groups_with_two_crops >= 0.9 * len(seen)


def test_repeated_copies_need_not_divide_the_batch():
    """RSB: 3 copies at batch 2048. The tiled copies [a b c a b c a b] are cut at the batch size."""
    x, r, bs = texture(90, 1, 8, 8), 3, 16
    tb = batches(x, plain(crop_padding=2, repeated=r), bs)
    out = list(tb)
    assert len(out) == 90 // bs and all(len(y) == bs for _, y in out)
    for _, y in out:
        labels, counts = y.unique(return_counts=True)
        assert len(labels) == 6 and sorted(counts.tolist()) == [2, 2, 3, 3, 3, 3]


# ---- the whole pipeline ---------------------------------------------------

FULL = plain(crop_padding=4, pad_mode="reflect", flip=True, repeated=2, policy=Policy(name="randaugment"),
             cutout=Cutout(size=8), random_erasing=RandomErasing(prob=0.5))


def test_same_seed_same_batches_other_seed_other_batches():
    x = texture(64, 1, 28, 28)

    def epochs(seed):
        tb = batches(x, FULL, 16, seed, channels_last=True)
        return [b for _ in range(2) for b in tb]

    a, b, c = epochs(3), epochs(3), epochs(4)
    assert len(a) == 8 and a[0][0].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[4][0])  # the second epoch draws afresh


def test_short_training_run_with_every_batch_augmentation_is_finite():
    cfg = from_flat({**flatten(TINY_BASE), "augment.cutout.size": 8, "augment.random_erasing.prob": 0.5,
                     "augment.policy.name": "randaugment", "augment.repeated": 2, "augment.pad_mode": "reflect"})
    result = train(cfg)
    assert all(math.isfinite(result[k]) for k in ("train_loss", "val_loss", "test_loss", "val_error"))


def test_timms_randaugment_draws_per_image_from_the_trials_generator():
    from trainable.config import Policy as PolicyConfig
    policy = POLICIES.get("timm")(PolicyConfig(name="timm", timm="rand-m9-mstd0.5-inc1"))
    x = texture(1, 3, 32, 32).expand(16, 3, 32, 32).contiguous()
    import random
    before = random.getstate()
    out = policy(x, np.random.default_rng(0))
    assert random.getstate() == before  # Python's global stream is put back
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert len({o.numpy().tobytes() for o in out}) >= 8  # per image, not per batch
    assert torch.equal(policy(x, np.random.default_rng(0)), out)
    assert not torch.equal(policy(x, np.random.default_rng(1)), out)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_colour_jitter_equals_torchvisions_adjustment_with_the_factor_drawn_for_each_image(op):
    from torchvision.transforms.v2 import functional as TF

    from trainable.augment import color_jitter
    x = torch.randint(0, 256, (6, 3, 10, 12), generator=torch.Generator().manual_seed(0)).float()
    ours = color_jitter(x, **{k: 0.4 if k == op else 0.0 for k in ("brightness", "contrast", "saturation")},
                        gen=torch.Generator().manual_seed(3))
    factors = 0.6 + 0.8 * torch.rand(6, generator=torch.Generator().manual_seed(3))
    adjust = getattr(TF, f"adjust_{op}")
    reference = torch.stack([adjust(img / 255, float(f)) * 255 for img, f in zip(x, factors)])
    assert torch.allclose(ours, reference, atol=1e-3)
    assert len({round(float(f), 4) for f in factors}) == 6  # one factor per image


def test_lighting_adds_one_colour_per_image_along_imagenets_principal_components():
    from trainable.augment import LIGHTING_EIGVAL, LIGHTING_EIGVEC, lighting
    x = torch.rand(8, 3, 5, 5) * 255
    out = lighting(x, 0.1, torch.Generator().manual_seed(1))
    shift = (out - x)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-4)  # one RGB offset per image
    alpha = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    expected = 255 * (alpha * torch.tensor(LIGHTING_EIGVAL)) @ torch.tensor(LIGHTING_EIGVEC).T
    assert torch.allclose(shift[:, :, 0, 0], expected, atol=1e-4)


def test_colour_jitter_and_lighting_train_on_rgb_and_are_refused_on_greyscale():
    cfg = {**flatten(TINY_BASE), "data.dataset": "synthetic", "data.synthetic_shape": [3, 8, 8],
           "data.synthetic_size": 256, "augment.color_jitter.brightness": 0.4, "augment.color_jitter.saturation": 0.4,
           "augment.lighting": 0.1}
    assert math.isfinite(train(from_flat(cfg))["val_loss"])
    assert refused(from_flat({**cfg, "data.synthetic_shape": [1, 8, 8]})).key == "augment.lighting"
