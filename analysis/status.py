"""A sweep's state at a glance: trials by state, budget, best so far."""
from __future__ import annotations

from pathlib import Path

from sweeps import record
from sweeps.storage import DEFAULT_DIR

from .load import load


def status(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> str:
    frame = load(name_or_spec, storage, directory)
    spec = frame.attrs.get("spec", {})
    objective = spec.get("objective") or {}
    metric, mode = objective.get("metric", "val_error"), objective.get("mode", "min")
    trials = frame.drop_duplicates("trial")
    counts = frame.groupby("trial")[record.STATE].agg(_trial_state).value_counts()
    budget = (spec.get("budget") or {}).get("trials")
    lines = [f"sweep {frame.attrs['name']}: {len(trials)} trials ({len(frame)} runs)"
             + (f", budget {budget}" if budget else "")]
    lines.append("  " + ", ".join(f"{state} {n}" for state, n in counts.items()) if len(counts) else "  no trials yet")
    done = frame[frame[record.STATE] == record.COMPLETE]
    if len(done):
        per_trial = done.groupby("trial")[metric].median()
        best = per_trial.idxmin() if mode == "min" else per_trial.idxmax()
        params = frame[frame["trial"] == best].iloc[0][frame.attrs["params"]].dropna().to_dict()
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        lines.append(f"  best: trial {best} {metric}={per_trial[best]:.4g} {shown}")
    failed = frame[frame[record.STATE] == record.FAILED]
    for _, row in failed.head(5).iterrows():
        lines.append(f"  failed trial {row['trial']} seed {row['seed']}: {row['error']}")
    return "\n".join(lines)


def _trial_state(states) -> str:
    """A trial's state from its runs': any failure or prune marks the whole trial."""
    for s in (record.RUNNING, record.FAILED, record.PRUNED):
        if s in set(states):
            return s
    return record.COMPLETE
