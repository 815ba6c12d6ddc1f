"""Pieces shared by the residual families: stochastic depth, init modes, zero-init."""
from __future__ import annotations

import torch
import torch.nn as nn



def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability p while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


def drop_rates(p: float, n_blocks: int) -> list[float]:
    """The linear rule: block i of n drops with p * (i + 1) / n."""
    return [p * (i + 1) / n_blocks for i in range(n_blocks)]


def init_weights(model: nn.Module, mode: str) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if mode == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode=mode.removeprefix("kaiming_"), nonlinearity="relu")
        elif isinstance(m, nn.Linear) and mode == "xavier":
            nn.init.xavier_uniform_(m.weight)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


def zero_init_residual(model: nn.Module) -> None:
    """Zero the last layer of every residual branch (blocks name it `branch_end`)."""
    for m in model.modules():
        end = getattr(m, "branch_end", None)
        if end is not None:
            nn.init.zeros_(end.weight)


def finish(model: nn.Module, opts) -> nn.Module:
    """Apply the shared init options after a family built its layers."""
    init_weights(model, opts.init)
    if getattr(opts, "zero_init_residual", False):
        zero_init_residual(model)
    return model


RESIDUAL_DEFAULTS = dict(drop_path=0.0, zero_init_residual=False, init="kaiming_fan_out")


def stages(widths: list[int], n: int, cin: int, make, drop_path: float) -> tuple[nn.Sequential, int]:
    """Stages of n blocks each; the first block of every stage after the first halves the resolution.

    `make(stage, i, cin, cout, stride, drop)` builds one block; drop rates
    follow the linear rule over all blocks. Returns the blocks and their output width.
    """
    rates = iter(drop_rates(drop_path, len(widths) * n))
    layers = []
    for stage, cout in enumerate(widths):
        for i in range(n):
            layers.append(make(stage, i, cin, cout, 2 if (i == 0 and stage > 0) else 1, next(rates)))
            cin = cout
    return nn.Sequential(*layers), cin


def classify(x: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """Global average pooling then the classifier, whatever the input resolution."""
    return fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
