"""`derive:` entries: a key computed from other trial-config keys, e.g. the
linear scaling rule `optim.lr: {derive: "0.1 * train.batch_size / 128"}`.

The expression is parsed with `ast` and checked node by node against small
registries (operators, functions); nothing is ever passed to eval, so a spec
cannot run code. Names are dotted trial-config keys, read from the trial's
config (sampled values over the variant over the base) when it is sampled.
"""
from __future__ import annotations

import ast
import difflib
import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

from trainable.config import leaf_keys, unknown_key

from .dists import DISTRIBUTIONS, _is, _numeric_field

Lookup = Callable[[str], Any]
Evaluate = Callable[[Lookup], Any]


class ExprError(ValueError):
    """An expression that cannot be used: the rule it breaks and how to fix it."""

    def __init__(self, message: str, fix: str):
        self.message, self.fix = message, fix
        super().__init__(f"{message}; fix: {fix}")


# Bounds on what an expression may be and compute, so that every one is refused when parsed or
# ends in microseconds: its text, its size and nesting (a deep tree would exhaust the stack), and
# its values, which are floats throughout (an int can grow without bound and an int power or a
# round() to -10**12 digits computes for ever; a float overflows at once).
MAX_CHARS, MAX_NODES, MAX_DEPTH = 500, 64, 24
MAX_DIGITS = 15  # round(x, n): |n| up to a double's precision


def _int(x: float) -> float:
    return float(math.trunc(x))


def _round(x: float, digits: float = 0.0) -> float:
    if digits != int(digits) or abs(digits) > MAX_DIGITS:
        raise ValueError(f"round() takes a whole number of digits within ±{MAX_DIGITS}, got {digits:g}")
    return float(round(x, int(digits)))


BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# name -> (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable, int, int]] = {
    "min": (min, 2, 8), "max": (max, 2, 8), "abs": (abs, 1, 1), "round": (_round, 1, 2), "int": (_int, 1, 1),
    "sqrt": (math.sqrt, 1, 1), "log": (math.log, 1, 2), "log2": (math.log2, 1, 1), "exp": (math.exp, 1, 1),
}


