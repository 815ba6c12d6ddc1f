"""The one training function every engine calls."""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import data, optim, ranks, rules, schedules, stream, sync_bn
from .augment import Normalize, TrainBatches, eval_batches, pad_images
from .config import Data, TrialConfig, non_defaults
from .errors import ConfigError, Diverged, TrialError, out_of_memory, release_device_memory
from .ghost_bn import apply_ghost_bn
from .host_memory import keep_freed_memory
from .metrics import WORLD_SIZE
from .model_io import load_model, save_model
from .models import build_model
from .objective import Objective

RANK_STATE = ("gen", "torch_rng", "cuda_rng", "objective_rng")  # a checkpoint's random states, one per rank
Report = Callable[[int, Mapping[str, float]], None]
"""Called after each epoch with (epoch, metrics); may raise to stop the trial (pruning)."""


def resolve_device(name: str) -> torch.device:
    """The device of train.device (checked by trainable.rules): auto is CUDA where there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cuda_settings() -> None:
    """What every CUDA trial wants: cuDNN picks the fastest kernels for its fixed shapes, and
    fp32 matrix products and convolutions run on TF32 tensor cores (Ampere and later)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


@contextlib.contextmanager
def out_of_memory_fails_the_trial() -> Iterator[None]:
    """An allocator failure ends the trial with "out of memory", not the sweep.

    The failure's traceback holds every frame between the allocation and here, and
    with them the model, its autograd graph and the batch: they are cleared before
    the device cache is emptied, else nothing would come back to it.
    """
    try:
        yield
        return
    except (RuntimeError, MemoryError) as e:
        error = out_of_memory(e)
        if error is None:
            raise
        import traceback
        traceback.clear_frames(e.__traceback__)
    release_device_memory()
    raise error


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Set torch's CPU threads for one trial and put them back after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(model, batches, autocast, tta_flip: bool = False, device: torch.device | None = None) -> tuple[float, float]:
    """Mean loss and error (over every rank's share); with tta_flip the softmax of each image and its
    mirror are averaged."""
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
    if ranks.here().world > 1:  # each rank evaluated its share
        loss, err, n = (float(v) for v in ranks.summed(*map(torch.as_tensor, (loss, err, n)), device=device))
    if n == 0:
        return math.nan, math.nan
    return float(loss) / n, float(err) / n


def accumulate_gradients(model, objective, x, y, parts: int, autocast, scale=lambda loss: loss):
    """Forward and backward over `parts` micro-batches; gradients of the mean loss over the batch.

    Returns (per-micro-batch losses, logits) for the metrics.
    """
    losses, logits = [], []
    for i, (xm, ym) in enumerate(zip(x.chunk(parts), y.chunk(parts))):
        # Across ranks, gradients are averaged once, on the last micro-batch's backward.
        quiet = i < parts - 1 and hasattr(model, "no_sync")
        with model.no_sync() if quiet else contextlib.nullcontext():
            with autocast():
                loss, out = objective(model, xm, ym)
            scale(loss * (len(ym) / len(y))).backward()
        losses.append(loss.detach())
        logits.append(out.detach())
    return torch.stack(losses), torch.cat(logits)


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module, first: bool) -> None:
    """`ema.update_parameters(model)`, in a few foreach kernels and without a host sync.

    AveragedModel compares its on-device update count with 0 on every call, which
    waits for the GPU each step (the caller knows whether it is the first), and
    averages integer buffers (BatchNorm's batch counts) one tensor at a time:
    here they are copied, in one kernel.
    """
    if first:
        ema.update_parameters(model)  # copies the model
        return
    floats: tuple[list, list] = ([], [])
    others: tuple[list, list] = ([], [])
    for avg, cur in zip(itertools.chain(ema.module.parameters(), ema.module.buffers()),
                        itertools.chain(model.parameters(), model.buffers())):
        pair = floats if avg.is_floating_point() else others
        pair[0].append(avg)
        pair[1].append(cur)
    if floats[0]:
        ema.multi_avg_fn(*floats, ema.n_averaged)
    if others[0]:
        torch._foreach_copy_(*others)
    ema.n_averaged += 1


