"""Variants: named sets of config values run as a grid (the rows of an ablation)."""
from __future__ import annotations

import pytest

import analysis
import sweeps
from conftest import tiny_spec
from search_spaces import SpecError, describe, load_spec, parse_spec

TEXT = """name: abl
seeds: 2
variants:
  baseline: {}
  cutout: {augment.cutout.size: 8}
  mixup: {augment: {mixup: {alpha: 1.0}}, optim.lr: 0.05}
space:
  optim.weight_decay: {loguniform: [1.0e-5, 1.0e-3]}
"""


def test_variants_become_a_grid_parameter_that_applies_its_values():
    spec = parse_spec(TEXT, "abl.yaml")
    assert spec.trials == 3 and [p.key for p in spec.space][0] == "variant"
    cfg = spec.config({"variant": "mixup", "optim.weight_decay": 1e-4})
    assert cfg.augment.mixup.alpha == 1.0 and cfg.optim.lr == 0.05 and cfg.optim.weight_decay == 1e-4
    assert spec.config({"variant": "baseline"}).augment.cutout.size == 0
    assert "cutout: augment.cutout.size=8" in describe(spec)


@pytest.mark.parametrize("bad,key,line", [
    ("  cutout: {augment.cutout.size: big}\n", "variants.cutout.augment.cutout.size", 5),
    ("  cutout: {augment.cutot.size: 8}\n", "variants.cutout.augment.cutot.size", 5),
    ("  cutout: 8\n", "variants.cutout", 5),
])
def test_a_bad_variant_names_its_key_and_line(bad, key, line):
    text = TEXT.replace("  cutout: {augment.cutout.size: 8}\n", bad)
    with pytest.raises(SpecError) as e:
        parse_spec(text, "abl.yaml")
    assert str(e.value).startswith(f"abl.yaml:{line} {key}:") and "fix:" in str(e.value)


def test_a_variant_sweep_tables_by_variant(write_spec, tmp_path):
    spec = tiny_spec(name="abl", seeds=2, variants={"baseline": {}, "smooth": {"augment.label_smoothing": 0.1}})
    del spec["space"], spec["budget"]
    loaded = load_spec(write_spec(spec))
    url = sweeps.resolve("abl", None, tmp_path / "runs", create=True)
    assert sweeps.run(loaded, url, quiet=True).finished == 2
    frame = analysis.load(loaded, url)
    table = analysis.summary(frame, by=["variant"])
    assert sorted(table["variant"]) == ["baseline", "smooth"] and (table["runs"] == 2).all()
