"""One check before anything runs: every value a trial would refuse is refused by `sweep validate`,
at the file:line that gave it, whether the spec gives it in its base, a variant, a preset, a `--set`
or as a value a distribution can produce; and the trainable runs the same rules at start."""
from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from conftest import ROOT
from search_spaces import SpecError, parse_spec
from trainable import TrialConfig, rules
from trainable.config import Range, from_flat, leaf_keys
from trainable.registry import Registry

SRC = "x.yaml"
CPU = rules.Context(device="cpu")


def _tiny_folder() -> str:
    """An image folder (train/ and val/, one class, one image each) for the rules that read one."""
    import tempfile

    from PIL import Image
    root = Path(tempfile.mkdtemp(prefix="one-check-folder-"))
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / "a" / "0.png")
    return str(root)


FOLDER = _tiny_folder()


def _tiny_shards() -> str:
    """FOLDER's images as tar shards (sweep data --shards)."""
    import tempfile

    from trainable.config import Data
    from trainable.export import write
    return str(write(Path(tempfile.mkdtemp(prefix="one-check-shards-")), Data(dataset="image_folder", root=FOLDER),
                     None, None, 0, shards=1))


SHARDS = _tiny_shards()
OLD_GPU = rules.Context(device="cuda", native_bf16=False)  # compute capability below 8.0
HEAD = "name: t\nbudget: {trials: 2}\nbase:\n  data.subset: 1000\n"  # base entries from line 5


def _inner(tp):
    if typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _bad_and_good(key: str, tp, f) -> tuple[object, object]:
    """A value the field's own rule refuses, and one it takes."""
    tp, choices, check = _inner(tp), f.metadata["choices"], f.metadata["check"]
    if choices:
        good = f.default if f.default is not None else (choices.names() if isinstance(choices, Registry) else choices)[0]
        return "no_such_choice", good
    assert isinstance(check, Range), key
    item = int if (typing.get_args(tp) or (tp,))[0] is int else float
    low, high = check.low, check.high
    if low is not None:
        bad = low if check.low_open else low - (1 if item is int else 0.5)
    elif high is not None:
        bad = high if check.high_open else high + (1 if item is int else 0.5)
    else:  # a length only
        return [True] * (check.length + 1), [True] * check.length
    if low is not None and high is not None:
        good = (low + high) / 2
    else:
        good = low + 1 if low is not None else high - 1
    good = item(good) if item is int and good == int(good) else good
    if typing.get_origin(tp) is tuple:
        n = check.length or 2
        return [bad] * n, [good] * n
    return item(bad), good


RULED = [(key, tp, f) for key, (tp, f) in leaf_keys().items() if f.metadata["choices"] or f.metadata["check"]]


def _field_case(key, tp, f):
    bad, good = _bad_and_good(key, tp, f)
    used_when = f.metadata["used_when"]
    extra = {f"{key.rpartition('.')[0]}.{used_when[0]}": used_when[1][0]} if used_when else {}
    return key, bad, good, extra


FIELD_CASES = [_field_case(*r) for r in RULED]

