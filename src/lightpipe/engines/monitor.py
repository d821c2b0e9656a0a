"""What the driver reports to the topology while it runs, and where it honours an abort.

:class:`RunMonitor` registers the components of a running pipeline (engine,
source, pipeline buffer, one per stage, one per sink, the workers) in a
:class:`~lightpipe.core.topology.Topology` and keeps their counters, so that
``lightpipe status`` (and later the service) can show them. The driver calls
:meth:`RunMonitor.check_abort` between chunks; an abort raises
:class:`ScanAborted`, which closes the scan as ``aborted`` and leaves the
pipeline ready for the next one.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from lightpipe.core.errors import LightpipeError
from lightpipe.core.topology import Component, Topology

if TYPE_CHECKING:
    from lightpipe.core.chunk import ChunkResult
    from lightpipe.core.pipeline import Pipeline
    from lightpipe.core.plan import PassPlan


class ScanAborted(LightpipeError):
    """The current scan was aborted on request (``lightpipe abort``)."""


class RunMonitor:
    """The topology of one pipeline run, fed by the driver.

    Parameters
    ----------
    topology
        Where components are registered; a private one if ``None``.
    pipeline
        The pipeline being run.
    engine
        The engine's name and settings, shown as the engine component's config.
    """

    def __init__(self, topology: Topology | None, pipeline: Pipeline, engine: dict[str, Any]) -> None:
        self.topology = topology if topology is not None else Topology(pipeline.name)
        self._own: list[str] = []
        self.engine = self._add("engine", "engine", engine, None)
        self.source = self._add("source", "source", {"use": pipeline.source_cls.name}, None)
        self.buffer = self._add("buffer", "buffer", {}, None)
        self.stages = {
            name: self._add(f"stage:{name}", "stage", {"use": node.cls.name, **node.params.model_dump()}, None)
            for name, node in pipeline.stages.items()
        }
        self.sinks = [self._add(f"sink:{i}:{s.cls.name}", "sink", {"fields": s.fields}, None)
                      for i, s in enumerate(pipeline.sinks)]
        self.workers: dict[str, Component] = {}
        self._workers_seen = 0.0
        for c in [self.engine, self.source, self.buffer, *self.stages.values(), *self.sinks]:
            c.set_state("idle")

    def _add(self, name: str, kind: str, config: dict[str, Any], heartbeat_s: float | None) -> Component:
        if name in self.topology:
            self.topology.remove(name)
        self._own.append(name)
        return self.topology.add(name, kind, config, heartbeat_s)

    def begin_scan(self, name: str) -> None:
        """A scan starts: counters restart, every component runs."""
        self.topology.begin_scan(name)
        for c in [self.engine, self.source, self.buffer, *self.stages.values(), *self.sinks]:
            c.reset()
            c.set_state("running", f"scan {name}")

    def end_scan(self, state: str, detail: str = "") -> None:
        """The scan ended as ``completed``, ``failed`` or ``aborted``."""
        after = "aborted" if state == "aborted" else "idle"
        for c in [self.engine, self.source, self.buffer, *self.stages.values(), *self.sinks]:
            c.set_fill(0.0)
            c.set_state("failed" if state == "failed" and c is self.engine else after, detail)
        self.topology.end_scan(state)

    def check_abort(self) -> None:
        """Raise :class:`ScanAborted` if an abort of the current scan was requested."""
        if self.topology.abort_requested:
            raise ScanAborted(f"scan aborted: {self.topology.abort_reason or 'on request'}")

    def submitted(self, events: int, in_flight: int, window: int, source: dict[str, Any]) -> None:
        """A chunk of ``events`` entered the pipeline buffer."""
        self.source.add_out(events)
        self.buffer.add_in(events)
        self.buffer.set_fill(min(1.0, in_flight / window) if window else 0.0)
        if source:
            self.source.set_state("running", ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in source.items()))

    def collected(self, pp: PassPlan, result: ChunkResult, in_flight: int, window: int) -> None:
        """A chunk's results came back in order."""
        self.engine.beat()
        self.buffer.add_out(result.stop - result.start)
        self.buffer.set_fill(min(1.0, in_flight / window) if window else 0.0)
        for name in {n for names in pp.maps.values() for n in names} | set(pp.reduces) | set(pp.solvers):
            taken = [e for e in result.events if name in pp.maps.get(e.stream, ()) or name in pp.reduces
                     or name in pp.solvers]
            failed = sum(1 for e in taken if e.failed_at == name)
            component = self.stages[name]
            component.add_in(len(taken))
            component.add_failed(failed)
            component.add_out(len(taken) - failed)

    def written(self, sink: int, events: int) -> None:
        """Sink number ``sink`` wrote ``events`` events."""
        self.sinks[sink].add_out(events)

    def workers_seen(self, seen: dict[str, float], heartbeat_s: float) -> None:
        """Workers and when each was last seen alive (monotonic seconds); at most once a second."""
        now = time.monotonic()
        if now - self._workers_seen < 1.0:
            return
        self._workers_seen = now
        for name, last in seen.items():
            if name not in self.workers:
                self.workers[name] = self._add(f"worker:{name}", "worker", {}, heartbeat_s)
                self.workers[name].set_state("running")
            if now - last < heartbeat_s:
                self.workers[name].beat()
        for name in set(self.workers) - set(seen):
            self.topology.remove(f"worker:{name}")
            del self.workers[name]

    def close(self) -> None:
        """Remove this run's components from the topology."""
        for name in self._own:
            self.topology.remove(name)