def train(config: TrialConfig, report: Report | None = None, checkpoint: str | Path | None = None) -> dict[str, float]:
    """Train one trial; report each epoch's metrics; return the final ones.

    With `checkpoint` (a file path) the state is saved after every epoch and a
    run that finds the file resumes from it. Raises Diverged when the loss
    stops being finite and ConfigError for values the trainable cannot use;
    whatever `report` raises (pruning) passes through.
    """
    report = report or (lambda epoch, metrics: None)
    with cpu_threads(config.train.threads), out_of_memory_fails_the_trial():
        return _train(config, report, checkpoint)


def _train(config: TrialConfig, report: Report, checkpoint: str | Path | None) -> dict[str, float]:
    run = Training(config)
    if checkpoint is not None and Path(checkpoint).exists():
        run.load(checkpoint)
    while not run.done:
        metrics = run.epoch()
        if checkpoint is not None:
            run.save(checkpoint)
        report(run.epochs_done, metrics)
    return run.finish()


@functools.lru_cache(maxsize=1)
def resident(data_cfg: Data, pad: int, pad_mode: str, pad_fill: int, device: str, on_host: bool = False):
    """(splits, padded training images, labels, val and test pairs), on `device` (the training
    images and labels stay on the host with `on_host`).

    Padded on the host, so the device never holds the unpadded copy beside the padded
    one; cached, so the seeds of a config (and the next trial with the same data) share
    one device copy.
    """
    splits = data.load(data_cfg)
    train_x = pad_images(splits.train_x, pad, pad_mode, pad_fill) if pad else splits.train_x
    train = "cpu" if on_host else device
    return (splits, train_x.to(train), splits.train_y.to(train), (splits.val_x.to(device), splits.val_y.to(device)),
            (splits.test_x.to(device), splits.test_y.to(device)))


