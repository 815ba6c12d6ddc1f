"""Parse and validate a YAML spec (plus presets and `--set` overrides) into a SweepSpec.

Everything is checked before anything runs, and every error names the file,
the line, the key and the fix: the spec's own structure here, and every
trial config it can produce against the trial config's rules (validate.py).
The engine layer checks the names it owns (engine, sampler, pruner) itself.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any

from trainable.config import TrialConfig, coerce, field_problem, leaf_keys, unknown_key, with_key
from trainable.errors import ConfigError

from .dists import DISTRIBUTIONS, EXTRA_KEYS, Fixed, Grid, possible_values
from . import read
from .errors import SpecError, Where
from .read import text_of
from .reference import parse_reference
from .spec import Budget, Objective, Param, Pruner, Resources, Sampler, SweepSpec
from .validate import check_configs

BLOCKS = {"objective": Objective, "budget": Budget, "sampler": Sampler, "pruner": Pruner,
          "resources": Resources}
TOP_KEYS = ("name", "engine", "seeds", *BLOCKS, "base", "variants", "space", "presets", "reference")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # it names files: no path, no newline, short


def valid_name(name) -> bool:
    """A sweep's name: it becomes file names under --dir, so no path, no newline, short."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def sweep_name(text: str) -> str:
    """The sweep a command names: a spec file's `name` (read within the spec's bounds) or the name
    itself; a SpecError for a spec without a name, or for a name that would leave --dir."""
    if text.endswith((".yaml", ".yml")) and Path(text).is_file():
        data, _, _ = read.read(text_of(Path(text).read_bytes(), text), text)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise SpecError(text, None, "name", "the spec has no name", "add `name: ...` to it")
        text = data["name"]
    if not valid_name(text):  # it becomes file names under --dir
        raise SpecError(repr(text[:100]), None, "name", "is not a sweep name (at most 100 letters, digits, '_', "
                        "'-' or '.')", "give the name of a sweep or its spec file")
    return text


def load_spec(path: str | Path, overrides: list[str] = (), preset: str | None = None, context=None,
              every_preset: bool = False) -> SweepSpec:
    """Read a spec file, apply a preset and `key=value` overrides, validate it.

    `context` (trainable.rules.Context) says where trials run; by default this machine.
    With `every_preset` the spec is also validated under each of its other presets.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            text = text_of(f.read(read.MAX_BYTES + 1), source)
    except OSError as e:
        raise SpecError(source, None, "(file)", f"cannot read the spec: {e.strerror}",
                        "check the path; shipped specs are in spaces/") from None
    spec = parse_spec(text, source, overrides, preset, context)
    if every_preset:
        for other in spec.presets:
            if other != preset:
                parse_spec(text, source, overrides, other, context)
    return spec


def parse_spec(text: str, source: str = "<spec>", overrides: list[str] = (),
               preset: str | None = None, context=None) -> SweepSpec:
    raw, lines, twice = read.read(text, source)
    where = Where(source, lines)
    if not isinstance(raw, dict):
        raise where.error((), f"a spec is a mapping of keys, got {type(raw).__name__}",
                          "start from spaces/quickstart.yaml")
    if twice:  # YAML would silently keep only the last one
        path, line = twice[0]
        raise SpecError(source, line, ".".join(map(str, path)), "key given twice in one mapping",
                        "keep one of them (a key takes one distribution, or a list of alternatives with when:)")
    raw = copy.deepcopy(raw)
    if preset is not None:
        presets = raw.get("presets") or {}
        if not isinstance(presets, dict):
            raise where.error(("presets",), "presets is a mapping of name: {key: value}",
                              "write presets: {cpu: {base.data.subset: 2000}}")
        if preset not in presets:
            raise where.error(("presets",), f"no preset {preset!r}",
                              f"use one of: {', '.join(presets) or '(none defined)'}", key="--preset")
        items = presets[preset]
        if not isinstance(items, dict):
            raise where.error(("presets", preset), "a preset is a mapping of key: value overrides",
                              "write e.g. {base.data.subset: 2000}")
        for key, value in items.items():
            _apply(raw, str(key), value, where, f"preset {preset} ({source}:{lines.get(('presets', preset, key), '?')})")
    for item in overrides:
        key, value = parse_override(item)
        _apply(raw, key, value, where, f"--set {_shown(item)}")
    spec = _validate(raw, where)
    check_configs(spec, context)
    return spec


def parse_override(item: str, example: str = "budget.trials=4") -> tuple[str, Any]:
    """`--set KEY=VALUE` as (key, value), the value read as YAML; every `--set` of the CLI reads this."""
    key, eq, text_value = item.partition("=")
    if not eq or not key.strip():
        raise SpecError("--set", None, _shown(item), "an override is key=value", f"write e.g. --set {example}")
    try:
        value, _, _ = read.read(text_value, "--set")
    except SpecError as e:
        raise SpecError(f"--set {_shown(item)}", None, _shown(key.strip()), f"cannot parse the value: {e.message}",
                        "quote strings; use YAML syntax for lists") from None
    return key.strip(), value


def _shown(text: str, limit: int = 100) -> str:
    """User text as an error quotes it: one line, not too long."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def _override_path(key: str) -> tuple:
    head, _, rest = key.partition(".")
    if head in ("space", "presets") and rest:  # space keys are themselves dotted
        return (head, rest)
    return tuple(key.split("."))


