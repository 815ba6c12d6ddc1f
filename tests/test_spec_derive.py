"""`derive:` entries: keys computed per trial from other keys by a safe arithmetic expression."""
from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

import analysis
import sweeps
from conftest import ROOT, tiny_spec
from search_spaces import SpecError, describe, load_spec, parse_spec
from search_spaces.derive import Derive
from sweeps.optuna_work import open_study
from sweeps.sampling import sample
from trainable import ConfigError

SRC = "x.yaml"
HEAD = "name: t\nbudget: {trials: 3}\nspace:\n"  # space entries start on line 4

LINEAR = HEAD + """  train.batch_size: {choice: [64, 128, 256, 512]}
  optim.lr: {derive: "0.1 * train.batch_size / 128"}
"""


def _draws(spec, n=12):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((sample(spec, trial), trial))
        study.tell(trial, 0.0)
    return out


def test_linear_scaling_rule_is_computed_per_trial_and_not_sampled():
    spec = parse_spec(LINEAR, SRC)
    assert [p.key for p in spec.space] == ["train.batch_size", "optim.lr"]
    assert spec.space[1].dist == Derive("0.1 * train.batch_size / 128", ("train.batch_size",), False)
    seen = set()
    for values, trial in _draws(spec):
        bs = values["train.batch_size"]
        assert values["optim.lr"] == pytest.approx(0.1 * bs / 128)
        assert "optim.lr" not in trial.params  # not an Optuna parameter ...
        assert trial.user_attrs["derived.optim.lr"] == values["optim.lr"]  # ... but recorded
        assert spec.config(values).optim.lr == pytest.approx(0.1 * bs / 128)
        seen.add(bs)
    assert len(seen) > 1


def test_ray_rebuilds_values_with_a_fixed_trial():
    spec = parse_spec(LINEAR, SRC)
    values = sample(spec, optuna.trial.FixedTrial({"train.batch_size": 512}))
    assert values == {"train.batch_size": 512, "optim.lr": pytest.approx(0.4)}


def test_int_fields_get_rounded_ints_and_base_values_are_readable():
    text = "name: t\nbudget: {trials: 3}\nbase:\n  train: {epochs: 30}\n  optim: {lr: 0.2}\nspace:\n" \
           "  train.batch_size: {choice: [96]}\n" \
           "  schedule.warmup_epochs: {derive: \"train.epochs / 8\"}\n" \
           "  train.eval_batch_size: {derive: \"train.batch_size * 2 / 3 + optim.lr\"}\n"
    spec = parse_spec(text, SRC)
    (values, _), = _draws(spec, 1)
    assert values["schedule.warmup_epochs"] == pytest.approx(3.75)  # from the base's train.epochs
    assert values["train.eval_batch_size"] == 64 and isinstance(values["train.eval_batch_size"], int)
    assert "(rounded to int)" in describe(spec)


def test_derives_may_name_derives_in_any_order_and_carry_when():
    text = HEAD + """  schedule.warmup_epochs: {derive: "optim.lr * 100"}
  optim.lr: {derive: "sqrt(train.batch_size) / 80"}
  optim.momentum: {derive: "min(0.99, 1 - 8 / train.batch_size)", when: {optim.name: sgd}}
  optim.name: {choice: [sgd, adam]}
  train.batch_size: {choice: [64, 256]}
"""
    spec = parse_spec(text, SRC)
    order = [p.key for p in spec.space]
    assert order.index("optim.lr") < order.index("schedule.warmup_epochs")
    assert all(not p.derived for p in spec.space[:2])  # sampled first, derived after
    for values, _ in _draws(spec, 16):
        bs = values["train.batch_size"]
        assert values["optim.lr"] == pytest.approx(bs ** 0.5 / 80)
        assert values["schedule.warmup_epochs"] == pytest.approx(bs ** 0.5 / 80 * 100)
        assert ("optim.momentum" in values) == (values["optim.name"] == "sgd")
    text = describe(spec)
    assert "derived (computed per trial, not sampled):" in text
    assert "optim.momentum" in text and "derive min(0.99, 1 - 8 / train.batch_size)  when optim.name in ['sgd']" \
        in text


def test_a_variant_may_derive_a_key():
    text = """name: v
variants:
  small: {}
  large: {train.batch_size: 1024, optim.lr: {derive: "0.1 * train.batch_size / 256"}}
"""
    spec = parse_spec(text, SRC)
    derived = [p for p in spec.space if p.derived]
    assert [(p.key, p.when) for p in derived] == [("optim.lr", (("variant", ("large",)),))]
    values = sample(spec, optuna.trial.FixedTrial({"variant": "large"}))
    assert values["optim.lr"] == pytest.approx(0.4)
    assert sample(spec, optuna.trial.FixedTrial({"variant": "small"})) == {"variant": "small"}


