"""Engines execute pipelines: ``local`` (in-process, the reference) and ``dask`` (Dask distributed).

Both are plug-ins of the ``lightpipe.engines`` entry-point group, found like
any third-party engine (:class:`lightpipe.core.engine.Engine` is the contract).
"""
from __future__ import annotations

from typing import Any

from lightpipe.core import registry
from lightpipe.core.engine import Engine
from lightpipe.core.errors import PluginError
from lightpipe.core.report import RunReport, ScanReport


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as ``name`` (or named ``package.module:Class``).

    Raises
    ------
    PluginError
        Unknown name, an import failure, or a class that is not an :class:`Engine`.
    """
    cls = registry.load("engines", name)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise PluginError(f"engine {name!r} is {cls!r}, not a subclass of lightpipe.core.engine.Engine")
    return cls


def get_engine(name: str, **options: Any) -> Engine:
    """Return the engine called ``name`` built with ``options`` (keyword arguments of its class)."""
    return engine_class(name)(**options)


__all__ = ["Engine", "RunReport", "ScanReport", "engine_class", "get_engine"]