def _apply(raw: dict, key: str, value, where: Where, origin: str) -> None:
    path = _override_path(key)
    node = raw
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise SpecError(origin, None, key, f"{part} is not a mapping here", "override a key inside a mapping")
        node = nxt
    node[path[-1]] = value
    where.overrides[path] = origin


# ---- validation ----------------------------------------------------------

def _validate(raw: dict, where: Where) -> SweepSpec:
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(where, (key,), str(key), TOP_KEYS)
    name = raw.get("name")
    if not valid_name(name):
        raise where.error(("name",), f"needs a name of at most 100 letters, digits, '_', '-' or '.' (starting "
                          f"with a letter or digit), got {_shown(repr(name))}",
                          "add e.g. `name: my_sweep` (it names the study and its storage file)", key="name")
    engine = raw.get("engine", "optuna")
    if not isinstance(engine, str):
        raise where.error(("engine",), f"names an engine, got {engine!r}", "write e.g. engine: optuna")
    seeds = raw.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise where.error(("seeds",), f"must be a positive integer, got {seeds!r}", "use seeds: 1 or more")
    blocks = {k: _block(cls, raw.get(k), (k,), where) for k, cls in BLOCKS.items()}
    base = _base(raw.get("base"), where)
    variants, variant_derives = _variants(raw.get("variants"), base, where)
    space = _space(raw.get("space"), base, where, variants, variant_derives)
    sampler = blocks["sampler"]
    if sampler.name == "grid":
        space = _as_grid(space, where)
    _check_budget(blocks["budget"], space, where)
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict):
        raise where.error(("presets",), "presets is a mapping of name: {key: value}", "write presets: {cpu: {...}}")
    reference = parse_reference(raw.get("reference"), base, space, variants, where)
    return SweepSpec(name=name, source=where.source, engine=engine, seeds=seeds, base=base, space=space,
                     variants=variants, presets=tuple(presets), reference=tuple(reference), raw=raw, where=where,
                     **blocks)


