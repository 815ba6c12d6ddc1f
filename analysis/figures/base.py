"""What every figure shares: the kind registry, column checks, and the one aggregation rule.

The rule: a configuration is a trial; its value is the median over its complete seeds,
its whiskers their min/max (or std). Where several configurations share a point of a
figure (a random lr at one batch size), the point shows the best of them, as a tuned
comparison does. Failed, pruned and running runs never enter a median.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from sweeps.storage import ResultsError, UnknownResult

from ..load import META, METRICS


class FigureError(ResultsError, ValueError):
    """A figure that cannot be drawn from this sweep; the message says which key would fix it."""


@dataclass(frozen=True)
class Kind:
    name: str
    draw: Callable[..., go.Figure]
    needs: tuple[str, ...]  # columns that must vary in the sweep
    by: str | None           # the column lines/bars are grouped by when --by is not given, if it must vary
    check: Callable[[pd.DataFrame], str | None] | None  # any other condition: a reason, or None
    help: str


class Kinds:
    """Figure kinds by name. `register` refuses duplicates; a miss names the closest kind."""

    def __init__(self):
        self.items: dict[str, Kind] = {}

    def register(self, name: str, needs: tuple[str, ...] = (), by: str | None = None, check=None):
        def add(fn):
            if name in self.items:
                raise ValueError(f"figure kind {name!r} registered twice")
            doc = (fn.__doc__ or "").strip().splitlines()
            self.items[name] = Kind(name, fn, tuple(needs), by, check, doc[0] if doc else "")
            return fn
        return add

    def get(self, name: str) -> Kind:
        if name not in self.items:
            close = difflib.get_close_matches(str(name), self.items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownResult(f"--kind: unknown figure kind {name!r}{hint}; known: {', '.join(self.names())}")
        return self.items[name]

    def names(self) -> list[str]:
        return sorted(self.items)


KINDS = Kinds()

# What to add to a spec so a column varies (shown in the error when it does not).
HINTS = {
    "train.batch_size": "train.batch_size: {grid: [128, 256, 512]} under space:",
    "optim.lr": "optim.lr: {loguniform: [1.0e-3, 1.0]} under space:",
    "optim.name": "optim.name: {grid: [sgd, lars]} under space:",
    "train.epochs": "train.epochs: {grid: [100, 200, 400]} under space:",
    "variant": "a variants: block (variants: {baseline: {}, cutout: {augment.cutout.size: 16}})",
}


def params_of(frame: pd.DataFrame) -> list[str]:
    """The sampled parameters: from load()'s attrs, or every column that is not a run field."""
    known = frame.attrs.get("params")
    if known is not None:
        return [p for p in known if p in frame.columns]
    return [c for c in frame.columns if c not in META + METRICS]


def varied(frame: pd.DataFrame, col: str) -> bool:
    return col in frame.columns and frame[col].dropna().nunique() >= 2


def need(kind: str, frame: pd.DataFrame, col: str) -> None:
    """Raise a FigureError unless `col` varies in the sweep, naming the spec key that would add it."""
    if varied(frame, col):
        return
    has = "is not in the sweep" if col not in frame.columns else \
        f"has one value, {frame[col].dropna().iloc[0]!r}" if frame[col].notna().any() else "has no value"
    hint = HINTS.get(col, f"{col}: {{grid: [...]}} under space:")
    raise FigureError(f"{kind} needs {col} varied in the sweep ({col} {has}); fix: add {hint}")


def objective(frame: pd.DataFrame) -> tuple[str, str]:
    obj = frame.attrs.get("spec", {}).get("objective") or {}
    return obj.get("metric", "val_error"), obj.get("mode", "min")


def pick_metric(frame: pd.DataFrame, metric: str | None, prefer: str = "test_error") -> str:
    """The metric asked for (checked), else `prefer` when any complete run has it, else the objective's."""
    if metric:
        if metric not in frame.columns or not pd.api.types.is_numeric_dtype(frame[metric]):
            numeric = [c for c in METRICS if c in frame.columns and c != "error"]
            raise FigureError(f"no metric {metric!r}; fix: --metric one of {', '.join(numeric)}")
        return metric
    if prefer in frame.columns and complete(frame, prefer)[prefer].notna().any():
        return prefer
    return objective(frame)[0]


