"""Tables in the reference's form: one row per configuration, median and spread over seeds."""
from __future__ import annotations

import pandas as pd

SHOWN = ["val_error", "best_val_error", "test_error", "epochs_done", "duration_s"]


def trials_table(frame: pd.DataFrame, metric: str = "val_error", mode: str = "min") -> pd.DataFrame:
    """Every run, best first; failed and pruned runs last with their reason."""
    cols = ["trial", "seed", "state", *frame.attrs.get("params", []), *SHOWN, "error"]
    order = frame.assign(_done=frame["state"] != "complete").sort_values(
        ["_done", metric], ascending=[True, mode == "min"], na_position="last")
    return order[[c for c in cols if c in frame.columns]].reset_index(drop=True)


def summary(frame: pd.DataFrame, by: list[str] | None = None, metric: str = "test_error") -> pd.DataFrame:
    """Median and standard deviation over seeds of each configuration's complete runs.

    `by` defaults to every sampled parameter, so seeds of one config form a row.
    """
    by = list(by or frame.attrs.get("params", []))
    missing = [c for c in by if c not in frame.columns]
    if missing:
        known = ", ".join(c for c in frame.columns if c not in ("error",))
        raise KeyError(f"--by: no column {missing[0]!r}; fix: use one of {known}")
    done = frame[frame["state"] == "complete"]
    if not by:
        done = done.assign(config="all")
        by = ["config"]
    g = done.groupby(by, dropna=False)
    out = pd.DataFrame({
        "runs": g.size(),
        f"{metric}_median": g[metric].median(),
        f"{metric}_std": g[metric].std(),
        "val_error_median": g["val_error"].median(),
        "epochs": g["epochs_done"].median(),
        "duration_s": g["duration_s"].median(),
    }).reset_index()
    return out.sort_values(f"{metric}_median").reset_index(drop=True)


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    return table.to_markdown(index=False, floatfmt=".4g")
