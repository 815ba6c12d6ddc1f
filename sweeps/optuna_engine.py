"""The Optuna engine: a study in an RDB storage, one trial at a time per process, resumable.

A thin adapter: the study (storage, fingerprint, budget, retries) is study.py,
sampling is sampling.py, the per-process trial loop is optuna_work.py, and
many processes on one storage are workers.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from search_spaces import SweepSpec

from . import isolated, optuna_work, study as studies, workers
from .base import RunOptions, RunSummary
from .progress import Progress


class OptunaEngine:
    joins_workers = True

    def check(self, spec: SweepSpec, workers: int | None = None, address: str | None = None) -> None:
        optuna_work.check(spec)
        isolated.check(spec)

    def run(self, spec: SweepSpec, options: RunOptions) -> RunSummary:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines report each trial
        self.check(spec, options.workers, options.address)
        if options.workers is None:
            options = dataclasses.replace(options, workers=workers.auto_workers(spec))
        if options.workers > 1:
            return workers.run_workers(spec, options)
        study, _ = optuna_work.open_study(spec, options.storage)
        # Grid points are enqueued now, free slots of a space without a grid one at a
        # time as trials start (so a stopped run leaves nothing waiting).
        optuna_work.prepare(study, spec, slots=False)
        before = studies.counted(study)
        progress = Progress(spec, spec.trials, len(before), quiet=options.quiet)
        try:
            interrupted = optuna_work.work(study, spec, progress, Path(options.run_dir), enqueue=True,
                                           retry_own=False)
        finally:
            progress.close()
        return studies.summary(study, spec, interrupted, before)
