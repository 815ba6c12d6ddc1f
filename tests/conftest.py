"""Shared toy-size settings: real Fashion-MNIST, tiny models, one short epoch."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_BASE = {
    "data": {"dataset": "fashion_mnist", "subset": 256, "eval_subset": 256},
    "model": {"name": "resnet_preact", "depth": 8, "base_channels": 4},
    "train": {"epochs": 1, "batch_size": 64, "precision": "fp32", "threads": 1},
    "optim": {"lr": 0.05},
}


def tiny_spec(name: str = "tiny", **top) -> dict:
    """A small valid spec as a dict; keyword arguments replace top-level keys."""
    spec = {"name": name, "budget": {"trials": 2}, "base": yaml.safe_load(yaml.safe_dump(TINY_BASE)),
            "space": {"optim.lr": {"loguniform": [0.01, 0.1]}}}
    spec.update(top)
    return spec


def wait_for(predicate, timeout: float = 180):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass (None)."""
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    return None


@pytest.fixture
def write_spec(tmp_path):
    def write(spec: dict, filename: str = "spec.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path
    return write


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Subprocesses of the CLI get one thread each so parallel tests do not fight.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


def refused(cfg):
    """The ConfigError that the trial config's rules (`trainable.rules.check`) give `cfg` on a CPU machine."""
    from trainable import ConfigError, rules
    with pytest.raises(ConfigError) as info:
        rules.check(cfg, rules.Context(device="cpu"))
    return info.value