def mode_of(frame: pd.DataFrame, metric: str) -> str:
    """Lower is better for errors and losses; the objective's mode for its own metric."""
    name, mode = objective(frame)
    return mode if metric == name else "min"


def complete(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The runs that enter aggregates: complete, with a value of `metric`."""
    return frame[(frame["state"] == "complete") & frame[metric].notna()]


def per_config(frame: pd.DataFrame, metric: str, spread: str = "minmax", extra: tuple = ()) -> pd.DataFrame:
    """One row per trial (a configuration): its parameters (and `extra` columns), the median over
    its complete seeds, lo/hi (min/max or median -/+ std) and runs."""
    done = complete(frame, metric)
    g = done.groupby("trial")[metric]
    out = pd.DataFrame({"median": g.median(), "runs": g.size()})
    if spread == "std":
        std = g.std().fillna(0.0)
        out["lo"], out["hi"] = out["median"] - std, out["median"] + std
    elif spread == "minmax":
        out["lo"], out["hi"] = g.min(), g.max()
    else:
        raise FigureError(f"unknown spread {spread!r}; fix: use minmax or std")
    cols = list(dict.fromkeys([*params_of(frame), *extra]))
    params = done.drop_duplicates("trial").set_index("trial")[cols]
    return out.join(params).reset_index()


def best_per(frame: pd.DataFrame, by: list[str], metric: str, mode: str = "min",
             spread: str = "minmax") -> pd.DataFrame:
    """Per group of `by`, the configuration with the best median (its row of per_config)."""
    cfg = per_config(frame, metric, spread, extra=tuple(by))
    if cfg.empty:
        return cfg
    if not by:
        cfg, by = cfg.assign(_all="all"), ["_all"]
    idx = cfg.groupby(by, dropna=False)["median"].agg("idxmin" if mode == "min" else "idxmax")
    return cfg.loc[idx.values].sort_values(by).reset_index(drop=True)


def check_column(frame: pd.DataFrame, col: str) -> None:
    if col not in frame.columns:
        known = ", ".join(c for c in frame.columns if c != "error")
        raise FigureError(f"--by: no column {col!r}; fix: use one of {known}")


def default_group(frame: pd.DataFrame, by: str | None) -> str | None:
    """--by if given (checked), else `variant` when the sweep has variants, else no grouping."""
    if by:
        check_column(frame, by)
        return by
    return "variant" if varied(frame, "variant") else None


def config_text(row: pd.Series, params: list[str], skip: tuple[str, ...] = ()) -> str:
    shown = [f"{p}={_fmt(row[p])}" for p in params if p not in skip and p in row and not _missing(row[p])]
    return f"trial {int(row['trial'])}, {int(row['runs'])} runs" + ("<br>" + "<br>".join(shown) if shown else "")


def excluded_note(fig: go.Figure, frame: pd.DataFrame, metric: str | None) -> go.Figure:
    """Say how many runs stayed out of the medians and why (failed, pruned, running, no value)."""
    out = frame[(frame["state"] != "complete") | (frame[metric].isna() if metric else False)]
    if len(out):
        counts = out["state"].where(out["state"] != "complete", "no value").value_counts()
        text = "excluded: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " runs"
        fig.add_annotation(text=text, xref="paper", yref="paper", x=1, y=1.06, showarrow=False,
                           xanchor="right", font={"size": 11, "color": "gray"})
    return fig


def layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      legend_title_text="", hovermode="closest")
    return fig


def log2_axis(fig: go.Figure, values) -> None:
    """A log axis ticked at the values themselves (powers of two read as 64, 128, ...)."""
    ticks = sorted({v for v in values if not _missing(v)})
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[_fmt(v) for v in ticks])


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
