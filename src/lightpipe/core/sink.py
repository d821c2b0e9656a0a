"""The sink protocol: open per scan, write events in acquisition order, close with scan results."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.core.ports import Port


class SinkParams(BaseModel):
    """Base of every sink's parameter model; unknown parameters are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardWriter:
    """Writes per-event results on the worker that computed them (e.g. one file per worker).

    The engine calls :meth:`write` on a worker with a chunk's events, for every
    sink's writer, and only then replaces the stored values by the references
    the writers return, so each writer sees the real arrays. Must pickle.
    """

    def write(self, events: list[Event]) -> dict[tuple[int, str], Any]:
        """Store what this sink needs; return ``{(index, field): reference}`` to send instead of values.

        Must not modify ``events``.
        """
        raise NotImplementedError

    @staticmethod
    def close_all() -> None:
        """Close what this process opened; the engine runs it on every worker when a scan ends."""


class Sink:
    """Base class of sinks.

    Parameters
    ----------
    params
        The sink's checked parameters.
    fields
        Field keys (``producer.field``) to write.
    streams
        Streams whose events are written per event.
    context
        ``pipeline`` (the :class:`~lightpipe.core.pipeline.Pipeline`),
        ``output_dir`` (a :class:`~pathlib.Path`) and ``files`` (a list that
        holds, when this sink closes, the files of the sinks closed before it).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[SinkParams]] = SinkParams

    def __init__(self, params: SinkParams, fields: list[str], streams: frozenset[str], context: dict[str, Any]) -> None:
        self.params = params
        self.fields = fields
        self.streams = streams
        self.pipeline = context["pipeline"]
        self.output_dir = Path(context["output_dir"])
        self.earlier_files: list[Path] = context.get("files", [])

    @classmethod
    def field_problems(cls, params: Any, fields: list[str], ports: dict[str, Port]) -> list[tuple[tuple[Any, ...], str]]:
        """What this sink cannot write, found when the pipeline loads: ``[(path, why), ...]``, empty when none.

        ``path`` is where the problem is, under the sink's entry of the pipeline
        file (``("fields", 2)``, ``("params", "default")``); ``fields`` are the
        keys the sink receives, each with its port in ``ports`` (the loader asks
        only when every field exists). Nothing by default.
        """
        return []

    def open(self, scan: Scan) -> None:
        """Start writing ``scan``."""

    def shard_writer(self) -> ShardWriter | None:
        """A writer for workers to store per-event fields themselves, or ``None`` (driver writes)."""
        return None

    def write(self, events: list[Event]) -> None:
        """Write events, given in acquisition order. Failed events have ``error`` set."""
        raise NotImplementedError

    def update(self, results: dict[str, Any]) -> None:
        """Intermediate scan-level results (a solver's object and error so far), for live views. Ignored by default."""

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        """Finish the scan with its scan-level ``results``; return the files written."""
        return []
