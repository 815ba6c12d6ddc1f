"""Which GPUs a trial may use, and how trials share one.

Workers on one machine are spread over its visible GPUs, 1 / resources.gpu of
them to a GPU, each pinned to its GPU through CUDA_VISIBLE_DEVICES before CUDA
starts, so `cuda` in a worker is its own GPU. Trials that share a GPU each get
their share of its memory (a neighbour's allocation cannot starve them), and a
trial that still runs out of memory is retried once with the GPU to itself:
its result must not depend on what ran beside it. The turn-taking is a pair of
file locks per GPU on this machine (another machine has GPUs of its own).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

VISIBLE = "CUDA_VISIBLE_DEVICES"


def visible() -> list[str]:
    """This process's GPUs, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs), in CUDA's order."""
    import torch
    count = torch.cuda.device_count()
    if VISIBLE not in os.environ:
        return [str(i) for i in range(count)]
    return [name.strip() for name in os.environ[VISIBLE].split(",") if name.strip()][:count]


def per_gpu(share: float) -> int:
    """How many trials run at once on one GPU: 1 / resources.gpu for a fraction, else one."""
    return max(1, int(1 / share + 1e-9)) if 0 < share < 1 else 1


def spread(workers: int, gpus: list[str], each: int = 1) -> list[str | None]:
    """Each worker's GPU, round robin: the first len(gpus) workers get one each, the next ones share.
    With `each` > 1 (a trial of that many ranks) a worker gets a group of that many ("0,1")."""
    groups = [",".join(gpus[i:i + each]) for i in range(0, len(gpus) - each + 1, each)]
    return [groups[i % len(groups)] for i in range(workers)] if groups else [None] * workers


def pinned(env: dict[str, str], gpu: str | None) -> dict[str, str]:
    """`env` for a process that sees only `gpu` (unchanged for None: no GPU here)."""
    return env if gpu is None else {**env, VISIBLE: gpu}


def parse(text: str) -> list[str]:
    """--gpus 0,2 (indices or UUIDs as CUDA_VISIBLE_DEVICES takes them)."""
    names = [name.strip() for name in text.split(",")]
    if not names or not all(names):
        raise ValueError(f"{text!r} is not a list of GPUs; use e.g. 0 or 0,1")
    return names


def shared_gpu(share: float, device) -> str | None:
    """The GPU a trial on `device` shares with others (its name in CUDA_VISIBLE_DEVICES terms), or None."""
    if not 0 < share < 1 or device.type != "cuda":
        return None
    names = visible()
    index = device.index or 0
    return names[index] if index < len(names) else str(index)


def _lock_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"recipe-sweep-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


@contextlib.contextmanager
def turn(gpu: str, alone: bool) -> Iterator[None]:
    """Run beside the other trials on `gpu` (shared lock) or with it to ourselves (exclusive).

    A trial that wants it alone first takes the gate, so no new trial starts beside
    it while it waits for the running ones to end (else sharers would starve it).
    """
    key = "".join(c if c.isalnum() or c == "-" else "_" for c in gpu)
    folder = _lock_dir()
    with open(folder / f"gpu-{key}.gate", "a") as gate, open(folder / f"gpu-{key}.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cap_memory(fraction: float, device) -> None:
    """Let this process's allocator take at most `fraction` of the GPU's memory."""
    import torch
    torch.cuda.set_per_process_memory_fraction(fraction, device)