def test_set_and_preset_can_give_a_derive():
    text = HEAD + "  train.batch_size: {choice: [64, 128]}\npresets:\n" \
                  "  scaled: {space.optim.lr: {derive: \"0.05 * train.batch_size / 64\"}}\n"
    spec = parse_spec(text, SRC, preset="scaled")
    assert sample(spec, optuna.trial.FixedTrial({"train.batch_size": 128}))["optim.lr"] == pytest.approx(0.1)
    spec = parse_spec(text, SRC, ['space.optim.weight_decay={derive: "1.0e-4 * 128 / train.batch_size"}'])
    assert sample(spec, optuna.trial.FixedTrial({"train.batch_size": 64}))["optim.weight_decay"] == \
        pytest.approx(2e-4)


@pytest.mark.parametrize("expr,message", [
    ("1 / (train.batch_size - 64)", "divides by zero"),
    ("exp(train.batch_size * 100)", "overflows"),
    ("sqrt(-train.batch_size)", "cannot be computed"),
    ("(-train.batch_size) ** 0.5", "not a finite number"),
    ("train.batch_size ** 10 ** 10", "overflows"),  # on floats: at once, never computes for ever
])
def test_a_value_that_cannot_be_computed_is_refused_before_any_trial(expr, message):
    text = HEAD + f"  train.batch_size: {{choice: [64, 128]}}\n  optim.lr: {{derive: \"{expr}\"}}\n"
    with pytest.raises(SpecError) as e:
        parse_spec(text, SRC)
    assert str(e.value).startswith(f"{SRC}:5 optim.lr: derive ") and message in str(e.value), str(e.value)
    assert "fix:" in str(e.value) and "train.batch_size=64" in str(e.value)


def test_a_derive_that_fails_at_sampling_names_the_key():
    """A value inside a range, where validation tries only the ends, can still fail: the trial says why."""
    text = HEAD + '  optim.momentum: {uniform: [0.0005, 0.9]}\n' \
                  '  optim.lr: {derive: "sqrt((optim.momentum - 0.001) * (optim.momentum - 0.899))"}\n'
    spec = parse_spec(text, SRC)
    with pytest.raises(ConfigError) as e:
        sample(spec, optuna.trial.FixedTrial({"optim.momentum": 0.5}))
    assert str(e.value).startswith("optim.lr: derive ") and "cannot be computed" in str(e.value)
    assert "optim.momentum=0.5" in str(e.value)


# (id, space body from line 4, offending key, line, fragment)
MALFORMED = [
    ("syntax", '  optim.lr: {derive: "0.1 * "}\n', "optim.lr", 4, "not a valid expression"),
    ("unknown_name", '  optim.lr: {derive: "0.1 * train.batch_sise"}\n', "optim.lr", 4,
     "did you mean 'train.batch_size'"),
    ("name_not_numeric", '  optim.lr: {derive: "model.name * 2"}\n', "optim.lr", 4, "not a number"),
    ("unknown_function", '  optim.lr: {derive: "sqr(train.batch_size)"}\n', "optim.lr", 4, "did you mean 'sqrt'"),
    ("function_arity", '  optim.lr: {derive: "sqrt(1, 2)"}\n', "optim.lr", 4, "sqrt() takes 1 argument, got"),
    ("code_is_refused", '  optim.lr: {derive: "__import__(\'os\').getpid()"}\n', "optim.lr", 4, "unknown function"),
    ("attribute_of_call", '  optim.lr: {derive: "min(1, 2).real"}\n', "optim.lr", 4, "cannot read"),
    ("comparison", '  optim.lr: {derive: "train.batch_size > 64"}\n', "optim.lr", 4, "is not allowed"),
    ("string_constant", "  optim.lr: {derive: \"'a' * 3\"}\n", "optim.lr", 4, "not a number"),
    ("bitwise", '  optim.lr: {derive: "train.batch_size << 2"}\n', "optim.lr", 4, "operator LShift"),
    ("not_a_string", "  optim.lr: {derive: 0.1}\n", "optim.lr", 4, "expression as a string"),
    ("target_not_numeric", '  model.name: {derive: "1 + 1"}\n', "model.name", 4, "not numeric"),
    ("itself", '  optim.lr: {derive: "optim.lr * 2"}\n', "optim.lr", 4, "uses optim.lr itself"),
    ("cycle", '  optim.lr: {derive: "optim.momentum / 10"}\n  optim.momentum: {derive: "optim.lr * 10"}\n',
     "optim.lr", 4, "derives form a cycle: optim.lr -> optim.momentum -> optim.lr"),
    ("derived_and_sampled", "  optim.name: {choice: [sgd, adam]}\n  optim.lr:\n"
     '    - {derive: "0.1", when: {optim.name: sgd}}\n    - {loguniform: [1.0e-4, 1.0e-2], when: {optim.name: adam}}\n',
     "optim.lr", 5, "either derived or sampled"),
    ("given_twice", '  optim.lr: {loguniform: [1.0e-4, 1.0]}\n  optim.lr: {derive: "0.1"}\n',
     "space.optim.lr", 5, "given twice"),
    ("when_names_a_derive", '  optim.lr: {derive: "0.1"}\n  optim.momentum: {uniform: [0, 1], when: {optim.lr: 0.1}}\n',
     "optim.momentum.when", 5, "optim.lr is derived"),
    ("option_not_taken", '  optim.lr: {derive: "0.1", step: 2}\n', "optim.lr.step", 4, "derive takes no option"),
]


