"""Name -> builder registries: adding a component is one file and one decorator.

A registry may name its `home`, the module whose import registers its
entries; it imports that module on first use, so a registry declared in a
light module (configs, the spec language) lists every name without its
reader importing the heavy builders first.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterable, TypeVar

from .errors import UnknownName

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str, home: str | None = None, extra: Iterable[str] = ()):
        """`extra`: names that are valid choices but have no builder here (handled by their reader)."""
        self.kind, self.home, self.extra = kind, home, tuple(extra)
        self._items: dict[str, T] = {}

    @property
    def items(self) -> dict[str, T]:
        if self.home is not None:
            home, self.home = self.home, None  # first: the home's own registrations read `items`
            importlib.import_module(home)
        return self._items

    def register(self, name: str) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self._items or name in self.extra:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn
        return add

    def get(self, name: str) -> T:
        if name not in self.items:
            raise UnknownName(self.unknown(name))
        return self.items[name]

    def unknown(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        return name in self.items or name in self.extra

    def names(self) -> list[str]:
        """Every valid name: the registered ones and the extra ones."""
        return sorted({*self.items, *self.extra})
