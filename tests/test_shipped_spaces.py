"""The shipped spaces parse, their cpu presets fit an hour on 2 CPU cores (a static
estimate: nothing trains), and lr_wd runs end to end at a small size (slow)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import analysis
from conftest import ROOT
from search_spaces import load_spec
from search_spaces.dists import Choice, Fixed, Grid, Int
from trainable import rules
from trainable.config import Model
from trainable.model_info import size

SPACES = sorted((ROOT / "spaces").glob("*.yaml"))
CPU_SIZED = {"quickstart"}  # small enough as they are: no cpu preset needed
# The specs that reproduce a table of the reference README carry its numbers.
WITH_REFERENCE = {"regularizers", "linear_scaling", "lr_batch", "lars_vs_sgd", "epochs", "no_wd_on_bn",
                  "precision", "ghost_bn", "recipes", "rsb", "bag_of_tricks"}
# The ImageNet recipes: their cpu presets are smoke runs on Fashion-MNIST written out as JPEGs
# (`sweep data`), in under 20 minutes.
IMAGENET = {"rsb": 20, "bag_of_tricks": 20}
JPEGS = ".cache/recipe-sweep/data/fashion-mnist-jpeg-64"  # under $HOME, as the presets name it

# ---- a static estimate of a cpu preset's time on 2 cores ------------------
# Measured on the project's 2-core machine with one short trial each, e.g.
#   sweep train --json --set data.subset=10000 --set data.eval_subset=2000 --set train.epochs=1
#               --set model.depth=8 --set train.precision=bf16 --set train.batch_size=128
# ResNet-preact-20 in bf16 at batch 128 trains about 1,000 images/s on 28x28 images and
# ResNet-preact-8 2,000 to 2,600; fp32 runs at about half of bf16; batch 32 at about
# 0.7x of batch 128; RandAugment (applied image by image) adds about 0.8 ms an image;
# evaluation takes about a tenth of training's time per image; ghost batches of 32
# halve the rate. Other models are scaled by their multiply-adds, and the families
# with many small layers run slower than that (DenseNet-22 about 2x, shake-shake-8
# 1.7x), so every family but the plain residual ones counts double. The rates below
# are the conservative end.
CPU_MINUTES = 60
REF_MODEL = Model(name="resnet_preact", depth=20)
REF_IMAGES_PER_S = 1000.0  # REF_MODEL, bf16, batch >= 128
MAX_SPEEDUP = 2.0          # no model is estimated faster than this over REF_MODEL (per-layer overheads)
FP32_SLOWDOWN = 2.0
EVAL_SPEEDUP = 5.0         # evaluation per image vs training per image
POLICY_S = 1.0e-3          # augment.policy, per training image
TRIAL_OVERHEAD_S = 5.0     # building the model, loading the data, checkpoints
MACS_LIKE = {"resnet_preact", "resnet", "se_resnet_preact", "resnet_imagenet"}  # as fast as their multiply-adds say
GHOST_COST = 32            # ghost batch norm: the rate divided by 1 + GHOST_COST / ghost_batch
TRAIN_IMAGES = {"fashion_mnist": 60000, "mnist": 60000, "kmnist": 60000, "cifar10": 50000, "cifar100": 50000,
                "image_folder": 10000}  # `sweep data`'s default
TEST_IMAGES = 10000


_MACS: dict[tuple[str, str], int] = {}


def _macs(model: Model, dataset: str, image_size: int = 224) -> int:
    key = (repr(model), dataset, image_size)  # a Model may hold lists, so it is no dict key itself
    if key not in _MACS:
        _MACS[key] = size(model, dataset, image_size)[1]
    return _MACS[key]


def run_seconds(cfg) -> float:
    """Estimated wall time of one run (one seed) of a trial config on 2 CPU cores."""
    data, train = cfg.data, cfg.train
    total = TRAIN_IMAGES[data.dataset]
    n_val = round(total * data.val_fraction)
    n_train = min(total - n_val, data.subset or total)
    n_val, n_test = (min(n, data.eval_subset or n) for n in (n_val, TEST_IMAGES))
    speedup = _macs(REF_MODEL, "fashion_mnist") / _macs(cfg.model, data.dataset, data.image_size)
    rate = REF_IMAGES_PER_S * min(MAX_SPEEDUP, speedup) * min(1.0, train.batch_size / 128) ** 0.5
    rate /= FP32_SLOWDOWN if train.precision == "fp32" else 1.0
    rate /= 1.0 if cfg.model.name in MACS_LIKE else 2.0
    rate /= 2.0 if cfg.augment.dual_cutout.alpha > 0 else 1.0  # two views forward and backward
    rate /= 1.0 + GHOST_COST / train.ghost_batch if train.ghost_batch else 1.0
    per_epoch = n_train / rate + (n_train * POLICY_S if cfg.augment.policy.name != "none" else 0.0)
    evaluations = 2 if train.ema_decay else 1  # the EMA model is evaluated beside the raw one
    eval_s = evaluations / (EVAL_SPEEDUP * rate)
    return train.epochs * (per_epoch + n_val * eval_s) + n_test * eval_s + TRIAL_OVERHEAD_S


def _cost_values(dist) -> tuple | None:
    """The values that set a parameter's cost: every listed one, an int's top; None: continuous."""
    if isinstance(dist, (Grid, Choice)):
        return tuple(dist.values)
    if isinstance(dist, Fixed):
        return (dist.value,)
    if isinstance(dist, Int):
        return (dist.high,)
    return None


def configs_at(spec, point: dict) -> list:
    """The trial configs a grid point may give, over every listed choice the sampler may make
    there (an int at its top, a continuous parameter at the base's value)."""
    combos = [dict(point)]
    for p in spec.space:
        if p.derived or p.key in point:
            continue
        values = _cost_values(p.dist)
        combos = [c for combo in combos for c in
                  ([{**combo, p.key: v} for v in values] if values and p.active(combo) else [combo])]
    return [spec.config({**c, **spec.derived(c)}) for c in combos]


def _costliest(spec, point: dict) -> float:
    """The most expensive run at a grid point."""
    return max(run_seconds(cfg) for cfg in configs_at(spec, point))


def estimate_minutes(spec) -> float:
    """Trials cycle through the grid points (as the engines enqueue them), each run `seeds` times."""
    assert spec.trials, f"{spec.name}: a cpu run needs a trial budget"
    points = spec.grid_points() if spec.grid_params else [{}]
    n = len(points)
    per_point = [spec.trials // n + (i < spec.trials % n) for i in range(n)]
    return sum(k * spec.seeds * _costliest(spec, pt) for k, pt in zip(per_point, points) if k) / 60


def cpu_spec(path: Path):
    return load_spec(path) if path.stem in CPU_SIZED else load_spec(path, preset="cpu")


@pytest.fixture(scope="module", autouse=True)
def _jpeg_folder(tmp_path_factory):
    """The image folder the ImageNet recipes' cpu presets read, written where they look for it
    ($HOME, pointed at a temporary folder for these tests)."""
    from trainable.config import Data
    from trainable.export import write
    home = tmp_path_factory.mktemp("home")
    write(home / JPEGS, Data(dataset="fashion_mnist"), 10000, 2000, 64)
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield
    os.environ["HOME"] = before or ""


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_is_valid(path: Path):
    """Valid on a GPU machine at full size (its data there, not here), and on this one under each preset."""
    spec = load_spec(path, context=rules.Context(device="cuda", local=False))
    assert spec.name == path.stem and spec.trials
    assert path.stem in CPU_SIZED or "cpu" in spec.presets, "every shipped spec has a cpu preset"
    for preset in spec.presets:
        load_spec(path, preset=preset, context=rules.Context(device="cpu"))
    assert bool(spec.reference) == (path.stem in WITH_REFERENCE)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_cpu_preset_fits_an_hour(path: Path):
    spec = cpu_spec(path)
    data = spec.base.data
    if path.stem in IMAGENET:  # a smoke run on Fashion-MNIST written out as JPEGs
        assert data.dataset == "image_folder" and data.root == "~/" + JPEGS
    else:
        assert data.dataset == "fashion_mnist" and not data.download, \
            "a cpu run uses the Fashion-MNIST files installed by scripts/setup.sh"
        assert spec.seeds >= 2 or path.stem in CPU_SIZED | {"lr_wd", "optimizers"}, "several seeds"
    minutes = estimate_minutes(spec)
    limit = IMAGENET.get(path.stem, CPU_MINUTES)
    assert minutes <= limit, f"{path.stem} --preset cpu: about {minutes:.0f} minutes on 2 cores"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_cpu_preset_trials_pass_the_trainables_checks(path: Path):
    """No trial of a cpu run is refused on a CPU (fp16, a ghost batch above the batch, ...)."""
    spec = cpu_spec(path)
    for point in spec.grid_points() if spec.grid_params else [{}]:
        for cfg in configs_at(spec, point):
            rules.check(cfg, rules.Context(device="cpu"))


def test_estimate_scales_with_the_work():
    spec = load_spec(ROOT / "spaces" / "regularizers.yaml", preset="cpu")
    one = estimate_minutes(spec)
    assert math.isclose(estimate_minutes(load_spec(ROOT / "spaces" / "regularizers.yaml", preset="cpu",
                                                   overrides=["seeds=4"])), 2 * one)
    longer = load_spec(ROOT / "spaces" / "regularizers.yaml", preset="cpu", overrides=["base.train.epochs=6"])
    assert 1.5 * one < estimate_minutes(longer) < 2 * one  # the test set and set-up come once per run
    deeper = load_spec(ROOT / "spaces" / "regularizers.yaml", preset="cpu", overrides=["base.model.depth=20"])
    assert estimate_minutes(deeper) > 1.5 * one


@pytest.mark.slow
def test_lr_wd_runs_small(tmp_path):
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(ROOT / "spaces" / "lr_wd.yaml"), "--dir",
           str(tmp_path), "--set", "budget.trials=2", "--set", "base.train.epochs=1", "--set",
           "base.data.subset=2000", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    frame = analysis.load("lr_wd", directory=tmp_path)
    assert len(frame) == 2 and (frame["state"] == "complete").all()
    assert (frame["val_error"] < 0.9).all()