def _unknown(where: Where, path: tuple, key: str, known) -> SpecError:
    close = difflib.get_close_matches(key, list(known), n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return where.error(path, "unknown key", fix, key=".".join(map(str, path)))


def _block(cls, raw, path: tuple, where: Where):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise where.error(path, f"must be a mapping, got {raw!r}", f"write {path[0]}: {{...}}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        sub = path + (key,)
        dotted = ".".join(map(str, sub))
        if key not in names:
            raise _unknown(where, sub, str(key), names)
        try:
            values[key] = coerce(dotted, hints[key], value)
        except ConfigError as e:
            raise where.error(sub, e.message, e.fix) from None
        problem = field_problem(dotted, next(f for f in dataclasses.fields(cls) if f.name == key), values[key])
        if problem is not None:
            raise where.error(sub, problem.message, problem.fix)
    return cls(**values)


def _base(raw, where: Where) -> TrialConfig:
    if raw is None:
        return TrialConfig()
    if not isinstance(raw, dict):
        raise where.error(("base",), "base is a mapping of config sections", "write base: {train: {...}}")
    sections = {f.name for f in dataclasses.fields(TrialConfig)}
    cfg = TrialConfig()
    for key, value in _flat(raw).items():
        path = ("base", *key.split("."))
        if key in sections:
            raise where.error(path, f"{key} is a config section, got {value!r}", f"write {key}: {{key: value}}",
                              key=f"base.{key}")
        if _is_derive(value):
            raise where.error(path, "base holds fixed values; a derive is computed per trial",
                              f"move it to space: {{{key}: {{derive: ...}}}}", key=f"base.{key}")
        try:
            cfg = with_key(cfg, key, value)
        except ConfigError as e:
            raise where.error(path, e.message, e.fix, key=f"base.{key}") from None
    return cfg


def _is_derive(value) -> bool:
    return isinstance(value, dict) and "derive" in value


def _flat(tree: dict) -> dict[str, Any]:
    """flatten, but a {derive: ...} mapping is one value (computed per trial), not a section."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not _is_derive(value):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            out[str(key)] = value
    return out


def _variants(raw, base: TrialConfig, where: Where) -> tuple[dict[str, dict[str, Any]], list[tuple]]:
    """Named sets of config values (an ablation's rows), crossed with the space as a grid;
    and the variants' derives as (key, variant, entry, path), which become space parameters."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict) or not raw:
        raise where.error(("variants",), "variants is a mapping of name: {config.key: value}",
                          "write variants: {baseline: {}, cutout: {augment.cutout.size: 16}}")
    out, derives = {}, []
    for name, values in raw.items():
        path = ("variants", name)
        values = values or {}
        if not isinstance(values, dict):
            raise where.error(path, f"a variant is a mapping of config keys to values, got {values!r}",
                              "write e.g. {augment.cutout.size: 16}")
        cfg, plain = base, {}
        for key, value in _flat(values).items():
            if _is_derive(value):
                if set(value) != {"derive"}:
                    raise where.error(path + (key,), "a variant's derive takes no other keys",
                                      "write {derive: \"...\"}; the variant is its condition",
                                      key=f"variants.{name}.{key}")
                derives.append((key, str(name), value, path + (key,)))
                continue
            try:
                cfg = with_key(cfg, key, value)
            except ConfigError as e:
                raise where.error(path + (key,), e.message, e.fix, key=f"variants.{name}.{key}") from None
            plain[key] = value
        out[str(name)] = plain
    return out, derives


def _space(raw, base: TrialConfig, where: Where, variants: dict | None = None,
           variant_derives: list = ()) -> tuple[Param, ...]:
    variant = (Param("variant", Grid(tuple(variants)), path=("variants",)),) if variants else ()
    if raw is None and not variant_derives:
        return variant
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise where.error(("space",), "space is a mapping of config keys to distributions",
                          "write space: {optim.lr: {loguniform: [1.0e-4, 1.0e-1]}}")
    keys = leaf_keys()
    params: dict[str, list[Param]] = {p.key: [p] for p in variant}
    whens: dict[tuple, Any] = {}  # (key, alternative index) -> raw condition
    for key, entry in raw.items():
        key = str(key)
        if key not in keys:
            e = unknown_key(key, keys)
            raise where.error(("space", key), "not a trial-config key", e.fix, key=f"space.{key}")
        # A list gives alternatives: one distribution per condition, e.g. a depth per family.
        alternatives = entry if isinstance(entry, list) and entry else [entry]
        params[key] = []
        for i, alt in enumerate(alternatives):
            path = ("space", key, i) if isinstance(entry, list) else ("space", key)
            params[key].append(_entry(key, alt, path, keys, where))
            if isinstance(alt, dict) and "when" in alt:
                whens[(key, i)] = (path, alt["when"])
            elif len(alternatives) > 1:
                raise where.error(path, "each alternative needs a when: condition",
                                  "add e.g. when: {model.name: wrn}", key=key)
    for (key, i), (path, cond) in whens.items():
        params[key][i] = dataclasses.replace(params[key][i], when=_when(params[key][i], path, cond, params, where))
    _add_variant_derives(params, variants or {}, variant_derives, keys, where)
    for key, alts in params.items():
        if len({p.derived for p in alts}) > 1:
            raise where.error(("space", key), "a key is either derived or sampled, not both",
                              "derive it under every condition, or sample it under every condition", key=key)
        if len(alts) > 1:
            _check_exclusive(key, alts, where)
            params[key] = [dataclasses.replace(p, alternative=True) for p in alts]
    return _ordered(params, where)


def _add_variant_derives(params: dict[str, list[Param]], variants: dict, derives: list, keys,
                         where: Where) -> None:
    """A variant's `key: {derive: ...}` is a space derive under the condition `variant: name`;
    a key a variant sets must not be derived for that variant too (the derive would win)."""
    for key, name, entry, path in derives:
        param = _entry(key, entry, path, keys, where)
        params.setdefault(key, []).append(dataclasses.replace(param, when=(("variant", (name,)),)))
    for name, values in variants.items():
        for key in values:
            for p in params.get(key, ()):
                if p.derived and name in dict(p.when).get("variant", (name,)):
                    raise where.error(("variants", name, key), f"space derives {key} for this variant too",
                                      "drop one, or give the derive when: {variant: [...]} without this variant",
                                      key=f"variants.{name}.{key}")


def _entry(key: str, entry, path: tuple, keys, where: Where) -> Param:
    if not isinstance(entry, dict):
        raise where.error(path, f"needs a distribution, got {entry!r}",
                          f"write {{choice: [...]}} or {{fixed: {entry!r}}}", key=key)
    dist_names = [k for k in entry if k in DISTRIBUTIONS]
    if len(dist_names) != 1:
        fix = "name exactly one of " + ", ".join(DISTRIBUTIONS.names())
        others = [k for k in entry if k not in DISTRIBUTIONS and k != "when"]
        if others and not dist_names:
            close = difflib.get_close_matches(str(others[0]), DISTRIBUTIONS.names(), n=1)
            fix = f"did you mean {close[0]!r}?" if close else fix
            raise where.error(path + (others[0],), f"unknown distribution {others[0]!r}", fix, key=key)
        raise where.error(path, f"needs one distribution, got {dist_names or 'none'}", fix, key=key)
    dname = dist_names[0]
    extra = {k: v for k, v in entry.items() if k not in (dname, "when")}
    for k in extra:
        if k not in EXTRA_KEYS.get(dname, ()):
            allowed = sorted(EXTRA_KEYS.get(dname, ())) + ["when"]
            raise where.error(path + (k,), f"{dname} takes no option {k!r}", f"allowed: {', '.join(allowed)}",
                              key=f"{key}.{k}")

    def fail(message, fix=""):
        return where.error(path + (dname,), message, fix, key=key)

    return Param(key, DISTRIBUTIONS.get(dname).parse(entry[dname], extra, keys[key][0], key, fail), path=path)


def _possible(alts: list[Param]) -> tuple | None:
    values = [possible_values(p.dist) for p in alts]
    if any(v is None for v in values):
        return None
    return tuple(dict.fromkeys(v for vs in values for v in vs))


def _when(mine: Param, path: tuple, cond, params: dict[str, list[Param]], where: Where) -> tuple:
    key, path = mine.key, path + ("when",)
    if not isinstance(cond, dict) or not cond:
        raise where.error(path, f"when needs a mapping of parameter: value, got {cond!r}",
                          "write when: {optim.name: lars}", key=f"{key}.when")
    if isinstance(mine.dist, Grid):
        raise where.error(path, "a grid parameter cannot be conditional", "use choice instead of grid",
                          key=f"{key}.when")
    out = []
    for other, allowed in cond.items():
        other = str(other)
        if other not in params:
            close = difflib.get_close_matches(other, list(params), n=1)
            fix = f"did you mean {close[0]!r}?" if close else "name a parameter of this space"
            raise where.error(path + (other,), f"names {other!r}, which is not a parameter in space", fix,
                              key=f"{key}.when")
        if other == key:
            raise where.error(path, "a parameter cannot depend on itself", "remove the condition", key=f"{key}.when")
        if any(p.derived for p in params[other]):
            raise where.error(path + (other,), f"{other} is derived, so a condition cannot name it",
                              "condition on the keys it is derived from", key=f"{key}.when")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        possible = _possible(params[other])
        if possible is None:
            raise where.error(path + (other,), f"{other} is continuous, so a condition on its value never holds",
                              "condition on a choice, grid or fixed parameter", key=f"{key}.when")
        coerced = []
        for value in allowed:
            try:
                value = coerce(other, leaf_keys().get(other, (str,))[0], value)  # `variant` names are text
                ok = value in possible
            except ConfigError:
                ok = False
            if not ok:
                raise where.error(path + (other,), f"{other} never takes {value!r} (its values: {list(possible)})",
                                  "use one of its values", key=f"{key}.when")
            coerced.append(value)
        out.append((other, tuple(coerced)))
    return tuple(out)


def _check_exclusive(key: str, alts: list[Param], where: Where) -> None:
    """Alternatives must never hold together: some condition key splits them into disjoint values."""
    common = set.intersection(*(set(dict(p.when)) for p in alts))
    for k in common:
        seen: set = set()
        sets = [set(dict(p.when)[k]) for p in alts]
        if all(not (s & seen) and not seen.update(s) for s in sets):
            return
    raise where.error(("space", key), "two alternatives can hold at once",
                      "condition every alternative on one parameter with disjoint values", key=key)


def _ordered(params: dict[str, list[Param]], where: Where) -> tuple[Param, ...]:
    """Order parameters so every condition's target, and every key a derive names, comes
    before it; derives go after all sampled parameters (conditions never name a derive)."""
    done: dict[str, list[Param]] = {}
    visiting: list[str] = []

    def visit(key):
        if key in done:
            return
        if key in visiting:
            cycle = " -> ".join(visiting[visiting.index(key):] + [key])
            if params[key][0].derived:
                raise where.error(("space", key, "derive"), f"derives form a cycle: {cycle}",
                                  "derive one of them from sampled or base keys only", key=key)
            raise where.error(("space", key, "when"), "conditions form a cycle", "make one parameter unconditional",
                              key=f"{key}.when")
        visiting.append(key)
        for p in params[key]:
            for other in p.needs:
                if other in params:  # else a base key: always known
                    visit(other)
        visiting.pop()
        done[key] = params[key]

    for key in sorted(params, key=lambda k: params[k][0].derived):
        visit(key)
    return tuple(p for alts in done.values() for p in alts)


def _as_grid(space: tuple[Param, ...], where: Where) -> tuple[Param, ...]:
    out = []
    for p in space:
        if p.derived:  # computed, not sampled: nothing to cross
            out.append(p)
            continue
        values = possible_values(p.dist)
        if values is None:
            raise where.error(("space", p.key), f"sampler grid cannot sample {p.dist.describe()}",
                              "use a list of values ({grid: [...]}) or sampler: {name: random}", key=p.key)
        if p.when and not isinstance(p.dist, Fixed):  # a fixed value has nothing to cross
            raise where.error(("space", p.key, "when"), "sampler grid cannot cross conditional parameters",
                              "use sampler random, or drop the condition", key=f"{p.key}.when")
        out.append(dataclasses.replace(p, dist=Grid(tuple(values))) if not isinstance(p.dist, Fixed) else p)
    return tuple(out)


def _check_budget(budget: Budget, space, where: Where) -> None:
    has_grid = any(isinstance(p.dist, Grid) for p in space)
    if budget.trials is None and budget.minutes is None and not has_grid:
        raise where.error(("budget",), "no budget: the sweep would never end",
                          "set budget: {trials: N} and/or {minutes: M}", key="budget")
