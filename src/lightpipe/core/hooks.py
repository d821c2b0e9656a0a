"""Run hooks: what the driver reports while a pipeline runs, to whoever subscribes.

The driver (:mod:`lightpipe.core.driver`) never calls a progress bar, a
topology or a service by name: it calls the methods of :class:`RunHooks` on
every subscriber given to ``engine.run(..., hooks=[...])``. Each method is a
documented no-op; a subscriber overrides the ones it needs, as Dask's
scheduler and worker plug-ins do. The CLI's progress display
(:class:`lightpipe.cli.progress.RunDisplay`), the topology
(:class:`lightpipe.core.monitor.TopologyHooks`) and the status channel
(:class:`lightpipe.control.ControlServer`) are subscribers; so is the service.

Hooks are called on the driver's thread, in acquisition order, and should
return quickly: a hook that raises is logged and skipped, never allowed to
stop a scan.

Example
-------
>>> class CountChunks(RunHooks):
...     def __init__(self) -> None:
...         self.chunks = 0
...     def chunk_done(self, chunk: ChunkDone) -> None:
...         self.chunks += 1
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lightpipe.core.report import RunReport, ScanReport

if TYPE_CHECKING:
    from lightpipe.core.event import Scan
    from lightpipe.core.ledger import Ledger
    from lightpipe.core.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class RunStarted:
    """A run begins: the pipeline and the engine's name and settings."""

    pipeline: Pipeline
    engine: dict[str, Any]


@dataclass
class Progress:
    """Where a pass of a scan stands after a chunk, for progress displays.

    Attributes
    ----------
    scan
        The scan's name.
    pass_number, passes
        This pass (from 0) and how many the pipeline makes over the scan.
    done, total
        Events of this pass collected, and in the pass.
    in_flight, window
        Events submitted and not yet collected, and the most allowed (the pipeline buffer).
    ledger
        The scan's accounting (received, written, failed).
    source
        What a live source holds and its lag (``held``, ``spilled``, ``lag_s``), if it says.
    """

    scan: str
    pass_number: int
    passes: int
    done: int
    total: int
    in_flight: int
    window: int
    ledger: Ledger
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def buffer_fill(self) -> float:
        """Fraction of the in-flight window in use."""
        return self.in_flight / self.window if self.window else 0.0


@dataclass
class StageCounts:
    """What one stage did with one chunk's events."""

    events_in: int
    failed: int
    seconds: float


@dataclass
class ChunkDone:
    """A chunk's results were collected, in acquisition order.

    Attributes
    ----------
    scan
        The scan's name.
    pass_number
        The pass the chunk belongs to.
    start, stop
        Its events' indices, ``start`` to ``stop - 1``.
    worker
        Where it ran (``host:pid`` and thread of the worker process).
    started, finished
        Wall-clock times (``time.time()``) at which the worker began and ended it.
    stages
        Per stage it ran (and the source, as ``source``): events taken, failed, seconds spent.
    progress
        The pass's progress after it.
    """

    scan: str
    pass_number: int
    start: int
    stop: int
    worker: str
    started: float
    finished: float
    stages: dict[str, StageCounts]
    progress: Progress


class RunHooks:
    """Subscribe to a run: override the methods you need; every one does nothing by default."""

    def run_started(self, run: RunStarted) -> None:
        """The run begins, before the source yields its first scan."""

    def run_finished(self, report: RunReport) -> None:
        """The run ended (every scan, or an error: then ``report`` holds the scans finished before); always called."""

    def scan_started(self, scan: Scan, passes: int) -> None:
        """A scan begins: its sinks are open, its passes about to run."""

    def scan_finished(self, report: ScanReport) -> None:
        """A scan ended with its state recorded (``report.ledger.state``) and its sinks closed."""

    def events_submitted(self, scan: str, events: int, in_flight: int, window: int, source: dict[str, Any]) -> None:
        """A chunk of ``events`` entered the pipeline buffer (``source``: a live source's holdings and lag)."""

    def chunk_done(self, chunk: ChunkDone) -> None:
        """A chunk's results were collected in order: its worker, stage timings and event counts."""

    def events_written(self, sink: int, name: str, events: int) -> None:
        """Sink number ``sink`` (registry name ``name``) wrote ``events`` events."""

    def event_failed(self, scan: str, index: int, stream: str, stage: str, message: str) -> None:
        """Event ``index`` of ``stream`` failed in ``stage`` (``source`` for a frame that could not be read)."""

    def intermediate_result(self, scan: str, results: dict[str, Any]) -> None:
        """A solver's results so far (``stage.field`` keys): an object as it converges, an error curve."""

    def workers_changed(self, seen: dict[str, float]) -> None:
        """The engine's workers and when each was last seen alive (``time.monotonic`` seconds)."""


ProgressCallback = Callable[[Progress], None]


class OnProgress(RunHooks):
    """Calls ``callback`` with the :class:`Progress` of every chunk collected (``engine.run(progress=...)``)."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback

    def chunk_done(self, chunk: ChunkDone) -> None:
        self.callback(chunk.progress)


class HookSet(RunHooks):
    """Calls every subscriber in turn; one that raises is logged and skipped.

    Parameters
    ----------
    hooks
        The subscribers, called in this order.
    """

    def __init__(self, hooks: Sequence[RunHooks] = ()) -> None:
        self.hooks = list(hooks)

    def _call(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:  # a broken subscriber must not stop the scan
                log.exception("run hook %s.%s failed", type(hook).__name__, method)

    def run_started(self, run: RunStarted) -> None:
        self._call("run_started", run)

    def run_finished(self, report: RunReport) -> None:
        self._call("run_finished", report)

    def scan_started(self, scan: Scan, passes: int) -> None:
        self._call("scan_started", scan, passes)

    def scan_finished(self, report: ScanReport) -> None:
        self._call("scan_finished", report)

    def events_submitted(self, scan: str, events: int, in_flight: int, window: int, source: dict[str, Any]) -> None:
        self._call("events_submitted", scan, events, in_flight, window, source)

    def chunk_done(self, chunk: ChunkDone) -> None:
        self._call("chunk_done", chunk)

    def events_written(self, sink: int, name: str, events: int) -> None:
        self._call("events_written", sink, name, events)

    def event_failed(self, scan: str, index: int, stream: str, stage: str, message: str) -> None:
        self._call("event_failed", scan, index, stream, stage, message)

    def intermediate_result(self, scan: str, results: dict[str, Any]) -> None:
        self._call("intermediate_result", scan, results)

    def workers_changed(self, seen: dict[str, float]) -> None:
        self._call("workers_changed", seen)
