"""Many worker processes on one storage (the Optuna engine).

`sweep run SPEC --workers N` prepares the sweep in this process (grid points
or free slots up to the budget, retries of interrupted trials: see
optuna_work.prepare), starts N worker processes and shows one progress view
by polling the storage. Each worker (`join`) runs trials one at a time and
only pops WAITING trials, so no grid point runs twice and the budget holds.
`sweep worker SPEC --storage URL` runs the same loop from any machine.

Workers are separate processes, never threads: trials are PyTorch training,
and on CPU several small trials side by side, each on its share of the cores,
beat one trial on all of them (BENCHMARKS.md, "The ratios, against the targets").
"""
from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search_spaces import SweepSpec

from . import gpus, isolated, optuna_work, study as studies
from .base import RunOptions, RunSummary, SweepError, check
from .progress import Progress

POLL_S = 1.0        # the progress view reads the storage this often
STOP_WAIT_S = 60    # after Ctrl-C, how long workers get to record their trial before they are killed
# A worker started by `sweep run`: the job comes pickled on stdin from the parent (trusted).
CHILD = ("import sys\n"
         "try:\n"
         "    from sweeps.workers import _child\n"
         "except KeyboardInterrupt:\n"
         "    sys.exit(130)\n"
         "sys.exit(_child())\n")


AUTO_MAX = 16  # more processes than this on one SQLite file or one machine's memory: ask for them explicitly


