"""One trial: typed config in, per-epoch metrics out (`train(config, report)`).

The names below load lazily, so that `import trainable.config` (the spec
language and the analysis layer read it) does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrialConfig": "config", "from_flat": "config", "to_dict": "config", "with_key": "config",
    "UserError": "errors", "TrialError": "errors", "ConfigError": "errors", "Diverged": "errors",
    "DatasetMissing": "errors",
    "Report": "run", "train": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainable' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
