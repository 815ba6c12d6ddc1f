"""A spec's YAML read within bounds, with the line of every entry.

A spec is input from anyone who can write a file under --dir or hand over a
YAML file, so reading it is bounded in size, in nesting (the YAML parser and
every walk over the tree recurse) and in entries once aliases are expanded
(a few hundred bytes of nested aliases stand for billions of entries; the
walks below visit an aliased node once). Every bound refused is one
SpecError, never a hang, a memory blow-up or a traceback.
"""
from __future__ import annotations

from typing import Any

import yaml

from .errors import SpecError

MAX_BYTES = 256 * 1024   # a spec's text
MAX_DEPTH = 32           # mappings and lists inside each other
MAX_ENTRIES = 20_000     # scalars, mappings and lists, aliases expanded
FLOW_DEPTH = 64          # brackets counted in the text before the parser sees it


def text_of(data: bytes, source: str) -> str:
    """A spec file's bytes as text: bounded in size, UTF-8."""
    if len(data) > MAX_BYTES:
        raise SpecError(source, None, "(file)", f"the spec is {len(data):,} bytes, more than {MAX_BYTES:,}",
                        "a spec is a short YAML file: move data and long lists elsewhere")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(source, None, "(file)", f"not UTF-8 text: byte {e.start} is {data[e.start:e.start + 1]!r}",
                        "save the spec as UTF-8") from None


def read(text: str, source: str) -> tuple[Any, dict[tuple, int], list[tuple]]:
    """(the YAML value, the line of each path, (path, line) of keys given twice in one mapping)."""
    text_of(text.encode("utf-8", "surrogatepass"), source)  # the same size bound for text given directly
    if _flow_depth(text) > FLOW_DEPTH:
        raise SpecError(source, None, "(yaml)", f"brackets nest deeper than {FLOW_DEPTH} levels",
                        f"a spec nests at most {MAX_DEPTH} levels")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _measure(node, source)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SpecError(source, mark.line + 1 if mark else None, "(yaml)",
                        f"not valid YAML: {getattr(e, 'problem', None) or e}", "fix the YAML syntax at that line") \
            from None
    except RecursionError:
        raise SpecError(source, None, "(yaml)", "the YAML nests too deeply",
                        f"a spec nests at most {MAX_DEPTH} levels") from None
    twice: list[tuple] = []
    lines = _lines(node, (), twice, set()) if node is not None else {}
    return raw, lines, twice


def _flow_depth(text: str) -> int:
    """The deepest nesting of [ and { outside quotes and comments (an upper bound of YAML's)."""
    depth = deepest = 0
    quote = None
    comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _measure(root: yaml.Node, source: str) -> None:
    """Refuse a tree nested more than MAX_DEPTH or of more than MAX_ENTRIES entries with aliases
    expanded; each distinct node is sized once (an alias is the same node object again)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:  # iterative post-order, so the walk itself cannot run out of stack
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError(source, node.start_mark.line + 1, "(yaml)", f"nests deeper than {MAX_DEPTH} levels",
                            "flatten the spec: a spec needs a few levels")
        children = _children(node)
        if done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_ENTRIES:
                raise SpecError(source, node.start_mark.line + 1, "(yaml)",
                                f"stands for more than {MAX_ENTRIES:,} entries once its aliases are expanded",
                                "write the entries out, or use fewer aliases")
            continue
        if id(node) in sizes:
            continue
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _lines(node, path: tuple, twice: list, seen: set) -> dict[tuple, int]:
    """Each path's line; an aliased node's entries are listed once, under its first path."""
    out = {path: node.start_mark.line + 1}
    if id(node) in seen:
        return out
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            sub = path + (k.value,)
            if sub in out:
                twice.append((sub, k.start_mark.line + 1))
            out.update(_lines(v, sub, twice, seen))
            out[sub] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_lines(v, path + (i,), twice, seen))
    return out
