"""The worker: run a pass's fused map stages over one chunk of events.

:func:`run_chunk` is what every engine executes, in-process or on a Dask
worker. It reads its own events through the scan reader, runs the map stages
each event needs, turns reduce inputs into aligned blocks of partial results
and returns only the fields the driver needs (sinks, solvers).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightpipe.core.event import Event
from lightpipe.core.pipeline import SOURCE, Pipeline
from lightpipe.core.plan import PassPlan
from lightpipe.core.reduction import Block, TreeReducer
from lightpipe.core.stage import Stage
from lightpipe.sinks.base import ShardWriter
from lightpipe.sources.base import ScanReader


@dataclass
class ChunkTask:
    """One unit of work: events ``start`` to ``stop - 1`` of a scan, for one pass.

    Attributes
    ----------
    token
        Identifies the run and scan, so workers set stages up once per scan.
    positions
        For each reduce stage fed by this chunk, the position of the chunk's
        first event among the events that stage takes.
    """

    seq: int
    token: str
    pipeline: Pipeline
    plan: PassPlan
    reader: ScanReader
    start: int
    stop: int
    side: dict[str, Any]
    positions: dict[str, int]
    shards: list[ShardWriter] = field(default_factory=list)


@dataclass
class ChunkResult:
    """What a chunk sends back: per-event results, reduce blocks, timings."""

    seq: int
    start: int
    stop: int
    events: list[Event]
    blocks: dict[str, list[Block[Any]]]
    seconds: dict[str, float]


_STAGES: OrderedDict[tuple[str, str], Stage] = OrderedDict()
_KEEP = 64


def _stage(task: ChunkTask, name: str) -> Stage:
    """The worker's instance of stage ``name`` for this scan, set up once."""
    key = (task.token, name)
    if key not in _STAGES:
        stage = task.pipeline.stages[name].create()
        stage.setup(task.reader.scan)
        _STAGES[key] = stage
        while len(_STAGES) > _KEEP:
            _STAGES.popitem(last=False)
    return _STAGES[key]


def _check_source(event: Event, task: ChunkTask) -> None:
    """Fail ``event`` if its source fields do not fit the declared ports or the scan's frame shape."""
    meta = task.reader.scan.metadata
    for key, value in event.fields.items():
        port = task.pipeline.ports.get(key)
        why = port.check_value(value) if port is not None else None
        if why is None and key == f"{SOURCE}.frame" and "frame_shape" in meta:
            shape, dtype = tuple(meta["frame_shape"]), np.dtype(meta.get("frame_dtype", value.dtype))
            if tuple(value.shape) != shape:
                why = f"has shape {tuple(value.shape)} but the scan's frames are {shape}"
            elif value.dtype != dtype:
                why = f"has dtype {value.dtype} but the scan's frames are {dtype}"
        if why:
            event.fail(SOURCE, f"field {key!r} of event {event.index} {why}; the event is kept aside")
            return


def _inputs(node_inputs: dict[str, str], event: Event, side: dict[str, Any]) -> dict[str, Any]:
    return {name: side[key] if key in side else event.fields[key] for name, key in node_inputs.items()}


def run_chunk(task: ChunkTask, side: dict[str, Any] | None = None) -> ChunkResult:
    """Process one chunk. A stage that raises fails that event only.

    ``side`` replaces ``task.side`` (Dask passes broadcast results this way).
    """
    if side is not None:
        task.side = side
    pipeline, plan = task.pipeline, task.plan
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    events = task.reader.read(task.start, task.stop)
    seconds[SOURCE] = time.perf_counter() - t0
    for event in events:
        if event.error is None:
            event.fields = {f"{SOURCE}.{k}": v for k, v in event.fields.items()}
            _check_source(event, task)
    for name in {n for names in plan.maps.values() for n in names}:
        seconds.setdefault(name, 0.0)
    for event in events:
        for name in plan.maps.get(event.stream, ()):
            if event.error is not None:
                break
            node = pipeline.stages[name]
            t = time.perf_counter()
            try:
                stage = _stage(task, name)
                kwargs = _inputs(node.inputs, event, task.side)
                if stage.wants_index:  # type: ignore[attr-defined]
                    kwargs["index"] = event.index
                out = stage.process(**kwargs)  # type: ignore[attr-defined]
                missing = set(node.cls.outputs) - set(out)
                if missing:
                    raise RuntimeError(f"stage did not return declared outputs {sorted(missing)}")
            except Exception as exc:  # one bad event must not stop the scan
                event.fail(name, f"{type(exc).__name__}: {exc}")
            else:
                event.fields.update({f"{name}.{k}": v for k, v in out.items()})
            seconds[name] += time.perf_counter() - t
    blocks = {}
    for name in plan.reduces:
        if name not in task.positions:
            continue
        node = pipeline.stages[name]
        stage = _stage(task, name)
        tree: TreeReducer[Any] = TreeReducer(stage.merge, task.positions[name])
        t = time.perf_counter()
        for event in events:
            if event.stream not in node.streams:
                continue
            value = None
            if event.error is None:
                try:
                    value = stage.partial(**_inputs(node.inputs, event, task.side))
                except Exception as exc:
                    event.fail(name, f"{type(exc).__name__}: {exc}")
            tree.push_leaf(value)
        seconds[name] = time.perf_counter() - t
        blocks[name] = tree.blocks()
    for event in events:
        keep = plan.returned.get(event.stream, frozenset())
        event.fields = {k: v for k, v in event.fields.items() if k in keep}
    stored: dict[tuple[int, str], Any] = {}
    for shard in task.shards:  # every writer sees the arrays before any is replaced by a reference
        stored.update(shard.write(events))
    for event in events:
        for key in list(event.fields):
            if (event.index, key) in stored:
                event.fields[key] = stored[event.index, key]
    return ChunkResult(task.seq, task.start, task.stop, events, blocks, seconds)
