"""The distributions a `space` entry can name, each validated on parse.

A distribution is a frozen dataclass; `parse` turns the YAML arguments into it
or raises through `fail(message, fix)`, and `tried` lists the values the
validator gives the trial-config rules (every value it can take, or its
ends). Engines map these types to their own.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from trainable.config import coerce
from trainable.errors import ConfigError
from trainable.registry import Registry

Fail = Callable[..., Exception]
DISTRIBUTIONS: Registry = Registry("distribution")
EXTRA_KEYS = {"int": {"step", "log"}}  # keys allowed beside the distribution's own
TRIED_MAX = 64  # an int range with more values than this is tried at its ends and middle


def _number(x, what: str, fail: Fail) -> float:
    if isinstance(x, bool):
        raise fail(f"{what} must be a number, got {x!r}", "write a number")
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            raise fail(f"{what} must be a number, got {x!r}", "write a number such as 1.0e-4") from None
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        raise fail(f"{what} must be a finite number, got {x!r}", "write a number")
    return x


def _bounds(args, name: str, fail: Fail) -> tuple[float, float]:
    if not isinstance(args, list) or len(args) != 2:
        raise fail(f"{name} needs [low, high], got {args!r}", f"write {{{name}: [low, high]}}")
    low, high = (_number(a, b, fail) for a, b in zip(args, ("low", "high")))
    if low >= high:
        raise fail(f"{name} range is empty or inverted: low={low} >= high={high}",
                   "put the smaller bound first, or use {fixed: value} for one value")
    return low, high


def _values(args, name: str, fail: Fail) -> tuple:
    if not isinstance(args, list) or not args:
        raise fail(f"{name} needs a non-empty list of values, got {args!r}", f"write {{{name}: [a, b, ...]}}")
    for v in args:
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise fail(f"{name} values must be scalars, got {v!r}", "use numbers, strings, booleans or null")
    if len(set(map(repr, args))) != len(args):
        raise fail(f"{name} lists a value twice: {args!r}", "remove the duplicate")
    return tuple(args)


def _is(tp, *types) -> bool:
    if typing.get_origin(tp) is typing.Union:
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp in types


@DISTRIBUTIONS.register("loguniform")
@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    @classmethod
    def parse(cls, args, extra, tp, key, fail):
        low, high = _bounds(args, "loguniform", fail)
        if low <= 0:
            raise fail(f"loguniform needs low > 0, got low={low}", "use a positive lower bound such as 1.0e-5")
        _numeric_field(tp, key, "loguniform", fail, allow_int=False)
        return cls(float(low), float(high))

    def describe(self) -> str:
        return f"loguniform [{self.low:g}, {self.high:g}]"

    def tried(self) -> tuple:
        return (self.low, self.high)


@DISTRIBUTIONS.register("uniform")
@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    @classmethod
    def parse(cls, args, extra, tp, key, fail):
        low, high = _bounds(args, "uniform", fail)
        _numeric_field(tp, key, "uniform", fail, allow_int=False)
        return cls(float(low), float(high))

    def describe(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"

    def tried(self) -> tuple:
        return (self.low, self.high)


@DISTRIBUTIONS.register("int")
@dataclass(frozen=True)
class Int:
    low: int
    high: int
    step: int = 1
    log: bool = False

    @classmethod
    def parse(cls, args, extra, tp, key, fail):
        if not isinstance(args, list) or len(args) != 2 or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise fail(f"int needs [low, high] as integers, got {args!r}", "write {int: [16, 64]}")
        low, high = args
        if low > high:
            raise fail(f"int range is inverted: low={low} > high={high}", "put the smaller bound first")
        step, log = extra.get("step", 1), extra.get("log", False)
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise fail(f"int step must be a positive integer, got {step!r}", "use step: 1 or more")
        if not isinstance(log, bool):
            raise fail(f"int log must be true or false, got {log!r}", "use log: true")
        if log and low <= 0:
            raise fail(f"int with log: true needs low > 0, got low={low}", "use a positive lower bound")
        if log and step != 1:
            raise fail("int cannot combine log: true with a step", "drop step or log")
        if (high - low) % step:
            raise fail(f"int range [{low}, {high}] is not a whole number of steps of {step}",
                       f"use high={low + (high - low) // step * step}")
        _numeric_field(tp, key, "int", fail, allow_int=True)
        return cls(low, high, step, log)

    def describe(self) -> str:
        extra = (f", step {self.step}" if self.step != 1 else "") + (", log" if self.log else "")
        return f"int [{self.low}, {self.high}{extra}]"

    def tried(self) -> tuple:
        """Every value of a short range (a rule may need one to divide another), else the ends and a middle."""
        if not self.log and (self.high - self.low) // self.step < TRIED_MAX:
            return tuple(range(self.low, self.high + 1, self.step))
        middle = self.low + (self.high - self.low) // 2 // self.step * self.step
        return tuple(dict.fromkeys((self.low, middle, self.high)))


def _checked_values(values, tp, key, fail) -> tuple:
    out = []
    for v in values:
        try:
            c = coerce(key, tp, v)  # the trial-config rules check the value itself (search_spaces.validate)
        except ConfigError as e:
            raise fail(f"value {v!r} does not fit: {e.message}", e.fix) from None
        out.append(c)
    if len(set(map(repr, out))) != len(out):  # 64 and 64.0 are one value once typed
        raise fail(f"lists a value twice once typed: {list(out)!r}", "remove the duplicate")
    return tuple(out)


@dataclass(frozen=True)
class _Listed:
    """A finite list of values: sampled from (choice) or crossed with the rest (grid)."""

    values: tuple
    kind: ClassVar[str] = ""

    @classmethod
    def parse(cls, args, extra, tp, key, fail):
        return cls(_checked_values(_values(args, cls.kind, fail), tp, key, fail))

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"

    def tried(self) -> tuple:
        return self.values


@DISTRIBUTIONS.register("choice")
@dataclass(frozen=True)
class Choice(_Listed):
    kind: ClassVar[str] = "choice"


@DISTRIBUTIONS.register("grid")
@dataclass(frozen=True)
class Grid(_Listed):
    kind: ClassVar[str] = "grid"


@DISTRIBUTIONS.register("fixed")
@dataclass(frozen=True)
class Fixed:
    value: Any

    @classmethod
    def parse(cls, args, extra, tp, key, fail):
        (value,) = _checked_values([args], tp, key, fail)
        return cls(value)

    def describe(self) -> str:
        return f"fixed {self.value!r}"

    def tried(self) -> tuple:
        return (self.value,)


def _numeric_field(tp, key, dist, fail, allow_int: bool) -> None:
    if _is(tp, float):
        return
    if _is(tp, int):
        if allow_int:
            return
        raise fail(f"{key} is an integer, so {dist} does not fit", "use {int: [low, high], log: true} or choice")
    raise fail(f"{key} is not numeric, so {dist} does not fit", "use {choice: [...]} or {grid: [...]}")


CATEGORICAL = (Choice, Grid, Fixed)


def possible_values(dist) -> tuple | None:
    """The values a categorical distribution can take (None for continuous ones)."""
    if isinstance(dist, Fixed):
        return (dist.value,)
    if isinstance(dist, (Choice, Grid)):
        return dist.values
    if isinstance(dist, Int) and not dist.log:
        return tuple(range(dist.low, dist.high + 1, dist.step))
    return None
