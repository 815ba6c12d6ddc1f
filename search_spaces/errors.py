"""Spec errors that say where (file:line), what (key and rule) and how to fix."""
from __future__ import annotations

from trainable.errors import UserError


class SpecError(UserError, ValueError):
    def __init__(self, source: str, line: int | None, key: str, message: str, fix: str = ""):
        self.source, self.line, self.key, self.message, self.fix = source, line, key, message, fix
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where} {key}: {message}" + (f"; fix: {fix}" if fix else ""))


class Where:
    """Maps a path in the spec tree to its source line, for error messages."""

    def __init__(self, source: str, lines: dict[tuple, int], overrides: dict[tuple, str] | None = None):
        self.source, self.lines, self.overrides = source, lines, overrides or {}

    def error(self, path: tuple, message: str, fix: str = "", key: str | None = None) -> SpecError:
        key = key or ".".join(map(str, path)) or "(top level)"
        # An override at any enclosing level replaced what the file said there; one below the path
        # (an unknown key set by --set) is what made it.
        for i in range(len(path), -1, -1):
            if path[:i] in self.overrides:
                return SpecError(self.overrides[path[:i]], None, key, message, fix)
        below = [origin for where, origin in self.overrides.items() if path and where[:len(path)] == path]
        if below:
            return SpecError(below[0], None, key, message, fix)
        for i in range(len(path), -1, -1):  # else the nearest enclosing node's line
            if path[:i] in self.lines:
                return SpecError(self.source, self.lines[path[:i]], key, message, fix)
        return SpecError(self.source, None, key, message, fix)
