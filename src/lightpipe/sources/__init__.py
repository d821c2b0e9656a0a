"""Sources: where events come from (files, watched folders, simulators, detector streams)."""
from lightpipe.core.source import ScanReader, Source

__all__ = ["ScanReader", "Source"]