def _dotted(node: ast.AST) -> str | None:
    """'train.batch_size' for Attribute(Name('train'), 'batch_size'); None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _name(node, names: list[str], depth: int = 0) -> Evaluate:
    key = _dotted(node)
    if key is None:
        raise ExprError(f"cannot read {ast.unparse(node)!r}", "name a trial-config key such as train.batch_size")
    keys = leaf_keys()
    if key not in keys:
        raise ExprError(f"names {key!r}, which is not a trial-config key", unknown_key(key, keys).fix)
    if not _is(keys[key][0], int, float):
        raise ExprError(f"names {key!r}, which is not a number", "use numeric keys only")
    names.append(key)
    return lambda lookup: float(lookup(key))


def _constant(node, names, depth: int = 0) -> Evaluate:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"{value!r} is not a number", "use numbers and trial-config keys only")
    try:
        value = float(value)
    except OverflowError:
        raise ExprError("a number in the expression is too large", "use numbers below 1e308") from None
    if not math.isfinite(value):
        raise ExprError(f"{node.value!r} is not a finite number", "use numbers below 1e308")
    return lambda lookup: value


def _binary(node, names, depth: int = 0) -> Evaluate:
    op = BINARY.get(type(node.op))
    if op is None:
        raise ExprError(f"operator {type(node.op).__name__} is not allowed", "use + - * / // % **")
    left, right = _compile(node.left, names, depth), _compile(node.right, names, depth)
    return lambda lookup: op(left(lookup), right(lookup))


def _unary(node, names, depth: int = 0) -> Evaluate:
    op = UNARY.get(type(node.op))
    if op is None:
        raise ExprError(f"operator {type(node.op).__name__} is not allowed", "use a leading - or +")
    inner = _compile(node.operand, names, depth)
    return lambda lookup: op(inner(lookup))


def _call(node, names, depth: int = 0) -> Evaluate:
    name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
    if name not in FUNCTIONS:
        raise ExprError(f"unknown function {name!r}", _choices(name, FUNCTIONS))
    fn, low, high = FUNCTIONS[name]
    if node.keywords or not low <= len(node.args) <= high:
        count = (str(low) if low == high else f"{low} to {high}") + (" argument" if high == 1 else " arguments")
        raise ExprError(f"{name}() takes {count}, got {ast.unparse(node)!r}",
                        f"call {name} with {count} plain arguments")
    args = [_compile(a, names, depth) for a in node.args]
    return lambda lookup: fn(*(a(lookup) for a in args))


def _choices(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(known)}"


NODES: dict[type, Callable[[Any, list, int], Evaluate]] = {
    ast.Constant: _constant, ast.Name: _name, ast.Attribute: _name, ast.BinOp: _binary,
    ast.UnaryOp: _unary, ast.Call: _call,
}


def _compile(node: ast.AST, names: list[str], depth: int = 0) -> Evaluate:
    if depth > MAX_DEPTH:
        raise ExprError(f"the expression nests deeper than {MAX_DEPTH} levels", "write a shorter expression")
    handler = NODES.get(type(node))
    if handler is None:
        raise ExprError(f"{ast.unparse(node)!r} is not allowed in a derive",
                        "use numbers, dotted keys, + - * / // % **, parentheses and "
                        + ", ".join(FUNCTIONS))
    return handler(node, names, depth + 1)


@functools.lru_cache(maxsize=256)
def compile_expr(text: str) -> tuple[Evaluate, tuple[str, ...]]:
    """The expression as a function of a key lookup, and the keys it names (in order, once each)."""
    if len(text) > MAX_CHARS:
        raise ExprError(f"the expression is {len(text)} characters long, more than {MAX_CHARS}",
                        "write a shorter expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        at = f" at column {e.offset}" if getattr(e, "offset", None) else ""
        raise ExprError(f"not a valid expression: {getattr(e, 'msg', type(e).__name__)}{at} of {text[:80]!r}",
                        'write arithmetic such as "0.1 * train.batch_size / 128"') from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ExprError(f"the expression has more than {MAX_NODES} parts", "write a shorter expression")
    names: list[str] = []
    return _compile(tree.body, names), tuple(dict.fromkeys(names))


@DISTRIBUTIONS.register("derive")
@dataclass(frozen=True)
class Derive:
    """Not sampled: computed per trial from the keys it names, then typed as its field."""

    expr: str
    names: tuple[str, ...]
    integer: bool = False  # an int field: the result is rounded

    @classmethod
    def parse(cls, args, extra, tp, key, fail):
        if not isinstance(args, str) or not args.strip():
            raise fail(f"derive needs an expression as a string, got {args!r}",
                       'write {derive: "0.1 * train.batch_size / 128"} (or {fixed: value} for a constant)')
        _numeric_field(tp, key, "derive", fail, allow_int=True)
        try:
            _, names = compile_expr(args)
        except ExprError as e:
            raise fail(e.message, e.fix) from None
        if key in names:
            raise fail(f"derive {args!r} uses {key} itself",
                       "write the base value as a number, e.g. 0.1 * train.batch_size / 128")
        return cls(args.strip(), names, _is(tp, int))

    def describe(self) -> str:
        return f"derive {self.expr}" + (" (rounded to int)" if self.integer else "")

    def evaluate(self, lookup: Lookup) -> int | float:
        """The value for one trial; ExprError says what went wrong and with which inputs."""
        inputs = ", ".join(f"{k}={lookup(k)!r}" for k in self.names)
        fix = f"keep the inputs in range ({inputs})" if inputs else "check the expression"
        try:
            value = compile_expr(self.expr)[0](lookup)
        except ZeroDivisionError:
            raise ExprError(f"derive {self.expr!r} divides by zero", fix) from None
        except OverflowError:
            raise ExprError(f"derive {self.expr!r} overflows", fix) from None
        except (ArithmeticError, ValueError, TypeError) as e:
            raise ExprError(f"derive {self.expr!r} cannot be computed: {e}", fix) from None
        if isinstance(value, complex) or not math.isfinite(value):
            raise ExprError(f"derive {self.expr!r} gives {value!r}, not a finite number", fix)
        return int(round(value)) if self.integer else float(value)
