"""Name -> builder registries: adding a component is one file and one decorator."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self.items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self.items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self.items[name] = fn
            return fn
        return add

    def get(self, name: str) -> T:
        if name not in self.items:
            raise KeyError(self.unknown(name))
        return self.items[name]

    def unknown(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.items, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self.items))}"

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def names(self) -> list[str]:
        return sorted(self.items)
