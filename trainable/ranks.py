"""This process's place in a data-parallel trial, and the few collectives the training loop needs.

A trial of `train.devices` ranks runs one process per rank in a torch.distributed
process group (gloo on CPUs, NCCL on GPUs), started by the engine: each rank
trains on its slice of every global batch, and DistributedDataParallel averages
the gradients. Outside a process group every function here is the one-process
case, so the training loop reads the same either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Place:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that reports, records and writes checkpoints."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n items (n divisible by the world size)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def here() -> Place:
    if dist.is_available() and dist.is_initialized():
        return Place(dist.get_rank(), dist.get_world_size())
    return Place()


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def summed(*values: torch.Tensor, device: torch.device | None = None) -> list[torch.Tensor]:
    """Each scalar summed over the ranks, in one all-reduce on `device` (NCCL's must be a GPU; default
    the first value's); as they are in one process."""
    if here().world == 1:
        return list(values)
    device = device or values[0].device
    flat = torch.stack([v.detach().to(device, torch.float64).reshape(()) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def largest(value: torch.Tensor) -> torch.Tensor:
    """The largest of a scalar over the ranks."""
    if here().world == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def gathered(obj):
    """Every rank's `obj`, in rank order (picklable values: small states only)."""
    if here().world == 1:
        return [obj]
    out = [None] * here().world
    dist.all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's `obj` on every rank (its decision: go on, or stop)."""
    if here().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed(base: int, place: Place) -> int:
    """A seed of its own for each rank's draws (rank 0's differs from `base` too)."""
    import numpy as np
    return int(np.random.SeedSequence((base, place.rank, place.world)).generate_state(1, np.uint64)[0] >> 1)
