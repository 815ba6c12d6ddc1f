"""One RESULTS.md section from a finished sweep: its table (reference beside) and a figure as PNG.

    python scripts/results_section.py NAME --by variant --kind ablation [--dir runs] [--images results]

Prints markdown; the figure goes to IMAGES/NAME-KIND.png. The sentence on whether
the reference's finding holds is written by hand after reading them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import analysis
from analysis import figures
from search_spaces import load_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--by", default="", help="table columns, comma separated")
    ap.add_argument("--kind", action="append", default=[], help="figure kind (repeatable)")
    ap.add_argument("--figure-by", help="--by of the figures")
    ap.add_argument("--dir", default="runs")
    ap.add_argument("--images", default="results")
    ap.add_argument("--reference-of", help="a spec whose reference rows to show although its data set differs "
                                           "(the full-size spec of a CPU preset)")
    args = ap.parse_args()
    frame = analysis.load(args.name, directory=args.dir)
    by = [c for c in args.by.split(",") if c] or None
    reference = frame.attrs.get("reference")
    if args.reference_of:
        reference = [_without_dataset(r.as_dict()) for r in load_spec(args.reference_of).reference]
    table = analysis.with_reference(analysis.summary(frame, by, "test_error"), reference)
    if args.reference_of:  # another data set: the rows sit beside ours for their trend, not to subtract
        table = table.drop(columns=[c for c in table.columns if c.startswith("diff_")])
    done = frame[frame["state"] == "complete"]
    print(f"{frame['trial'].nunique()} configurations, {len(frame)} runs ({len(done)} complete); "
          f"training time {frame['duration_s'].sum() / 60:.0f} min summed over runs.\n")
    print(analysis.render(table))
    images = Path(args.images)
    images.mkdir(parents=True, exist_ok=True)
    for kind in args.kind:
        out = images / f"{args.name}-{kind}.png"
        figures.save(figures.plot(kind, frame, by=args.figure_by), out)
        print(f"\n![{args.name}: {kind}]({out.as_posix()})")


def _without_dataset(row: dict) -> dict:
    """A reference row matched on everything but its data set."""
    return {**row, "match": {k: v for k, v in row["match"].items() if k != "data.dataset"},
            "constant": {k: v for k, v in row.get("constant", {}).items() if k != "data.dataset"}}


if __name__ == "__main__":
    main()
