"""Every rule a trial config must keep, and the one function that runs them all (`check`).

Ranges and choices sit on the config's fields (`config.opt`); a rule across
fields is declared here, beside the others of its section, naming the keys
it reads, so that the spec validator can try every combination of the values
a sweep gives those keys; each model family declares its own depths and
options (`models/`). `sweep validate` and `sweep run` run these on every
config a spec can produce before anything is stored, and `Training` runs
them again at start, for configs built in code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from . import data, model_io
from .config import TrialConfig, field_problem, get_key, leaf_keys
from .context import Context
from .errors import ConfigError
from .models import check_model


@dataclass(frozen=True)
class Rule:
    name: str
    reads: tuple[str, ...]  # dotted keys; one ending in "." stands for every key of that section
    holds: Callable[[TrialConfig, Context], None]  # raises ConfigError

    def reads_key(self, key: str) -> bool:
        return any(key == r or (r.endswith(".") and key.startswith(r)) for r in self.reads)


CROSS: dict[str, Rule] = {}  # rules across fields, by name


def rule(*reads: str):
    """Register `fn(cfg, context)`, which raises ConfigError, as a rule reading `reads`."""
    def add(fn):
        if fn.__name__ in CROSS:
            raise ValueError(f"rule {fn.__name__!r} registered twice")
        CROSS[fn.__name__] = Rule(fn.__name__, reads, fn)
        return fn
    return add


def _field_rule(key: str, f) -> Rule:
    used_when = f.metadata.get("used_when")
    sibling = f"{key.rpartition('.')[0]}.{used_when[0]}" if used_when else None

    def holds(cfg: TrialConfig, ctx: Context) -> None:
        if sibling is not None and get_key(cfg, sibling) not in used_when[1]:
            return
        if (error := field_problem(key, f, get_key(cfg, key))) is not None:
            raise error
    return Rule(f"field {key}", (key, sibling) if sibling else (key,), holds)


def all_rules() -> list[Rule]:
    """Each field's own rule first (so the rules across fields see values in range), then the others."""
    fields = [_field_rule(key, f) for key, (_, f) in leaf_keys().items()
              if f.metadata.get("choices") or f.metadata.get("check")]
    return fields + list(CROSS.values())


def check(cfg: TrialConfig, context: Context | None = None) -> None:
    """Raise ConfigError for the first rule `cfg` breaks."""
    context = context or Context()
    for r in all_rules():
        r.holds(cfg, context)


# ---- train ---------------------------------------------------------------

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(cfg: TrialConfig, ctx: Context) -> str | None:
    """"cpu" or "cuda" where the trial trains, or None when not known."""
    name = cfg.train.device
    return ctx.device if name == "auto" else name.split(":")[0]


@rule("train.device")
def device_exists(cfg: TrialConfig, ctx: Context) -> None:
    if not DEVICE.match(cfg.train.device):
        raise ConfigError("train.device", f"not a device: {cfg.train.device!r}", "use auto, cpu, cuda or cuda:N")
    if _device(cfg, ctx) == "cuda" and ctx.device == "cpu":
        raise ConfigError("train.device", "CUDA is not available on this machine", "use auto or cpu")


@rule("train.precision", "train.device")
def fp16_needs_cuda(cfg: TrialConfig, ctx: Context) -> None:
    if cfg.train.precision == "fp16" and _device(cfg, ctx) == "cpu":
        where = " (train.device auto is the CPU on this machine)" if cfg.train.device == "auto" else ""
        raise ConfigError("train.precision", f"fp16 autocast with a grad scaler needs a CUDA device{where}",
                          "use bf16 on a CPU")


@rule("train.precision", "train.device")
def bf16_is_native(cfg: TrialConfig, ctx: Context) -> None:
    if cfg.train.precision == "bf16" and _device(cfg, ctx) == "cuda" and not ctx.native_bf16:
        raise ConfigError("train.precision", "this GPU has no native bf16 (compute capability below 8.0), so "
                          "bf16 would run emulated, slower than fp32", "use fp16 on this GPU")


@rule("train.accumulate", "train.batch_size")
def accumulate_divides_batch(cfg: TrialConfig, ctx: Context) -> None:
    tc = cfg.train
    if tc.batch_size % tc.accumulate:
        raise ConfigError("train.accumulate", f"must divide train.batch_size={tc.batch_size}, got {tc.accumulate}",
                          "use a divisor of the batch size, e.g. 2 or 4")


