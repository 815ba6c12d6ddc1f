"""A sweep as one self-contained HTML file: spec, status, best trials, tables, failures, figures.

plotly.js is inlined once in the page head; every figure is a div drawn with it, so the
file opens offline and makes no request.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.offline
import yaml

from sweeps import record
from sweeps.storage import DEFAULT_DIR, ResultsError

from . import figures
from .figures.base import objective, per_config, varied
from .load import load, open_study, sweep_name
from .status import _trial_state
from .tables import summary, trials_table, with_reference

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sweep {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; }}
.figure {{ margin: 1.5em 0; }}
.note {{ color: #666; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body data-figures="{count}">
<h1>sweep {name}</h1>
<p class="status">{status}</p>
{sections}
</body>
</html>
"""

SECTION = '<section id="{id}">\n<h2>{title}</h2>\n{body}\n</section>'


class ReportError(ResultsError, ValueError):
    """A sweep that cannot be reported (it has no trials yet); the message says what to do."""


def report(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR,
           top: int = 10) -> tuple[str, int]:
    """The report's HTML and how many figures it draws."""
    frame = load(name_or_spec, storage, directory)
    name = frame.attrs["name"]
    if frame.empty:
        raise ReportError(f"sweep {name!r} has no trials yet; fix: run `sweep run SPEC` first")
    engine = open_study(name, frame.attrs["storage"]).user_attrs.get(record.ENGINE, "optuna")
    drawn, skipped = figure_divs(frame)
    sections = [
        section("spec", "Spec", f"<pre>{esc(yaml.safe_dump(frame.attrs['spec'], sort_keys=False))}</pre>"),
        section("best", f"Best {top} trials", table_html(best_trials(frame, top))),
        section("summary", "Summary", summary_html(frame)),
        section("failures", "Failed runs", failures_html(frame)),
        section("figures", "Figures", "\n".join(drawn) + skipped_html(skipped)),
        section("trials", "Every run", f"<details><summary>{len(frame)} runs</summary>\n"
                + table_html(trials_table(frame, *objective(frame))) + "\n</details>"),
    ]
    page = PAGE.format(name=esc(name), status=esc(status_line(frame, engine)), count=len(drawn),
                       sections="\n".join(sections), plotlyjs=plotly.offline.get_plotlyjs())
    return page, len(drawn)


def write(name_or_spec, out: str | Path | None = None, storage: str | None = None,
          directory: str | Path = DEFAULT_DIR, top: int = 10) -> Path:
    """Write the report (default DIR/NAME-report.html) and return its path."""
    page, _ = report(name_or_spec, storage, directory, top)
    path = Path(out or Path(directory) / f"{sweep_name(name_or_spec)}-report.html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise CannotWrite(f"cannot write the report {path}: {e.strerror or e}; "
                          "fix: pass --out a file in a folder you can write") from None
    return path


class CannotWrite(ResultsError):
    """The report (or a figure) cannot be written where it was asked for."""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def section(id_: str, title: str, body: str) -> str:
    return SECTION.format(id=id_, title=esc(title), body=body)


def status_line(frame: pd.DataFrame, engine: str) -> str:
    """'N trials (M runs) on ENGINE: complete a, pruned b, failed c'."""
    counts = frame.groupby("trial")["state"].agg(_trial_state).value_counts()
    states = ", ".join(f"{state} {int(counts.get(state, 0))}"
                       for state in ["complete", "pruned", "failed", *sorted(set(counts.index) -
                                                                              {"complete", "pruned", "failed"})])
    return f"{frame['trial'].nunique()} trials ({len(frame)} runs) on {engine}: {states}"


def best_trials(frame: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` configurations by the objective (median over complete seeds), with test_error's
    median beside it and their parameters."""
    metric, mode = objective(frame)
    cfg = per_config(frame, metric)
    if cfg.empty:
        return cfg
    cfg = cfg.sort_values("median", ascending=mode == "min").head(top)
    shown = {"median": f"{metric} (median)"}
    if metric != "test_error" and frame["test_error"].notna().any():
        test = frame[frame["state"] == "complete"].groupby("trial")["test_error"].median()
        cfg["test_error (median)"] = cfg["trial"].map(test)
        shown["test_error (median)"] = "test_error (median)"
    params = [p for p in frame.attrs.get("params", []) if p in cfg.columns and cfg[p].notna().any()]
    return cfg.rename(columns=shown)[["trial", "runs", *shown.values(), *params]]


def grouping(frame: pd.DataFrame) -> list[str] | None:
    """The sweep's natural grouping: `variant` if it has variants, else its varied grid parameters
    (None, every sampled parameter, when it has neither)."""
    if varied(frame, "variant"):
        return ["variant"]
    space = frame.attrs.get("spec", {}).get("space") or {}
    grid = [key for key, dist in space.items() if isinstance(dist, dict) and "grid" in dist and varied(frame, key)]
    return grid or None


def summary_html(frame: pd.DataFrame) -> str:
    by = grouping(frame)
    shown = ", ".join(by) if by else "every sampled parameter"
    note = f'<p class="note">median and standard deviation over the complete runs of each {esc(shown)}'
    if frame.attrs.get("reference"):
        note += "; ref_ columns: the published result the spec reproduces, diff_: ours minus it"
    return note + "</p>" + table_html(with_reference(summary(frame, by), frame.attrs.get("reference")))


def failures_html(frame: pd.DataFrame) -> str:
    failed = frame[frame["state"] == "failed"]
    if failed.empty:
        return '<p class="note">none</p>'
    items = [f"<li>trial {int(r.trial)} seed {esc(r.seed)}: {esc(r.error or 'no reason recorded')}</li>"
             for r in failed.itertuples()]
    return '<ul class="failures">\n' + "\n".join(items) + "\n</ul>"


def figure_divs(frame: pd.DataFrame) -> tuple[list[str], list[tuple[str, str]]]:
    """Each kind that fits the sweep drawn once as a div (plotly.js not included); the kinds that
    fit by their columns but could not be drawn, with the reason."""
    drawn, skipped = [], []
    for kind in figures.kinds_for(frame):
        try:
            fig = figures.plot(kind, frame)
        except figures.FigureError as e:
            skipped.append((kind, str(e)))
            continue
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{kind}",
                          default_height="480px")
        drawn.append(f'<div class="figure" data-kind="{esc(kind)}">\n{div}\n</div>')
    return drawn, skipped


def skipped_html(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    items = "\n".join(f"<li>{esc(kind)}: {esc(reason)}</li>" for kind, reason in skipped)
    return f'<p class="note">not drawn:</p>\n<ul>\n{items}\n</ul>'


def table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return '<p class="note">no complete run yet</p>'
    return table.to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
