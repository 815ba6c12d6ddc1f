"""The sweep over time and per epoch: optimisation history, learning curves, parameter importance."""
from __future__ import annotations

import importlib.util
import warnings

import optuna
import pandas as pd
import plotly.graph_objects as go

from ..status import _trial_state
from .base import (KINDS, FigureError, check_column, excluded_note, layout, mode_of, objective, params_of,
                   per_config, pick_metric, varied)


@KINDS.register("history")
def history(frame, metric=None, by=None):
    """Each trial's median objective by trial number, the best so far as a step line; others as x on top."""
    metric = pick_metric(frame, metric, prefer=objective(frame)[0])
    cfg = per_config(frame, metric).sort_values("trial")
    if cfg.empty:
        raise FigureError(f"history: no complete run has {metric}")
    best = cfg["median"].cummin() if mode_of(frame, metric) == "min" else cfg["median"].cummax()
    fig = go.Figure([
        go.Scatter(x=cfg["trial"], y=cfg["median"], mode="markers", name=f"{metric} (median over seeds)"),
        go.Scatter(x=cfg["trial"], y=best, mode="lines", line={"shape": "hv"}, name="best so far"),
    ])
    others = frame[~frame["trial"].isin(cfg["trial"])].groupby("trial").agg(
        state=("state", _trial_state), error=("error", lambda e: next((x for x in e if isinstance(x, str)), "")))
    if len(others):
        fig.add_trace(go.Scatter(
            x=others.index, y=[cfg["median"].max()] * len(others), mode="markers", name="no complete run",
            marker={"symbol": "x", "size": 9, "color": "gray"},
            hovertext=[f"{s}: {e}" if e else s for s, e in zip(others["state"], others["error"])]))
    return layout(fig, f"optimisation history ({metric})", "trial", metric)


def _sweep_curves(frame: pd.DataFrame) -> pd.DataFrame:
    from ..load import curves
    if "name" not in frame.attrs or "storage" not in frame.attrs:
        raise FigureError("curves needs the sweep's per-epoch records; fix: pass long=analysis.curves(NAME)")
    return curves(frame.attrs["name"], frame.attrs["storage"])


@KINDS.register("curves")
def learning_curves(frame, metric=None, by=None, long=None):
    """Per-epoch curves (val_error by default): a line per trial (median over its complete seeds),
    or with --by the median over the group's complete runs."""
    metric = metric or "val_error"
    long = _sweep_curves(frame) if long is None else long
    data = long[long["metric"] == metric]
    if data.empty:
        known = ", ".join(sorted(set(long["metric"]))) or "none recorded"
        raise FigureError(f"curves: no per-epoch {metric!r}; fix: --metric one of {known}")
    if by:
        check_column(frame, by)
    runs = frame[["trial", "seed", "state", *([by] if by and by not in ("trial", "seed", "state") else [])]]
    data = data.merge(runs, on=["trial", "seed"], how="inner")
    fig = go.Figure()
    if by:
        done = data[data["state"] == "complete"]
        for name, g in done.groupby(by, sort=True, dropna=False):
            m = g.groupby("epoch")["value"].median()
            fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines+markers", name=str(name)))
        excluded_note(fig, frame, None)
    else:
        for trial, g in data.groupby("trial", sort=True):
            done = g[g["state"] == "complete"]
            state = "complete" if len(done) else _trial_state(g["state"])
            m = (done if len(done) else g).groupby("epoch")["value"].median()
            fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines", name=f"trial {trial}"
                                     + ("" if state == "complete" else f" ({state})"),
                                     line={"dash": "solid" if state == "complete" else "dot"}))
    return layout(fig, f"learning curves ({metric})", "epoch", metric)


def _evaluator():
    # fANOVA needs scikit-learn; PED-ANOVA is Optuna's own and needs nothing more.
    if importlib.util.find_spec("sklearn") is not None:
        return optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"


def _importance_problem(frame: pd.DataFrame) -> str | None:
    names = [p for p in params_of(frame) if varied(frame, p)]
    if len(names) < 2:
        return (f"importance needs at least 2 parameters varied in the sweep, it has {len(names)} "
                f"({', '.join(names) or 'none'}); fix: add parameters to space:, or see --kind lr / ablation")
    trials = frame.loc[frame["state"] == "complete", "trial"].nunique()
    if trials < 2:
        return f"importance needs at least 2 complete trials, the sweep has {trials}; fix: run more trials"
    return None


@KINDS.register("importance", check=_importance_problem)
def importance(frame, metric=None, by=None, study=None):
    """Parameter importance from Optuna's evaluator on each configuration's median metric, as bars."""
    from ..load import open_study
    metric = pick_metric(frame, metric, prefer=objective(frame)[0])
    cfg = per_config(frame, metric)
    problem = _importance_problem(frame) or (
        None if len(cfg) >= 2 else f"importance needs at least 2 complete trials with {metric}, it has {len(cfg)}")
    if problem:
        raise FigureError(problem)
    if study is None:
        if "name" not in frame.attrs:
            raise FigureError("importance needs the sweep's study; fix: pass study=analysis.load.open_study(NAME)")
        study = open_study(frame.attrs["name"], frame.attrs.get("storage"))
    values = dict(zip(cfg["trial"], cfg["median"]))
    mode = mode_of(frame, metric)
    # A copy whose values are the frame's medians, so the metric may be any column and seeds count once.
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        copy = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
        copy.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                   value=values[t.number])
                         for t in study.get_trials(deepcopy=False) if t.number in values])
    finally:
        optuna.logging.set_verbosity(level)
    wanted = {p for p in params_of(frame) if varied(frame, p)}
    shared = set.intersection(*(set(t.params) for t in copy.trials)) if copy.trials else set()
    names = sorted(n for n in shared if n.split("[", 1)[0] in wanted)
    if len(names) < 2:
        raise FigureError(f"importance needs at least 2 varied parameters present in every complete trial, "
                          f"it has {names}")
    evaluator, label = _evaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(copy, evaluator=evaluator, params=names)
    order = sorted(scores, key=scores.get)
    fig = go.Figure(go.Bar(x=[scores[n] for n in order], y=order, orientation="h", name="importance"))
    return layout(fig, f"parameter importance for {metric} ({label}, {len(cfg)} trials)", "importance", "")