@rule("train.devices", "train.nodes", "train.batch_size", "train.accumulate", "train.eval_batch_size")
def ranks_share_the_batch(cfg: TrialConfig, ctx: Context) -> None:
    tc = cfg.train
    world = tc.devices * tc.nodes
    if world > 1 and tc.batch_size % (world * tc.accumulate):
        raise ConfigError("train.batch_size", f"{tc.batch_size} does not split into {world} ranks x {tc.accumulate} "
                          "micro-batches", f"use a multiple of {world * tc.accumulate}")


@rule("train.ghost_batch", "train.sync_bn", "train.devices", "train.nodes")
def ghost_or_sync_bn(cfg: TrialConfig, ctx: Context) -> None:
    tc = cfg.train
    if tc.ghost_batch is not None and tc.sync_bn and tc.devices * tc.nodes > 1:
        raise ConfigError("train.sync_bn", "true: SyncBatchNorm takes statistics over the global batch, and "
                          f"train.ghost_batch={tc.ghost_batch} over smaller ones", "use one of the two")


@rule("train.ghost_batch", "train.batch_size", "train.accumulate", "train.devices", "train.nodes")
def ghost_batch_fits(cfg: TrialConfig, ctx: Context) -> None:
    tc = cfg.train
    micro = tc.batch_size // (tc.accumulate * tc.devices * tc.nodes)
    if tc.ghost_batch is not None and tc.ghost_batch > micro:
        raise ConfigError("train.ghost_batch", f"{tc.ghost_batch} is not in 1..{micro} (the batch each forward "
                          "pass sees)", "use a ghost batch no larger than batch_size / (accumulate x ranks)")


@rule("train.batch_size", "data.")
def batch_fits_data(cfg: TrialConfig, ctx: Context) -> None:
    n = data.train_images(cfg.data)
    if n is not None and cfg.train.batch_size > n:
        raise ConfigError("train.batch_size", f"{cfg.train.batch_size} is larger than the {n} training images",
                          "lower train.batch_size or raise data.subset")


@rule("train.teacher")
def teacher_exists(cfg: TrialConfig, ctx: Context) -> None:
    if cfg.train.teacher and ctx.local:
        model_io.read_model_file(cfg.train.teacher)


# ---- data ----------------------------------------------------------------

@rule("data.")
def data_present(cfg: TrialConfig, ctx: Context) -> None:
    if ctx.local and (reason := data.missing(cfg.data)) is not None:
        key, _, rest = reason.partition(": ")
        message, _, fix = rest.partition("; fix: ")
        raise ConfigError(key, message, fix)


@rule("data.dataset", "data.storage")
def shards_are_streamed(cfg: TrialConfig, ctx: Context) -> None:
    if cfg.data.dataset == "image_shards" and cfg.data.storage == "resident":
        raise ConfigError("data.storage", "resident: tar shards are read as a stream", "use data.storage: auto or "
                          "stream, or write an image folder with `sweep data` to hold the images in memory")


@rule("data.decode", "augment.policy.name")
def device_decode_takes_no_policy(cfg: TrialConfig, ctx: Context) -> None:
    if cfg.data.decode == "device" and cfg.augment.policy.name != "none":
        raise ConfigError("data.decode", f"device: augment.policy ({cfg.augment.policy.name}) runs on each image in "
                          "the loader's workers, which leave the images encoded for the device",
                          "use data.decode: workers with a policy, or augment.policy.name: none")


@rule("data.dataset", "data.storage", "augment.random_resized_crop", "data.")
def streamed_folders_take_resized_crops(cfg: TrialConfig, ctx: Context) -> None:
    if not data.reads_files(cfg.data) or cfg.augment.random_resized_crop or cfg.data.storage == "resident":
        return
    streamed = cfg.data.storage == "stream" or cfg.data.dataset == "image_shards" or (
        ctx.local and data.missing(cfg.data) is None and data.streams(cfg.data))
    if streamed:
        raise ConfigError("data.storage", f"{cfg.data.storage}: streamed images ({cfg.data.dataset}) are cut by random "
                          "resized crops, and augment.random_resized_crop is false", "set augment.random_resized_crop: "
                          "true, or data.storage: resident for an image folder that fits in memory")


# ---- optim ---------------------------------------------------------------

@rule("optim.name", "optim.nesterov", "optim.momentum", "optim.dampening")
def nesterov_needs_momentum(cfg: TrialConfig, ctx: Context) -> None:
    oc = cfg.optim
    if oc.name == "sgd" and oc.nesterov and (oc.momentum <= 0 or oc.dampening != 0):
        raise ConfigError("optim.nesterov", f"Nesterov momentum needs momentum > 0 and dampening 0, got "
                          f"momentum={oc.momentum}, dampening={oc.dampening}", "set optim.nesterov: false")