# Rules across fields: (rule, the key it names, the bad combination's other keys, the bad key's value, a good value).
CROSS_CASES = [
    ("device_exists", "train.device", {}, "tpu", "cpu"),
    ("fp16_needs_cuda", "train.precision", {}, "fp16", "bf16"),
    ("bf16_is_native", "train.precision", {"train.device": "cuda"}, "bf16", "fp16", OLD_GPU),
    ("accumulate_divides_batch", "train.accumulate", {"train.batch_size": 64}, 3, 2),
    ("ghost_batch_fits", "train.ghost_batch", {"train.batch_size": 64}, 128, 32),
    ("ranks_share_the_batch", "train.batch_size", {"train.devices": 2, "train.accumulate": 2}, 66, 64),
    ("ghost_or_sync_bn", "train.sync_bn", {"train.devices": 2, "train.ghost_batch": 16}, True, False),
    ("batch_fits_data", "train.batch_size", {}, 2048, 64),
    ("teacher_exists", "train.teacher", {}, "/nonexistent/teacher.pt", None),
    ("data_present", "data.dataset", {"data.root": "/nonexistent"}, "cifar10", "fashion_mnist"),
    ("streamed_folders_take_resized_crops", "data.storage",
     {"data.dataset": "image_folder", "data.root": FOLDER, "augment.crop_padding": 0}, "stream", "resident"),
    ("device_decode_takes_no_policy", "data.decode", {"augment.policy.name": "randaugment"}, "device", "workers"),
    ("shards_are_streamed", "data.storage", {"data.dataset": "image_shards", "data.root": SHARDS,
                                             "augment.crop_padding": 0, "augment.random_resized_crop": True},
     "resident", "stream"),
    ("nesterov_needs_momentum", "optim.momentum", {}, 0.0, 0.9),  # Nesterov is on by default
    ("warmup_leaves_training", "schedule.warmup_epochs", {"train.epochs": 2}, 2.0, 1.0),
    ("exponential_warmup_starts_above_zero", "schedule.warmup_mode", {}, "exponential", "linear"),  # start 0
    ("timm_policy_parses", "augment.policy.timm", {"augment.policy.name": "timm"}, "augmix-m5", "rand-m7-mstd0.5-inc1"),
    ("repeated_fits_batch", "augment.repeated", {"train.batch_size": 2}, 3, 2),
    ("reflect_pad_below_image", "augment.crop_padding", {"augment.pad_mode": "reflect"}, 28, 4),
    ("policy_channels", "augment.policy.name", {"data.dataset": "synthetic", "data.synthetic_shape": [2, 8, 8],
                                                "data.synthetic_size": 2000}, "randaugment", "none"),
    ("colour_needs_rgb", "augment.lighting", {"data.dataset": "fashion_mnist"}, 0.1, 0.0),
    ("dual_cutout_size", "augment.dual_cutout.size", {"augment.dual_cutout.alpha": 0.1}, 0, 16),
    ("model_family", "model.depth", {}, 21, 20),
]


def _lines(values: dict) -> str:
    return "".join(f"  {k}: {json.dumps(v)}\n" for k, v in values.items())


def _refused(text: str, overrides=(), preset=None, context=CPU) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC, list(overrides), preset, context=context)
    return info.value


def _routes(key: str, bad, good, extra: dict) -> dict[str, tuple[str, list, str | None, str]]:
    """route -> (spec text, overrides, preset, the start of the error message)."""
    base = HEAD + _lines(extra)
    n = base.count("\n")
    dist = f"{{fixed: {json.dumps(bad)}}}" if isinstance(bad, list) or good is None else \
        f"{{choice: [{json.dumps(good)}, {json.dumps(bad)}]}}"
    return {
        "base": (base + _lines({key: bad}), [], None, f"{SRC}:{n + 1} base.{key}: "),
        "variant": (base + f"variants:\n  good: {{}}\n  bad:\n{_lines({key: bad})}".replace("\n  " + key,
                                                                                          "\n    " + key),
                    [], None, f"{SRC}:{n + 4} variants.bad.{key}: "),
        "preset": (base + f"presets:\n  p:\n    base.{key}: {json.dumps(bad)}\n", [], "p",
                   f"preset p ({SRC}:{n + 3}) base.{key}: "),
        "set": (base, [f"base.{key}={json.dumps(bad)}"], None, f"--set base.{key}={json.dumps(bad)} base.{key}: "),
        "distribution": (base + f"space:\n  {key}: {dist}\n", [], None, f"{SRC}:{n + 2} {key}: "),
    }


