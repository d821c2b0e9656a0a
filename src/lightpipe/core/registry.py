"""Find stages, sources, sinks and engines: entry-point groups, or ``package.module:Class`` strings.

Built-in plugins are registered under the same entry-point groups as third-party
ones, so both are found the same way. A plugin that fails to import is recorded
in :func:`broken` and reported; the others still load.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Literal

from lightpipe.core.errors import PluginError

Group = Literal["stages", "sources", "sinks", "engines"]
_GROUPS: dict[Group, str] = {
    "stages": "lightpipe.stages",
    "sources": "lightpipe.sources",
    "sinks": "lightpipe.sinks",
    "engines": "lightpipe.engines",
}


@lru_cache(maxsize=None)
def _entry_points(group: Group) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=_GROUPS[group])}


_loaded: dict[tuple[Group, str], type] = {}
_broken: dict[tuple[Group, str], str] = {}


def import_object(ref: str) -> Any:
    """Import ``package.module:Attr`` and return ``Attr``."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise PluginError(f"{ref!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} for {ref!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from exc


def names(group: Group) -> list[str]:
    """Names registered in ``group``, sorted."""
    return sorted(_entry_points(group))


def load(group: Group, name: str) -> type:
    """Return the plugin class registered as ``name`` in ``group``, or named by a ``module:Class`` string.

    Raises
    ------
    PluginError
        Unknown name (the message lists the known ones) or an import failure.
    """
    key = (group, name)
    if key in _loaded:
        return _loaded[key]
    if ":" in name:
        obj = import_object(name)
    else:
        eps = _entry_points(group)
        if name not in eps:
            known = ", ".join(sorted(eps)) or "none"
            raise PluginError(f"unknown {group[:-1]} {name!r}; known {group}: {known}")
        try:
            obj = eps[name].load()
        except Exception as exc:  # a broken plugin must not hide the others
            _broken[key] = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"{group[:-1]} {name!r} failed to import ({eps[name].value}): {exc}") from exc
    _loaded[key] = obj
    return obj


def load_all(group: Group) -> dict[str, type]:
    """Load every plugin of ``group``; the ones that fail are left out and listed by :func:`broken`."""
    found = {}
    for name in names(group):
        try:
            found[name] = load(group, name)
        except PluginError:
            continue
    return found


def broken(group: Group) -> dict[str, str]:
    """Plugins of ``group`` that failed to import, with the reason."""
    return {name: why for (g, name), why in _broken.items() if g == group}
