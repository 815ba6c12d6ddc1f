"""The shipped spaces parse, and lr_wd runs end to end at a small size (slow)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import analysis
from conftest import ROOT
from search_spaces import load_spec

SPACES = sorted((ROOT / "spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_is_valid(path: Path):
    spec = load_spec(path)
    assert spec.name == path.stem and spec.trials
    for preset in spec.presets:
        load_spec(path, preset=preset)


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