ROUTES = ("base", "variant", "preset", "set", "distribution")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("key,bad,good,extra", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_a_field_value_a_trial_refuses_is_refused_at_its_line(key, bad, good, extra, route):
    text, overrides, preset, start = _routes(key, bad, good, extra)[route]
    e = _refused(text, overrides, preset)
    assert str(e).startswith(start) and "fix:" in str(e), str(e)
    # ... and the trainable refuses the same value at start, with the same key.
    with pytest.raises(rules.ConfigError) as info:
        rules.check(from_flat({"data.subset": 1000, **extra, key: bad}), CPU)
    assert info.value.key == key


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("rule,key,others,bad,good,context", [(*c, CPU)[:6] for c in CROSS_CASES],
                         ids=[c[0] for c in CROSS_CASES])
def test_a_combination_a_trial_refuses_is_refused_at_its_line(rule, key, others, bad, good, context, route):
    text, overrides, preset, start = _routes(key, bad, good, others)[route]
    e = _refused(text, overrides, preset, context)
    assert str(e).startswith(start) and "fix:" in str(e), str(e)
    parse_spec(_routes(key, good, bad, others)["base"][0], SRC, context=context)  # the good value passes


def test_every_rule_across_fields_has_a_case():
    assert {c[0] for c in CROSS_CASES} == set(rules.CROSS)


def test_the_cases_cover_the_ruled_fields_and_the_defaults_pass():
    assert len(FIELD_CASES) == len(RULED) >= 80
    rules.check(TrialConfig(), CPU)


def test_choices_are_the_registries_their_builders_fill():
    from trainable import augment, data, objective, optim, policies, schedules
    from trainable.registries import DATASETS, ERASE_VALUES, LOSSES, OPTIMIZERS, POLICIES, SCHEDULES, WARMUPS
    keys = leaf_keys()
    owners = {"optim.name": (OPTIMIZERS, optim.OPTIMIZERS), "schedule.name": (SCHEDULES, schedules.SCHEDULES),
              "schedule.warmup_mode": (WARMUPS, schedules.WARMUPS), "train.loss": (LOSSES, objective.LOSSES),
              "augment.policy.name": (POLICIES, policies.POLICIES),
              "augment.random_erasing.value": (ERASE_VALUES, augment.ERASE_VALUES),
              "data.dataset": (DATASETS, data.DATASETS)}
    for key, (declared, filled) in owners.items():
        assert keys[key][1].metadata["choices"] is declared is filled, key
        assert declared.names() == sorted({*filled.items, *declared.extra}) and filled.items, key
    registries = [OPTIMIZERS, SCHEDULES, WARMUPS, LOSSES, POLICIES, ERASE_VALUES, DATASETS]
    for key, (_, f) in keys.items():  # no hand-copied list of a registry's names
        choices = f.metadata["choices"]
        if isinstance(choices, tuple):
            assert all(set(choices) != set(r.names()) for r in registries), key


def test_an_int_range_is_tried_at_every_value_a_rule_needs():
    # batch sizes 48..80 step 8: only 56 and 72 are not divisible by 16
    text = HEAD + "space:\n  train.batch_size: {int: [48, 80], step: 8}\n  train.accumulate: {fixed: 16}\n"
    e = _refused(text)
    assert "must divide train.batch_size=56" in str(e) or "train.batch_size=56" in str(e), str(e)


def test_a_conditional_value_is_tried_only_under_its_condition():
    text = HEAD + ("space:\n  optim.name: {choice: [sgd, adam]}\n"
                   "  optim.momentum: {choice: [0.0, 0.9], when: {optim.name: adam}}\n")
    parse_spec(text, SRC, context=CPU)  # momentum 0 with Nesterov is refused only for sgd, which never gets it
    e = _refused(text.replace("when: {optim.name: adam}", "when: {optim.name: sgd}"))
    assert str(e).startswith(f"{SRC}:7 optim.momentum: Nesterov") and "optim.name='sgd'" in str(e), str(e)


def test_every_preset_is_checked_by_validate(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "presets:\n  ok: {budget.trials: 1}\n  broken: {base.train.accumulate: 3}\n")
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(spec)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith(f"error: preset broken ({spec}:7)"), out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize("entry", ["  optim.momentum: {uniform: [0.5, 1.5]}\n", "  train.accumulate: {choice: [1, 3]}\n",
                                   '  optim.lr: {derive: "0.1 / (train.batch_size - 128)"}\n'])
def test_sweep_run_refuses_before_anything_is_stored(tmp_path, entry):
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "space:\n" + entry)
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {spec}:6 "), out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "runs" / "t.db").exists() and "results in" not in out.stdout


def test_sweep_run_exits_non_zero_when_every_trial_failed(tmp_path):
    # Validation tries the ends of the range, where the derive holds; nearly every value inside fails.
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "space:\n  optim.momentum: {uniform: [0.0005, 0.9]}\n"
                    '  optim.lr: {derive: "0.1 * sqrt((optim.momentum - 0.001) * (optim.momentum - 0.899))"}\n')
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--dir", str(tmp_path / "runs"), "--quiet",
           "--workers", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "error: every trial of this run failed (2 of 2)" in out.stderr and "Traceback" not in out.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # nothing left to run: not a failure
    assert again.returncode == 0, again.stderr
