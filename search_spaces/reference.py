"""`reference:` rows: the published results a spec reproduces, for tables to compare against.

A row names a configuration (identifying keys: `variant` or trial-config keys)
and its results. Metrics are written in percent, as papers and the reference
README print them (`test_error: 5.04` is 5.04 %); they are stored as fractions,
like every error our frames hold, so that the two compare directly.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from trainable.config import TrialConfig, coerce, get_key, leaf_keys
from trainable.errors import ConfigError

from .dists import possible_values
from .errors import Where

METRICS = ("test_error", "val_error")  # in percent in the spec, fractions once loaded


@dataclass(frozen=True)
class Reference:
    match: tuple[tuple[str, Any], ...]      # keys the sweep varies: a table row fits when it shows these values
    constant: tuple[tuple[str, Any], ...]   # keys the sweep holds fixed (checked against the base on load)
    metrics: tuple[tuple[str, float], ...]  # fractions
    epochs: int | None = None
    note: str = ""
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the study stores and `analysis.with_reference` reads."""
        return {"match": dict(self.match), "constant": dict(self.constant), "metrics": dict(self.metrics),
                "epochs": self.epochs, "note": self.note, "source": self.source}


def _percent(value, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise fail(f"is a percentage from 0 to 100, got {value!r}", "write e.g. 5.04 for 5.04 %")
    return float(f"{value / 100:.12g}")  # 4.68 -> 0.0468, not 0.046799999999999994


def _epochs(value, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(f"is a positive whole number, got {value!r}", "write e.g. epochs: 200")
    return value


def _text(value, fail) -> str:
    if not isinstance(value, str):
        raise fail(f"is text, got {value!r}", "quote it")
    return value


# Keys of a row that are not identifying, each with its parser.
FIELDS: dict[str, Callable] = {**{m: _percent for m in METRICS}, "epochs": _epochs, "note": _text,
                               "source": _text}


def parse_reference(raw, base: TrialConfig, space: tuple, variants: dict, where: Where) -> tuple[Reference, ...]:
    """Validate the rows: known keys, values the sweep can take, one metric at least, no row twice."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise where.error(("reference",), "reference is a list of rows (mappings)",
                          "write reference: [{variant: baseline, test_error: 5.04}]", key="reference")
    rows, seen = [], {}
    for i, row in enumerate(raw):
        ref = _row(row, ("reference", i), base, space, variants, where)
        if ref.match in seen:
            raise where.error(("reference", i), f"names the same configuration as row {seen[ref.match] + 1}",
                              "drop one of them, or add the key that tells them apart", key="reference")
        seen[ref.match] = i
        rows.append(ref)
    return tuple(rows)


def _row(row: dict, path: tuple, base, space, variants: dict, where: Where) -> Reference:
    keys = leaf_keys()
    fields, match, constant = {}, [], []
    for key, value in row.items():
        key = str(key)

        def fail(message, fix, key=key):
            return where.error(path + (key,), message, fix, key=f"reference.{key}")

        if key in FIELDS:
            fields[key] = FIELDS[key](value, fail)
        elif key == "variant":
            if value not in variants:
                raise fail(f"names variant {value!r}, which the spec does not have",
                           f"use one of: {', '.join(variants) or '(no variants defined)'}")
            match.append((key, value))
        elif key in keys:
            try:
                value = coerce(key, keys[key][0], value)
            except ConfigError as e:
                raise fail(e.message, e.fix) from None
            varies = any(p.key == key for p in space) or any(key in v for v in variants.values())
            possible = _possible(key, base, space, variants)
            if possible is not None and value not in possible:
                raise fail(f"the sweep never runs {key}={value!r} (its values: {possible})",
                           "fix the value, or drop the row")
            (match if varies else constant).append((key, value))
        else:
            known = ["variant", *FIELDS, *keys]
            close = difflib.get_close_matches(key, known, n=1)
            raise fail("not a metric, note or identifying key",
                       f"did you mean {close[0]!r}?" if close else
                       f"use variant, a trial-config key, {', '.join(FIELDS)}")
    metrics = tuple((m, fields[m]) for m in METRICS if m in fields)
    if not metrics:
        raise where.error(path, f"a row needs a result: {' or '.join(METRICS)} (in percent)",
                          "add e.g. test_error: 5.04", key="reference")
    return Reference(tuple(match), tuple(constant), metrics, fields.get("epochs"), fields.get("note", ""),
                     fields.get("source", ""))


def _possible(key: str, base, space: tuple, variants: dict) -> list | None:
    """The values the sweep gives `key` (None when a continuous or derived parameter sets it)."""
    params = [p for p in space if p.key == key]
    values: list = []
    for p in params:
        listed = None if p.derived else possible_values(p.dist)
        if listed is None:
            return None
        values += [v for v in listed if v not in values]
    if not params or any(p.when for p in params):  # the variant's or base value stands when it is not sampled
        for v in [get_key(base, key), *(v[key] for v in variants.values() if key in v)]:
            if v not in values:
                values.append(v)
    return values
