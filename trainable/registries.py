"""Every registry of the trial config's named components, declared without importing torch.

The config's fields take their choices from these (`sweep config --defaults`
and the validation read them), and each registry's home module fills it on
first use: adding an optimizer is one decorated function in optim.py.
"""
from __future__ import annotations

from .registry import Registry

FILE_DATASETS = ("image_folder", "image_shards")  # read from image files by trainable.stream, not registered loaders
DATASETS = Registry("dataset", home="trainable.data", extra=FILE_DATASETS)
MODELS = Registry("model", home="trainable.models")
OPTIMIZERS = Registry("optimizer", home="trainable.optim")
SCHEDULES = Registry("schedule", home="trainable.schedules")
WARMUPS = Registry("warm-up mode", home="trainable.schedules")
LOSSES = Registry("loss", home="trainable.objective")
MIXERS = Registry("mixing regularizer", home="trainable.objective")
POLICIES = Registry("augmentation policy", home="trainable.policies", extra=("none",))
ERASE_VALUES = Registry("erasing value", home="trainable.augment")
