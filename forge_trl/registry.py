"""Name -> implementation registries for tasks and injection strategies.

Only registered names resolve: a config value never makes forge_trl import arbitrary code.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from forge_trl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str):
        def decorator(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def discover(self) -> None:
        """Import every module of the package once, so that adding a module is enough to register it."""
        if self._discovered:
            return
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{self._package}.{info.name}")
        self._discovered = True

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'; available: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def items(self):
        self.discover()
        return self._items.items()
