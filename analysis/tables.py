"""Tables in the reference's form: one row per configuration, median and spread over seeds."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import pandas as pd

from sweeps.storage import UnknownResult

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
        raise UnknownResult(f"--by: no column {missing[0]!r}; fix: use one of {known}")
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


def with_reference(table: pd.DataFrame, reference) -> pd.DataFrame:
    """The summary with the published results beside ours: `ref_<metric>` and
    `diff_<metric>` (ours minus the reference) after each `<metric>_median` the rows
    give, and `ref_epochs` after `epochs` where they give it.

    `reference` is the stored rows (the `reference` attr of `analysis.load`'s frame)
    or a spec's Reference rows. Every value is a fraction, like our errors: specs
    write them in percent and the loader divides by 100. A table row gets the one
    reference row whose identifying columns (e.g. `variant`) it shows with the same
    values; none when no row or several rows fit.
    """
    rows = [r if isinstance(r, Mapping) else r.as_dict() for r in reference or ()]
    if not rows or table.empty:
        return table
    fits = [_fitting(row, rows) for row in table.to_dict("records")]
    out = table.copy()
    for metric in dict.fromkeys(m for r in rows for m in r["metrics"]):
        ours = f"{metric}_median"
        if ours not in out.columns:
            continue
        ref = pd.to_numeric(pd.Series([(f or {}).get("metrics", {}).get(metric) for f in fits], index=out.index))
        after = out.columns.get_loc(f"{metric}_std" if f"{metric}_std" in out.columns else ours) + 1
        out.insert(after, f"ref_{metric}", ref)
        out.insert(after + 1, f"diff_{metric}", out[ours] - ref)
    epochs = [(f or {}).get("epochs") for f in fits]
    if any(e is not None for e in epochs) and "epochs" in out.columns:
        ref_epochs = pd.to_numeric(pd.Series(epochs, index=out.index))
        out.insert(out.columns.get_loc("epochs") + 1, "ref_epochs", ref_epochs)
    return out


def _fitting(row: dict, references: list[dict]) -> dict | None:
    fit = [r for r in references if all(k in row and _same(row[k], v) for k, v in r["match"].items())]
    return fit[0] if len(fit) == 1 else None


def _same(ours, theirs) -> bool:
    """Equal, with numbers compared as numbers (a frame's 128 may be 128.0)."""
    if all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in (ours, theirs)):
        return math.isclose(float(ours), float(theirs), rel_tol=1e-9)
    return ours == theirs


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    return table.to_markdown(index=False, floatfmt=".4g")
