"""Name -> implementation registries for tasks and injection strategies, and the plugins that extend them.

Only registered names resolve: a config value never makes forge_trl import arbitrary code. Code registers in three
ways, all chosen by whoever installs or launches forge_trl, never by a config value:
- a module of the package itself (`forge_trl/tasks/<name>.py`, `forge_trl/injection/<name>.py`);
- an installed package's entry point in the group `forge_trl.plugins` (loaded on first use);
- a directory named in the environment variable `FORGE_TRL_PLUGINS` (several joined by the OS path separator):
  each of its `*.py` modules is imported, and its `conf/` directory, when present, is added to the config search
  path, so the plugin's YAML presets compose like the built-in ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

from forge_trl.errors import ConfigError

T = TypeVar("T")

PLUGINS_ENV = "FORGE_TRL_PLUGINS"
PLUGIN_ENTRY_POINTS = "forge_trl.plugins"
PLUGIN_MODULE_PREFIX = "forge_trl_plugin_"

_plugins_loaded = False


def plugin_dirs() -> list[Path]:
    """The directories `FORGE_TRL_PLUGINS` names, in order; a missing one is a ConfigError."""
    dirs = [Path(p).expanduser() for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p.strip()]
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(f"{PLUGINS_ENV}: '{directory}' is not a directory")
    return dirs


def plugin_conf_dirs() -> list[Path]:
    """Config directories the plugins bring (`<plugin dir>/conf`), for the config search path."""
    return [d / "conf" for d in plugin_dirs() if (d / "conf").is_dir()]


def load_plugins() -> None:
    """Import every plugin module once (entry points, then `FORGE_TRL_PLUGINS` directories)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry_point in metadata.entry_points(group=PLUGIN_ENTRY_POINTS):
        entry_point.load()
    for directory in plugin_dirs():
        for path in sorted(directory.glob("*.py")):
            name = PLUGIN_MODULE_PREFIX + path.stem
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:  # never for a *.py file; the loader is checked for the type
                raise ConfigError(f"{PLUGINS_ENV}: cannot import '{path}'")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str):
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise RuntimeError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def discover(self) -> None:
        """Import every module of the package once, so that adding a module is enough to register it; then the
        plugins."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{self._package}.{info.name}")
        load_plugins()

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
