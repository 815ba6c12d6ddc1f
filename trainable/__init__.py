"""One trial: typed config in, per-epoch metrics out (`train(config, report)`)."""
from .config import TrialConfig, from_flat, to_dict, with_key
from .errors import ConfigError, DatasetMissing, Diverged, TrialError
from .run import Report, train

__all__ = ["TrialConfig", "train", "Report", "with_key", "from_flat", "to_dict",
           "TrialError", "ConfigError", "Diverged", "DatasetMissing"]
