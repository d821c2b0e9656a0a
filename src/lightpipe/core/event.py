"""Events (one acquisition each) and scans (a run of events with shared metadata)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    """One acquisition flowing through a pipeline.

    Parameters
    ----------
    index
        Acquisition index within the scan, counted from 0 across all streams.
    stream
        Which stream the event belongs to: ``data``, ``dark``, ``flat``, ...
    fields
        Named arrays and scalars, keyed ``producer.name`` (``source.frame``,
        ``correct.frame``).
    metadata
        Per-event metadata that is not processed (timestamps, detector headers).
    error
        Why the event failed, or ``None``. A failed event keeps flowing to the
        sinks so that it is recorded, but no further stage sees it.
    failed_at
        The stage (or ``source``) where it failed.
    """

    index: int
    stream: str = "data"
    fields: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    failed_at: str | None = None

    def fail(self, where: str, message: str) -> Event:
        """Mark the event failed in ``where`` with ``message`` and drop its fields."""
        self.error = message
        self.failed_at = where
        self.fields = {}
        return self


@dataclass
class Scan:
    """A run of events with scan-level metadata: the unit a job processes and a file stores.

    Parameters
    ----------
    name
        Name used for the output file (``<name>.nxs``).
    streams
        Acquisition-index range of each stream, e.g. ``{"dark": range(0, 10),
        "data": range(10, 1010)}``. File sources know it up front.
    metadata
        Scan-level metadata: ``energy_ev``, ``distance_m``, ``pixel_size_m``,
        beam centre, positions, the source file, ...
    """

    name: str
    streams: dict[str, range]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Total number of events in all streams."""
        return sum(len(r) for r in self.streams.values())

    def stream_of(self, index: int) -> str:
        """Return the stream that acquisition ``index`` belongs to."""
        for name, indices in self.streams.items():
            if index in indices:
                return name
        raise IndexError(f"event {index} is outside scan {self.name!r}")

    def indices(self, streams: set[str] | None = None) -> list[range]:
        """Index ranges of the given streams (all streams if ``None``), in acquisition order."""
        chosen = [r for s, r in self.streams.items() if streams is None or s in streams]
        return sorted((r for r in chosen if len(r)), key=lambda r: r.start)
