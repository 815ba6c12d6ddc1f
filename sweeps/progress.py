"""What a running sweep shows: a progress bar with ETA and a line per finished trial."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from search_spaces import SweepSpec

from . import record


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    def __init__(self, spec: SweepSpec, budget: int | None, done: int, quiet: bool = False):
        self.spec, self.quiet = spec, quiet
        self.metric, self.minimize = spec.objective.metric, spec.objective.mode == "min"
        self.best: tuple[float, int] | None = None
        self.started = time.monotonic()
        self.values: dict = {}
        self.bar = None if quiet else tqdm(total=budget, initial=done, unit="trial", desc=spec.name,
                                           file=sys.stderr, dynamic_ncols=True)
        self._waiting_said = False

    def trial_started(self, number: int, values: dict) -> None:
        self.values, self.number, self.t0 = values, number, time.monotonic()
        self._waiting_said = False
        if self.bar is not None:
            self.bar.set_postfix_str(f"trial {number}")

    def epoch(self, epoch: int, metrics) -> None:
        """After an epoch of every seed; metrics are their medians."""
        if self.bar is not None:
            seeds = f" ({self.spec.seeds} seeds)" if self.spec.seeds > 1 else ""
            total = self.spec.config(self.values).train.epochs
            self.bar.set_postfix_str(f"trial {self.number}{seeds} epoch {epoch}/{total} "
                                     f"{self.metric}={fmt(metrics.get(self.metric))}")

    def waiting(self, running: int) -> None:
        if not self._waiting_said:
            self.write(f"waiting for {running} running trial(s): another worker's, or an interrupted run's "
                       "until its heartbeat expires")
            self._waiting_said = True

    def trial_done(self, study, trial) -> None:
        state = trial.state.name.lower()
        value = trial.value if trial.value is not None else None
        if value is not None and (self.best is None or (value < self.best[0]) == self.minimize):
            self.best = (value, trial.number)
        params = " ".join(f"{k.split('[', 1)[0]}={fmt(v)}" for k, v in trial.params.items())  # alternatives by key
        result = f"{self.metric}={fmt(value)}" if value is not None else state
        if state == "fail":
            result = f"failed: {trial.user_attrs.get(record.ERROR, record.INTERRUPTED)}"
        elif state == "pruned":
            result = f"pruned at epoch {trial.last_step}"
        best = f"best={fmt(self.best[0])} (#{self.best[1]})" if self.best else ""
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
        self.write(f"trial {trial.number:>3}  {params}  {result}  {best}  {seconds:.0f}s")
        if self.bar is not None and record.counts_toward_budget(trial):
            self.bar.update(1)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