class ResidentEval:
    """Validation or test images held on the device, in batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def batches(self, normalize: Normalize):
        return eval_batches(self.x, self.y, self.batch_size, normalize)


class Training:
    """One trial's state, advanced an epoch at a time.

    Engines step several seeds of a config side by side (so a pruner sees their
    median) and checkpoint between epochs; `train` is the plain loop over it.
    """

    def __init__(self, cfg: TrialConfig):
        self.cfg, tc = cfg, cfg.train
        rules.check(cfg, rules.Context.here())
        self.device = device = resolve_device(tc.device)
        self.place = place = ranks.here()
        if place.world != tc.devices * tc.nodes:
            raise ConfigError("train.devices", f"{tc.devices * tc.nodes} ranks asked for, and this trial runs in "
                              f"{place.world} process(es)", "run it with `sweep run`, whose engine starts a process "
                              "per rank")
        if place.world > 1 and device.type == "cuda" and device.index is None:
            self.device = device = torch.device("cuda", torch.cuda.current_device())  # the rank's own GPU
        if device.type == "cpu":
            keep_freed_memory()
        elif device.type == "cuda":
            cuda_settings()
        streamed = data.streams(cfg.data)
        if streamed:  # read from disk every epoch (trainable.stream)
            splits = stream.source(cfg.data)
        else:
            aug = cfg.augment
            on_host = aug.policy.name != "none"  # a policy's batches are made on the host (TrainBatches)
            splits, train_x, train_y, val, test = resident(cfg.data, aug.crop_padding, aug.pad_mode, aug.pad_fill,
                                                           str(device), on_host)
        self.num_classes, self.in_channels = splits.num_classes, splits.in_channels
        # The global RNG (weight init, dropout, drop path, shake-shake) is this run's own: seeds
        # stepped side by side in one process each keep theirs (own_rng), as if each ran alone.
        with torch.random.fork_rng(devices=self._cuda()):
            torch.manual_seed(tc.seed)
            model = build_model(cfg.model, splits.num_classes, splits.in_channels)
            if tc.ghost_batch:
                apply_ghost_bn(model, tc.ghost_batch)
            if place.world > 1:  # the same init on every rank; its own dropout and drop path after
                if tc.sync_bn:
                    model = sync_bn.convert(model, device)
                torch.manual_seed(ranks.seed(tc.seed, place))
            self.global_rng = self._global_rng()
        fmt = torch.channels_last if tc.channels_last else torch.preserve_format
        self.model = model = model.to(device, memory_format=fmt)
        # Training steps call the compiled wrapper; self.model stays the plain module, so checkpoints,
        # saved models and the EMA keep their keys (a compiled module prefixes them with `_orig_mod.`).
        stepped = model
        if place.world > 1:  # gradients averaged over the ranks
            from torch.nn.parallel import DistributedDataParallel
            stepped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.step_model = torch.compile(stepped) if tc.compile else stepped
        teacher = load_model(tc.teacher, device).to(memory_format=fmt) if tc.teacher else None
        # The order of the data is drawn alike on every rank; each rank's augmentation and
        # mixing draws are its own (one generator for both with one rank).
        self.order_gen = self.gen = torch.Generator(device).manual_seed(tc.seed)
        if place.world > 1:
            self.gen = torch.Generator(device).manual_seed(ranks.seed(tc.seed, place))
        self.normalize = Normalize(splits.mean, splits.std, cfg.augment.normalize, device, tc.channels_last)
        if streamed:
            self.batches = stream.StreamBatches(splits, cfg.data, cfg.augment, tc.batch_size, self.normalize,
                                                self.gen, device, self.order_gen, place)
            self.val, self.test = (stream.StreamEval(splits, which, cfg.data, device, tc.eval_batch_size, place)
                                   for which in ("val", "test"))
        else:
            out_size = cfg.data.image_size if data.reads_files(cfg.data) else splits.train_x.shape[-1]
            self.batches = TrainBatches(train_x, train_y, tc.batch_size, cfg.augment, self.normalize, self.gen,
                                        out_size, padded=True, device=device, order_gen=self.order_gen, place=place)
            self.val, self.test = (ResidentEval(x[place.rank::place.world], y[place.rank::place.world],
                                                tc.eval_batch_size) for x, y in (val, test))
        if len(self.batches) == 0:  # an image folder's size is only known once loaded (rules.batch_fits_data)
            raise ConfigError("train.batch_size", f"{tc.batch_size} is larger than the training images",
                              "lower train.batch_size or raise data.subset")
        self.opt = optim.build(model, cfg.optim, tc.batch_size)
        self.sched = schedules.build(self.opt, cfg.schedule, len(self.batches), tc.epochs)
        self.objective = Objective(cfg.augment, tc, splits.num_classes, self.gen, teacher)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True) \
            if tc.ema_decay else None
        self.history: list[dict[str, float]] = []
        self.best, self.since_best, self.seconds = math.inf, 0, 0.0
        self.warm = False  # the first step (compilation, cuDNN's autotuning) is timed apart
        # On a GPU a per-step check would sync the host every step; remember the
        # first bad step on the device and look once per epoch instead.
        self.check_each_step = device.type == "cpu" and place.world == 1  # (ranks decide together)

    def _cuda(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    def _global_rng(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self._cuda():
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """The global RNG as this run left it, for the block; the caller's is put back after."""
        with torch.random.fork_rng(devices=self._cuda()):
            torch.set_rng_state(self.global_rng["cpu"])
            if "cuda" in self.global_rng:
                torch.cuda.set_rng_state(self.global_rng["cuda"], self.device)
            try:
                yield
            finally:
                self.global_rng = self._global_rng()

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        early = self.cfg.train.early_stop
        return self.epochs_done >= self.cfg.train.epochs or bool(early and self.since_best >= early)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def scores(self, model, split) -> tuple[float, float]:
        return evaluate(model, split.batches(self.normalize), self.autocast, self.cfg.train.tta_flip, self.device)

    def epoch(self) -> dict[str, float]:
        """Train one epoch and evaluate on the validation split."""
        with self.own_rng():
            return self._epoch()

    def _epoch(self) -> dict[str, float]:
        t0 = time.perf_counter()
        tc, device, model, opt, place = self.cfg.train, self.device, self.model, self.opt, self.place
        epoch = self.epochs_done + 1
        model.train()
        loss_sum = torch.zeros((), device=device)
        err_sum = torch.zeros((), device=device, dtype=torch.long)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        check_each_step = self.check_each_step
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        seen = steps = 0
        warmup, warm_images = 0.0, 0
        self.batches.epoch = epoch - 1  # a streamed epoch's order and crops are a function of (seed, epoch)
        for step, (x, y) in enumerate(self.batches, start=1):
            opt.zero_grad(set_to_none=True)
            losses, out = accumulate_gradients(self.step_model, self.objective, x, y, tc.accumulate,
                                               self.autocast, self.scaler.scale)
            loss = losses.mean()
            if check_each_step:
                if not torch.isfinite(loss):
                    raise Diverged(epoch, step)
            else:
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            self.scaler.unscale_(opt)
            optim.clip_gradients(model, self.cfg.optim)
            lr = opt.param_groups[0]["lr"]
            self.scaler.step(opt)
            self.scaler.update()
            self.sched.step()
            if self.ema is not None:
                update_ema(self.ema, model, first=epoch == 1 and step == 1)
            loss_sum += loss * len(y)
            err_sum += (out.argmax(1) != y).sum()
            seen, steps = seen + len(y), step
            if not self.warm:  # once per run: wait for the first step, so its time is its own
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.warm, warmup, warm_images = True, time.perf_counter() - t0, len(y)
        if place.world > 1:  # every rank's share of the epoch, and the first bad step of any rank
            first_bad = ranks.largest(first_bad)
            loss_sum, err_sum, seen = ranks.summed(loss_sum, err_sum, torch.tensor(seen, device=device))
            seen, warm_images = int(seen), warm_images * place.world
        if not check_each_step and (bad := int(first_bad)) >= 0:
            raise Diverged(epoch, bad)
        if scale_before is not None and steps and \
                self.scaler.get_scale() <= scale_before * self.scaler.get_backoff_factor() ** steps:
            raise TrialError(f"fp16 loss scale collapsed in epoch {epoch}: every one of its {steps} steps was "
                             "skipped for inf/NaN gradients, so the model did not train; "
                             "fix: use train.precision bf16 or fp32, or a lower optim.lr")
        train_time = time.perf_counter() - t0
        if seen > warm_images:  # images/s of the steady steps
            seen_steady, time_steady = seen - warm_images, train_time - warmup
        else:
            seen_steady, time_steady = seen, train_time
        val_loss, val_error = self.scores(model, self.val)
        metrics = {"train_loss": float(loss_sum) / seen, "train_error": float(err_sum) / seen,
                   "val_loss": val_loss, "val_error": val_error, "lr": lr,
                   "images_per_s": seen_steady / time_steady, "warmup_s": warmup, WORLD_SIZE: place.world}
        if self.ema is not None:
            metrics["val_loss_ema"], metrics["val_error_ema"] = self.scores(self.ema.module, self.val)
        metrics["epoch_time_s"] = time.perf_counter() - t0
        self.history.append(metrics)
        self.since_best = 0 if val_error < self.best else self.since_best + 1
        self.best = min(self.best, val_error)
        self.seconds += metrics["epoch_time_s"]
        return metrics

    def finish(self) -> dict[str, float]:
        """Test the final model (and its EMA); save it when asked; the trial's result."""
        t0 = time.perf_counter()
        result = {**self.history[-1], "best_val_error": min(h["val_error"] for h in self.history)}
        result["test_loss"], result["test_error"] = self.scores(self.model, self.test)
        if self.ema is not None:
            result["test_loss_ema"], result["test_error_ema"] = self.scores(self.ema.module, self.test)
        if self.cfg.train.save_model and self.place.main:
            save_model(self.cfg.train.save_model, self.model, self.cfg.model, self.num_classes, self.in_channels)
        return {**result, "epochs_done": self.epochs_done,
                "images_per_s": sum(h["images_per_s"] for h in self.history) / len(self.history),
                "duration_s": self.seconds + time.perf_counter() - t0}

    # ---- checkpoints: everything that decides the next epoch ----------------

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "scaler": self.scaler.state_dict(), "gen": self.gen.get_state(), "gen_device": self.gen.device.type,
                 "torch_rng": self.global_rng["cpu"],
                 "objective_rng": self.objective.rng.bit_generator.state if self.objective.rng else None,
                 "history": self.history, "best": self.best, "since_best": self.since_best, "seconds": self.seconds}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if "cuda" in self.global_rng:
            state["cuda_rng"] = self.global_rng["cuda"]
        if self.place.world > 1:  # each rank's own draws, and the order they share
            state["order_gen"] = self.order_gen.get_state()
            state["ranks"] = ranks.gathered({k: state[k] for k in RANK_STATE if k in state})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state`, keeping this config's optimizer hyperparameters: a checkpoint
        carries the weights, buffers, step counts and RNGs, while lr, weight decay and
        momentum come from the config (PBT resumes a clone with perturbed ones).

        `state` is on the CPU: each load_state_dict places its tensors (the optimizer's step
        counts stay on the CPU where its kernels want them), and the RNG states must be CPU
        byte tensors. A random state saved on another kind of device fails the trial."""
        saved_on, here = state.get("gen_device", "cpu"), self.gen.device.type
        if saved_on != here or state["gen"].numel() != self.gen.get_state().numel():
            raise TrialError(f"the checkpoint was written by a trial on {saved_on}, and this one trains on {here}: "
                             "its random state cannot move between kinds of device; fix: give the sweep's workers "
                             "one kind of device, or delete the checkpoint to start the trial over")
        if "ranks" in state:
            state = {**state, **state["ranks"][self.place.rank]}
            self.order_gen.set_state(state["order_gen"])
        self.model.load_state_dict(state["model"])
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]
        self.opt.load_state_dict(state["opt"])
        for group, values in zip(self.opt.param_groups, hyper):
            group.update(values)
        self.sched.load_state_dict(state["sched"])
        self.sched.base_lrs = [g["initial_lr"] for g in self.opt.param_groups]
        for group, base, factor in zip(self.opt.param_groups, self.sched.base_lrs, self.sched.lr_lambdas):
            group["lr"] = base * factor(self.sched.last_epoch)
        self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["gen"])
        self.global_rng = {"cpu": state["torch_rng"], **({"cuda": state["cuda_rng"]} if "cuda_rng" in state else {})}
        if self.objective.rng is not None and state["objective_rng"] is not None:
            self.objective.rng.bit_generator.state = state["objective_rng"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.history, self.best = list(state["history"]), state["best"]
        self.since_best, self.seconds = state["since_best"], state["seconds"]

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically: a kill mid-write leaves the previous one intact.

        A full disk (or quota) fails the trial with "disk full: ..." (a TrialError) and leaves no
        `.tmp` behind; the previous checkpoint stays, so a rerun after freeing space resumes from it.
        """
        import errno

        from .errors import TrialError
        state = self.state_dict()  # (on every rank: it gathers their random states)
        if not self.place.main:
            return
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({**state, "config": self._identity()}, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # torch.save's zip writer reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e):
                raise TrialError(f"disk full: cannot write the checkpoint {path}: "
                                 f"{os.strerror(errno.ENOSPC)}; fix: free space under --dir") from None
            raise

    def load(self, path: str | Path, any_config: bool = False) -> bool:
        """Resume from a checkpoint of this same config (True), or load nothing (False).

        A checkpoint of another config is one a different sweep left at the same path (a study of
        the same name made again, whose trial got the same number): resuming it would train one
        config's weights under another's name. `any_config` takes it anyway: PBT resumes a clone
        from its donor's checkpoint under perturbed hyperparameters. A file that cannot be read
        (truncated, tampered with, not a checkpoint) counts as absent: one warning line, and it is
        moved aside to NAME.unreadable, so the trial starts over.
        """
        state = self._read(path, any_config) if self.place.main else None
        if self.place.world > 1:  # rank 0 decides; the others read the file it found good
            if not ranks.from_main(state is not None):
                return False
            if state is None:
                state = torch.load(path, map_location="cpu", weights_only=True)
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    def _read(self, path: str | Path, any_config: bool) -> dict | None:
        import sys
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
        except Exception as e:  # pickle, zip and torch errors: any of them means unreadable
            aside = Path(f"{path}.unreadable")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {reason.split('. ')[0]}); "
                  f"starting over, the file moved to {aside.name}", file=sys.stderr, flush=True)
            return None
        if not any_config and state.get("config") != self._identity():
            return None
        return state

    def _identity(self) -> dict:
        """The config as a checkpoint records it: its keys that differ from the defaults, as a sweep's
        fingerprint counts its base, less the thread count (a speed setting)."""
        return non_defaults(self.cfg, ignore=("train.threads",))