# ---- schedule --------------------------------------------------------------

@rule("schedule.warmup_epochs", "train.epochs", "train.batch_size", "data.")
def warmup_leaves_training(cfg: TrialConfig, ctx: Context) -> None:
    sc, epochs = cfg.schedule, cfg.train.epochs
    n = data.train_images(cfg.data)
    steps = n // cfg.train.batch_size if n is not None else None
    # In steps where the data set's size is known (warm-up is rounded to whole steps), else in epochs.
    too_long = int(round(sc.warmup_epochs * steps)) >= steps * epochs if steps else sc.warmup_epochs >= epochs
    if too_long:
        raise ConfigError("schedule.warmup_epochs", f"{sc.warmup_epochs} epochs of warm-up leave no training "
                          f"after it ({epochs} epochs)", "shorten warm-up below train.epochs")


@rule("schedule.warmup_mode", "schedule.warmup_start")
def exponential_warmup_starts_above_zero(cfg: TrialConfig, ctx: Context) -> None:
    sc = cfg.schedule
    if sc.warmup_mode == "exponential" and not sc.warmup_start > 0:
        raise ConfigError("schedule.warmup_start", f"must be > 0 for exponential warm-up, got {sc.warmup_start}",
                          "use e.g. 0.01")


# ---- augment ---------------------------------------------------------------

@rule("augment.policy.name", "augment.policy.timm")
def timm_policy_parses(cfg: TrialConfig, ctx: Context) -> None:
    if cfg.augment.policy.name == "timm":
        from .policies import check_timm
        if (reason := check_timm(cfg.augment.policy.timm)) is not None:
            raise ConfigError("augment.policy.timm", f"timm cannot read {cfg.augment.policy.timm!r} ({reason})",
                              "use timm's RandAugment form, e.g. rand-m7-mstd0.5-inc1")


@rule("augment.repeated", "train.batch_size")
def repeated_fits_batch(cfg: TrialConfig, ctx: Context) -> None:
    r, batch = cfg.augment.repeated, cfg.train.batch_size
    if r > batch:
        raise ConfigError("augment.repeated", f"{r} copies of an image do not fit in train.batch_size {batch}",
                          "use at most train.batch_size copies (1: off)")


@rule("augment.pad_mode", "augment.crop_padding", "data.")
def reflect_pad_below_image(cfg: TrialConfig, ctx: Context) -> None:
    shape = data.image_shape(cfg.data)
    ac = cfg.augment
    if shape is not None and ac.pad_mode == "reflect" and ac.crop_padding >= min(shape[1:]):
        raise ConfigError("augment.crop_padding", f"reflect padding needs a pad below the image size "
                          f"{min(shape[1:])}, got {ac.crop_padding}", "lower it or use replicate")


@rule("augment.policy.name", "data.")
def policy_channels(cfg: TrialConfig, ctx: Context) -> None:
    shape = data.image_shape(cfg.data)
    if shape is not None and cfg.augment.policy.name != "none" and shape[0] not in (1, 3):
        raise ConfigError("augment.policy.name", f"policies need 1- or 3-channel images, not {shape[0]}", "use none")


@rule("augment.color_jitter.", "augment.lighting", "data.dataset", "data.synthetic_shape")
def colour_needs_rgb(cfg: TrialConfig, ctx: Context) -> None:
    shape, aug = data.image_shape(cfg.data), cfg.augment
    cj = aug.color_jitter
    if shape is not None and shape[0] != 3 and (cj.brightness or cj.contrast or cj.saturation or aug.lighting):
        key = "augment.lighting" if aug.lighting else "augment.color_jitter"
        raise ConfigError(key, f"colour jitter and lighting need RGB images, not {shape[0]} channels",
                          "set it to 0 for this data set")


@rule("augment.dual_cutout.alpha", "augment.dual_cutout.size")
def dual_cutout_size(cfg: TrialConfig, ctx: Context) -> None:
    dc = cfg.augment.dual_cutout
    if dc.alpha > 0 and dc.size < 1:
        raise ConfigError("augment.dual_cutout.size", f"must be > 0 when dual_cutout.alpha is on, got {dc.size}",
                          "use e.g. 16")


# ---- model -------------------------------------------------------------------

@rule("model.", "data.")
def model_family(cfg: TrialConfig, ctx: Context) -> None:
    check_model(cfg.model, data.image_shape(cfg.data))
