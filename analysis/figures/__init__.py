"""Plotly figures of a finished sweep, by kind name: `plot(kind, frame)` and `kinds_for(frame)`.

Every kind draws from `analysis.load`'s frame (curves also from `analysis.curves`, importance
from the sweep's Optuna study); a kind registers itself with the columns it needs varied.
"""
from __future__ import annotations

import importlib
import pkgutil

import pandas as pd
import plotly.graph_objects as go

from .base import KINDS, FigureError, Kind, check_column, need

for _module in pkgutil.iter_modules(__path__):  # each file registers its kinds on import
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "FigureError", "plot", "kinds_for", "problem", "save", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".svg", ".pdf")  # drawn by kaleido in a headless Chromium


def problem(kind: Kind, frame: pd.DataFrame, by: str | None = None) -> str | None:
    """Why `kind` does not fit this sweep (one line), or None when it does."""
    if not (frame["state"] == "complete").any():
        return f"{kind.name}: the sweep has no complete run yet"
    if by:
        check_column(frame, by)
    for col in kind.needs + ((kind.by,) if kind.by and not by else ()):
        try:
            need(kind.name, frame, col)
        except FigureError as e:
            return str(e)
    return kind.check(frame) if kind.check else None


def plot(kind: str, frame: pd.DataFrame, metric: str | None = None, by: str | None = None,
         **options) -> go.Figure:
    """The figure `kind` of a sweep's frame; FigureError (saying which spec key is missing) if it does not fit."""
    k = KINDS.get(kind)
    reason = problem(k, frame, by)
    if reason:
        raise FigureError(reason)
    return k.draw(frame, metric=metric, by=by, **options)


def kinds_for(frame: pd.DataFrame) -> list[str]:
    """The kinds this sweep can draw with their defaults (e.g. linear_scaling only if batch size varies)."""
    return [name for name in KINDS.names() if problem(KINDS.get(name), frame) is None]


def save(fig: go.Figure, out) -> None:
    """Write a figure by the file's suffix: a still image (IMAGE_SUFFIXES; needs kaleido and
    Chromium, raising ImportError, ValueError or RuntimeError without them), else a standalone
    HTML file with plotly.js inline, so it opens offline."""
    from pathlib import Path
    if Path(out).suffix.lower() in IMAGE_SUFFIXES:
        fig.write_image(out, width=900, height=520)
    else:
        fig.write_html(out, include_plotlyjs=True, full_html=True)
