"""The typed trial config: one frozen tree of dataclasses with documented defaults.

Every key a spec can set or search lives here, so the spec validator, the CLI's
`--set` and `sweep config --defaults` all read the same source of truth.
"""
from __future__ import annotations

import dataclasses
import json
import math
import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Optional

from .errors import ConfigError


def opt(default, doc: str, choices: tuple = ()):
    """A config field with its one-line documentation (and allowed values)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"doc": doc, "choices": choices})
    return field(default=default, metadata={"doc": doc, "choices": choices})


@dataclass(frozen=True)
class Data:
    dataset: str = opt("fashion_mnist", "fashion_mnist | mnist | kmnist | cifar10 | cifar100 | image_folder")
    root: str = opt("~/.cache/recipe-sweep/data", "where torchvision datasets are stored or downloaded; "
                    "image_folder: the folder holding train_dir and test_dir")
    download: bool = opt(False, "allow torchvision to download a missing dataset")
    val_fraction: float = opt(0.1, "share of the training set held out for validation (seeded split)")
    split_seed: int = opt(0, "seed of the train/val split; fixed across trials so they compare fairly")
    subset: Optional[int] = opt(None, "cap on training images, for quick runs (null: all)")
    eval_subset: Optional[int] = opt(None, "cap on validation and test images (null: all)")
    train_dir: str = opt("train", "image_folder: subfolder of class folders for training (and validation)")
    test_dir: str = opt("val", "image_folder: subfolder of class folders for testing")
    image_size: int = opt(224, "image_folder: training resolution (random-resized-crop output)")
    test_size: Optional[int] = opt(None, "image_folder: evaluation resolution (FixRes; null: image_size)")


@dataclass(frozen=True)
class Model:
    """Architecture options; null means the family's default (`sweep models NAME` shows them).

    A family rejects options it does not take, so a typo in intent is an error.
    """

    name: str = opt("resnet_preact", "architecture; `sweep models` lists them (tv:NAME for torchvision)")
    depth: Optional[int] = opt(None, "total depth; each family names its valid depths")
    block: Optional[str] = opt(None, "residual block type", ("basic", "bottleneck"))
    base_channels: Optional[int] = opt(None, "channels of the first stage (shake_shake: its width, e.g. 32, 96)")
    widen: Optional[int] = opt(None, "widening factor of every stage (wrn, resnet_preact)")
    dropout: Optional[float] = opt(None, "dropout rate inside blocks (wrn, densenet) or before the classifier")
    remove_first_relu: Optional[bool] = opt(None, "drop the first ReLU of each residual branch (PyramidNet-style)")
    add_last_bn: Optional[bool] = opt(None, "add a BN after the last conv of each residual branch")
    preact_stage: Optional[tuple[bool, ...]] = opt(None, "pre-activate the shortcut of each stage's first block")
    growth_rate: Optional[int] = opt(None, "densenet: channels each layer adds")
    compression: Optional[float] = opt(None, "densenet: channel reduction at each transition (BC: 0.5)")
    alpha: Optional[int] = opt(None, "pyramidnet: total channel increase over the network")
    cardinality: Optional[int] = opt(None, "resnext: number of groups")
    base_width: Optional[int] = opt(None, "resnext: channels per group in the first stage")
    shake_forward: Optional[bool] = opt(None, "shake_shake: random branch weights in the forward pass")
    shake_backward: Optional[bool] = opt(None, "shake_shake: random (independent) weights in the backward pass")
    shake_image: Optional[bool] = opt(None, "shake_shake: one weight per image (else one per batch)")
    se_reduction: Optional[int] = opt(None, "se_resnet_preact: squeeze-excitation channel reduction")
    stage_channels: Optional[tuple[int, ...]] = opt(None, "vgg: channels of each stage")
    stage_layers: Optional[tuple[int, ...]] = opt(None, "vgg: conv layers in each stage")
    drop_path: Optional[float] = opt(None, "stochastic depth: drop rate of the last block, linear over depth")
    zero_init_residual: Optional[bool] = opt(None, "start each residual branch at zero (the block is the identity)")
    init: Optional[str] = opt(None, "weight init", ("kaiming_fan_out", "kaiming_fan_in", "xavier"))


@dataclass(frozen=True)
class Train:
    epochs: int = opt(200, "training epochs")
    batch_size: int = opt(128, "training batch size")
    eval_batch_size: int = opt(512, "batch size for validation and test")
    seed: int = opt(0, "seeds model init, shuffling and augmentation")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = opt("fp32", "fp32 | bf16 (autocast)", ("fp32", "bf16"))
    channels_last: bool = opt(True, "NHWC memory format (faster convolutions on CPU and GPU)")
    threads: int = opt(0, "torch CPU threads for this trial (0: torch's default)")


@dataclass(frozen=True)
class Optim:
    name: str = opt("sgd", "optimizer", ("sgd",))
    lr: float = opt(0.1, "initial learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(True, "Nesterov momentum")
    weight_decay: float = opt(5e-4, "L2 weight decay")


@dataclass(frozen=True)
class Schedule:
    name: str = opt("cosine", "learning-rate schedule, stepped every iteration", ("cosine", "multistep"))
    warmup_epochs: float = opt(0.0, "linear warm-up length in epochs (fractions allowed)")
    warmup_start: float = opt(0.0, "warm-up starts at this fraction of the lr")
    min_lr_ratio: float = opt(0.0, "cosine: floor as a fraction of the initial lr")
    milestones: tuple[float, ...] = opt((0.5, 0.75), "multistep: decay points as fractions of the training length")
    gamma: float = opt(0.1, "multistep: factor applied at each milestone")


@dataclass(frozen=True)
class Augment:
    crop_padding: int = opt(4, "random crop after zero padding by this many pixels (0: off)")
    flip: bool = opt(True, "random horizontal flip")
    random_resized_crop: bool = opt(False, "random crop of random area and aspect, resized to data.image_size")
    crop_scale: tuple[float, ...] = opt((0.08, 1.0), "random_resized_crop: range of the crop's area share")
    normalize: bool = opt(True, "subtract the dataset mean and divide by its std")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy targets")


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


def leaf_keys(cls=TrialConfig, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every settable dotted key with its type and field (e.g. 'optim.lr')."""
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


def check_choices(key: str, f: dataclasses.Field, value) -> None:
    choices = f.metadata.get("choices", ())
    if choices and value is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"use {close[0]!r}" if close else f"use one of {', '.join(map(str, choices))}"
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, choices))}", hint)


def unknown_key(key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    fix = f"did you mean {close[0]!r}?" if close else "`sweep config --defaults` lists every key"
    return ConfigError(key, "not a trial-config key", fix)


def with_key(cfg: TrialConfig, key: str, value) -> TrialConfig:
    """A copy of cfg with one dotted key set, coerced to the field's type."""
    keys = leaf_keys(type(cfg))
    if key not in keys:
        raise unknown_key(key, keys)
    tp, f = keys[key]
    value = coerce(key, tp, value)
    check_choices(key, f, value)

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
        lines.append(f"  {name}: {shown}".ljust(44) + f"# {type_name(tp)}: {f.metadata['doc']}")
    return "\n".join(lines)
