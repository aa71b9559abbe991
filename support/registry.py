"""One small registry class behind every named concept of the kit.

Losses, models, data sources, ensemble methods and CAM methods each keep one
``Registry``. A registry maps a name to a factory and gives the same clear
error for an unknown name everywhere.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory, with a helpful error for unknown names.

    >>> r = Registry("color"); _ = r.add("red", lambda: 1); r.get("red")()
    1
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def names(self) -> List[str]:
        return list(self._items)

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise TypeError(
                f"{self.kind} name must be a string, got {type(name).__name__} {name!r}; "
                f"valid names: {', '.join(self._items)}"
            )
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self._items)
