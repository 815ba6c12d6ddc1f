"""A readable summary of a resolved spec, printed by `sweep validate`."""
from __future__ import annotations

from trainable.config import TrialConfig, flatten, to_dict

from .spec import SweepSpec


def describe(spec: SweepSpec) -> str:
    trials = spec.trials
    budget = " and ".join(filter(None, [f"{trials} trials" if trials else "",
                                        f"{spec.budget.minutes:g} minutes" if spec.budget.minutes else ""]))
    grid = spec.grid_points() if spec.grid_params else []
    lines = [
        f"spec {spec.source}: sweep {spec.name!r} on {spec.engine}",
        f"objective: {spec.objective.mode} {spec.objective.metric}"
        + (f" (median over {spec.seeds} seeds)" if spec.seeds > 1 else ""),
        f"budget: {budget} (whichever ends first)" if " and " in budget else f"budget: {budget}",
        f"sampler: {spec.sampler.name} (seed {spec.sampler.seed}); pruner: {spec.pruner.name}",
        f"grid: {len(grid)} points" if grid else "grid: none",
        "parameters:" if spec.space else "parameters: none (every trial runs the base config)",
    ]
    width = max((len(p.key) for p in spec.space), default=0)
    sampled, derived = [p for p in spec.space if not p.derived], [p for p in spec.space if p.derived]
    for header, params in (("", sampled), ("derived (computed per trial, not sampled):", derived)):
        lines += [header] if header and params else []
        for p in params:
            cond = "  when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when) if p.when else ""
            lines.append(f"  {p.key:<{width}}  {p.dist.describe()}{cond}")
    if spec.variants:
        lines.append("variants:")
        lines += [f"  {name}: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "(the base)")
                  for name, values in spec.variants.items()]
    if spec.reference:
        lines.append("reference (published results, in percent):")
        for r in spec.reference:
            names = ", ".join(f"{k}={v}" for k, v in r.match + r.constant) or "(every config)"
            results = ", ".join(f"{m} {100 * v:.4g} %" for m, v in r.metrics)
            extra = "".join(f", {x}" for x in (f"{r.epochs} epochs" if r.epochs else "", r.note, r.source) if x)
            lines.append(f"  {names}: {results}{extra}")
    default, base = flatten(to_dict(TrialConfig())), flatten(to_dict(spec.base))
    changed = {k: v for k, v in base.items() if default[k] != v}
    lines.append("base (changed from the defaults):" if changed else "base: the defaults")
    lines += [f"  {k}: {v}" for k, v in changed.items()]
    return "\n".join(lines)
