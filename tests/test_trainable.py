"""The trainable on real Fashion-MNIST at toy size: learning, determinism, divergence, pieces."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_BASE
from trainable import metrics
from trainable import ConfigError, Diverged, from_flat, train
from trainable.augment import random_crop, random_flip
from trainable.config import Schedule, TrialConfig, flatten, with_key
from trainable.models import build_model
from trainable.schedules import factor_fn


def tiny(**changes) -> TrialConfig:
    return from_flat({**flatten(TINY_BASE), **changes})


def test_one_short_epoch_learns_well_below_chance():
    result = train(tiny(**{"data.subset": 4000, "data.eval_subset": 1000, "model.base_channels": 16,
                           "train.batch_size": 64, "optim.lr": 0.1, "augment.crop_padding": 0,
                           "augment.flip": False, "schedule.name": "multistep"}))
    assert result["val_error"] < 0.5  # chance is 0.9 on ten classes
    assert result["test_error"] < 0.5
    assert result["epochs_done"] == 1 and result["images_per_s"] > 0


def test_reports_every_epoch_with_the_contract_metrics():
    seen = []
    result = train(tiny(**{"train.epochs": 2}), lambda epoch, m: seen.append((epoch, dict(m))))
    assert [e for e, _ in seen] == [1, 2]
    for _, m in seen:
        assert set(m) >= set(metrics.EPOCH)
    assert result["val_error"] == seen[-1][1]["val_error"]
    assert result["best_val_error"] == min(m["val_error"] for _, m in seen)
    assert 0.0 <= result["test_error"] <= 1.0


def test_same_seed_same_metrics_other_seed_other_metrics():
    a, b = train(tiny()), train(tiny())
    c = train(tiny(**{"train.seed": 1}))
    keys = ["train_loss", "val_loss", "val_error", "test_error"]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert a["train_loss"] != c["train_loss"]


def test_pruning_exception_from_report_passes_through():
    class Stop(Exception):
        pass

    def report(epoch, metrics):
        raise Stop

    with pytest.raises(Stop):
        train(tiny(**{"train.epochs": 3}), report)


def test_diverging_loss_names_epoch_and_step():
    with pytest.raises(Diverged, match=r"diverged at epoch 1, step \d+"):
        train(tiny(**{"optim.lr": 1.0e8}))


def test_batch_larger_than_data_is_a_config_error():
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(tiny(**{"train.batch_size": 512}))


@pytest.mark.parametrize("depth,block", [(8, "basic"), (11, "bottleneck")])
def test_resnet_preact_shapes_on_both_inputs(depth, block):
    cfg = with_key(with_key(TrialConfig(), "model.depth", depth), "model.block", block)
    for channels, size in [(1, 28), (3, 32)]:
        model = build_model(cfg.model, 10, channels)
        out = model(torch.randn(2, channels, size, size))
        assert out.shape == (2, 10)
        out.logsumexp(1).mean().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_invalid_depth_names_the_rule():
    cfg = with_key(TrialConfig(), "model.depth", 21)
    with pytest.raises(ConfigError, match=r"6n\+2"):
        build_model(cfg.model, 10, 1)


def test_parameter_counts_match_the_papers():
    # ResNet-preact-110 and -164 (bottleneck) have 1.7M parameters on CIFAR-10.
    for depth, block in [(110, "basic"), (164, "bottleneck")]:
        cfg = with_key(with_key(TrialConfig(), "model.depth", depth), "model.block", block)
        n = sum(p.numel() for p in build_model(cfg.model, 10, 3).parameters())
        assert abs(n - 1.7e6) / 1.7e6 < 0.02


def test_cosine_and_multistep_with_warmup_match_closed_form():
    steps, epochs = 10, 20
    total, warm = steps * epochs, 2 * steps
    cos = factor_fn(Schedule(name="cosine", warmup_epochs=2, min_lr_ratio=0.1), steps, epochs)
    assert cos(0) == 0.0 and cos(warm // 2) == pytest.approx(0.5)
    for s in (warm, 100, 150, total - 1):
        t = (s - warm) / (total - warm)
        assert cos(s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    ms = factor_fn(Schedule(name="multistep", milestones=(0.5, 0.75), gamma=0.1), steps, epochs)
    assert ms(0) == 1.0 and ms(99) == 1.0 and ms(100) == pytest.approx(0.1)
    assert ms(149) == pytest.approx(0.1) and ms(150) == pytest.approx(0.01)


def test_crop_and_flip_on_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    idx = torch.tensor([1, 0])
    assert torch.equal(random_crop(x, idx, (4, 4), 0, gen), x[idx])
    padded = torch.nn.functional.pad(x, [2] * 4)
    crops = random_crop(padded, idx, (4, 4), 2, gen)
    assert crops.shape == (2, 1, 4, 4)
    for i, j in enumerate(idx.tolist()):  # every crop is a 4x4 window of its own padded image
        windows = padded[j, 0].unfold(0, 4, 1).unfold(1, 4, 1).reshape(-1, 4, 4)
        assert any(torch.equal(crops[i, 0], w) for w in windows)
    flips = [random_flip(x, gen) for _ in range(20)]
    assert all(torch.equal(f[0], x[0]) or torch.equal(f[0], x[0].flip(2)) for f in flips)
    assert any(not torch.equal(f, x) for f in flips)


def test_with_key_rejects_unknown_and_mistyped_keys():
    with pytest.raises(ConfigError, match="optim.lr"):
        with_key(TrialConfig(), "optim.lrr", 0.1)
    with pytest.raises(ConfigError, match="expected int"):
        with_key(TrialConfig(), "train.epochs", "ten")
    assert with_key(TrialConfig(), "optim.lr", "1e-3").optim.lr == 1e-3  # PyYAML reads 1e-3 as text


def test_cli_train_json_prints_epochs_then_result():
    sets = [f"--set={k}={json.dumps(v)}" for k, v in flatten(TINY_BASE).items()]
    out = subprocess.run([sys.executable, "cli.py", "train", "--json", *sets, "--set", "train.epochs=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line.get("epoch") for line in lines[:2]] == [1, 2]
    assert lines[-1]["final"] is True and "test_error" in lines[-1]


def test_cli_train_bad_key_is_one_line():
    out = subprocess.run([sys.executable, "cli.py", "train", "--set", "optim.lrr=0.1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "optim.lrr" in out.stderr and "Traceback" not in out.stderr
