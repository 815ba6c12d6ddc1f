"""Engines behind one interface (`ENGINES`): Optuna and Ray, each imported only when it runs.

`import sweeps.storage` or `import sweeps.record` (what analysis reads) loads no engine and no torch.
"""
from .base import ENGINES, Engine, RunOptions, RunSummary, SweepError, check
from .storage import default_url, resolve

__all__ = ["ENGINES", "Engine", "RunOptions", "RunSummary", "SweepError", "check", "default_url", "resolve", "run"]


def run(spec, storage: str, quiet: bool = False, **options) -> RunSummary:
    """Run (or resume) a sweep on the engine its spec names; options are RunOptions fields."""
    run_options = RunOptions(storage=storage, quiet=quiet, **options)
    engine = check(spec, run_options.workers, run_options.address)
    return engine.run(spec, run_options)
