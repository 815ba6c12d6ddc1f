"""The names of the metrics a trial reports: the trainable writes them, engines store
them, analysis reads them, and a spec's objective names one of them. Torch-free."""
from __future__ import annotations

TRAIN_LOSS, TRAIN_ERROR = "train_loss", "train_error"
VAL_LOSS, VAL_ERROR = "val_loss", "val_error"
LR, IMAGES_PER_S, EPOCH_TIME_S = "lr", "images_per_s", "epoch_time_s"
WARMUP_S = "warmup_s"  # the run's first step (compilation, autotuning), left out of images_per_s
WORLD_SIZE = "world_size"  # the trial's data-parallel ranks (images_per_s is theirs together)
VAL_LOSS_EMA, VAL_ERROR_EMA = "val_loss_ema", "val_error_ema"
BEST_VAL_ERROR, TEST_LOSS, TEST_ERROR = "best_val_error", "test_loss", "test_error"
TEST_LOSS_EMA, TEST_ERROR_EMA = "test_loss_ema", "test_error_ema"
EPOCHS_DONE, DURATION_S = "epochs_done", "duration_s"

# Reported after every epoch (the EMA pair only with train.ema_decay): what a pruner can compare.
EPOCH = (TRAIN_LOSS, TRAIN_ERROR, VAL_LOSS, VAL_ERROR, LR, IMAGES_PER_S, WARMUP_S, WORLD_SIZE, EPOCH_TIME_S)
EPOCH_EMA = (VAL_LOSS_EMA, VAL_ERROR_EMA)
# Measured in seconds or per second: they differ between two runs of the same seed.
TIMED = (IMAGES_PER_S, WARMUP_S, EPOCH_TIME_S, DURATION_S)
# Added once the trial ends (images_per_s becomes the mean over epochs).
FINAL = (BEST_VAL_ERROR, TEST_LOSS, TEST_ERROR, EPOCHS_DONE, DURATION_S)
FINAL_EMA = (TEST_LOSS_EMA, TEST_ERROR_EMA)
# What a sweep may optimise (`objective.metric`).
OBJECTIVES = (VAL_ERROR, BEST_VAL_ERROR, VAL_LOSS, TEST_ERROR, TRAIN_LOSS)
# The metrics comparable epoch by epoch, so a pruner or scheduler can stop trials on them.
PER_EPOCH_OBJECTIVES = tuple(m for m in OBJECTIVES if m in EPOCH)