@pytest.mark.parametrize("body,key,line,fragment", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_derive_names_file_line_key_and_fix(body, key, line, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(HEAD + body, SRC)
    msg = str(info.value)
    assert msg.startswith(f"{SRC}:{line} {key}: "), msg
    assert "fix:" in msg and fragment in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text,key,fragment", [
    ("name: t\nbudget: {trials: 1}\nbase:\n  optim: {lr: {derive: \"0.1\"}}\n", "base.optim.lr", "base holds fixed"),
    ("name: t\nvariants:\n  a: {optim.lr: 0.2}\nspace:\n  optim.lr: {derive: \"0.1\"}\n", "variants.a.optim.lr",
     "space derives optim.lr for this variant too"),
    ("name: t\nvariants:\n  a: {optim.lr: {derive: \"0.1\", when: {x: 1}}}\n", "variants.a.optim.lr",
     "takes no other keys"),
])
def test_derive_where_it_does_not_belong(text, key, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC)
    assert f" {key}: " in str(info.value) and fragment in str(info.value), str(info.value)


def test_a_failing_derive_fails_its_trial_with_the_reason_and_the_sweep_goes_on(write_spec, tmp_path):
    # Validation tries the ends of the range, where the expression holds; nearly every value inside fails.
    expr = "0.1 * sqrt((optim.momentum - 0.001) * (optim.momentum - 0.899))"
    spec = tiny_spec(name="bad_derive", space={"optim.momentum": {"uniform": [0.0005, 0.9]},
                                               "optim.lr": {"derive": expr}})
    loaded = load_spec(write_spec(spec))
    url = sweeps.resolve("bad_derive", None, tmp_path / "runs", create=True)
    assert sweeps.run(loaded, url, quiet=True).finished == 2  # failed with a reason: counted, not retried
    frame = analysis.load(loaded, url)
    assert list(frame["state"]) == ["failed", "failed"]
    assert frame["error"].str.startswith(f"optim.lr: derive {expr!r} cannot be computed").all()


@pytest.mark.filterwarnings("ignore:Heartbeat")  # ask/tell here, where the engine uses optimize
def test_a_derived_key_is_a_column_of_the_results(tmp_path):
    spec = parse_spec(LINEAR.replace("name: t", "name: cols"), SRC)
    url = sweeps.resolve("cols", None, tmp_path, create=True)
    study, _ = open_study(spec, url)
    for _ in range(3):
        trial = study.ask()
        values = sample(spec, trial)
        trial.set_user_attr("runs", [{"seed": 0, "state": "complete", "val_error": 0.5}])
        study.tell(trial, 0.5)
    frame = analysis.load("cols", url)
    assert {"train.batch_size", "optim.lr"} <= set(frame.attrs["params"])
    for _, row in frame.iterrows():
        assert row["optim.lr"] == pytest.approx(0.1 * row["train.batch_size"] / 128)
    assert values["optim.lr"] in set(frame["optim.lr"])


def test_cli_validate_prints_derived_keys_and_errors_in_one_line(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(LINEAR)
    bad.write_text(LINEAR.replace("train.batch_size / 128", "train.batch_size / "))
    cmd = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "validate"]
    ok = subprocess.run(cmd + [str(good)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "optim.lr          derive 0.1 * train.batch_size / 128" in ok.stdout, ok.stdout
    err = subprocess.run(cmd + [str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert err.returncode == 2 and "Traceback" not in err.stderr
    assert err.stderr.startswith(f"error: {bad}:5 optim.lr: not a valid expression"), err.stderr


@pytest.mark.parametrize("expr,message", [
    ("round(train.batch_size, -int(1e12)) + 0.1", "round() takes a whole number of digits"),
    ("int(1e308) * int(1e308)", "not a finite number"),
    (" + ".join(["train.batch_size"] * 500), "characters long"),
    ("-" * 5000 + "train.batch_size", "characters long"),
    ("-" * 25 + "1", "nests deeper than"),
    (" + ".join(["1"] * 40), "more than 64 parts"),
    ("1" * 400, "too large"),
])
def test_an_expression_that_would_hang_or_crash_is_refused_when_the_spec_is_checked(expr, message):
    """Bounded text, size, depth and values: each ends in a SpecError at its line, never a hang or a traceback."""
    with pytest.raises(SpecError) as e:
        parse_spec(HEAD + f"  train.batch_size: {{choice: [64, 128]}}\n  optim.lr: {{derive: \"{expr}\"}}\n", SRC)
    assert str(e.value).startswith(f"{SRC}:5 optim.lr: ") and message in str(e.value), str(e.value)[:300]


def test_a_bounded_expression_through_set_is_refused_in_one_line():
    text = HEAD + "  train.batch_size: {choice: [64, 128]}\n"
    with pytest.raises(SpecError, match="characters long"):
        parse_spec(text, SRC, ['space.optim.lr={derive: "' + "-" * 5000 + '1"}'])