def auto_workers(spec: SweepSpec) -> int:
    """How many trials run side by side when --workers is not given, where it pays.

    On CPUs each trial gets `resources.cpu` cores and as many run at once as
    fit: small models do not scale across threads, so several 1-thread trials
    side by side train more images/s in sum than one trial on every core
    (BENCHMARKS.md has the figures). With GPUs, 1 / resources.gpu trials to each visible
    GPU (one when resources.gpu is 0 or 1). Never more than the trial budget.
    """
    import torch
    ranks = isolated.widest(spec)[0]  # a trial of several ranks takes that many GPUs, or cores
    count = len(gpus.visible()) if torch.cuda.is_available() else 0
    if spec.resources.gpu > 0 or count:
        n = max(1, count // ranks) * gpus.per_gpu(spec.resources.gpu)
    else:
        n = (os.cpu_count() or 1) // max(1, math.ceil(spec.resources.cpu)) // ranks
    return max(1, min(n, spec.trials or n, AUTO_MAX))


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def join(spec: SweepSpec, storage: str, run_dir: str | Path = "runs", threads: int | None = None) -> RunSummary:
    """One worker: run trials of the sweep in `storage` until its budget is reached.

    `threads` sets torch's CPU threads for trials whose train.threads is 0.
    The worker that creates the study prepares it; the others only pop.
    It prints a line per trial it finishes (no progress bar: the other workers' trials count too).
    """
    check(spec, worker=True)
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if threads:
        torch.set_num_threads(threads)  # a trial's own train.threads still wins (cpu_threads)
    study, created = optuna_work.open_study(spec, storage, worker=True)
    if created:
        optuna_work.prepare(study, spec, slots=True)
    before = studies.counted(study)
    progress = Progress(spec, spec.trials, len(before), quiet=True)
    try:
        interrupted = optuna_work.work(study, spec, progress, Path(run_dir), enqueue=False, retry_own=True)
    finally:
        progress.close()
    return studies.summary(study, spec, interrupted, before)


def _child() -> int:
    from trainable.errors import UserError
    try:
        job = pickle.load(sys.stdin.buffer)
        return 130 if join(**job).interrupted else 0
    except KeyboardInterrupt:  # before the trial loop started: nothing to record
        return 130
    except UserError as e:  # one line, as the CLI prints it (a full disk, a storage gone for good)
        print(f"error: worker {os.getpid()}: {e}", file=sys.stderr, flush=True)
        return 2


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when `sweep run` dies, even by SIGKILL, so a killed run
    leaves no workers behind (their trials in flight are retried by the next run)."""
    isolated.die_with_parent(signal.SIGTERM)


def _gpu_plan(workers: int, ranks: int = 1) -> list[str | None]:
    import torch
    return gpus.spread(workers, gpus.visible() if torch.cuda.is_available() else [], ranks)


def start(job: dict, plan: list[str | None], quiet_children: bool = True) -> list[subprocess.Popen]:
    """One worker process per entry of `plan`, each seeing only its GPU (None: no GPU)."""
    data = pickle.dumps(job)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the workers import this checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    procs: list[subprocess.Popen] = []
    try:
        for gpu in plan:
            # Each in its own session: Ctrl-C reaches the workers once, forwarded from here.
            proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL if quiet_children else None,
                                    env=gpus.pinned(env, gpu), start_new_session=True, preexec_fn=_die_with_parent)
            procs.append(proc)
            try:
                proc.stdin.write(data)
                proc.stdin.close()
            except BrokenPipeError:  # it died at start; its error is on stderr, the exit code later
                pass
    except BaseException:
        _stop(procs)
        raise
    return procs


def _placement(plan: list[str | None]) -> str:
    if not any(plan):
        return f"{threads_per_worker(len(plan))} thread(s) each"
    return "on GPU " + ", ".join(f"{gpu}" for gpu in plan)


def run_workers(spec: SweepSpec, options: RunOptions) -> RunSummary:
    """`sweep run --workers N`: prepare, start N workers, show their progress, wait for them."""
    study, _ = optuna_work.open_study(spec, options.storage)
    optuna_work.prepare(study, spec, slots=True)
    budget = spec.trials
    counted = studies.counted(study)
    before = studies.summary(study, spec, False, counted)
    if budget is not None and before.finished >= budget:
        return before  # nothing to do: no workers to start
    progress = Progress(spec, budget, before.finished, quiet=options.quiet)
    if before.best_number is not None:  # the progress lines show the best so far, earlier runs included
        progress.best = (before.best_value, before.best_number)
    plan = _gpu_plan(options.workers, isolated.widest(spec)[0])
    job = {"spec": spec, "storage": options.storage, "run_dir": str(Path(options.run_dir).resolve()),
           "threads": threads_per_worker(options.workers)}
    procs: list[subprocess.Popen] = []
    interrupted = False
    try:
        procs = start(job, plan)
        if not options.quiet:
            progress.write(f"{options.workers} workers, {_placement(plan)}")
        _watch(study, spec, procs, progress)
    except KeyboardInterrupt:
        interrupted = True
        _stop(procs)
    except BaseException:  # this process failed: do not leave the workers running on their own
        _stop(procs)
        raise
    finally:
        progress.close()
    codes = [p.returncode for p in procs]
    crashed = [c for c in codes if c not in (0, 130, -signal.SIGINT)]
    result = studies.patiently(studies.summary, study, spec, interrupted, counted)
    if crashed and not interrupted:
        print(f"warning: {len(crashed)} of {len(procs)} workers failed (exit codes {crashed}); "
              "their errors are above", file=sys.stderr)
        if len(crashed) == len(procs) and budget is not None and result.finished < budget:
            raise SweepError(f"every worker failed before the budget ({result.finished}/{budget} trials "
                             "finished); fix: see the errors above, then run the same command again to resume")
    return result


def join_many(spec: SweepSpec, storage: str, run_dir: str | Path, workers: int, threads: int | None) -> int:
    """`sweep worker --workers N`: N joining workers on this machine, spread over its visible GPUs;
    each prints its own lines. Returns 130 when stopped by Ctrl-C, else 0 (1 if every worker failed)."""
    plan = _gpu_plan(workers, isolated.widest(spec)[0])
    job = {"spec": spec, "storage": storage, "run_dir": str(Path(run_dir).resolve()),
           "threads": threads or threads_per_worker(workers)}
    print(f"{workers} workers, {_placement(plan)}", flush=True)
    procs = start(job, plan, quiet_children=False)
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        _stop(procs)
        return 130
    codes = [p.returncode for p in procs]
    return 1 if all(c not in (0, 130, -signal.SIGINT) for c in codes) else 0


def _watch(study: optuna.Study, spec: SweepSpec, procs: list[subprocess.Popen], progress: Progress) -> None:
    """One line per newly finished trial until every worker has exited.

    If the storage stays idle short of the budget (nothing waiting or running:
    a worker was killed while it enqueued a retry, or between popping a trial
    and its first heartbeat), enqueue what is missing again.
    """
    budget = spec.trials
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def report_finished(trials) -> None:
        for t in trials:
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                progress.trial_done(study, t)

    idle_since: tuple[int, float] | None = None
    full_before = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    while any(p.poll() is None for p in procs):
        trials = studies.patiently(study.get_trials, deepcopy=False)  # a server restart: wait it out
        report_finished(trials)
        if error := studies.full_disk(trials, full_before):  # the others' next checkpoints would fail too
            _stop(procs)
            report_finished(study.get_trials(deepcopy=False))
            raise error
        finished = studies.finished(trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if progress.bar is not None:
            alive = sum(p.poll() is None for p in procs)
            progress.bar.set_postfix_str(f"{running} running, {waiting} waiting, {alive} workers")
        if budget is not None and finished < budget and not running and not waiting:
            if idle_since is None or idle_since[0] != len(trials):
                idle_since = (len(trials), time.monotonic())
            elif time.monotonic() - idle_since[1] > 2 * studies.HEARTBEAT_S:  # not a worker mid-retry
                studies.patiently(optuna_work.prepare, study, spec, slots=True)
                idle_since = None
        else:
            idle_since = None
        time.sleep(POLL_S)
    report_finished(studies.patiently(study.get_trials, deepcopy=False))  # the last ones


def _stop(procs: list[subprocess.Popen]) -> None:
    """Forward Ctrl-C to the workers and wait: each records its trial as interrupted and enqueues its retry."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        end = time.monotonic() + STOP_WAIT_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # its trial is retried once its heartbeat expires
                proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
