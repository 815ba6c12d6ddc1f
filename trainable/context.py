"""Where trials run, as far as the process that checks a config knows it (torch-free to import)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    """Where trials run, as far as this process knows it."""

    device: str | None = None  # "cuda" or "cpu": what train.device auto becomes; None: not known here
    local: bool = True         # files the config names (data, teacher) are on this machine

    @classmethod
    def here(cls) -> "Context":
        import torch
        return cls("cuda" if torch.cuda.is_available() else "cpu", True)
