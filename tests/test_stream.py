"""Image folders streamed from disk (data.storage: stream): the same crops as torchvision's
reference transforms, every image once an epoch in a seeded order, and memory that stays flat."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torchcodec.decoders import decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from conftest import ROOT
from jpeg_folder import write_jpeg_folder
from trainable import data as tdata
from trainable import from_flat, images, stream, train
from trainable.config import Data
from trainable.export import write


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs"), train=200, test=60, size=(72, 56))


def config(root, **kw):
    return from_flat({"data.dataset": "image_folder", "data.root": str(root), "data.image_size": 32,
                      "data.test_size": 40, "data.val_fraction": 0.2, "data.storage": "stream", "data.workers": 1,
                      "augment.crop_padding": 0, "augment.random_resized_crop": True, "model.depth": 8,
                      "model.base_channels": 4, "train.epochs": 2, "train.batch_size": 32, "optim.lr": 0.05, **kw})


def test_a_crop_and_its_resize_equal_torchvisions_resized_crop(folder):
    path = stream.scan(str(folder / "train"))[0][0]
    rng = np.random.default_rng(3)
    image = decode_image(path, mode="RGB")
    for _ in range(5):
        state = rng.bit_generator.state
        left, top, w, h = images.crop_box(image.shape[2], image.shape[1], (0.08, 1.0), rng)
        rng.bit_generator.state = state  # the same draw again, inside train_image
        ours = images.train_image(path, 32, (0.08, 1.0), rng, draft=False)
        reference = TF.resized_crop(image, top, left, h, w, [32, 32], antialias=True)
        assert torch.equal(ours, reference)


@pytest.mark.parametrize("crop", [0.875, 0.95, 1.0])
def test_the_evaluation_view_equals_torchvisions_resize_and_centre_crop(folder, crop):
    path = stream.scan(str(folder / "val"))[0][3]
    reference = v2.Compose([v2.Resize(int(40 / crop)), v2.CenterCrop(40)])(decode_image(path, mode="RGB"))
    ours = images.eval_image(path, 40, crop, draft=False)
    assert ours.shape == reference.shape == (3, 40, 40)
    assert torch.equal(ours, reference)


def test_crop_boxes_are_drawn_as_torchvisions_random_resized_crop_draws_them():
    rng, n = np.random.default_rng(0), 4000
    ours = np.array([images.crop_box(400, 300, (0.08, 1.0), rng) for _ in range(n)])
    torch.manual_seed(0)
    image = torch.empty(3, 300, 400)
    theirs = np.array([(j, i, w, h) for i, j, h, w in
                       (v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n))])
    for boxes in (ours, theirs):
        left, top, w, h = boxes.T
        assert (left >= 0).all() and (top >= 0).all() and (left + w <= 400).all() and (top + h <= 300).all()
    share = [b[:, 2] * b[:, 3] / (400 * 300) for b in (ours, theirs)]
    aspect = [np.log(b[:, 2] / b[:, 3]) for b in (ours, theirs)]
    for q in (0.1, 0.5, 0.9):  # the same distributions, within sampling noise
        assert abs(np.quantile(share[0], q) - np.quantile(share[1], q)) < 0.03
        assert abs(np.quantile(aspect[0], q) - np.quantile(aspect[1], q)) < 0.03


def test_decoding_at_a_fraction_of_the_size_gives_nearly_the_same_crop(tmp_path):
    big = write_jpeg_folder(tmp_path / "big", train=10, test=10, size=512)
    path = stream.scan(str(big / "train"))[0][0]
    full = images.train_image(path, 32, (0.9, 1.0), np.random.default_rng(1), draft=False).float()
    drafted = images.train_image(path, 32, (0.9, 1.0), np.random.default_rng(1)).float()
    assert (full - drafted).abs().mean() < 3  # of 255: the same picture, decoded at 1/8 scale


def test_an_epoch_visits_every_image_once_in_an_order_the_seed_and_epoch_decide():
    def epoch(seed, n):
        order = stream._EpochOrder(96, 32, seed)
        order.epoch = n
        return [i for batch in order for i, e, copy in batch]
    first = epoch(0, 0)
    assert sorted(first) == list(range(96))
    assert epoch(0, 0) == first and epoch(1, 0) != first and epoch(0, 1) != first


def test_repeated_copies_of_a_streamed_image_are_crops_of_their_own():
    order = stream._EpochOrder(90, 16, 0, repeated=3)
    batches = list(order)
    assert len(batches) == 5 and all(len(b) == 16 for b in batches)
    first = batches[0]
    assert {i for i, _, _ in first} == {i for i, _, c in first if c == 0} and len({i for i, _, _ in first}) == 6
    assert len(set(first)) == 16  # every key differs: (image, epoch, copy) seeds its own crop


def test_a_streamed_folder_trains_and_a_seed_gives_one_result_whatever_the_workers(folder):
    one = train(config(folder))
    two = train(config(folder, **{"data.workers": 2}))
    assert one["test_error"] == two["test_error"] and one["val_loss"] == two["val_loss"]
    other = train(config(folder, **{"train.seed": 1}))
    assert other["val_loss"] != one["val_loss"]
    assert 0.0 <= one["test_error"] <= 1.0 and np.isfinite(one["val_loss"])


def test_storage_auto_streams_a_folder_too_big_for_a_quarter_of_memory(folder, monkeypatch):
    cfg = config(folder, **{"data.storage": "auto"}).data
    assert not tdata.streams(cfg)
    monkeypatch.setattr(tdata, "_ram", lambda: 4 * tdata.resident_bytes(cfg) - 1)
    assert tdata.streams(cfg)
    assert not tdata.streams(config(folder, **{"data.storage": "resident"}).data)


def test_the_evaluation_crop_share_is_a_key_of_both_storages(folder):
    for storage in ("resident", "stream"):
        result = train(config(folder, **{"data.storage": storage, "data.eval_crop": 0.95, "train.epochs": 1}))
        assert 0.0 <= result["test_error"] <= 1.0


BOUNDED = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from trainable import from_flat, train

    def rss():  # this process and its children (the loader's workers), in MiB: proportional set sizes,
                # so the pages the forked workers share with this process count once
        pids, total = [os.getpid()], 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{{entry}}/stat").read().split(") ")[1].split()
                except OSError:
                    continue
                if int(stat[1]) == os.getpid():
                    pids.append(int(entry))
        for pid in pids:
            try:
                lines = open(f"/proc/{{pid}}/smaps_rollup").read().splitlines()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
        return total / 2 ** 10

    seen = []
    cfg = from_flat({{"data.dataset": {dataset!r}, "data.root": {folder!r}, "data.image_size": 32,
                      "data.storage": "stream", "data.workers": 2, "data.val_fraction": 0.02,
                      "data.eval_subset": 64, "augment.crop_padding": 0, "augment.random_resized_crop": True,
                      "model.depth": 8,
                      "model.base_channels": 4, "train.epochs": 2, "train.batch_size": 64, "train.threads": 1}})
    train(cfg, lambda epoch, metrics: seen.append(rss()))
    print(seen[0], seen[1])
''')


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("large"), train=2000, test=64, size=(1024, 768))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["image_folder", "image_shards"])
def test_images_four_times_the_memory_in_use_train_two_epochs_with_flat_memory(large, dataset, tmp_path):
    folder = large
    if dataset == "image_shards":  # the same files, copied into shards
        folder = write(tmp_path / "shards", Data(dataset="image_folder", root=str(large)), None, None, 0, shards=200)
    decoded = 2064 * 3 * 1024 * 768 / 2 ** 20
    script = BOUNDED.format(root=str(ROOT), tests=str(ROOT / "tests"), folder=str(folder), dataset=dataset)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = map(float, out.stdout.split()[-2:])
    assert decoded >= 4 * second, (decoded, second)
    assert second - first < 0.05 * first + 30, (first, second)  # flat: no growth with what was read


def test_sweep_data_writes_a_data_set_out_as_an_image_folder_once(tmp_path):
    out = tmp_path / "fm"
    cmd = [sys.executable, str(ROOT / "cli.py"), "data", str(out), "--size", "48x40", "--train", "30", "--test", "10"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    paths, labels, classes = stream.scan(str(out / "train"))
    assert len(paths) == 30 and classes == tuple(f"class{c:03d}" for c in range(10))
    assert Image.open(paths[0]).size == (48, 40) and Image.open(paths[0]).mode == "RGB"
    assert len(stream.scan(str(out / "val"))[0]) == 10
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # complete: kept as it is
    assert again.returncode == 0 and os.path.getmtime(paths[0]) == os.path.getmtime(stream.scan(str(out / "train"))[0][0])
    bad = subprocess.run(cmd[:3] + ["--size", "4x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an image size" in bad.stderr and "Traceback" not in bad.stderr
