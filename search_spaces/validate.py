"""Every trial config a spec can produce, checked by the trial config's rules before anything runs.

A rule (trainable.rules) reads a few keys. The configs it must see are the
combinations of the values the spec can give those keys (each value of a
choice, grid or fixed, the ends of a range, every variant, derived keys
computed from their inputs) under the conditions that make them exist, and
the base for everything else. A broken rule becomes a SpecError at the line
that gave the value. The rules import torch (their registries do), so they
are imported here only when a spec is checked.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from trainable.config import TrialConfig, leaf_keys, with_key
from trainable.errors import ConfigError

from .errors import SpecError
from .spec import Param, SweepSpec

CAP = 4096  # combinations tried per rule; past it, a seeded sample of as many (each value at least once)


def check_configs(spec: SweepSpec, context=None) -> None:
    """Raise a SpecError for the first rule some config of `spec` breaks (`context`: where trials run)."""
    from trainable import rules

    context = context or rules.Context.here()
    built: dict[tuple, TrialConfig] = {}
    for rule in rules.all_rules():
        for values, derived in assignments(spec, rule.reads_key):
            try:
                cfg = _config(spec, values, derived, built)
                rule.holds(cfg, context)
            except ConfigError as e:
                raise _located(spec, e, values, rule.reads_key) from None


def assignments(spec: SweepSpec, relevant: Callable[[str], bool]) -> Iterator[tuple[dict[str, Any], tuple]]:
    """(sampled values, derived params to compute) for each combination a rule reading `relevant` keys needs."""
    need = _needed(spec, relevant)
    sampled = [p for p in spec.space if p.key in need and not p.derived]
    derived = tuple(p for p in spec.space if p.key in need and p.derived)
    sizes = [len(p.dist.tried()) for p in sampled]
    if math.prod(sizes) <= CAP:
        for values in _walk(sampled, 0, {}):
            yield values, derived
        return
    rng = random.Random(0)
    for i in range(CAP):  # the first max(sizes) walks take each param's values in turn, then at random
        yield _sample(sampled, rng, i if i < max(sizes) else None), derived


def _needed(spec: SweepSpec, relevant: Callable[[str], bool]) -> set[str]:
    """The space keys that decide the relevant keys: themselves, their conditions, their derives' inputs."""
    in_space = {p.key for p in spec.space}
    set_by_variant = {k for values in spec.variants.values() for k in values}
    need = {p.key for p in spec.space if relevant(p.key)}
    if any(relevant(k) for k in set_by_variant):
        need.add("variant")
    grown = True
    while grown:
        grown = False
        for p in spec.space:
            if p.key not in need:
                continue
            for k in p.needs:
                k = k if k in in_space else ("variant" if k in set_by_variant and "variant" in in_space else None)
                if k and k not in need:
                    need.add(k)
                    grown = True
    return need


def _walk(params: list[Param], i: int, values: dict) -> Iterator[dict]:
    if i == len(params):
        yield dict(values)
        return
    p = params[i]
    if not p.active(values) or p.key in values:  # off, or set by an alternative already
        yield from _walk(params, i + 1, values)
        return
    for value in p.dist.tried():
        values[p.key] = value
        yield from _walk(params, i + 1, values)
        del values[p.key]


def _sample(params: list[Param], rng: random.Random, turn: int | None) -> dict:
    values: dict = {}
    for p in params:
        if p.active(values) and p.key not in values:
            tried = p.dist.tried()
            values[p.key] = tried[turn % len(tried)] if turn is not None else rng.choice(tried)
    return values


def _config(spec: SweepSpec, values: dict, derived: tuple[Param, ...], built: dict) -> TrialConfig:
    """The trial config of sampled `values` with the active derived params computed (memoised)."""
    memo = (tuple(sorted((k, repr(v)) for k, v in values.items())), tuple(p.key for p in derived))
    if memo not in built:
        cfg = spec.config(values)
        for p in derived:
            if p.active(values):
                value = spec.derive(p, cfg)
                cfg = with_key(cfg, p.key, value)
                values[p.key] = value
        built[memo] = cfg
    return built[memo]


def _located(spec: SweepSpec, e: ConfigError, values: dict, reads: Callable[[str], bool]) -> SpecError:
    """The rule's error at the spec entry that gave the key it names; where that key keeps its default,
    at the most specific entry that gave another key the rule read (a space entry, the later first,
    then a variant, a preset or --set, the base). The message says which sampled values broke it."""
    given = {k: v for k, v in values.items() if k not in ("variant", e.key) and reads(k)}
    own = _origin(spec, e.key, values)
    others = [o for k in leaf_keys() if k != e.key and reads(k) if (o := _origin(spec, k, values)) is not None]
    path, key, _ = own or max(others, key=lambda o: o[2], default=(("base", *e.key.split(".")), f"base.{e.key}", ()))
    shown = [f"{k}={v!r}" for k, v in given.items()]
    if values.get("variant") is not None and any(reads(k) for k in spec.variants.get(values["variant"], {})):
        shown.append(f"variant {values['variant']}")
    message = e.message + (f" (when {', '.join(shown)})" if shown else "")
    return spec.error(path, message, e.fix, key=key)


def _origin(spec: SweepSpec, key: str, values: dict) -> tuple[tuple, str, tuple] | None:
    """(path in the spec, key as shown, how specific) of what set `key` in this combination, or None
    for a default."""
    for i, p in enumerate(spec.space):
        if p.key == key and (key in values or p.derived) and p.active(values):
            return p.path or ("space", key), key, (4, i)
    lines = spec.where.lines if spec.where is not None else {}
    overrides = spec.where.overrides if spec.where is not None else {}
    variant = values.get("variant")
    if variant is not None and key in spec.variants.get(variant, {}):
        nested = ("variants", variant, *key.split("."))
        return (nested if nested in lines else ("variants", variant, key)), f"variants.{variant}.{key}", (3,)
    base_path = ("base", *key.split("."))
    if any(base_path[:i] in overrides for i in range(1, len(base_path) + 1)):
        return base_path, f"base.{key}", (2,)
    for path in (base_path, ("base", key)):
        if path in lines:
            return path, f"base.{key}", (1,)
    return None

