"""Sinks: where results go (NeXus/HDF5 files, previews, databases, live views)."""
from lightpipe.sinks.base import Sink

__all__ = ["Sink"]
