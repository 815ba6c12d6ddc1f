"""Folder datasets (ImageNet layout) with random resized crops and a separate test resolution."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainable import ConfigError, from_flat, train
from trainable import data as tdata
from trainable.augment import random_resized_crop

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of noisy, differently sized images, told apart by colour."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 6)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(30, 60, size=2)
                img = np.clip(rng.normal(colour, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


def config(root, **kw):
    return from_flat({"data.dataset": "image_folder", "data.root": str(root), "data.image_size": 24,
                      "data.test_size": 32, "data.val_fraction": 0.25, "augment.crop_padding": 0,
                      "augment.random_resized_crop": True, "model.depth": 8, "model.base_channels": 8,
                      "train.epochs": 3, "train.batch_size": 16, "optim.lr": 0.05, **kw})


def test_folder_splits_hold_train_and_test_resolutions(folder):
    cfg = config(folder)
    splits = tdata.load(cfg.data)
    assert splits.num_classes == 3 and splits.in_channels == 3
    assert splits.train_x.shape[1:] == (3, round(32 / 0.875), round(32 / 0.875))  # stored for both sizes
    assert splits.val_x.shape[1:] == (3, 32, 32) and splits.test_x.shape == (18, 3, 32, 32)
    assert len(splits.train_y) + len(splits.val_y) == 72


def test_training_on_a_folder_learns_the_colours(folder):
    result = train(config(folder))
    assert result["test_error"] < 0.5  # chance is 2/3


def test_torchvision_model_on_a_folder(folder):
    result = train(config(folder, **{"model.name": "tv:resnet18", "model.depth": None,
                                     "model.base_channels": None, "train.epochs": 1}))
    assert 0.0 <= result["test_error"] <= 1.0


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="data.root.*does not exist.*fix: point data.root"):
        train(config(tmp_path))


def test_random_resized_crop_keeps_its_area_range():
    gen = torch.Generator().manual_seed(0)
    ramp = torch.arange(64.0).repeat(64, 1)[None, None].repeat(200, 1, 1, 1)  # value = column index
    crops = random_resized_crop(ramp, 16, (0.25, 0.25), gen, ratio=(1.0, 1.0))
    widths = crops[:, 0, 0, -1] - crops[:, 0, 0, 0]  # a square of a quarter of the area spans 32 columns
    assert crops.shape == (200, 1, 16, 16)
    assert torch.allclose(widths, torch.full_like(widths, 32 * 15 / 16), atol=0.6)
    full = random_resized_crop(ramp[:4], 64, (1.0, 1.0), gen, ratio=(1.0, 1.0))
    assert torch.allclose(full, ramp[:4], atol=1e-4)


def test_every_data_set_can_be_evaluated_at_another_resolution():
    """FixRes for the resident data sets too: Fashion-MNIST trained at 28 px, evaluated at 36."""
    from trainable.config import Data
    splits = tdata.load(Data(dataset="fashion_mnist", subset=64, eval_subset=32, test_size=36))
    assert splits.train_x.shape[-2:] == (28, 28) and splits.val_x.shape[-2:] == (36, 36)
    assert splits.test_x.shape == (32, 1, 36, 36) and splits.test_x.dtype == torch.uint8
    result = train(from_flat({"data.subset": 256, "data.eval_subset": 64, "data.test_size": 36, "model.depth": 8,
                              "model.base_channels": 4, "train.epochs": 1}))
    assert 0.0 <= result["test_error"] <= 1.0
