"""Sinks: where results go (NeXus/HDF5 files, previews, databases, live views)."""
from lightpipe.core.sink import Sink

__all__ = ["Sink"]
