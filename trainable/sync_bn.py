"""BatchNorm over the global batch of a data-parallel trial (train.sync_bn).

On GPUs this is torch's SyncBatchNorm. torch's refuses CPU tensors, so on CPUs
(gloo) a BatchNorm here sums each channel's count, sum and sum of squares over
the ranks with an all-reduce whose backward pass all-reduces the gradients, so
each rank's inputs get the gradient of every rank's loss through the statistics.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _Summed(torch.autograd.Function):
    """The sum over the ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's, for CPU ranks on gloo."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        local = torch.stack([torch.full_like(x[0, :, 0, 0], x.numel() / x.shape[1], dtype=torch.float32),
                             x.float().sum(dims), x.float().square().sum(dims)])
        count, total, squares = _Summed.apply(local)
        mean = total / count
        var = squares / count - mean.square()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = count[0]
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_((var * n / (n - 1)).detach(), m)
        shape = (1, -1, 1, 1)
        out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm synchronized over the process group's ranks."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _cpu(model)


def _cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        sync = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, _cpu(child))
    return module

