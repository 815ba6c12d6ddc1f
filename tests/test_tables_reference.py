"""`reference:` rows: validated on load (percent in, fractions stored) and shown beside our medians."""
from __future__ import annotations

import io
import math

import optuna
import pandas as pd
import pytest

import analysis
import cli
import sweeps
from search_spaces import SpecError, describe, parse_spec
from sweeps.optuna_work import open_study

SRC = "r.yaml"
HEAD = """name: ref
seeds: 2
variants:
  baseline: {}
  cutout: {augment.cutout.size: 16}
space:
  train.batch_size: {choice: [64, 128]}
  optim.lr: {loguniform: [1.0e-3, 1.0]}
reference:
"""  # rows start on line 10
ROWS = """  - {variant: baseline, test_error: 5.04, epochs: 200, source: "reference README"}
  - {variant: cutout, test_error: 4.49, val_error: 4.0, note: median of 3 runs}
"""


def test_rows_are_validated_and_stored_as_fractions():
    spec = parse_spec(HEAD + ROWS + "  - {variant: cutout, train.batch_size: 64, model.name: resnet_preact,"
                                    " test_error: 4.2}\n", SRC)
    base, cutout, small = spec.reference
    assert base.match == (("variant", "baseline"),) and base.metrics == (("test_error", 0.0504),)
    assert (base.epochs, base.source) == (200, "reference README")
    assert cutout.metrics == (("test_error", 0.0449), ("val_error", 0.04)) and cutout.note == "median of 3 runs"
    # model.name is not varied by this sweep: a constant of the row, checked against the base, not matched on
    assert small.match == (("variant", "cutout"), ("train.batch_size", 64))
    assert small.constant == (("model.name", "resnet_preact"),)
    assert small.as_dict()["metrics"] == {"test_error": 0.042}
    text = describe(spec)
    assert "variant=baseline: test_error 5.04 %, 200 epochs, reference README" in text


# (id, row text on line 10, offending key, fragment)
MALFORMED = [
    ("metric_typo", "  - {variant: baseline, test_eror: 5.04}\n", "reference.test_eror", "did you mean 'test_error'"),
    ("identifying_key_typo", "  - {model.nme: wrn, test_error: 5.04}\n", "reference.model.nme",
     "did you mean 'model.name'"),
    ("unknown_variant", "  - {variant: mixup, test_error: 5.04}\n", "reference.variant", "use one of: baseline, cutout"),
    ("value_never_run", "  - {train.batch_size: 256, test_error: 5.04}\n", "reference.train.batch_size",
     "never runs train.batch_size=256 (its values: [64, 128])"),
    ("base_value_differs", "  - {model.name: wrn, test_error: 5.04}\n", "reference.model.name",
     "never runs model.name='wrn'"),
    ("value_wrong_type", "  - {train.batch_size: big, test_error: 5.04}\n", "reference.train.batch_size",
     "expected int"),
    ("percent_out_of_range", "  - {variant: baseline, test_error: 150}\n", "reference.test_error",
     "percentage from 0 to 100"),
    ("percent_not_a_number", "  - {variant: baseline, test_error: low}\n", "reference.test_error",
     "percentage from 0 to 100"),
    ("epochs_not_positive", "  - {variant: baseline, test_error: 5.0, epochs: 0}\n", "reference.epochs",
     "positive whole number"),
    ("note_not_text", "  - {variant: baseline, test_error: 5.0, note: [a]}\n", "reference.note", "is text"),
    ("no_metric", "  - {variant: baseline, epochs: 200}\n", "reference", "needs a result"),
    ("same_row_twice", "  - {variant: baseline, test_error: 5.0}\n  - {variant: baseline, test_error: 5.1}\n",
     "reference", "same configuration as row 1"),
]


