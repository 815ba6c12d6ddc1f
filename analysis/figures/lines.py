"""Error against one swept quantity: batch size, optimizer, training length, learning rate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .base import (KINDS, FigureError, best_per, check_column, config_text, default_group, excluded_note,
                   layout, log2_axis, mode_of, params_of, pick_metric)


def whiskers(points: pd.DataFrame) -> dict:
    return {"type": "data", "symmetric": False, "array": points["hi"] - points["median"],
            "arrayminus": points["median"] - points["lo"]}


def lines(kind: str, frame: pd.DataFrame, x: str, by: str | None, metric: str | None, spread: str,
          title: str) -> go.Figure:
    """One line per group of `by`: at each x the best configuration's median over seeds, with whiskers."""
    metric = pick_metric(frame, metric)
    points = best_per(frame, [x, *([by] if by else [])], metric, mode_of(frame, metric), spread)
    if points.empty:
        raise FigureError(f"{kind}: no complete run has {metric}")
    params = params_of(frame)
    fig = go.Figure()
    for name, g in (points.groupby(by, sort=True, dropna=False) if by else [(metric, points)]):
        g = g.sort_values(x)
        fig.add_trace(go.Scatter(
            x=g[x], y=g["median"], mode="lines+markers", name=str(name), error_y=whiskers(g),
            hovertext=[config_text(r, params, skip=(x, by)) for _, r in g.iterrows()], hoverinfo="x+y+text"))
    layout(fig, title, x, f"{metric} (median over seeds)")
    return excluded_note(fig, frame, metric)


@KINDS.register("linear_scaling", needs=("train.batch_size",))
def linear_scaling(frame, metric=None, by=None, spread="minmax"):
    """Error vs batch size (log2 axis), a line per --by group (default: variant, if the spec has variants)."""
    fig = lines("linear_scaling", frame, "train.batch_size", default_group(frame, by), metric, spread,
                "error vs batch size")
    log2_axis(fig, frame["train.batch_size"])
    return fig


@KINDS.register("lars_vs_sgd", needs=("train.batch_size",), by="optim.name")
def lars_vs_sgd(frame, metric=None, by=None, spread="minmax"):
    """Error vs batch size, a line per optimizer (optim.name), each at its best learning rate."""
    by = by or "optim.name"
    check_column(frame, by)
    fig = lines("lars_vs_sgd", frame, "train.batch_size", by, metric, spread, f"error vs batch size by {by}")
    log2_axis(fig, frame["train.batch_size"])
    return fig


@KINDS.register("epochs", needs=("train.epochs",))
def epochs(frame, metric=None, by=None, spread="minmax"):
    """Error vs training length (train.epochs), a line per --by group (default: variant)."""
    return lines("epochs", frame, "train.epochs", default_group(frame, by), metric, spread,
                 "error vs training length")


def lr_bins(lr: pd.Series, bins: int = 6) -> pd.Series:
    """Each lr as itself when there are at most `bins` values (a grid), else the geometric centre of
    its bin among `bins` equal bins of log10(lr); an lr of 0 (or below) stays as it is."""
    values = lr.to_numpy(dtype=float, copy=True)
    positive = values > 0  # NaN and 0 stay as they are
    if lr.nunique() <= bins or len(np.unique(values[positive])) < 2:
        return pd.Series(values, index=lr.index)
    logs = np.log10(values[positive])
    edges = np.linspace(logs.min(), logs.max(), bins + 1)
    centres = 10 ** ((edges[:-1] + edges[1:]) / 2)
    values[positive] = centres[np.clip(np.digitize(logs, edges[1:-1]), 0, bins - 1)]
    return pd.Series(values, index=lr.index)


@KINDS.register("lr_batch", needs=("optim.lr", "train.batch_size"))
def lr_batch(frame, metric=None, by=None, spread="minmax", bins=6):
    """Heatmap of the median error over (optim.lr, train.batch_size); a continuous lr is binned on a log scale."""
    metric = pick_metric(frame, metric)
    binned = frame.assign(lr_bin=lr_bins(frame["optim.lr"], bins))
    cells = best_per(binned, ["lr_bin", "train.batch_size"], metric, mode_of(frame, metric), spread)
    if cells.empty:
        raise FigureError(f"lr_batch: no complete run has {metric}")
    z = cells.pivot(index="lr_bin", columns="train.batch_size", values="median")
    text = cells.assign(t=[config_text(r, params_of(frame)) for _, r in cells.iterrows()]).pivot(
        index="lr_bin", columns="train.batch_size", values="t")
    fig = go.Figure(go.Heatmap(
        z=z.values, x=[str(b) for b in z.columns], y=[f"{v:.3g}" for v in z.index], hovertext=text.values,
        colorscale="Viridis", reversescale=mode_of(frame, metric) == "min", texttemplate="%{z:.3f}",
        colorbar={"title": {"text": f"median {metric}"}}))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    binned_note = "" if frame["optim.lr"].nunique() <= bins else " (lr binned on a log scale)"
    layout(fig, f"{metric}: learning rate x batch size{binned_note}", "train.batch_size", "optim.lr")
    return excluded_note(fig, frame, metric)


@KINDS.register("lr", needs=("optim.lr",))
def lr(frame, metric=None, by=None):
    """Every run's error vs optim.lr (log axis), colored by state or --by; runs without a value on top as x."""
    metric = pick_metric(frame, metric)
    color = by or "state"
    check_column(frame, color)
    runs = frame[frame["optim.lr"] > 0]  # a log axis has no place for lr 0 (and NaN is a conditional lr)
    has, lost = runs[runs[metric].notna()], runs[runs[metric].isna()]
    fig = go.Figure()
    for name, g in has.groupby(color, sort=True, dropna=False):
        fig.add_trace(go.Scatter(x=g["optim.lr"], y=g[metric], mode="markers", name=str(name),
                                 hovertext=[f"trial {t}, seed {s}" for t, s in zip(g["trial"], g["seed"])]))
    if len(lost):
        top = has[metric].max() if len(has) else 1.0
        fig.add_trace(go.Scatter(
            x=lost["optim.lr"], y=[top] * len(lost), mode="markers", name=f"no {metric}",
            marker={"symbol": "x", "color": "gray", "size": 9},
            hovertext=[f"trial {t} {s}: {e if isinstance(e, str) else ''}"
                       for t, s, e in zip(lost["trial"], lost["state"], lost["error"])]))
    fig.update_xaxes(type="log")
    zero = int((frame["optim.lr"] <= 0).sum())
    if zero:
        fig.add_annotation(text=f"not on the log axis: {zero} runs with optim.lr <= 0", xref="paper",
                           yref="paper", x=0, y=1.06, showarrow=False, xanchor="left")
    return layout(fig, f"{metric} vs learning rate", "optim.lr", metric)
