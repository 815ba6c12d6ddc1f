"""One key, several distributions under disjoint conditions (e.g. a depth per family)."""
from __future__ import annotations

import optuna
import pytest

import analysis
import sweeps
from conftest import tiny_spec
from search_spaces import SpecError, load_spec, parse_spec
from sweeps.sampling import sample

SPACE = """
name: alt
budget: {trials: 4}
space:
  model.name: {choice: [resnet_preact, wrn]}
  model.depth:
    - {choice: [8, 14], when: {model.name: resnet_preact}}
    - {fixed: 10, when: {model.name: wrn}}
  model.widen: {choice: [1, 2], when: {model.name: wrn}}
"""


def test_each_trial_samples_the_alternative_its_condition_picks():
    spec = parse_spec(SPACE, "alt.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        values = sample(spec, trial)
        study.tell(trial, 0.0)
        if values["model.name"] == "wrn":
            assert values["model.depth"] == 10 and values["model.widen"] in (1, 2)
        else:
            assert values["model.depth"] in (8, 14) and "model.widen" not in values
        seen.add((values["model.name"], values["model.depth"]))
    assert seen == {("resnet_preact", 8), ("resnet_preact", 14), ("wrn", 10)}


@pytest.mark.parametrize("change,message", [
    ("{fixed: 10, when: {model.name: wrn}}", None),
    ("{fixed: 10, when: {model.name: [wrn, resnet_preact]}}", "two alternatives can hold at once"),
    ("{fixed: 10}", "each alternative needs a when"),
    ("{fixed: 10, when: {model.name: vgg}}", "never takes 'vgg'"),
])
def test_alternatives_are_validated(change, message):
    text = SPACE.replace("{fixed: 10, when: {model.name: wrn}}", change)
    if message is None:
        assert len(parse_spec(text, "alt.yaml").space) == 4
        return
    with pytest.raises(SpecError, match=message) as e:
        parse_spec(text, "alt.yaml")
    assert str(e.value).startswith("alt.yaml:") and "model.depth" in str(e.value)


def test_a_sweep_over_families_gives_one_column_per_key(write_spec, tmp_path):
    spec = tiny_spec(name="fam", sampler={"name": "grid"}, budget={"trials": 2}, space={
        "model.name": {"grid": ["resnet_preact", "wrn"]},
        "model.depth": [{"fixed": 8, "when": {"model.name": "resnet_preact"}},
                        {"fixed": 10, "when": {"model.name": "wrn"}}],
        "model.base_channels": {"fixed": 4, "when": {"model.name": "resnet_preact"}},
        "model.widen": {"fixed": 1, "when": {"model.name": "wrn"}},
    })
    del spec["base"]["model"]
    loaded = load_spec(write_spec(spec))
    url = sweeps.resolve("fam", None, tmp_path / "runs", create=True)
    assert sweeps.run(loaded, url, quiet=True).finished == 2
    frame = analysis.load(loaded, url).set_index("model.name")
    assert frame.loc["resnet_preact", "model.depth"] == 8 and frame.loc["wrn", "model.depth"] == 10
    assert (frame["state"] == "complete").all()