@pytest.mark.parametrize("rows,key,fragment", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_reference_row_names_file_line_key_and_fix(rows, key, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(HEAD + rows, SRC)
    msg = str(info.value)
    line = 10 + rows.count("\n") - 1
    assert msg.startswith(f"{SRC}:{line} {key}: "), msg
    assert "fix:" in msg and fragment in msg and "\n" not in msg, msg


def _frame() -> pd.DataFrame:
    """Two variants x two batch sizes x two seeds, with known errors."""
    rows = []
    for variant, shift in (("baseline", 0.0), ("cutout", -0.01)):
        for bs in (64, 128):
            for seed, noise in ((0, 0.0), (1, 0.002)):
                rows.append({"trial": len(rows) // 2, "seed": seed, "state": "complete", "variant": variant,
                             "train.batch_size": bs, "test_error": 0.05 + shift + noise + (bs == 128) * 0.004,
                             "val_error": 0.06 + shift, "epochs_done": 200, "duration_s": 10.0})
    rows.append({**rows[0], "state": "failed", "test_error": None})  # not counted
    frame = pd.DataFrame(rows)
    frame.attrs["params"] = ["variant", "train.batch_size"]
    return frame


def _reference(rows: str) -> list[dict]:
    return [r.as_dict() for r in parse_spec(HEAD + rows, SRC).reference]


def test_reference_columns_sit_beside_the_medians_with_the_difference():
    table = analysis.with_reference(analysis.summary(_frame(), ["variant"]), _reference(ROWS))
    assert list(table.columns) == ["variant", "runs", "test_error_median", "test_error_std", "ref_test_error",
                                   "diff_test_error", "val_error_median", "ref_val_error", "diff_val_error",
                                   "epochs", "ref_epochs", "duration_s"]
    got = table.set_index("variant")
    # medians over batch sizes and seeds: baseline 0.050, 0.052, 0.054, 0.056 -> 0.053; cutout 0.01 lower
    assert got.loc["baseline", "test_error_median"] == pytest.approx(0.053)
    assert got.loc["baseline", "ref_test_error"] == pytest.approx(0.0504)
    assert got.loc["baseline", "diff_test_error"] == pytest.approx(0.053 - 0.0504)
    assert got.loc["cutout", "diff_test_error"] == pytest.approx(0.043 - 0.0449)
    assert math.isnan(got.loc["baseline", "ref_val_error"]) and got.loc["cutout", "ref_val_error"] == 0.04
    assert got.loc["baseline", "ref_epochs"] == 200 and math.isnan(got.loc["cutout", "ref_epochs"])


def test_rows_fit_only_tables_that_show_their_columns():
    rows = ROWS + "  - {variant: cutout, train.batch_size: 128, test_error: 4.0}\n"
    by_variant = analysis.with_reference(analysis.summary(_frame(), ["variant"]), _reference(rows))
    assert list(by_variant["ref_test_error"]) == [pytest.approx(0.0449), pytest.approx(0.0504)]  # cutout first
    both = analysis.with_reference(analysis.summary(_frame()), _reference(rows)).set_index(
        ["variant", "train.batch_size"])
    # (cutout, 128) fits two rows, which is ambiguous: none is shown
    assert math.isnan(both.loc[("cutout", 128), "ref_test_error"])
    assert both.loc[("baseline", 64), "ref_test_error"] == pytest.approx(0.0504)
    by_batch = analysis.with_reference(analysis.summary(_frame(), ["train.batch_size"]), _reference(rows))
    assert by_batch["ref_test_error"].isna().all()
    assert analysis.with_reference(by_batch, []) is by_batch


def test_sweep_table_by_variant_shows_the_reference_from_the_name_alone(tmp_path, capsys):
    spec = parse_spec(HEAD + ROWS, SRC)
    url = sweeps.resolve("ref", None, tmp_path, create=True)
    study, _ = open_study(spec, url)
    frame = _frame()
    dists = {"variant": optuna.distributions.CategoricalDistribution(["baseline", "cutout"]),
             "train.batch_size": optuna.distributions.CategoricalDistribution([64, 128])}
    for (variant, bs), runs in frame[frame["state"] == "complete"].groupby(["variant", "train.batch_size"]):
        runs = runs[["seed", "state", "test_error", "val_error", "epochs_done", "duration_s"]]
        study.add_trial(optuna.trial.create_trial(
            params={"variant": variant, "train.batch_size": int(bs)}, distributions=dists,
            value=float(runs["test_error"].median()), user_attrs={"runs": runs.to_dict("records")}))
    assert cli.main(["table", "ref", "--dir", str(tmp_path), "--by", "variant", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(io.StringIO(out)).set_index("variant")
    assert table.loc["baseline", "ref_test_error"] == pytest.approx(0.0504)
    assert table.loc["baseline", "diff_test_error"] == pytest.approx(0.053 - 0.0504)
    assert table.loc["cutout", "test_error_median"] == pytest.approx(0.043)


def test_the_report_summary_shows_the_reference_beside_the_medians():
    from analysis.report import summary_html
    frame = _frame()
    frame.attrs["reference"] = _reference(ROWS)
    html = summary_html(frame)
    assert "ref_test_error" in html and "diff_test_error" in html and "ours minus it" in html
    assert "0.0504" in html  # the baseline's published 5.04 %
    frame.attrs["reference"] = []
    assert "ref_test_error" not in summary_html(frame)
