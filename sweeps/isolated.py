"""A trial in a process of its own, driven from the engine's process.

On a GPU every trial leaves state behind in its process: the caching
allocator's blocks, cuDNN's autotuned plans, a fragmented heap after an
out-of-memory error. A fresh (spawned) process per trial starts each one on
a clean device. The child runs `run_seeds`; each epoch's metrics come back
over a pipe, and the engine's answer (go on, or pruned) goes back, so the
engine's pruner, storage and heartbeat stay in the parent. `run` is what
engines call: a trial in a fresh process or here, as `wanted` says.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from search_spaces import SweepSpec
from trainable import TrialError
from trainable.errors import OutOfMemory, device_failure

from . import record
from .trial import run_seeds

ISOLATE = ("auto", "always", "never")


def wanted(spec: SweepSpec, values: Mapping[str, Any]) -> bool:
    """Whether this trial runs in its own process: always, never, or (auto) when it trains on a GPU."""
    how = spec.resources.isolate
    if how != "auto":
        return how == "always"
    if spec.resources.gpu > 0:
        return True
    import torch
    device = spec.config(dict(values)).train.device
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


class _Pruned(Exception):
    """The parent's pruner stopped the trial."""


def _child(conn, spec: SweepSpec, values: dict, checkpoint_dir: str | None, save_first: bool,
           adopt: bool, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)  # the worker's (a trial's own train.threads still wins)

    def on_epoch(epoch, per_seed):
        conn.send(("epoch", epoch, [dict(m) for m in per_seed]))
        if conn.recv() == "prune":
            raise _Pruned

    try:
        value = run_seeds(spec, values, on_epoch, lambda rows: conn.send(("runs", rows)), pruned=(_Pruned,),
                          checkpoint_dir=checkpoint_dir, save_first=save_first, adopt=adopt)
        conn.send(("done", value))
    except _Pruned:
        conn.send(("pruned",))
    except TrialError as e:
        conn.send(("failed", str(e), isinstance(e, OutOfMemory)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent handles it
        pass
    except BaseException as e:
        if (failure := device_failure(e)) is not None:  # CUDA failed: this process ends, the worker goes on
            conn.send(("failed", str(failure), isinstance(failure, OutOfMemory)))
        else:  # a bug: its text goes to the engine, which records it
            conn.send(("bug", record.bug_text(e)))


def run(spec: SweepSpec, values: Mapping[str, Any], on_epoch: Callable, on_run: Callable[[list[dict]], None], *,
        pruned: tuple[type[BaseException], ...] = (), checkpoint_dir: str | Path | None = None,
        save_first: bool = False, adopt: bool = False, isolate: bool | None = None) -> float:
    """`trial.run_seeds`, in a fresh process when `isolate` (None: when `wanted`), else here."""
    if isolate is None:
        isolate = wanted(spec, values)
    if isolate:
        return run_seeds_isolated(spec, values, on_epoch, on_run, pruned, checkpoint_dir, save_first, adopt)
    return run_seeds(spec, values, on_epoch, on_run, pruned=pruned, checkpoint_dir=checkpoint_dir,
                     save_first=save_first, adopt=adopt)


def run_seeds_isolated(spec: SweepSpec, values: Mapping[str, Any], on_epoch: Callable,
                       on_run: Callable[[list[dict]], None], pruned: tuple[type[BaseException], ...],
                       checkpoint_dir: str | Path | None, save_first: bool, adopt: bool) -> float:
    """`run_seeds` in a spawned process, with the same callbacks and outcomes."""
    import torch
    spawn = mp.get_context("spawn")  # a fresh interpreter: nothing of this process's CUDA state
    parent, child = spawn.Pipe()
    proc = spawn.Process(
        target=_child,
        args=(child, spec, dict(values), str(checkpoint_dir) if checkpoint_dir else None, save_first, adopt,
              torch.get_num_threads()),
        daemon=True, name="sweep-trial")
    proc.start()
    child.close()
    stopped: BaseException | None = None
    try:
        while True:
            if not parent.poll(0.5):
                if not proc.is_alive():
                    raise TrialError(f"the trial's process died (exit code {proc.exitcode})")
                continue
            try:
                kind, *rest = parent.recv()
                if kind == "epoch":
                    try:
                        on_epoch(*rest)
                        parent.send("go")
                    except pruned as e:
                        stopped = e
                        parent.send("prune")
                    continue
            except (EOFError, OSError):  # the pipe broke: the child is gone
                proc.join(5)
                raise TrialError(f"the trial's process died (exit code {proc.exitcode})") from None
            if kind == "runs":
                on_run(rest[0])
            elif kind == "done":
                return rest[0]
            elif kind == "pruned" and stopped is not None:
                raise stopped
            elif kind == "failed":
                raise (OutOfMemory if rest[1] else TrialError)(rest[0])
            else:
                raise RuntimeError(rest[0] if rest else f"unexpected message {kind!r} from the trial's process")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
