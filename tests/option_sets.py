"""Option sets that each take a different path through the training step: the GPU-path guards
(tests/test_gpu_path.py) run an epoch of each on CPU, and benchmarks/gpu_check.py on CUDA."""

OPTION_SETS = {
    "plain": {},
    "regularized": {"train.ema_decay": 0.9, "optim.grad_clip": 1.0, "train.accumulate": 2,
                    "augment.cutout.size": 8, "augment.random_erasing.prob": 0.5, "augment.label_smoothing": 0.1},
    "mixup": {"augment.mixup.alpha": 1.0},
    "cutmix": {"augment.cutmix.alpha": 1.0},
    "ricap": {"augment.ricap.beta": 0.3},
    "dual_cutout": {"augment.dual_cutout.alpha": 0.1, "augment.dual_cutout.size": 8},
    "autoaugment": {"augment.policy.name": "autoaugment"},
    "randaugment": {"augment.policy.name": "randaugment"},
    "trivialaugment": {"augment.policy.name": "trivialaugment"},
    "timm_randaugment_bce": {"augment.policy.name": "timm", "augment.policy.timm": "rand-m7-mstd0.5-inc1",
                             "train.loss": "bce", "train.bce_threshold": 0.2, "augment.repeated": 3},
    "random_resized_crop": {"augment.random_resized_crop": True},
    "reflect_repeated": {"augment.pad_mode": "reflect", "augment.repeated": 2},
    "ghost_batch": {"train.ghost_batch": 16},
    "shake_drop": {"model.name": "shake_shake", "model.depth": 8, "model.base_channels": 4},
    "drop_path": {"model.drop_path": 0.2},
    "bf16": {"train.precision": "bf16"},
    **{f"fp16_{name}": {"train.precision": "fp16", "optim.name": name}
       for name in ("sgd", "adam", "adamw", "lars", "lamb", "adabound")},
    **{name: {"optim.name": name} for name in ("adam", "adamw", "lars", "lamb", "adabound")},
}
