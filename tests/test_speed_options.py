"""Options for speed: the synthetic dataset, train.compile, and an epoch free of per-step host syncs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from conftest import ROOT, TINY_BASE, refused
from trainable import from_flat
from trainable import data as tdata
from trainable.config import Data, defaults_text, flatten
from trainable.run import Training, update_ema


def tiny(**changes):
    return from_flat({**flatten(TINY_BASE), **changes})


# ---- data.dataset: synthetic ----------------------------------------------

def test_synthetic_is_a_registered_dataset_with_the_configured_shape_classes_and_size():
    assert "synthetic" in tdata.DATASETS and "  synthetic_shape: [3, 32, 32]" in defaults_text()
    s = tdata.load(Data(dataset="synthetic", synthetic_shape=(3, 16, 12), synthetic_classes=7,
                        synthetic_size=500, val_fraction=0.1))
    assert s.train_x.shape == (450, 3, 16, 12) and s.val_x.shape == (50, 3, 16, 12)
    assert s.test_x.shape == (100, 3, 16, 12) and s.num_classes == 7 and s.in_channels == 3
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    labels = torch.cat([s.train_y, s.val_y, s.test_y])
    assert labels.min() >= 0 and labels.max() <= 6 and len(labels.unique()) == 7
    assert s.train_x.min() == 0 or s.train_x.max() > 200  # spans the uint8 range, not a constant


def test_synthetic_images_follow_their_seed():
    def images(seed):
        return tdata.load(Data(dataset="synthetic", synthetic_size=64, synthetic_seed=seed)).train_x

    assert torch.equal(images(3), images(3))
    assert not torch.equal(images(3), images(4))


@pytest.mark.parametrize("key, value", [("data.synthetic_shape", [3, 32]), ("data.synthetic_shape", [0, 8, 8]),
                                        ("data.synthetic_classes", 1), ("data.synthetic_size", 0)])
def test_unusable_synthetic_values_name_their_key(key, value):
    assert refused(from_flat({"data.dataset": "synthetic", key: value})).key == key


def test_sweep_train_on_synthetic_data_learns_end_to_end():
    sets = {**flatten(TINY_BASE), "data.dataset": "synthetic", "data.synthetic_shape": [3, 16, 16],
            "data.synthetic_size": 2000, "data.subset": None, "model.base_channels": 8, "train.epochs": 2}
    args = [f"--set={k}={json.dumps(v)}" for k, v in sets.items()]
    out = subprocess.run([sys.executable, "cli.py", "train", "--json", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    final = json.loads(out.stdout.splitlines()[-1])
    assert final["epochs_done"] == 2 and final["test_error"] < 0.6  # chance is 0.9: the class levels are learnt


# ---- train.compile ----------------------------------------------------------

def test_compiled_training_keeps_the_plain_models_checkpoint_keys():
    eager, compiled = Training(tiny()), Training(tiny(**{"train.compile": True}))
    assert compiled.step_model is not compiled.model and eager.step_model is eager.model
    assert list(compiled.state_dict()["model"]) == list(eager.state_dict()["model"])
    assert not any(k.startswith("_orig_mod.") for k in compiled.state_dict()["model"])
    compiled.load_state_dict(eager.state_dict())  # an eager checkpoint resumes a compiled trial, and back
    eager.load_state_dict(compiled.state_dict())


@pytest.mark.slow  # compiling forward and backward: about a minute on 2 cores (seconds with a warm inductor cache)
def test_compiled_and_eager_give_the_same_loss_and_gradients_on_a_fixed_batch(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    monkeypatch.setattr(inductor, "compile_threads", 1)  # read once at import: the env alone may be late
    runs = [Training(tiny(**{"train.compile": c})) for c in (False, True)]
    x, y = next(iter(runs[0].batches))
    results = []
    for run in runs:
        run.model.train()
        loss, _ = run.objective(run.step_model, x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in run.model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    # Inductor fuses and reorders float32 sums: equal up to rounding, not bit for bit. Measured: the
    # loss within 2e-7 relative, each gradient within 0.5% in norm (the backward of BN over 4 channels
    # amplifies rounding in the first layers); a wrong graph would be off by far more.
    assert torch.allclose(eager_loss, compiled_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_grads, compiled_grads):
        assert (a - b).norm() <= 1e-2 * a.norm()


# ---- no per-step host syncs -------------------------------------------------

def test_update_ema_matches_averaged_model_update_parameters_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ours, torchs = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
                    for _ in range(2))
    for step in range(4):
        model(torch.randn(8, 1, 8, 8)).sum().backward()  # BN buffers move; num_batches_tracked is an int
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        update_ema(ours, model, first=step == 0)
        torchs.update_parameters(model)
        current = dict(model.state_dict())
        for key, a in ours.state_dict().items():
            if a.is_floating_point():  # the same average as torch's
                assert torch.equal(a, torchs.state_dict()[key]), key
            elif key.startswith("module."):  # a batch count is copied, not averaged
                assert torch.equal(a, current[key.removeprefix("module.")]), key


