"""Configurations side by side: ablation bars and parallel coordinates."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .base import (KINDS, FigureError, best_per, check_column, config_text, excluded_note, layout, mode_of,
                   params_of, per_config, pick_metric, varied)
from .lines import whiskers


@KINDS.register("ablation", by="variant")
def ablation(frame, metric=None, by=None, spread="minmax"):
    """Bars of the median error per variant (or --by column), sorted, with the seeds' spread."""
    by = by or "variant"
    check_column(frame, by)
    metric = pick_metric(frame, metric)
    mode = mode_of(frame, metric)
    bars = best_per(frame, [by], metric, mode, spread)
    if bars.empty:
        raise FigureError(f"ablation: no complete run has {metric}")
    bars = bars.sort_values("median", ascending=mode == "min")
    fig = go.Figure(go.Bar(
        x=[str(v) for v in bars[by]], y=bars["median"], error_y=whiskers(bars), name=metric,
        hovertext=[config_text(r, params_of(frame), skip=(by,)) for _, r in bars.iterrows()]))
    # Groups with no complete run (every seed failed or was pruned) still get a mark, after the bars.
    lost = [v for v in frame[by].dropna().unique() if v not in set(bars[by])]
    if lost:
        why = frame[frame[by].isin(lost)].groupby(by)["state"].agg(lambda s: ", ".join(sorted(set(s))))
        fig.add_trace(go.Scatter(x=[str(v) for v in lost], y=[0] * len(lost), mode="markers",
                                 name="no complete run", marker={"symbol": "x", "size": 12, "color": "gray"},
                                 hovertext=[why[v] for v in lost]))
    fig.update_xaxes(type="category")
    layout(fig, f"{metric} by {by}", by, f"{metric} (median over seeds)")
    return excluded_note(fig, frame, metric)


def _axis(values: pd.Series, name: str) -> dict:
    """A parallel-coordinates axis: categories as ticked codes, lr-like ranges as log10.

    A parameter a configuration does not have (a conditional one, inactive) shows as "-": plotly
    drops every line with a missing value, so a conditional space would otherwise draw no line.
    """
    if not pd.api.types.is_numeric_dtype(values):
        labels = values.astype(str).where(values.notna(), "-")
        cats = sorted(set(labels))
        return {"label": name, "values": labels.map(cats.index), "tickvals": list(range(len(cats))),
                "ticktext": cats}
    v = values.astype(float)
    present = v.dropna()
    if (present > 0).all() and present.max() / present.min() >= 100:
        v, name = np.log10(v), f"log10({name})"
    if not v.isna().any():
        return {"label": name, "values": v}
    lo, hi = v.min(), v.max()
    missing = lo - 0.2 * ((hi - lo) or 1.0)  # below the axis's range, with a tick of its own
    ticks = list(np.linspace(lo, hi, 5)) if hi > lo else [lo]
    return {"label": name, "values": v.fillna(missing), "tickvals": [missing] + ticks,
            "ticktext": ["-"] + [f"{t:.3g}" for t in ticks]}


def _varied_params(frame):
    return [p for p in params_of(frame) if varied(frame, p)]


@KINDS.register("parallel", check=lambda f: None if _varied_params(f) else "parallel: no parameter varies")
def parallel(frame, metric=None, by=None):
    """Parallel coordinates: each configuration's sampled parameters and its median error."""
    metric = pick_metric(frame, metric)
    cfg = per_config(frame, metric)
    if cfg.empty:
        raise FigureError(f"parallel: no complete run has {metric}")
    dims = [_axis(cfg[p], p) for p in _varied_params(frame)]
    dims.append({"label": f"median {metric}", "values": cfg["median"]})
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": cfg["median"], "colorscale": "Viridis", "showscale": True,
              "reversescale": mode_of(frame, metric) == "min"}))
    fig.update_layout(title=f"sampled parameters and {metric} ({len(cfg)} configurations)", template="plotly_white")
    return excluded_note(fig, frame, metric)
