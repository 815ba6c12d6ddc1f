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
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from search_spaces import SweepSpec
from trainable import TrialError
from trainable.errors import OutOfMemory, device_failure

from . import record
from .trial import run_seeds

ISOLATE = ("auto", "always", "never")


def world(spec: SweepSpec, values: Mapping[str, Any]) -> int:
    """The trial's ranks (train.devices x train.nodes): processes of a data-parallel trial."""
    tc = spec.config(dict(values)).train
    return tc.devices * tc.nodes


def widest(spec: SweepSpec) -> tuple[int, int]:
    """The most train.devices and train.nodes a trial of the sweep can have (base and space)."""
    def most(key: str, base: int) -> int:
        tried = [v for p in spec.space if p.key == key for v in getattr(p.dist, "tried", tuple)()]
        return max([base, *tried])
    return most("train.devices", spec.base.train.devices), most("train.nodes", spec.base.train.nodes)


def check(spec: SweepSpec) -> None:
    """What a trial of several ranks needs of the Optuna engine: one node."""
    _, nodes = widest(spec)
    if nodes > 1:
        raise spec.error(("base", "train.nodes"), f"{nodes}: the Optuna engine runs a trial's ranks on one node",
                         "use train.nodes: 1 with train.devices ranks on the node", key="train.nodes")


def wanted(spec: SweepSpec, values: Mapping[str, Any]) -> bool:
    """Whether this trial runs in its own process(es): always, never, or (auto) when it trains on a
    GPU; a trial of several ranks always does, a process per rank."""
    if world(spec, values) > 1:
        return True
    how = spec.resources.isolate
    if how != "auto":
        return how == "always"
    if spec.resources.gpu > 0:
        return True
    import torch
    device = spec.config(dict(values)).train.device
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def die_with_parent(sig: int) -> None:
    """Linux: this process gets `sig` when its parent dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)
    except (OSError, AttributeError):  # not Linux: it outlives a killed parent until its next report
        pass


class _Pruned(Exception):
    """The parent's pruner stopped the trial."""


def _join_ranks(place, rendezvous: str | None) -> None:
    """Join the trial's process group: gloo on CPUs, NCCL on GPUs (the rank's own, by index).

    The rendezvous is a file (a FileStore: no listening socket), and the ranks talk over the
    loopback interface unless the user named another, so nothing listens beyond 127.0.0.1.
    """
    import os

    import torch
    import torch.distributed as dist
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= place.world  # alike on every rank
    if cuda:
        torch.cuda.set_device(place.rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{rendezvous}",
                            rank=place.rank, world_size=place.world)


def _child(conn, spec: SweepSpec, values: dict, checkpoint_dir: str | None, save_first: bool,
           adopt: bool, threads: int, place=None, rendezvous: str | None = None) -> None:
    import torch

    from trainable import ranks
    place = place or ranks.Place()
    die_with_parent(signal.SIGKILL)  # a killed engine leaves no trial process (the trial is retried)
    torch.set_num_threads(threads)  # the worker's (a trial's own train.threads still wins)
    if place.world > 1:
        _join_ranks(place, rendezvous)

    def on_epoch(epoch, per_seed):
        answer = None
        if place.main:  # rank 0 speaks for the trial; the others follow its answer
            conn.send(("epoch", epoch, [dict(m) for m in per_seed]))
            answer = conn.recv()
        if ranks.from_main(answer) == "prune":
            raise _Pruned

    def on_run(rows):
        if place.main:
            conn.send(("runs", rows))

    try:
        value = run_seeds(spec, values, on_epoch, on_run, pruned=(_Pruned,),
                          checkpoint_dir=checkpoint_dir, save_first=save_first, adopt=adopt)
        if place.main:
            conn.send(("done", value))
    except _Pruned:
        if place.main:
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
    finally:
        if place.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def run(spec: SweepSpec, values: Mapping[str, Any], on_epoch: Callable, on_run: Callable[[list[dict]], None], *,
        pruned: tuple[type[BaseException], ...] = (), checkpoint_dir: str | Path | None = None,
        save_first: bool = False, adopt: bool = False, isolate: bool | None = None) -> float:
    """`trial.run_seeds`, in fresh processes when `isolate` (None: when `wanted`), else here."""
    if isolate is None:
        isolate = wanted(spec, values)
    if isolate or world(spec, values) > 1:
        return run_seeds_isolated(spec, values, on_epoch, on_run, pruned, checkpoint_dir, save_first, adopt)
    return run_seeds(spec, values, on_epoch, on_run, pruned=pruned, checkpoint_dir=checkpoint_dir,
                     save_first=save_first, adopt=adopt)


def _died(procs) -> str | None:
    """Why the trial's processes cannot go on (one of them exited without saying so), or None."""
    for rank, proc in enumerate(procs):
        if not proc.is_alive() and (rank == 0 or proc.exitcode != 0):  # (other ranks may end before rank 0)
            who = "the trial's process" if len(procs) == 1 else f"rank {rank} of the trial's {len(procs)} processes"
            return f"{who} died (exit code {proc.exitcode})"
    return None


def run_seeds_isolated(spec: SweepSpec, values: Mapping[str, Any], on_epoch: Callable,
                       on_run: Callable[[list[dict]], None], pruned: tuple[type[BaseException], ...],
                       checkpoint_dir: str | Path | None, save_first: bool, adopt: bool) -> float:
    """`run_seeds` in spawned processes (one per rank), with the same callbacks and outcomes.

    Rank 0 reports each epoch and the result; any rank may report its failure. When one rank dies,
    the others are killed: a data-parallel trial cannot go on without it.
    """
    import shutil
    import tempfile

    import torch

    from trainable import ranks
    spawn = mp.get_context("spawn")  # a fresh interpreter: nothing of this process's CUDA state
    parent, child = spawn.Pipe()
    n = world(spec, values)
    rendezvous = tempfile.mkdtemp(prefix="sweep-ranks-") if n > 1 else None  # private (0700)
    threads = max(1, torch.get_num_threads() // n)
    # Not daemonic: a trial's DataLoader starts worker processes of its own. The processes end
    # with this one all the same (die_with_parent; the finally below kills what is left).
    procs = [spawn.Process(
        target=_child,
        args=(child, spec, dict(values), str(checkpoint_dir) if checkpoint_dir else None, save_first, adopt,
              threads, ranks.Place(r, n), f"{rendezvous}/store" if rendezvous else None),
        daemon=False, name=f"sweep-trial-rank{r}" if n > 1 else "sweep-trial") for r in range(n)]
    for proc in procs:
        proc.start()
    child.close()
    stopped: BaseException | None = None
    try:
        while True:
            if not parent.poll(0.5):
                if (why := _died(procs)) is not None and not parent.poll(0.1):  # (its last word may be in flight)
                    raise TrialError(why)
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
            except (EOFError, OSError):  # the pipe broke: the children are gone
                for proc in procs:
                    proc.join(5)
                raise TrialError(_died(procs) or "the trial's process died") from None
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
        for proc in procs:
            proc.join(10 if proc is procs[0] else 0.1)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        parent.close()
        if rendezvous:
            shutil.rmtree(rendezvous, ignore_errors=True)
