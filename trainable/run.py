"""The one training function every engine calls."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from . import data, optim, schedules
from .augment import Normalize, TrainBatches, eval_batches
from .config import TrialConfig
from .errors import ConfigError, Diverged
from .models import build_model

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


def _evaluate(model, batches, autocast) -> tuple[float, float]:
    model.eval()
    loss = err = n = 0
    with torch.inference_mode(), autocast():
        for x, y in batches:
            out = model(x)
            loss = loss + F.cross_entropy(out.float(), y, reduction="sum")
            err = err + (out.argmax(1) != y).sum()
            n += len(y)
    if n == 0:
        return math.nan, math.nan
    return float(loss) / n, float(err) / n


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
    torch.manual_seed(tc.seed)
    splits = data.load(cfg.data)
    model = build_model(cfg.model, splits.num_classes, splits.in_channels).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
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
    opt = optim.build(model, cfg.optim)
    sched = schedules.build(opt, cfg.schedule, len(train_batches), tc.epochs)
    bf16 = tc.precision == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    # On a GPU a per-step check would sync the host every step; remember the
    # first bad step on the device and look once per epoch instead.
    check_each_step = device.type == "cpu"
    history: list[dict[str, float]] = []
    for epoch in range(1, tc.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        err_sum = torch.zeros((), device=device, dtype=torch.long)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        seen = 0
        for step, (x, y) in enumerate(train_batches, start=1):
            with autocast():
                out = model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.augment.label_smoothing)
            if check_each_step:
                if not torch.isfinite(loss):
                    raise Diverged(epoch, step)
            else:
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            err_sum += (out.detach().argmax(1) != y).sum()
            seen += len(y)
        if not check_each_step and (bad := int(first_bad)) >= 0:
            raise Diverged(epoch, bad)
        train_loss, train_error = float(loss_sum) / seen, float(err_sum) / seen
        train_time = time.perf_counter() - t0
        val_loss, val_error = _evaluate(model, eval_batches(*val, tc.eval_batch_size, normalize), autocast)
        metrics = {"train_loss": train_loss, "train_error": train_error, "val_loss": val_loss,
                   "val_error": val_error, "lr": lr, "images_per_s": seen / train_time,
                   "epoch_time_s": time.perf_counter() - t0}
        history.append(metrics)
        report(epoch, metrics)
    test_loss, test_error = _evaluate(model, eval_batches(*test, tc.eval_batch_size, normalize), autocast)
    last = history[-1]
    return {**last, "best_val_error": min(h["val_error"] for h in history),
            "test_loss": test_loss, "test_error": test_error, "epochs_done": len(history),
            "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
            "duration_s": time.perf_counter() - start}
