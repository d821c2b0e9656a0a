"""Turn a pipeline into passes over the scan's events.

A map stage that needs a reduce result (dark correction needs the dark mean)
cannot run before that reduce has seen all its events. Each reduce and solver
stage therefore gets a *level*: 0 if nothing it depends on is a scan-level
result, else one more than the deepest such result. Pass ``k`` reads the
streams that the level-``k`` consumers take and runs only the map stages they
need; sinks are fed in the pass after every result their fields depend on.
Map stages are stateless, so recomputing one in a later pass is safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lightpipe.core.pipeline import SCAN, SOURCE, Pipeline


@dataclass(frozen=True)
class PassPlan:
    """What one pass over the events does.

    Attributes
    ----------
    number
        Pass number, from 0.
    streams
        Streams whose events are read in this pass.
    maps
        For each stream, the map stages to run on its events, in pipeline order.
    reduces, solvers
        Reduce and solver stages fed in this pass.
    feeds_sinks
        Whether the sinks receive this pass's events.
    returned
        For each stream, the per-event fields sent back to the driver (for sinks and solvers).
    side_inputs
        Scan-level results (from earlier passes) that this pass's stages read.
    """

    number: int
    streams: frozenset[str]
    maps: dict[str, tuple[str, ...]]
    reduces: tuple[str, ...]
    solvers: tuple[str, ...]
    feeds_sinks: bool
    returned: dict[str, frozenset[str]]
    side_inputs: frozenset[str]


class ExecutionPlan:
    """The passes of a pipeline, computed once per pipeline.

    Parameters
    ----------
    pipeline
        A validated pipeline.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._levels: dict[str, int] = {}

    def producer(self, key: str) -> str:
        """Name of the stage (or ``source``) producing field ``key``."""
        return key.split(".", 1)[0]

    def is_scan_level(self, key: str) -> bool:
        """Whether field ``key`` is a per-scan value (a reduce or solver result, or the scan's metadata)."""
        name = self.producer(key)
        return name == SCAN or (name != SOURCE and self.pipeline.stages[name].kind != "map")

    def needs(self, keys: set[str]) -> tuple[set[str], set[str]]:
        """Map stages needed to compute ``keys``, and the scan-level results they read."""
        maps: set[str] = set()
        scan: set[str] = set()
        todo = list(keys)
        while todo:
            key = todo.pop()
            name = self.producer(key)
            if name == SOURCE:
                continue
            if self.is_scan_level(key):
                scan.add(key)
            elif name not in maps:
                maps.add(name)
                todo.extend(self.pipeline.stages[name].inputs.values())
        return maps, scan

    def level(self, name: str) -> int:
        """Pass in which reduce or solver stage ``name`` is fed."""
        if name not in self._levels:
            _, scan = self.needs(set(self.pipeline.stages[name].inputs.values()))
            self._levels[name] = self.first_pass_after(scan)
        return self._levels[name]

    def first_pass_after(self, scan_keys: set[str]) -> int:
        """The first pass in which every per-scan value in ``scan_keys`` is known.

        Reduce and solver results are known after the pass that feeds them; the
        scan's metadata (``scan.<key>``) before the first pass.
        """
        producers = {self.producer(k) for k in scan_keys} - {SCAN}
        return max((self.level(p) + 1 for p in producers), default=0)

    @cached_property
    def passes(self) -> list[PassPlan]:
        """The passes, in execution order; passes with nothing to feed are left out."""
        p = self.pipeline
        consumers = [n for n, node in p.stages.items() if node.kind != "map"]
        sink_event_fields = {k for s in p.sinks for k in s.fields if not self.is_scan_level(k)}
        _, sink_scan = self.needs(sink_event_fields)
        sink_pass = self.first_pass_after(sink_scan)
        last = max([sink_pass, *(self.level(n) for n in consumers)])
        plans = []
        for number in range(last + 1):
            fed = [n for n in consumers if self.level(n) == number]
            plan = self._pass(number, fed, number == sink_pass and bool(p.sinks))
            if plan.streams:
                plans.append(plan)
        return plans

    def _pass(self, number: int, fed: list[str], feeds_sinks: bool) -> PassPlan:
        p = self.pipeline
        wanted: dict[str, set[str]] = {}  # stream -> field keys the consumers read
        returned: dict[str, set[str]] = {}
        for name in fed:
            node = p.stages[name]
            for stream in node.streams:
                wanted.setdefault(stream, set()).update(node.inputs.values())
                if node.kind == "solver":
                    returned.setdefault(stream, set()).update(
                        k for k in node.inputs.values() if not self.is_scan_level(k)
                    )
        if feeds_sinks:
            for sink in p.sinks:
                event_fields = {k for k in sink.fields if not self.is_scan_level(k)}
                for stream in sink.streams:
                    wanted.setdefault(stream, set()).update(event_fields)
                    returned.setdefault(stream, set()).update(event_fields)
        order = list(p.stages)
        maps: dict[str, tuple[str, ...]] = {}
        side: set[str] = set()
        for stream, keys in wanted.items():
            needed, scan = self.needs(keys)
            side |= scan
            maps[stream] = tuple(n for n in order if n in needed and stream in p.stages[n].streams)
        return PassPlan(
            number=number,
            streams=frozenset(wanted),
            maps=maps,
            reduces=tuple(n for n in fed if p.stages[n].kind == "reduce"),
            solvers=tuple(n for n in fed if p.stages[n].kind == "solver"),
            feeds_sinks=feeds_sinks,
            returned={s: frozenset(k) for s, k in returned.items()},
            side_inputs=frozenset(side),
        )

    def last_pass_of(self, stream: str) -> int | None:
        """Number of the last pass that reads ``stream``, or ``None`` if none does."""
        numbers = [pp.number for pp in self.passes if stream in pp.streams]
        return max(numbers) if numbers else None
