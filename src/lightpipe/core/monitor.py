"""The topology of a running pipeline, kept up to date by subscribing to its run hooks.

:class:`TopologyHooks` registers the components of a run (engine, source,
pipeline buffer, one per stage, one per sink, the workers) in a
:class:`~lightpipe.core.topology.Topology` when the run starts, and keeps
their states and counters from the hooks, so that ``lightpipe status`` (and
the service) can show them. The same topology carries abort requests, which
the driver honours between chunks.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from lightpipe.core.hooks import ChunkDone, RunHooks, RunStarted
from lightpipe.core.report import RunReport, ScanReport
from lightpipe.core.topology import Component, Topology

if TYPE_CHECKING:
    from lightpipe.core.event import Scan

#: Seconds after which a worker that the engine has not seen is shown as missing beats.
WORKER_HEARTBEAT_S = 10.0


class TopologyHooks(RunHooks):
    """Keeps one run's components in ``topology``; removes them when the run ends.

    Parameters
    ----------
    topology
        Where the run's components are registered.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._own: list[str] = []
        self.stages: dict[str, Component] = {}
        self.sinks: list[Component] = []
        self.workers: dict[str, Component] = {}

    def _add(self, name: str, kind: str, config: dict[str, Any], heartbeat_s: float | None) -> Component:
        if name in self.topology:
            self.topology.remove(name)
        self._own.append(name)
        return self.topology.add(name, kind, config, heartbeat_s)

    def _parts(self) -> list[Component]:
        return [self.engine, self.source, self.buffer, *self.stages.values(), *self.sinks]

    def run_started(self, run: RunStarted) -> None:
        pipeline = run.pipeline
        self.engine = self._add("engine", "engine", run.engine, None)
        self.source = self._add("source", "source", {"use": pipeline.source_cls.name}, None)
        self.buffer = self._add("buffer", "buffer", {}, None)
        self.stages = {
            name: self._add(f"stage:{name}", "stage", {"use": node.cls.name, **node.params.model_dump()}, None)
            for name, node in pipeline.stages.items()
        }
        self.sinks = [self._add(f"sink:{i}:{s.cls.name}", "sink", {"fields": s.fields}, None)
                      for i, s in enumerate(pipeline.sinks)]
        for c in self._parts():
            c.set_state("idle")

    def scan_started(self, scan: Scan, passes: int) -> None:
        self.topology.begin_scan(scan.name)
        for c in self._parts():
            c.reset()
            c.set_state("running", f"scan {scan.name}")

    def scan_finished(self, report: ScanReport) -> None:
        state = report.ledger.state
        after = "aborted" if state == "aborted" else "idle"
        for c in self._parts():
            c.set_fill(0.0)
            c.set_state("failed" if state == "failed" and c is self.engine else after, report.ledger.error or "")
        self.topology.end_scan(state)

    def events_submitted(self, scan: str, events: int, in_flight: int, window: int, source: dict[str, Any]) -> None:
        self.source.add_out(events)
        self.buffer.add_in(events)
        self.buffer.set_fill(min(1.0, in_flight / window) if window else 0.0)
        if source:
            self.source.set_state("running", ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in source.items()))

    def chunk_done(self, chunk: ChunkDone) -> None:
        self.engine.beat()
        p = chunk.progress
        self.buffer.add_out(chunk.stop - chunk.start)
        self.buffer.set_fill(min(1.0, p.in_flight / p.window) if p.window else 0.0)
        for name, counts in chunk.stages.items():
            component = self.stages.get(name)
            if component is not None:
                component.add_in(counts.events_in)
                component.add_failed(counts.failed)
                component.add_out(counts.events_in - counts.failed)

    def events_written(self, sink: int, name: str, events: int) -> None:
        self.sinks[sink].add_out(events)

    def workers_changed(self, seen: dict[str, float]) -> None:
        now = time.monotonic()
        for name, last in seen.items():
            if name not in self.workers:
                self.workers[name] = self._add(f"worker:{name}", "worker", {}, WORKER_HEARTBEAT_S)
                self.workers[name].set_state("running")
            if now - last < WORKER_HEARTBEAT_S:
                self.workers[name].beat()
        for name in set(self.workers) - set(seen):
            self.topology.remove(f"worker:{name}")
            del self.workers[name]

    def run_finished(self, report: RunReport) -> None:
        for name in self._own:
            self.topology.remove(name)
        self._own.clear()
