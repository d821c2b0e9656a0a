"""The source protocol: a source yields scans; a scan reader reads events by index range.

In batch mode the driver hands index ranges to workers, and each worker reads
its own frames through a (picklable) :class:`ScanReader`: the driver never
carries the frames.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.topology import Topology


class SourceParams(BaseModel):
    """Base of every source's parameter model; unknown parameters are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ScanReader:
    """Reads the events of one scan; must pickle, as workers read their own ranges.

    Attributes
    ----------
    scan
        The scan's streams and metadata.
    """

    scan: Scan

    def read(self, start: int, stop: int) -> list[Event]:
        """Events ``start`` to ``stop - 1``, fields named as the source's ports.

        A frame that cannot be read becomes an event with ``error`` set; the
        others are still returned.
        """
        raise NotImplementedError

    def ready(self, start: int, stop: int, timeout: float | None) -> int:
        """Wait for events from ``start``; return the end (at most ``stop``) of those that can be read now.

        A live source waits up to ``timeout`` seconds for the whole range, then
        returns what has arrived, ``start`` itself if nothing has yet (the
        engine checks for an abort and asks again). Files are always ready.
        """
        return stop

    def for_chunk(self, start: int, stop: int) -> ScanReader:
        """A reader of events ``start`` to ``stop - 1`` to send to a worker.

        File readers send themselves (the worker reads the frames); a live
        reader sends the frames it holds for that range.
        """
        return self

    def release(self, start: int, stop: int) -> None:
        """Events ``start`` to ``stop - 1`` are processed: a live reader forgets them."""

    def status(self) -> dict[str, Any]:
        """What the source holds and how far behind it is (``held``, ``spilled``, ``lag_s``), if it knows."""
        return {}

    def close(self) -> None:
        """Release open files; called when the scan is done. Does nothing by default."""


class Source:
    """Base class of sources. Subclasses set ``name``, ``Params``, ``outputs`` and implement :meth:`scans`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[SourceParams]] = SourceParams
    outputs: ClassVar[dict[str, Port]] = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame")}

    def __init__(self, params: SourceParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        """Fields each event carries, given the parameters (default: :attr:`outputs`)."""
        return dict(cls.outputs)

    def scans(self) -> Iterator[ScanReader]:
        """Yield one reader per scan, as scans become available."""
        raise NotImplementedError

    def attach(self, topology: Topology) -> None:
        """Register the source's own running parts (a receiver thread) in the run's topology. Nothing by default."""
