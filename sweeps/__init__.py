"""Engines behind one interface (`ENGINES`); Optuna today."""
import importlib

from . import optuna_engine  # noqa: F401  (registers the engine)
from .base import ENGINES, Engine, RunOptions, RunSummary, SweepError
from .storage import default_url, resolve

ENGINES.register("ray")(lambda: importlib.import_module("sweeps.ray_engine").RayEngine())  # lazy: no ray import

__all__ = ["ENGINES", "Engine", "RunOptions", "RunSummary", "SweepError", "default_url", "resolve", "run"]


def run(spec, storage: str, quiet: bool = False, **options) -> RunSummary:
    """Run (or resume) a sweep on the engine its spec names; options are RunOptions fields."""
    if spec.engine not in ENGINES:
        raise SweepError(f"engine: {ENGINES.unknown(spec.engine)}; fix: use --engine optuna")
    return ENGINES.get(spec.engine)().run(spec, RunOptions(storage=storage, quiet=quiet, **options))
