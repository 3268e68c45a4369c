"""One small registry, used for datasets, models, optimizers and schedulers."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from cnnlab.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps a name to a builder function. `@REG.register("name")` adds one; `REG.get(name)` finds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._fallback: Callable[[str], T | None] | None = None

    def set_fallback(self, find: Callable[[str], T | None]) -> None:
        """`find(name)` answers for names that are not registered (a builder, or None for unknown): a
        family too large to register one by one, such as timm's models."""
        self._fallback = find

    def register(self, name: str) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            found = self._fallback(str(name)) if self._fallback is not None else None
            if found is not None:
                return found
            close = difflib.get_close_matches(str(name), self._items, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; {hint}known: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def registration_order(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
