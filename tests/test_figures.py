"""Figures from two tiny real Optuna sweeps (run once for the module) and from a frame built by hand."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import analysis
import sweeps
from analysis import figures
from analysis.figures import FigureError, kinds_for, plot
from analysis.figures.base import best_per, per_config
from analysis.figures.lines import lr_bins
from cli import main
from conftest import ROOT, tiny_spec
from search_spaces import load_spec


def _run(spec: dict, folder) -> tuple[pd.DataFrame, str]:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    loaded = load_spec(path)
    url = sweeps.resolve(loaded.name, None, folder / "runs", create=True)
    sweeps.run(loaded, url, quiet=True)
    return analysis.load(loaded, url), url


@pytest.fixture(scope="module")
def sweeps_done(tmp_path_factory):
    """`scaling`: batch size x optimizer x lr grid, 2 seeds, lr 1e8 diverges (12 trials, 24 runs).
    `ablation`: variants (one diverges) x epochs, 2 seeds (6 trials, 12 runs). About 15 s on 2 cores."""
    folder = tmp_path_factory.mktemp("figures")
    scaling = tiny_spec("scaling", seeds=2, space={
        "train.batch_size": {"grid": [32, 64]}, "optim.name": {"grid": ["sgd", "lars"]},
        "optim.lr": {"grid": [0.02, 0.05, 1.0e8]}})
    ablation = tiny_spec("ablation", seeds=2, sampler={"name": "grid"}, space={"train.epochs": {"grid": [1, 2]}},
                         variants={"baseline": {}, "smooth": {"augment.label_smoothing": 0.1},
                                   "diverge": {"optim.lr": 1.0e8}})
    del scaling["budget"], ablation["budget"]
    out = {"dir": folder / "runs"}
    for spec in (scaling, ablation):
        out[spec["name"]] = _run(spec, folder)
    return out


def _medians(frame, by, metric="test_error"):
    """The expected points, straight from pandas: per trial the median over complete seeds, then the best."""
    done = frame[(frame["state"] == "complete") & frame[metric].notna()]
    per_trial = done.groupby("trial").agg(median=(metric, "median"), **{b: (b, "first") for b in by})
    return per_trial.groupby(by)["median"].min()


def test_the_sweeps_have_failures_and_each_kind_that_fits_renders(sweeps_done):
    scaling, _ = sweeps_done["scaling"]
    ablation, _ = sweeps_done["ablation"]
    assert (scaling["state"] == "failed").any() and (ablation["state"] == "failed").any()
    assert kinds_for(scaling) == ["curves", "history", "importance", "lars_vs_sgd", "linear_scaling", "lr",
                                  "lr_batch", "parallel"]
    assert kinds_for(ablation) == ["ablation", "curves", "epochs", "history", "importance", "parallel"]
    for frame in (scaling, ablation):
        for kind in kinds_for(frame):
            fig = plot(kind, frame)
            assert len(fig.data) >= 1 and fig.layout.title.text, kind


def test_linear_scaling_and_lars_vs_sgd_points_are_pandas_medians(sweeps_done):
    frame, _ = sweeps_done["scaling"]
    fig = plot("linear_scaling", frame)
    expected = _medians(frame, ["train.batch_size"])
    assert len(fig.data) == 1 and list(fig.data[0].x) == [32, 64]
    assert np.allclose(fig.data[0].y, expected.loc[[32, 64]].values)
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals) == [32, 64]
    assert "failed" in fig.layout.annotations[0].text  # the diverged runs are named, not averaged

    fig = plot("lars_vs_sgd", frame)
    expected = _medians(frame, ["optim.name", "train.batch_size"])
    assert sorted(t.name for t in fig.data) == ["lars", "sgd"]
    for trace in fig.data:
        assert np.allclose(trace.y, [expected.loc[(trace.name, b)] for b in trace.x])
        assert all(np.asarray(trace.error_y.array) >= 0) and all(np.asarray(trace.error_y.arrayminus) >= 0)


def test_lr_batch_heatmap_cells_and_lr_scatter(sweeps_done):
    frame, _ = sweeps_done["scaling"]
    fig = plot("lr_batch", frame)
    expected = _medians(frame, ["optim.lr", "train.batch_size"])
    z = np.asarray(fig.data[0].z, dtype=float)
    assert list(fig.data[0].x) == ["32", "64"] and list(fig.data[0].y) == ["0.02", "0.05"]  # 1e8: no complete run
    for i, lr in enumerate([0.02, 0.05]):
        for j, batch in enumerate([32, 64]):
            assert z[i, j] == pytest.approx(expected.loc[(lr, batch)])

    fig = plot("lr", frame)
    lost = fig.data[-1]
    assert lost.name == "no test_error" and len(lost.x) == (frame["state"] == "failed").sum()
    has = frame["test_error"].notna().sum()
    assert sum(len(t.x) for t in fig.data[:-1]) == has and fig.layout.xaxis.type == "log"


def test_ablation_bars_sorted_with_the_failed_variant_marked(sweeps_done):
    frame, _ = sweeps_done["ablation"]
    fig = plot("ablation", frame)
    bars, lost = fig.data
    expected = _medians(frame, ["variant"]).sort_values()
    assert list(bars.x) == list(expected.index) and np.allclose(bars.y, expected.values)
    assert list(lost.x) == ["diverge"] and "failed" in lost.hovertext[0]
    fig = plot("ablation", frame, by="train.epochs", metric="val_error")
    assert len(fig.data[0].x) == 2 and np.allclose(sorted(fig.data[0].y),
                                                   _medians(frame, ["train.epochs"], "val_error").sort_values())


def test_epochs_curves_history_parallel_importance(sweeps_done):
    frame, _ = sweeps_done["ablation"]
    fig = plot("epochs", frame)
    expected = _medians(frame, ["variant", "train.epochs"])
    assert sorted(t.name for t in fig.data) == ["baseline", "smooth"]
    for trace in fig.data:
        assert list(trace.x) == [1, 2] and np.allclose(trace.y, [expected.loc[(trace.name, e)] for e in trace.x])

    long = analysis.curves("ablation", directory=sweeps_done["dir"])
    fig = plot("curves", frame, by="variant")
    val = long[long["metric"] == "val_error"].merge(frame[["trial", "seed", "state", "variant"]])
    want = val[val["state"] == "complete"].groupby(["variant", "epoch"])["value"].median()
    assert sorted(t.name for t in fig.data) == ["baseline", "smooth"]
    for trace in fig.data:
        assert np.allclose(trace.y, [want.loc[(trace.name, e)] for e in trace.x])
    assert len(plot("curves", frame).data) == val["trial"].nunique()

    fig = plot("history", frame)
    per_trial = frame[frame["state"] == "complete"].groupby("trial")["val_error"].median()
    assert np.allclose(fig.data[0].y, per_trial.values)
    assert np.allclose(fig.data[1].y, per_trial.cummin().values)
    assert list(fig.data[2].x) == sorted(frame.loc[frame["state"] == "failed", "trial"].unique())

    fig = plot("parallel", frame)
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["variant", "train.epochs", "median test_error"]
    assert len(dims[-1].values) == per_trial.size and list(dims[0].ticktext) == ["baseline", "smooth"]

    fig = plot("importance", frame)
    assert sorted(fig.data[0].y) == ["train.epochs", "variant"] and sum(fig.data[0].x) == pytest.approx(1)


def test_a_kind_that_does_not_fit_names_the_spec_key(sweeps_done):
    frame, _ = sweeps_done["scaling"]
    with pytest.raises(FigureError, match=r"epochs needs train.epochs varied in the sweep.*fix: add train.epochs"):
        plot("epochs", frame)
    with pytest.raises(FigureError, match="ablation needs variant varied.*variants: block"):
        plot("ablation", frame)
    with pytest.raises(FigureError, match="no metric 'nope'"):
        plot("linear_scaling", frame, metric="nope")
    with pytest.raises(KeyError, match="did you mean 'lr_batch'"):
        plot("lr_bach", frame)


def test_cli_writes_standalone_html_and_refuses_bad_kinds(sweeps_done, tmp_path, capsys):
    runs, out = str(sweeps_done["dir"]), tmp_path / "fig.html"
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "plot", "scaling", "--dir", runs,
                           "--kind", "lars_vs_sgd", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    html = out.read_text()
    assert "plotly.js v" in html and not re.search(r"<script[^>]*src=[\"'][^\"']*cdn\.plot\.ly", html)

    assert main(["plot", "scaling", "--dir", runs, "--kind", "linear_scalin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'linear_scaling'" in err and "importance" in err
    assert main(["plot", "ablation", "--dir", runs, "--kind", "lars_vs_sgd"]) == 2
    assert "lars_vs_sgd needs train.batch_size varied" in capsys.readouterr().err


def test_cli_draws_a_figure_as_png(sweeps_done, tmp_path, capsys):
    pytest.importorskip("kaleido", reason="kaleido draws still images (pip install kaleido)")
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("kaleido draws with Chromium, which is not installed (apt-get install chromium)")
    png = tmp_path / "fig.png"
    assert main(["plot", "scaling", "--dir", str(sweeps_done["dir"]), "--kind", "linear_scaling",
                 "--out", str(png)]) == 0, capsys.readouterr().err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000  # drawn, not blank


# ---- a frame built by hand: the aggregation math ---------------------------------------------

def hand_frame() -> pd.DataFrame:
    rows = [  # trial, seed, state, batch, variant, lr, test_error
        (0, 0, "complete", 64, "a", 0.1, 0.30), (0, 1, "complete", 64, "a", 0.1, 0.20),
        (0, 2, "complete", 64, "a", 0.1, 0.28),
        (1, 0, "complete", 64, "a", 0.01, 0.40), (1, 1, "pruned", 64, "a", 0.01, 0.01),  # pruned: left out
        (2, 0, "complete", 128, "a", 0.1, 0.50), (2, 1, "failed", 128, "a", 0.1, np.nan),
        (3, 0, "complete", 64, "b", 0.1, 0.10), (3, 1, "complete", 64, "b", 0.1, 0.14),
        (4, 0, "failed", 128, "b", 0.1, np.nan), (4, 1, "failed", 128, "b", 0.1, np.nan),
    ]
    frame = pd.DataFrame(rows, columns=["trial", "seed", "state", "train.batch_size", "variant", "optim.lr",
                                        "test_error"])
    frame["error"] = None
    frame.attrs["params"] = ["train.batch_size", "variant", "optim.lr"]
    return frame


def test_per_config_and_best_per_group_by_hand():
    frame = hand_frame()
    cfg = per_config(frame, "test_error").set_index("trial")
    assert cfg.loc[0, "median"] == pytest.approx(0.28) and cfg.loc[0, "runs"] == 3
    assert (cfg.loc[0, "lo"], cfg.loc[0, "hi"]) == pytest.approx((0.20, 0.30))
    assert cfg.loc[1, "median"] == pytest.approx(0.40)  # not 0.205: the pruned seed is excluded
    assert cfg.loc[2, "runs"] == 1 and 4 not in cfg.index
    std = per_config(frame, "test_error", spread="std").set_index("trial")
    assert std.loc[3, "hi"] - std.loc[3, "median"] == pytest.approx(np.std([0.10, 0.14], ddof=1))
    best = best_per(frame, ["variant", "train.batch_size"], "test_error")
    assert best[["variant", "train.batch_size", "trial"]].values.tolist() == [["a", 64, 0], ["a", 128, 2],
                                                                              ["b", 64, 3]]
    fig = plot("linear_scaling", frame)
    a, b = fig.data
    assert (a.name, list(a.x), list(a.y)) == ("a", [64, 128], [pytest.approx(0.28), pytest.approx(0.50)])
    assert (b.name, list(b.x), list(b.y)) == ("b", [64], [pytest.approx(0.12)])
    assert list(a.error_y.array) == pytest.approx([0.02, 0.0]) and list(a.error_y.arrayminus) == pytest.approx(
        [0.08, 0.0])
    assert fig.layout.annotations[0].text == "excluded: 3 failed, 1 pruned runs"
    bars = plot("ablation", frame).data[0]
    assert list(bars.x) == ["b", "a"] and list(bars.y) == [pytest.approx(0.12), pytest.approx(0.28)]


def test_lr_bins_and_the_kinds_a_frame_fits():
    lr = pd.Series(10.0 ** np.linspace(-4, 0, 40))
    binned = lr_bins(lr, bins=4)
    assert binned.nunique() == 4 and binned.is_monotonic_increasing
    assert binned.iloc[0] == pytest.approx(10 ** -3.5) and binned.iloc[-1] == pytest.approx(10 ** -0.5)
    assert lr_bins(pd.Series([0.1, 0.01, 0.1])).tolist() == [0.1, 0.01, 0.1]  # a grid stays as it is
    with_zero = lr_bins(pd.concat([pd.Series([0.0, np.nan]), lr]), bins=4)
    assert with_zero.iloc[0] == 0 and np.isnan(with_zero.iloc[1]) and with_zero.iloc[2:].nunique() == 4
    frame = hand_frame()
    assert kinds_for(frame) == ["ablation", "curves", "history", "importance", "linear_scaling", "lr",
                                "lr_batch", "parallel"]
    one = frame.assign(variant="a", **{"train.batch_size": 64})
    with pytest.raises(FigureError, match=r"importance needs at least 2 parameters varied.*\(optim.lr\)"):
        plot("importance", one)
    with pytest.raises(FigureError, match="at least 2 complete trials, the sweep has 1"):
        plot("importance", frame[frame["trial"].isin([0, 4])])
    with pytest.raises(FigureError, match="no complete run yet"):
        plot("history", frame[frame["state"] == "failed"])
    assert figures.problem(figures.KINDS.get("lr"), frame) is None
    frame.loc[frame["trial"] == 1, "optim.lr"] = 0.0
    fig = plot("lr", frame)
    assert "2 runs with optim.lr <= 0" in fig.layout.annotations[0].text
    assert sum(len(t.x) for t in fig.data) == len(frame) - 2


def test_a_list_valued_parameter_groups_and_draws(tmp_path):
    # A fixed list under when: (the architectures cpu preset sets VGG's stage widths this way) reached
    # the frame as a Python list, which pandas cannot hash: counting or grouping by it raised TypeError.
    spec = tiny_spec("widths", sampler={"name": "grid"}, space={
        "model.name": {"grid": ["resnet_preact", "vgg"]},
        "model.stage_channels": {"fixed": [4, 8], "when": {"model.name": "vgg"}},
        "model.stage_layers": {"fixed": [1, 1], "when": {"model.name": "vgg"}},
        "model.depth": {"fixed": 8, "when": {"model.name": "resnet_preact"}},
        "model.base_channels": {"fixed": 4, "when": {"model.name": "resnet_preact"}}})
    spec["base"]["model"] = {}
    del spec["budget"]
    frame, _ = _run(spec, tmp_path)
    assert (frame["state"] == "complete").all()
    assert frame.groupby("model.stage_channels")["model.name"].agg(set).to_dict() == {(4, 8): {"vgg"}}
    assert {"parallel", "history"} <= set(kinds_for(frame))
    dims = plot("parallel", frame).data[0].dimensions
    assert dims[0].label == "model.name" and list(dims[0].ticktext) == ["resnet_preact", "vgg"]
    assert [b for b in plot("ablation", frame, by="model.name").data[0].x] in (["resnet_preact", "vgg"],
                                                                               ["vgg", "resnet_preact"])


def test_parallel_draws_configurations_without_a_conditional_parameter():
    # plotly's parcoords drops any line with a missing value, so in a conditional space (a parameter
    # only some configurations have) it drew no line at all; the missing values now sit at "-".
    frame = hand_frame()
    frame["model.drop_path"] = np.where(frame["variant"] == "a", np.nan, 0.1 + 0.01 * frame["trial"])
    frame.attrs["params"] = [*frame.attrs["params"], "model.drop_path"]
    dims = {d.label: d for d in plot("parallel", frame).data[0].dimensions}
    drop = dims["model.drop_path"]
    assert not np.isnan(np.asarray(drop.values, dtype=float)).any()
    assert drop.ticktext[0] == "-" and min(drop.values) == drop.tickvals[0] < 0.1
    assert sum(v == drop.tickvals[0] for v in drop.values) == 3  # trials 0-2 (variant a) lack it
    assert list(dims["optim.lr"].values) == pytest.approx([0.1, 0.01, 0.1, 0.1])  # none missing: as it was
    assert dims["optim.lr"].tickvals is None
