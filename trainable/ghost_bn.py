"""Ghost batch norm (Hoffer et al. 2017): BN statistics over virtual batches.

Large batches normalise over many images, which regularises less; splitting
each training batch into ghost batches of a fixed size restores the small-batch
noise without changing the optimizer's batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, ghost: int, **kw):
        super().__init__(num_features, **kw)
        self.ghost = ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost:
            return super().forward(x)
        # Each ghost batch normalises itself and updates the running stats, as in the paper.
        return torch.cat([super(GhostBatchNorm2d, self).forward(part) for part in x.split(self.ghost)])


def apply_ghost_bn(model: nn.Module, ghost: int) -> nn.Module:
    """Swap every BatchNorm2d for a GhostBatchNorm2d holding the same parameters and buffers."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = GhostBatchNorm2d(child.num_features, ghost, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            apply_ghost_bn(child, ghost)
    return model
