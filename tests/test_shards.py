"""Tar shards (data.dataset: image_shards): written by `sweep data --shards`, read with every image
once an epoch in a seeded order, split as the other paths split, and trained on like a folder."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from jpeg_folder import write_jpeg_folder
from trainable import from_flat, images, shards, stream, train
from trainable.config import Data
from trainable.errors import ConfigError
from trainable.export import Split, _to_shards, write

N = 150  # images in the numbered shards: each image's label is its own number


def _jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 36), (i % 256, (7 * i) % 256, 90)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """Train shards of N images whose labels number them, and 30 test images; 4 shards a split."""
    root = tmp_path_factory.mktemp("numbered")
    for name, n in (("train", N), ("val", 30)):
        _to_shards(Split(name, tuple(str(i) for i in range(N)), ((i, "jpg", _jpeg(i)) for i in range(n))),
                   root, per_shard=-(-n // 4))
    return root


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return write(tmp_path_factory.mktemp("fm") / "shards", Data(dataset="fashion_mnist"), 240, 60, (48, 40),
                 shards=70)


def config(root, **kw):
    return from_flat({"data.dataset": "image_shards", "data.root": str(root), "data.image_size": 24,
                      "data.test_size": 32, "data.val_fraction": 0.2, "data.workers": 2,
                      "augment.crop_padding": 0, "augment.random_resized_crop": True, "model.depth": 8,
                      "model.base_channels": 4, "train.epochs": 2, "train.batch_size": 16, "optim.lr": 0.05, **kw})


def epoch_labels(cfg, seed: int, epoch: int, batch_size: int = 16) -> list[int]:
    src = stream.source(cfg.data)
    epochs = src.train_epochs(cfg.data, cfg.augment, batch_size, seed, torch.device("cpu"))
    epochs.epoch = epoch
    batches = list(epochs)
    assert len(batches) == len(epochs) and all(len(y) == batch_size for _, y in batches)
    return [int(v) for _, y in batches for v in y]


def test_an_epoch_reads_every_training_image_once_in_an_order_the_seed_and_epoch_decide(numbered):
    cfg = config(numbered, **{"data.val_fraction": 0.0})
    first = epoch_labels(cfg, seed=3, epoch=0, batch_size=10)  # 150 images: 15 whole batches
    assert sorted(first) == list(range(N))
    assert epoch_labels(cfg, 3, 0, 10) == first
    assert epoch_labels(cfg, 4, 0, 10) != first and epoch_labels(cfg, 3, 1, 10) != first


def test_the_split_is_the_seeded_permutation_of_places_and_train_val_test_are_disjoint(numbered):
    cfg = config(numbered, **{"data.split_seed": 5})
    src = stream.source(cfg.data)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(5)).numpy()
    assert set(np.flatnonzero(src.val_keep)) == set(order[:30]) and not (src.val_keep & src.train_keep).any()
    assert (src.val_keep | src.train_keep).all() and src.test_keep.sum() == 30
    seen = epoch_labels(cfg, seed=0, epoch=0, batch_size=8)  # 120 images: 15 batches
    assert sorted(seen) == sorted(order[30:].tolist())
    val = [int(v) for _, y in src.eval_batches("val", cfg.data, 7, torch.device("cpu")) for v in y]
    assert sorted(val) == sorted(order[:30].tolist())
    xb, _ = next(iter(src.eval_batches("test", cfg.data, 7, torch.device("cpu"))))
    assert xb.shape[1:] == (3, 32, 32) and xb.dtype == torch.uint8


def test_the_ragged_tail_is_dropped_and_repeated_copies_stay_within_the_epochs_length(numbered):
    cfg = config(numbered, **{"data.val_fraction": 0.0})
    labels = epoch_labels(cfg, seed=0, epoch=0, batch_size=32)  # 150 images: 4 batches of 32
    assert len(labels) == 128 and len(set(labels)) == 128
    rep = config(numbered, **{"data.val_fraction": 0.0, "augment.repeated": 3})
    labels = epoch_labels(rep, seed=0, epoch=0, batch_size=30)
    counts = Counter(labels)
    assert len(labels) == 150 and set(counts.values()) == {3}  # each image read comes with its 3 copies


def test_shards_without_an_index_are_counted_from_their_tar_headers(numbered, tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for f in shards.shard_files(numbered / split):
            (tmp_path / split / f.name).write_bytes(f.read_bytes())
    shards.shard_set.cache_clear()
    counted, indexed = shards.shard_set(str(tmp_path / "train")), shards.shard_set(str(numbered / "train"))
    assert counted.counts == indexed.counts and counted.classes == indexed.classes
    assert counted.size == N


def test_a_shard_index_that_lists_other_files_is_refused_with_its_fix(numbered, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / shards.INDEX).write_text((numbered / "train" / shards.INDEX).read_text())
    (tmp_path / "train" / "other.tar").write_bytes((numbered / "train" / "shard-000000.tar").read_bytes())
    with pytest.raises(ConfigError, match="lists other shards"):
        shards.shard_set(str(tmp_path / "train"))


def test_training_on_shards_is_deterministic_for_a_seed_and_its_workers(fashion):
    one = train(config(fashion))
    again = train(config(fashion))
    other = train(config(fashion, **{"train.seed": 1}))
    assert one["val_loss"] == again["val_loss"] and one["test_error"] == again["test_error"]
    assert other["val_loss"] != one["val_loss"]
    assert np.isfinite(one["val_loss"]) and 0.0 <= one["test_error"] <= 1.0


def test_shards_are_refused_held_in_memory_and_a_missing_folder_names_its_fix(fashion, tmp_path):
    with pytest.raises(ConfigError, match="data.storage"):
        train(config(fashion, **{"data.storage": "resident"}))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ConfigError, match="sweep data OUT --shards"):
        train(config(tmp_path))


def test_sweep_data_writes_shards_once_and_an_image_folder_into_shards_byte_for_byte(tmp_path):
    folder = write_jpeg_folder(tmp_path / "folder", train=40, test=12, size=(44, 40))
    out = tmp_path / "shards"
    cmd = [sys.executable, str(ROOT / "cli.py"), "data", str(out), "--source", "image_folder",
           "--set", f"root={folder}", "--shards", "15"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "data.dataset=image_shards" in first.stdout
    written = shards.shard_set(str(out / "train"))
    assert written.counts == (15, 15, 10) and written.classes == stream.scan(str(folder / "train"))[2]
    files = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in stream.scan(str(folder / "train"))[0]}
    stored = set()
    for f in written.files:
        with tarfile.open(f) as tar:
            stored |= {hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar if m.name.endswith(".jpg")}
    assert stored == files
    mtime = os.path.getmtime(written.files[0])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # complete: kept as it is
    assert again.returncode == 0 and os.path.getmtime(written.files[0]) == mtime


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """A folder of 72x56 JPEGs (crops to 32 px never shrink 2x, so nothing is draft-decoded) and its shards."""
    base = tmp_path_factory.mktemp("pair")
    folder = write_jpeg_folder(base / "folder", train=96, test=24, size=(72, 56))
    return folder, write(base / "shards", Data(dataset="image_folder", root=str(folder)), None, None, 0, shards=40)


@pytest.mark.parametrize("dataset", ["image_folder", "image_shards"])
def test_decoding_on_the_device_gives_the_images_the_workers_give(small_pair, dataset):
    cpu = torch.device("cpu")

    def batches(decode: str):
        root = small_pair[0] if dataset == "image_folder" else small_pair[1]
        cfg = config(root, **{"data.dataset": dataset, "data.storage": "stream", "data.decode": decode,
                              "augment.flip": True, "data.image_size": 32, "data.test_size": 40})
        src = stream.source(cfg.data)
        epochs = src.train_epochs(cfg.data, cfg.augment, 16, 7, cpu)
        epochs.epoch = 1
        size, crop = cfg.data.test_size, cfg.data.eval_crop
        return ([images.on_device(x, cfg.data.image_size, crop, cpu) for x, _ in epochs]
                + [images.on_device(x, size, crop, cpu) for x, _ in src.eval_batches("test", cfg.data, 10, cpu)])

    workers, device = batches("workers"), batches("device")
    assert len(workers) == len(device) > 2
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(workers, device))


def test_a_trial_decoding_on_its_device_trains_as_one_decoding_in_the_workers(small_pair):
    kw = {"data.dataset": "image_folder", "data.storage": "stream", "train.epochs": 1, "data.image_size": 32}
    workers, device = train(config(small_pair[0], **kw)), train(config(small_pair[0], **kw, **{"data.decode": "device"}))
    assert all(workers[k] == device[k] for k in ("train_loss", "val_loss", "test_loss", "test_error"))


def test_a_shard_holding_another_count_than_its_index_says_is_refused(numbered, tmp_path):
    import json
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for f in [*shards.shard_files(numbered / split), numbered / split / shards.INDEX]:
            (tmp_path / split / f.name).write_bytes(f.read_bytes())
    index = json.loads((tmp_path / "train" / shards.INDEX).read_text())
    index["shards"][0]["count"] += 1
    (tmp_path / "train" / shards.INDEX).write_text(json.dumps(index))
    shards.shard_set.cache_clear()
    with pytest.raises(ConfigError, match="its index says"):
        list(shards.read(shards.shard_set(str(tmp_path / "train")), [0], np.ones(N + 1, bool)))
