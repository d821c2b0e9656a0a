"""The source protocol: a source yields scans; a scan reader reads events by index range.

In batch mode the driver hands index ranges to workers, and each worker reads
its own frames through a (picklable) :class:`ScanReader`: the driver never
carries the frames.

A source that waits for scans (a live detector, a watched folder) ends its
wait when the run is asked to stop: :meth:`Source.scans` then returns, and
the run ends with the scans done.
"""
from __future__ import annotations

import time
from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

from lightpipe.core.errors import SourceError
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
    """Base class of sources. Subclasses set ``name``, ``Params``, ``outputs`` and implement :meth:`scans`.

    A source that reads files says which (:meth:`can_open`, :meth:`params_for`),
    so ``lightpipe run --input PATH`` can pick it, as xarray picks a backend.

    Attributes
    ----------
    topology
        The run's topology, once the engine has attached it (:meth:`attach`);
        ``None`` before, or when the source is used on its own.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[SourceParams]] = SourceParams
    outputs: ClassVar[dict[str, Port]] = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame")}
    # a class default, so that a subclass whose __init__ skips the base's still has one
    topology: Topology | None = None

    def __init__(self, params: SourceParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        """Fields each event carries, given the parameters (default: :attr:`outputs`)."""
        return dict(cls.outputs)

    @classmethod
    def can_open(cls, path: str) -> int:
        """How well this source reads ``path`` (a file, folder or glob given as ``--input``).

        0: not at all (the default: live streams and simulators). Otherwise a
        score; the highest wins. By convention 10 is a reader of the format in
        general (any HDF5 file), 20 a reader of one layout of it (a CXI file);
        a source that must open the file to tell may, cheaply.
        """
        return 0

    @classmethod
    def params_for(cls, path: str) -> dict[str, Any]:
        """The parameters that make this source read ``path`` (default ``{"path": path}``)."""
        return {"path": path}

    def scans(self) -> Iterator[ScanReader]:
        """Yield one reader per scan, as scans become available.

        A source that waits for scans returns when the topology it was
        attached to asks the run to stop (:attr:`stop_requested`; pause
        between two looks with :meth:`wait_for_stop`), at the latest about a
        second after the request: the engine ends the run only once this
        returns or yields.
        """
        raise NotImplementedError

    def attach(self, topology: Topology) -> None:
        """Keep the run's topology (:attr:`topology`), before :meth:`scans` is called.

        A source with running parts of its own (a receiver thread) overrides
        this, or :meth:`scans`, to register them in it too.
        """
        self.topology = topology

    @property
    def stop_requested(self) -> bool:
        """Whether the run this source feeds was asked to stop (never, with no topology attached)."""
        return self.topology is not None and self.topology.stop_requested

    def wait_for_stop(self, seconds: float) -> bool:
        """Pause up to ``seconds``, less if the run is asked to stop meanwhile; returns :attr:`stop_requested`."""
        if self.topology is None:
            time.sleep(seconds)
            return False
        return self.topology.stop_event.wait(seconds)


def sources_for(path: str) -> list[tuple[int, str, type[Source]]]:
    """Every registered source that can read ``path``, as ``(score, name, class)``, best first (ties by name)."""
    from lightpipe.core import registry

    scored = []
    for name, cls in registry.load_all("sources").items():
        if isinstance(cls, type) and issubclass(cls, Source):
            score = cls.can_open(path)
            if score > 0:
                scored.append((score, name, cls))
    return sorted(scored, key=lambda item: (-item[0], item[1]))


def source_for_input(path: str, use: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The source (``use``, ``params``) that reads ``path`` given as ``lightpipe run --input``.

    The registered source that scores best (:meth:`Source.can_open`) reads it.
    When that is the pipeline's own source (``use``), or it scores as well,
    the parameters the pipeline sets are kept, those it leaves unset come from
    the file as :meth:`Source.params_for` finds them (the darks and flats of a
    DECTRIS-style master file, say), and ``path`` is the new one.

    Raises
    ------
    SourceError
        When no source can read ``path``; the message lists the sources that read files.
    """
    from lightpipe.core import registry

    candidates = sources_for(path)
    if not candidates:
        readers = [name for name, cls in registry.load_all("sources").items()
                   if "path" in getattr(cls, "Params", SourceParams).model_fields]
        raise SourceError(f"no source can read {path!r}; sources that read files: {', '.join(readers)}; give a "
                          "file of one of these kinds, or set the pipeline's source yourself")
    best = candidates[0][0]
    for score, name, cls in candidates:
        if name == use and score == best:
            return use, {**cls.params_for(path), **params, "path": path}
    _, name, cls = candidates[0]
    return name, cls.params_for(path)
