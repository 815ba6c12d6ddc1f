"""Trials of several ranks (train.devices): real processes in a gloo process group on the CPU, each
training on its share of every batch, rank 0 speaking for the trial."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml

import analysis
import sweeps
from conftest import TINY_BASE, tiny_spec
from search_spaces import load_spec
from search_spaces.load import parse_spec
from sweeps import isolated
from trainable import ConfigError, from_flat, train
from trainable.config import flatten
from trainable.model_io import load_model

# Augmentation off: the ranks then see exactly the images one process sees.
PLAIN = {"augment.crop_padding": 0, "augment.flip": False, "data.subset": 256, "data.eval_subset": 128,
         "train.epochs": 1, "train.batch_size": 64, "train.threads": 1, "optim.weight_decay": 5e-4}


def _spec(changes: dict, **top):
    spec = tiny_spec(**top)
    base = flatten(copy.deepcopy(TINY_BASE))
    base.update(changes)
    spec["base"] = base
    return spec


def _weights(path) -> dict[str, torch.Tensor]:
    model = load_model(str(path), torch.device("cpu"))
    return {k: v.float() for k, v in model.state_dict().items()}


def _two_ranks(tmp_path, changes: dict) -> dict[str, torch.Tensor]:
    out = tmp_path / "ranks.pt"
    spec = parse_spec(yaml.safe_dump(_spec({**PLAIN, **changes, "train.devices": 2, "train.save_model": str(out)})))
    isolated.run(spec, {"optim.lr": 0.05}, lambda epoch, per_seed: None, lambda rows: None)
    return _weights(out)


def _apart(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


def test_two_ranks_with_sync_bn_end_with_the_weights_of_one_process_at_the_same_global_batch(tmp_path):
    one = tmp_path / "one.pt"
    train(from_flat({**flatten(copy.deepcopy(TINY_BASE)), **PLAIN, "optim.lr": 0.05, "train.save_model": str(one)}))
    reference = _weights(one)
    synced = _two_ranks(tmp_path, {"train.sync_bn": True})
    assert synced.keys() == reference.keys()
    # 4 steps: the convolutions' sums over batches of 32 and 64 round differently (measured up to 2e-3)
    assert _apart(synced, reference) < 5e-3
    # Without SyncBN each rank normalizes its own half: the weights part far more (measured 7e-2).
    local = _two_ranks(tmp_path, {})
    assert _apart(local, reference) > 10 * _apart(synced, reference)


def test_a_sweep_of_two_rank_trials_records_them_and_prunes_one_that_cannot_learn(write_spec, tmp_path):
    spec = _spec({"train.devices": 2, "train.epochs": 2, "data.subset": 1024, "train.threads": 1},
                 sampler={"name": "grid"}, budget={"trials": 2},
                 pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 0},
                 space={"optim.lr": {"grid": [0.1, 1.0e-7]}})
    path = write_spec(spec)
    spec_obj = load_spec(path)
    url = sweeps.resolve(spec_obj.name, None, tmp_path / "runs", create=True)
    summary = sweeps.run(spec_obj, url, quiet=True)
    assert summary.finished == 2
    frame = analysis.load(spec_obj, url).set_index("optim.lr")
    assert frame.loc[0.1, "state"] == "complete" and 0 <= frame.loc[0.1, "test_error"] <= 1
    assert frame.loc[1.0e-7, "state"] == "pruned" and frame.loc[1.0e-7, "epochs_done"] == 1
    assert (frame["world_size"] == 2).all()


def test_one_process_cannot_train_a_trial_of_two_ranks_and_the_batch_must_split():
    with pytest.raises(ConfigError, match="train.devices"):
        train(from_flat({**flatten(copy.deepcopy(TINY_BASE)), **PLAIN, "train.devices": 2}))
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(from_flat({**flatten(copy.deepcopy(TINY_BASE)), **PLAIN, "train.devices": 3}))


@pytest.mark.parametrize("engine, changes, key", [("ray", {"train.devices": 2}, "train.devices"),
                                                  ("optuna", {"train.nodes": 2}, "train.nodes")])
def test_what_an_engine_cannot_run_is_refused_before_the_sweep_starts(write_spec, tmp_path, engine, changes, key):
    import subprocess
    import sys

    from conftest import ROOT
    path = write_spec(_spec(changes, engine=engine))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(path), "--dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and key in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
