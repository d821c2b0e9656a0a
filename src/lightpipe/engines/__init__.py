"""Engines execute pipelines: ``local`` (in-process, the reference) and ``dask`` (Dask distributed)."""
from __future__ import annotations

from typing import Any

from lightpipe.engines.base import Engine, RunReport, ScanReport


def get_engine(name: str, **options: Any) -> Engine:
    """Return the engine called ``name`` (``local`` or ``dask``) built with ``options``."""
    if name == "local":
        from lightpipe.engines.local import LocalEngine

        return LocalEngine(**options)
    if name == "dask":
        from lightpipe.engines.dask import DaskEngine

        return DaskEngine(**options)
    raise ValueError(f"unknown engine {name!r}; choose 'local' or 'dask'")


__all__ = ["Engine", "RunReport", "ScanReport", "get_engine"]
