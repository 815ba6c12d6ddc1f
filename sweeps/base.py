"""The engine interface: every engine runs a SweepSpec into a storage, after one up-front check."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from trainable.errors import UserError
from trainable.registry import Registry

if TYPE_CHECKING:
    from search_spaces import SweepSpec


@dataclass(frozen=True)
class RunOptions:
    storage: str                 # SQLAlchemy URL of the sweep's results
    quiet: bool = False          # no progress bar (tests, workers)
    workers: int | None = 1      # worker processes sharing the storage (Optuna) / concurrent trials (Ray);
                                 # None: as many as pay (Optuna: sweeps.workers.auto_workers; Ray: its resources)
    address: str | None = None   # Ray: an existing cluster ("auto", "ray://host:port"); None starts a local one
    run_dir: str = "runs"        # folder for per-trial checkpoints and Ray's experiment folder


@dataclass(frozen=True)
class RunSummary:
    finished: int                # trials counted against the budget
    budget: int | None
    interrupted: bool            # stopped by Ctrl-C before the budget
    best_value: float | None
    best_number: int | None
    ran: int = 0                 # trials this invocation finished (counted against the budget)
    failed: int = 0              # of those, failed with a reason


class Engine(Protocol):
    joins_workers: bool          # `sweep worker` can join its sweeps

    def check(self, spec: SweepSpec, workers: int | None, address: str | None) -> None:
        """Raise every refusal `run` would raise, before anything is stored or started."""

    def run(self, spec: SweepSpec, options: RunOptions) -> RunSummary: ...


class SweepError(UserError):
    """A sweep cannot start or continue; the message says why and how to fix it."""


def _lazy(module: str, name: str):
    """An engine built on first use: naming the engines imports none of them."""
    return lambda: getattr(importlib.import_module(module), name)()


ENGINES: Registry = Registry("engine")
ENGINES.register("optuna")(_lazy("sweeps.optuna_engine", "OptunaEngine"))
ENGINES.register("ray")(_lazy("sweeps.ray_engine", "RayEngine"))


def check(spec: SweepSpec, workers: int | None = None, address: str | None = None, worker: bool = False) -> Engine:
    """Raise, before anything is stored or started, every refusal the spec's engine would raise
    later (spec values as SpecErrors at their file:line); returns the engine. `worker`: for
    `sweep worker`, which joins a sweep on a shared storage."""
    if spec.engine not in ENGINES:
        raise spec.error(("engine",), ENGINES.unknown(spec.engine), "use --engine optuna")
    if workers is not None and workers < 1:
        raise SweepError(f"--workers: must be at least 1, got {workers}; fix: use e.g. --workers 2")
    engine = ENGINES.get(spec.engine)()
    if worker and not engine.joins_workers:
        raise spec.error(("engine",), f"`sweep worker` joins Optuna sweeps, this spec runs on {spec.engine}",
                         "use --engine optuna, or `sweep run --address` for a Ray cluster")
    engine.check(spec, workers, address)
    return engine
