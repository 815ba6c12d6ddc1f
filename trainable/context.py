"""Where trials run, as far as the process that checks a config knows it (torch-free to import)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    """Where trials run, as far as this process knows it."""

    device: str | None = None  # "cuda" or "cpu": what train.device auto becomes; None: not known here
    local: bool = True         # files the config names (data, teacher) are on this machine
    native_bf16: bool = True   # the GPU computes in bf16 itself (compute capability 8.0 and later)

    @classmethod
    def here(cls) -> "Context":
        import torch
        if not torch.cuda.is_available():
            return cls("cpu", True)
        return cls("cuda", True, torch.cuda.is_bf16_supported(including_emulation=False))
