"""The one training function every engine calls."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import data, optim, schedules
from .augment import Normalize, TrainBatches, eval_batches
from .config import TrialConfig
from .errors import ConfigError, Diverged
from .ghost_bn import apply_ghost_bn
from .model_io import load_model, save_model
from .models import build_model
from .objective import Objective

Report = Callable[[int, Mapping[str, float]], None]
"""Called after each epoch with (epoch, metrics); may raise to stop the trial (pruning)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError("train.device", f"not a device: {name!r}", "use auto, cpu or cuda") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "CUDA is not available on this machine", "use auto or cpu")
    return device


def check(cfg: TrialConfig, device: torch.device) -> None:
    """Combinations of options that cannot work, each refused with one line."""
    tc = cfg.train
    if tc.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision", "fp16 autocast with a grad scaler needs a CUDA device",
                          "use bf16 on a CPU")
    if tc.accumulate < 1 or tc.batch_size % tc.accumulate:
        raise ConfigError("train.accumulate", f"must divide train.batch_size={tc.batch_size}, got {tc.accumulate}",
                          "use a divisor of the batch size, e.g. 2 or 4")
    micro = tc.batch_size // tc.accumulate
    if tc.ghost_batch is not None and not 0 < tc.ghost_batch <= micro:
        raise ConfigError("train.ghost_batch", f"{tc.ghost_batch} is not in 1..{micro} (the batch each forward "
                          "pass sees)", "use a ghost batch no larger than batch_size / accumulate")
    if tc.ema_decay is not None and not 0.0 < tc.ema_decay < 1.0:
        raise ConfigError("train.ema_decay", f"must be in (0, 1), got {tc.ema_decay}", "use e.g. 0.999")
    if tc.early_stop is not None and tc.early_stop < 1:
        raise ConfigError("train.early_stop", f"must be at least 1 epoch, got {tc.early_stop}", "use e.g. 10")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Set torch's CPU threads for one trial and put them back after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(model, batches, autocast, tta_flip: bool = False) -> tuple[float, float]:
    """Mean loss and error; with tta_flip the softmax of each image and its mirror are averaged."""
    model.eval()
    loss = err = n = 0
    with torch.inference_mode(), autocast():
        for x, y in batches:
            logp = F.log_softmax(model(x).float(), 1)
            if tta_flip:
                logp = (0.5 * (logp.exp() + F.softmax(model(x.flip(3)).float(), 1))).log()
            loss = loss + F.nll_loss(logp, y, reduction="sum")
            err = err + (logp.argmax(1) != y).sum()
            n += len(y)
    if n == 0:
        return math.nan, math.nan
    return float(loss) / n, float(err) / n


def accumulate_gradients(model, objective, x, y, parts: int, autocast, scale=lambda loss: loss):
    """Forward and backward over `parts` micro-batches; gradients of the mean loss over the batch.

    Returns (per-micro-batch losses, logits) for the metrics.
    """
    losses, logits = [], []
    for xm, ym in zip(x.chunk(parts), y.chunk(parts)):
        with autocast():
            loss, out = objective(model, xm, ym)
        scale(loss * (len(ym) / len(y))).backward()
        losses.append(loss.detach())
        logits.append(out.detach())
    return torch.stack(losses), torch.cat(logits)


def train(config: TrialConfig, report: Report | None = None) -> dict[str, float]:
    """Train one trial; report each epoch's metrics; return the final ones.

    Raises Diverged when the loss stops being finite and ConfigError for values
    the trainable cannot use; whatever `report` raises (pruning) passes through.
    """
    with _threads(config.train.threads):
        return _train(config, report or (lambda epoch, metrics: None))


def _train(cfg: TrialConfig, report: Report) -> dict[str, float]:
    start = time.perf_counter()
    tc = cfg.train
    device = resolve_device(tc.device)
    check(cfg, device)
    torch.manual_seed(tc.seed)
    splits = data.load(cfg.data)
    model = build_model(cfg.model, splits.num_classes, splits.in_channels)
    if tc.ghost_batch:
        apply_ghost_bn(model, tc.ghost_batch)
    model = model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.preserve_format)
    teacher = load_model(tc.teacher, device) if tc.teacher else None
    gen = torch.Generator(device).manual_seed(tc.seed)
    normalize = Normalize(splits.mean, splits.std, cfg.augment.normalize, device, tc.channels_last)
    out_size = cfg.data.image_size if cfg.data.dataset == "image_folder" else splits.train_x.shape[-1]
    train_batches = TrainBatches(splits.train_x.to(device), splits.train_y.to(device), tc.batch_size,
                                 cfg.augment, normalize, gen, out_size)
    if len(train_batches) == 0:
        raise ConfigError("train.batch_size", f"{tc.batch_size} is larger than the {len(splits.train_y)} "
                          "training images", "lower train.batch_size or raise data.subset")
    val = (splits.val_x.to(device), splits.val_y.to(device))
    test = (splits.test_x.to(device), splits.test_y.to(device))
    opt = optim.build(model, cfg.optim, tc.batch_size)
    sched = schedules.build(opt, cfg.schedule, len(train_batches), tc.epochs)
    objective = Objective(cfg.augment, tc, splits.num_classes, gen, teacher)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True) \
        if tc.ema_decay else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def scores(m, split) -> tuple[float, float]:
        return evaluate(m, eval_batches(*split, tc.eval_batch_size, normalize), autocast, tc.tta_flip)

    # On a GPU a per-step check would sync the host every step; remember the
    # first bad step on the device and look once per epoch instead.
    check_each_step = device.type == "cpu"
    history: list[dict[str, float]] = []
    since_best, best = 0, math.inf
    for epoch in range(1, tc.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        err_sum = torch.zeros((), device=device, dtype=torch.long)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        seen = 0
        for step, (x, y) in enumerate(train_batches, start=1):
            opt.zero_grad(set_to_none=True)
            losses, out = accumulate_gradients(model, objective, x, y, tc.accumulate, autocast, scaler.scale)
            loss = losses.mean()
            if check_each_step:
                if not torch.isfinite(loss):
                    raise Diverged(epoch, step)
            else:
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            scaler.unscale_(opt)
            optim.clip_gradients(model, cfg.optim)
            lr = opt.param_groups[0]["lr"]
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss * len(y)
            err_sum += (out.argmax(1) != y).sum()
            seen += len(y)
        if not check_each_step and (bad := int(first_bad)) >= 0:
            raise Diverged(epoch, bad)
        train_time = time.perf_counter() - t0
        val_loss, val_error = scores(model, val)
        metrics = {"train_loss": float(loss_sum) / seen, "train_error": float(err_sum) / seen,
                   "val_loss": val_loss, "val_error": val_error, "lr": lr, "images_per_s": seen / train_time}
        if ema is not None:
            metrics["val_loss_ema"], metrics["val_error_ema"] = scores(ema.module, val)
        metrics["epoch_time_s"] = time.perf_counter() - t0
        history.append(metrics)
        report(epoch, metrics)
        since_best = 0 if val_error < best else since_best + 1
        best = min(best, val_error)
        if tc.early_stop and since_best >= tc.early_stop:
            break
    result = {**history[-1], "best_val_error": min(h["val_error"] for h in history)}
    result["test_loss"], result["test_error"] = scores(model, test)
    if ema is not None:
        result["test_loss_ema"], result["test_error_ema"] = scores(ema.module, test)
    if tc.save_model:
        save_model(tc.save_model, model, cfg.model, splits.num_classes, splits.in_channels)
    return {**result, "epochs_done": len(history),
            "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
            "duration_s": time.perf_counter() - start}
