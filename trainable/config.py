"""The typed trial config: one frozen tree of dataclasses with documented defaults.

Every key a spec can set or search lives here, so the spec validator, the CLI's
`--set` and `sweep config --defaults` all read the same source of truth.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Optional

from .errors import ConfigError
from .registries import DATASETS, ERASE_VALUES, LOSSES, OPTIMIZERS, POLICIES, SCHEDULES, WARMUPS


@dataclass(frozen=True)
class Range:
    """The bounds a number (or each item of a list) must lie in; an open end excludes its bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None  # a list: exactly this many items
    ordered: bool = False      # a list: [low, high] with low <= high

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            if self.low_open:
                return "positive" if self.low == 0 else f"> {self.low:g}"
            return f"at least {self.low:g}"
        return f"< {self.high:g}" if self.high_open else f"at most {self.high:g}"

    def holds(self, x) -> bool:
        if self.low is not None and not (x > self.low if self.low_open else x >= self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None."""
        items = value if isinstance(value, tuple) else (value,)
        if self.length is not None and len(items) != self.length:
            return f"needs {self.length} values, got {len(items)}"
        if (self.low is not None or self.high is not None) and not all(self.holds(x) for x in items):
            return f"must be {self.describe()}" + (" (each value)" if isinstance(value, tuple) else "")
        if self.ordered and list(items) != sorted(items):
            return "must be [low, high] with low <= high"
        return None


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, low_open=True), Range(0), Range(1)
PROBABILITY, FRACTION = Range(0, 1), Range(0, 1, high_open=True)


def opt(default, doc: str, choices=(), check: Range | None = None, used_when: tuple[str, tuple] | None = None):
    """A config field with its one-line documentation, its allowed values (a tuple, or a registry
    whose names are the choices) and its range. A null value (where the type allows it) passes both.
    `used_when=(sibling, values)`: the field only matters when its section's `sibling` field takes one
    of `values` (a schedule's own keys), so its range is only checked then: a sweep over the sibling
    may carry values that only another choice uses."""
    meta = {"doc": doc, "choices": choices, "check": check, "used_when": used_when}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Data:
    dataset: str = opt("fashion_mnist", "data set; synthetic: random images, for benchmarks", DATASETS)
    root: str = opt("~/.cache/recipe-sweep/data", "where torchvision datasets are stored or downloaded; "
                    "image_folder: the folder holding train_dir and test_dir")
    download: bool = opt(False, "allow torchvision to download a missing dataset")
    val_fraction: float = opt(0.1, "share of the training set held out for validation (seeded split)", check=FRACTION)
    split_seed: int = opt(0, "seed of the train/val split; fixed across trials so they compare fairly")
    subset: Optional[int] = opt(None, "cap on training images, for quick runs (null: all)", check=AT_LEAST_1)
    eval_subset: Optional[int] = opt(None, "cap on validation and test images (null: all)", check=AT_LEAST_1)
    train_dir: str = opt("train", "image_folder: subfolder of class folders for training (and validation)")
    test_dir: str = opt("val", "image_folder: subfolder of class folders for testing")
    image_size: int = opt(224, "image_folder: training resolution (random-resized-crop output)", check=AT_LEAST_1)
    test_size: Optional[int] = opt(None, "evaluation resolution (FixRes; null: the training resolution: "
                                   "image_size for image_folder, the images' own size for the others)",
                                   check=AT_LEAST_1)
    eval_crop: float = opt(0.875, "image_folder: share of the resized shorter side the evaluation's centre crop "
                           "keeps (RSB: 0.95)", check=Range(0, 1, low_open=True))
    storage: str = opt("auto", "image_folder: resident (decoded once, held in memory) or stream (read from disk "
                       "every epoch, memory bounded); auto: resident when that takes under a quarter of RAM",
                       ("auto", "resident", "stream"))
    workers: int = opt(0, "image_folder streamed, image_shards: DataLoader worker processes (0: every core but "
                       "one)", check=NON_NEGATIVE)
    decode: str = opt("workers", "image_folder streamed, image_shards: where images are decoded: workers (the "
                      "loader's processes, on the CPU) or device (the training device, nvJPEG on CUDA; the workers "
                      "read the files and draw the crops)", ("workers", "device"))
    synthetic_shape: tuple[int, ...] = opt((3, 32, 32), "synthetic: image shape [channels, height, width]",
                                           check=Range(1, length=3))
    synthetic_classes: int = opt(10, "synthetic: number of classes", check=Range(2))
    synthetic_size: int = opt(50000, "synthetic: training images (the test split has a fifth as many)",
                              check=AT_LEAST_1)
    synthetic_seed: int = opt(0, "synthetic: seed of the generated images and labels")


@dataclass(frozen=True)
class Model:
    """Architecture options; null means the family's default (`sweep models NAME` shows them).

    A family refuses options it does not take, so a typo in intent is an error.
    """

    name: str = opt("resnet_preact", "architecture; `sweep models` lists them (tv:NAME for torchvision)")
    depth: Optional[int] = opt(None, "total depth; each family names its valid depths", check=AT_LEAST_1)
    block: Optional[str] = opt(None, "residual block type", ("basic", "bottleneck"))
    base_channels: Optional[int] = opt(None, "channels of the first stage (shake_shake: its width, e.g. 32, 96)",
                                       check=AT_LEAST_1)
    widen: Optional[int] = opt(None, "widening factor of every stage (wrn, resnet_preact)", check=AT_LEAST_1)
    dropout: Optional[float] = opt(None, "dropout rate inside blocks (wrn, densenet) or before the classifier",
                                   check=FRACTION)
    remove_first_relu: Optional[bool] = opt(None, "drop the first ReLU of each residual branch (PyramidNet-style)")
    add_last_bn: Optional[bool] = opt(None, "add a BN after the last conv of each residual branch")
    preact_stage: Optional[tuple[bool, ...]] = opt(None, "pre-activate the shortcut of each stage's first block",
                                                   check=Range(length=3))
    growth_rate: Optional[int] = opt(None, "densenet: channels each layer adds", check=AT_LEAST_1)
    compression: Optional[float] = opt(None, "densenet: channel reduction at each transition (BC: 0.5)",
                                       check=Range(0, 1, low_open=True))
    alpha: Optional[int] = opt(None, "pyramidnet: total channel increase over the network", check=NON_NEGATIVE)
    cardinality: Optional[int] = opt(None, "resnext: number of groups", check=AT_LEAST_1)
    base_width: Optional[int] = opt(None, "resnext: channels per group in the first stage", check=AT_LEAST_1)
    shake_forward: Optional[bool] = opt(None, "shake_shake: random branch weights in the forward pass")
    shake_backward: Optional[bool] = opt(None, "shake_shake: random (independent) weights in the backward pass")
    shake_image: Optional[bool] = opt(None, "shake_shake: one weight per image (else one per batch)")
    se_reduction: Optional[int] = opt(None, "se_resnet_preact: squeeze-excitation channel reduction",
                                      check=AT_LEAST_1)
    stage_channels: Optional[tuple[int, ...]] = opt(None, "vgg: channels of each stage", check=AT_LEAST_1)
    stage_layers: Optional[tuple[int, ...]] = opt(None, "vgg: conv layers in each stage", check=AT_LEAST_1)
    drop_path: Optional[float] = opt(None, "stochastic depth: drop rate of the last block, linear over depth",
                                     check=FRACTION)
    zero_init_residual: Optional[bool] = opt(None, "start each residual branch at zero (the block is the identity)")
    init: Optional[str] = opt(None, "weight init", ("kaiming_fan_out", "kaiming_fan_in", "xavier"))
    tweak: Optional[str] = opt(None, "resnet_imagenet: Bag of Tricks variant; a: the original, b: the stride on "
                               "the 3x3 conv, c: b and a deep stem, d: c and an average-pool shortcut",
                               ("a", "b", "c", "d"))


@dataclass(frozen=True)
class Train:
    epochs: int = opt(200, "training epochs", check=AT_LEAST_1)
    batch_size: int = opt(128, "training batch size (the global batch, over every rank)", check=AT_LEAST_1)
    eval_batch_size: int = opt(512, "batch size for validation and test", check=AT_LEAST_1)
    seed: int = opt(0, "seeds model init, shuffling and augmentation")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = opt("fp32", "bf16: autocast; fp16: autocast with a grad scaler (GPU only)",
                         ("fp32", "bf16", "fp16"))
    channels_last: bool = opt(True, "NHWC memory format (faster convolutions on CPU and GPU)")
    compile: bool = opt(False, "torch.compile the model for training steps (evaluation stays eager); pays on GPUs, "
                        "not on a few CPU cores (BENCHMARKS.md); set TORCHINDUCTOR_COMPILE_THREADS=1 on few cores")
    threads: int = opt(0, "torch CPU threads for this trial (0: torch's default)", check=NON_NEGATIVE)
    accumulate: int = opt(1, "micro-batches per batch: gradients are accumulated, one optimizer step per batch",
                          check=AT_LEAST_1)
    ghost_batch: Optional[int] = opt(None, "ghost batch norm: BN statistics over virtual batches of this size",
                                     check=AT_LEAST_1)
    devices: int = opt(1, "data-parallel ranks of the trial on each node (processes, one per GPU on CUDA), each "
                       "training on its share of every batch; the engine starts them", check=AT_LEAST_1)
    nodes: int = opt(1, "nodes the trial's ranks span (the Ray engine; devices ranks on each)", check=AT_LEAST_1)
    sync_bn: bool = opt(False, "with several ranks: BatchNorm statistics over the global batch (SyncBatchNorm), "
                        "not each rank's share")
    ema_decay: Optional[float] = opt(None, "EMA of weights with this decay (e.g. 0.999), evaluated beside the raw "
                                     "model", check=Range(0, 1, low_open=True, high_open=True))
    early_stop: Optional[int] = opt(None, "stop when val_error has not improved for this many epochs",
                                    check=AT_LEAST_1)
    tta_flip: bool = opt(False, "evaluate on each image and its mirror, averaging the softmax")
    loss: str = opt("ce", "ce: softmax cross-entropy; bce: binary cross-entropy on targets, as in RSB", LOSSES)
    bce_threshold: Optional[float] = opt(None, "bce: targets above it become 1 and the others 0, after mixing and "
                                         "smoothing (RSB A1: 0.2; null: off)", check=FRACTION,
                                         used_when=("loss", ("bce",)))
    teacher: Optional[str] = opt(None, "knowledge distillation from this model file (saved with save_model)")
    distill_alpha: float = opt(0.5, "distillation: weight of the teacher's soft targets in the loss",
                               check=PROBABILITY)
    distill_temperature: float = opt(1.0, "distillation: softmax temperature of teacher and student",
                                     check=POSITIVE)
    save_model: Optional[str] = opt(None, "write the final weights and model config to this file")


@dataclass(frozen=True)
class Optim:
    name: str = opt("sgd", "optimizer", OPTIMIZERS)
    lr: float = opt(0.1, "initial learning rate (per reference_batch images when scale_lr is on)", check=POSITIVE)
    momentum: float = opt(0.9, "SGD / LARS momentum", check=FRACTION)
    dampening: float = opt(0.0, "SGD dampening", check=PROBABILITY)
    nesterov: bool = opt(True, "Nesterov momentum (SGD)")
    weight_decay: float = opt(5e-4, "weight decay (L2 for sgd/adam/lars, decoupled for adamw/lamb)",
                              check=NON_NEGATIVE)
    no_decay_bn_bias: bool = opt(False, "exclude BN parameters and biases from weight decay")
    betas: tuple[float, ...] = opt((0.9, 0.999), "adam / adamw / adabound / lamb betas",
                                   check=Range(0, 1, high_open=True, length=2))
    eps: float = opt(1e-8, "adam / adamw / adabound / lamb / lars epsilon", check=NON_NEGATIVE)
    final_lr: float = opt(0.1, "adabound: the SGD learning rate the bounds converge to", check=POSITIVE)
    bound_gamma: float = opt(1e-3, "adabound: convergence speed of the bounds", check=POSITIVE)
    trust_coefficient: float = opt(0.001, "lars: trust coefficient of the layer-wise lr", check=POSITIVE)
    grad_clip: Optional[float] = opt(None, "clip the gradients' global norm to this value", check=POSITIVE)
    scale_lr: bool = opt(False, "linear scaling rule: lr = lr * batch_size / reference_batch")
    reference_batch: int = opt(256, "linear scaling rule: the batch size that lr is given for", check=AT_LEAST_1)


@dataclass(frozen=True)
class Schedule:
    name: str = opt("cosine", "learning-rate schedule, stepped every iteration", SCHEDULES)
    warmup_epochs: float = opt(0.0, "warm-up length in epochs (fractions allowed)", check=NON_NEGATIVE)
    warmup_mode: str = opt("linear", "warm-up shape", WARMUPS)
    warmup_start: float = opt(0.0, "warm-up starts at this fraction of the lr (exponential: must be > 0)",
                              check=NON_NEGATIVE)
    min_lr_ratio: float = opt(0.0, "cosine / linear / sgdr: floor as a fraction of the initial lr",
                              check=PROBABILITY)
    milestones: tuple[float, ...] = opt((0.5, 0.75), "multistep: decay points as fractions of the training length",
                                        check=PROBABILITY, used_when=("name", ("multistep",)))
    step_epochs: float = opt(30.0, "step: decay every this many epochs", check=POSITIVE,
                             used_when=("name", ("step",)))
    gamma: float = opt(0.1, "step / multistep: factor at each decay; exponential: factor per epoch", check=POSITIVE,
                       used_when=("name", ("step", "multistep", "exponential")))
    restart_epochs: float = opt(10.0, "sgdr: length of the first cycle in epochs", check=POSITIVE,
                                used_when=("name", ("sgdr",)))
    restart_mult: float = opt(2.0, "sgdr: each cycle is this many times longer than the last (cycles never "
                              "shrink)", check=Range(1), used_when=("name", ("sgdr",)))
    onecycle_peak: float = opt(0.3, "onecycle: share of training spent rising to the peak lr",
                               check=Range(0, 1, low_open=True, high_open=True), used_when=("name", ("onecycle",)))
    onecycle_div: float = opt(25.0, "onecycle: starting lr = lr / this", check=POSITIVE,
                              used_when=("name", ("onecycle",)))
    onecycle_final_div: float = opt(1e4, "onecycle: final lr = lr / (onecycle_div * this)", check=POSITIVE,
                                    used_when=("name", ("onecycle",)))


@dataclass(frozen=True)
class ColorJitter:
    brightness: float = opt(0.0, "scale pixels by a factor drawn in [1 - b, 1 + b] per image (0: off); Bag of "
                            "Tricks 0.4", check=FRACTION)
    contrast: float = opt(0.0, "blend with the image's mean grey by a factor in [1 - c, 1 + c] (0: off)",
                          check=FRACTION)
    saturation: float = opt(0.0, "blend with the image's greyscale by a factor in [1 - s, 1 + s] (0: off)",
                            check=FRACTION)


@dataclass(frozen=True)
class Cutout:
    size: int = opt(0, "side of the square patch set to zero (0: off); e.g. 16 on CIFAR", check=NON_NEGATIVE)
    prob: float = opt(1.0, "share of images that get a patch", check=PROBABILITY)


@dataclass(frozen=True)
class RandomErasing:
    prob: float = opt(0.0, "share of images erased (0: off); the paper uses 0.5", check=PROBABILITY)
    area: tuple[float, ...] = opt((0.02, 0.4), "range of the erased share of the image area",
                                  check=Range(0, 1, low_open=True, length=2, ordered=True))
    ratio: tuple[float, ...] = opt((0.3, 3.3), "range of the erased rectangle's aspect ratio",
                                   check=Range(0, low_open=True, length=2, ordered=True))
    value: str = opt("random", "erase with random values or zeros", ERASE_VALUES)


@dataclass(frozen=True)
class Mixup:
    alpha: float = opt(0.0, "Beta(alpha, alpha) mixing weight (0: off); e.g. 1.0", check=NON_NEGATIVE)
    prob: float = opt(1.0, "share of batches mixed", check=PROBABILITY)


@dataclass(frozen=True)
class CutMix:
    alpha: float = opt(0.0, "Beta(alpha, alpha) area share (0: off); e.g. 1.0", check=NON_NEGATIVE)
    prob: float = opt(1.0, "share of batches mixed", check=PROBABILITY)


@dataclass(frozen=True)
class Ricap:
    beta: float = opt(0.0, "Beta(beta, beta) boundary position (0: off); the paper uses 0.3", check=NON_NEGATIVE)
    prob: float = opt(1.0, "share of batches patched", check=PROBABILITY)


@dataclass(frozen=True)
class DualCutout:
    alpha: float = opt(0.0, "weight of the consistency term between two cutout views (0: off); e.g. 0.1",
                       check=NON_NEGATIVE)
    size: int = opt(16, "cutout side for both views (> 0 when alpha is on)", check=NON_NEGATIVE)


@dataclass(frozen=True)
class Policy:
    name: str = opt("none", "learned or random augmentation policy", POLICIES)
    num_ops: int = opt(2, "randaugment: operations per image", check=NON_NEGATIVE,
                       used_when=("name", ("randaugment",)))
    magnitude: int = opt(9, "randaugment: magnitude", check=Range(0, 30), used_when=("name", ("randaugment",)))
    timm: str = opt("rand-m9-mstd0.5-inc1", "timm: timm's policy string, with timm's magnitudes (0-10); "
                    "rand-m7-mstd0.5-inc1 is RSB A1 and A2's RandAugment, rand-m6-mstd0.5-inc1 A3's",
                    used_when=("name", ("timm",)))


@dataclass(frozen=True)
class Augment:
    crop_padding: int = opt(4, "random crop after padding by this many pixels (0: off)", check=NON_NEGATIVE)
    pad_mode: str = opt("constant", "padding of the random crop", ("constant", "reflect", "replicate"))
    pad_fill: int = opt(0, "constant padding value", check=Range(0, 255))
    flip: bool = opt(True, "random horizontal flip")
    random_resized_crop: bool = opt(False, "random crop of random area and aspect, resized to data.image_size")
    crop_scale: tuple[float, ...] = opt((0.08, 1.0), "random_resized_crop: range of the crop's area share",
                                        check=Range(0, 1, low_open=True, length=2, ordered=True))
    normalize: bool = opt(True, "subtract the dataset mean and divide by its std")
    label_smoothing: float = opt(0.0, "label smoothing; composes with mixup, cutmix and ricap", check=FRACTION)
    repeated: int = opt(1, "repeated augmentation: each batch holds this many augmented copies of each image",
                        check=AT_LEAST_1)
    policy: Policy = field(default_factory=Policy)
    color_jitter: ColorJitter = field(default_factory=ColorJitter)
    lighting: float = opt(0.0, "PCA lighting noise: std of the per-image weights of ImageNet's RGB principal "
                          "components (AlexNet; Bag of Tricks 0.1; 0: off)", check=NON_NEGATIVE)
    cutout: Cutout = field(default_factory=Cutout)
    random_erasing: RandomErasing = field(default_factory=RandomErasing)
    mixup: Mixup = field(default_factory=Mixup)
    cutmix: CutMix = field(default_factory=CutMix)
    ricap: Ricap = field(default_factory=Ricap)
    dual_cutout: DualCutout = field(default_factory=DualCutout)


@dataclass(frozen=True)
class TrialConfig:
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    optim: Optim = field(default_factory=Optim)
    schedule: Schedule = field(default_factory=Schedule)
    augment: Augment = field(default_factory=Augment)


# ---- introspection -------------------------------------------------------

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.lru_cache(maxsize=None)
def leaf_keys(cls=TrialConfig, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every settable dotted key with its type and field (e.g. 'optim.lr'); shared, so never change it."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = _hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            out.update(leaf_keys(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (tp, f)
    return out


def type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{type_name(inner[0])} or null"
    if typing.get_origin(tp) is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, tp, value):
    """Convert a YAML/CLI value to the field's type or raise ConfigError."""
    bad = ConfigError(key, f"expected {type_name(tp)}, got {value!r}", f"give a {type_name(tp)} value")
    if typing.get_origin(tp) is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return coerce(key, inner, value)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        inner = typing.get_args(tp)[0]
        return tuple(coerce(key, inner, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def field_problem(key: str, f: dataclasses.Field, value) -> ConfigError | None:
    """The field's own rule (its choices and its range) broken by `value`, or None; null passes."""
    if value is None:
        return None
    choices = f.metadata.get("choices", ())
    names = choices.names() if hasattr(choices, "names") else [str(c) for c in choices]
    if names and value not in choices:
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(names)}"
        return ConfigError(key, f"{value!r} is not one of {', '.join(names)}", hint)
    check = f.metadata.get("check")
    problem = check.problem(value) if check else None
    if problem:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        example = f"e.g. {_shown(default)}" if default is not None and not check.problem(default) else "a value in range"
        return ConfigError(key, f"{problem}, got {_shown(value)}", f"use {example}")
    return None


def _shown(value) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else repr(value)


def unknown_key(key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    fix = f"did you mean {close[0]!r}?" if close else "`sweep config --defaults` lists every key"
    return ConfigError(key, "not a trial-config key", fix)


def with_key(cfg: TrialConfig, key: str, value) -> TrialConfig:
    """A copy of cfg with one dotted key set, coerced to the field's type (its rules are checked by
    `trainable.rules.check`, once the whole config is known)."""
    keys = leaf_keys(type(cfg))
    if key not in keys:
        raise unknown_key(key, keys)
    tp, f = keys[key]
    value = coerce(key, tp, value)

    def set_in(obj, parts):
        head, rest = parts[0], parts[1:]
        new = set_in(getattr(obj, head), rest) if rest else value
        return replace(obj, **{head: new})

    return set_in(cfg, key.split("."))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; leaves stop at non-dicts."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def from_flat(values: dict[str, Any], cfg: TrialConfig | None = None) -> TrialConfig:
    cfg = cfg or TrialConfig()
    for key, value in values.items():
        cfg = with_key(cfg, key, value)
    return cfg


def to_dict(cfg) -> dict:
    return {f.name: (to_dict(v) if is_dataclass(v := getattr(cfg, f.name)) else
                     (list(v) if isinstance(v, tuple) else v))
            for f in fields(cfg)}


def non_defaults(cfg: TrialConfig, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dotted keys whose values differ from the defaults (lists as lists), less `ignore`.

    The identity of a config wherever one is compared across releases (a sweep's
    fingerprint, a checkpoint's config): a release that adds a key at a default
    that changes nothing leaves every identity as it was.
    """
    default = flatten(to_dict(TrialConfig()))
    return {k: v for k, v in flatten(to_dict(cfg)).items() if k not in ignore and default.get(k, _ABSENT) != v}


_ABSENT = object()


def get_key(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def defaults_text() -> str:
    """YAML-like listing of every key, its default and what it does."""
    lines = []
    section = None
    for key, (tp, f) in leaf_keys().items():
        head, _, name = key.partition(".")
        if head != section:
            section = head
            lines.append(f"{head}:")
        default = get_key(TrialConfig(), key)
        shown = json.dumps(list(default) if isinstance(default, tuple) else default)
        choices = f.metadata["choices"]
        names = choices.names() if hasattr(choices, "names") else list(choices)
        rule = f.metadata.get("check")
        extra = (f" (one of: {', '.join(names)})" if names else "") + (f" ({rule.describe()})" if rule and
                                                                      (rule.low is not None or rule.high is not None) else "")
        lines.append(f"  {name}: {shown}".ljust(44) + f"# {type_name(tp)}: {f.metadata['doc']}{extra}")
    return "\n".join(lines)
