"""The engine interface: every engine runs a SweepSpec into a storage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from search_spaces import SweepSpec
from trainable.registry import Registry


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


class Engine(Protocol):
    def run(self, spec: SweepSpec, options: RunOptions) -> RunSummary: ...


ENGINES: Registry = Registry("engine")


class SweepError(Exception):
    """A sweep cannot start or continue; the message says why and how to fix it."""
