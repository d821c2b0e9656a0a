"""The worker: run a pass's fused map stages over one chunk of events.

:func:`run_chunk` is what every engine executes, in-process or on a Dask
worker. It reads its own events through the scan reader, runs the map stages
each event needs, turns reduce inputs into aligned blocks of partial results
and returns only the fields the driver needs (sinks, solvers).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightpipe.core.blas import BLAS_THREADS
from lightpipe.core.event import Event
from lightpipe.core.pipeline import SOURCE, Pipeline
from lightpipe.core.plan import PassPlan
from lightpipe.core.reduction import Block, TreeReducer
from lightpipe.core.stage import Stage
from lightpipe.core.sink import ShardWriter
from lightpipe.core.source import ScanReader


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
    #: Fields the driver needs as values whatever the shard writers store (a sink that writes on the driver,
    #: a solver's input): they are never replaced by a writer's reference.
    values: frozenset[str] = frozenset()


@dataclass
class ChunkResult:
    """What a chunk sends back: per-event results, reduce blocks, timings, and where and when it ran.

    Attributes
    ----------
    worker
        ``host:pid/thread`` of the process and thread that ran it.
    started, finished
        Wall-clock times (``time.time()``) at which the worker began and ended it.
    """

    seq: int
    start: int
    stop: int
    events: list[Event]
    blocks: dict[str, list[Block[Any]]]
    seconds: dict[str, float]
    worker: str = ""
    started: float = 0.0
    finished: float = 0.0


def worker_name() -> str:
    """``host:pid/thread`` of the caller: tells engine workers apart, whatever the engine."""
    return f"{socket.gethostname()}:{os.getpid()}/{threading.current_thread().name}"




_STAGES: OrderedDict[tuple[str, str], Stage] = OrderedDict()
_KEEP = 64


def _stage(task: ChunkTask, name: str) -> Stage:
    """The worker's instance of stage ``name`` for this scan, set up once."""
    key = (task.token, name)
    if key not in _STAGES:
        _STAGES[key] = task.pipeline.start_stage(name, task.reader.scan)
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


#: Bytes of frames read at once within a chunk: small enough that the allocator reuses the
#: buffers from one batch to the next instead of mapping fresh memory for every chunk, and
#: that a batch is still in the cache when the stages take it. One Eiger 4M frame per batch
#: (8 MiB) read 200 uncompressed frames 12 % faster than three (32 MiB) here (benchmarks/overhead.py).
BATCH_BYTES = 8 << 20


def _batches(task: ChunkTask) -> list[tuple[int, int]]:
    """Split the chunk into batches of about :data:`BATCH_BYTES` of frames."""
    meta = task.reader.scan.metadata
    try:
        frame_bytes = int(np.prod(meta["frame_shape"])) * np.dtype(meta["frame_dtype"]).itemsize
    except (KeyError, TypeError, ValueError):
        return [(task.start, task.stop)]
    step = max(1, BATCH_BYTES // max(frame_bytes, 1))
    return [(lo, min(lo + step, task.stop)) for lo in range(task.start, task.stop, step)]


def _run_maps(task: ChunkTask, events: list[Event], seconds: dict[str, float]) -> None:
    """Run each event's map stages in order; a stage that raises fails that event only."""
    pipeline = task.pipeline
    for event in events:
        for name in task.plan.maps.get(event.stream, ()):
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
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t


def _feed_reduces(task: ChunkTask, events: list[Event], trees: dict[str, TreeReducer[Any]],
                  seconds: dict[str, float]) -> None:
    """Turn each event's reduce inputs into a leaf of the stage's tree (empty for a failed event)."""
    for name, tree in trees.items():
        node = task.pipeline.stages[name]
        stage = _stage(task, name)
        t = time.perf_counter()
        for event in events:
            if event.stream not in node.streams:
                continue
            value = None
            if event.error is None:
                try:
                    value = stage.partial(**_inputs(node.inputs, event, task.side))  # type: ignore[attr-defined]
                except Exception as exc:
                    event.fail(name, f"{type(exc).__name__}: {exc}")
            tree.push_leaf(value)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t


def _keep_returned(task: ChunkTask, events: list[Event]) -> None:
    """Drop every field the driver does not need; let shard writers store theirs on this worker."""
    for event in events:
        keep = task.plan.returned.get(event.stream, frozenset())
        event.fields = {k: v for k, v in event.fields.items() if k in keep}
    stored: dict[tuple[int, str], Any] = {}
    for shard in task.shards:  # every writer sees the arrays before any is replaced by a reference
        stored.update(shard.write(events))
    for event in events:
        for key in list(event.fields):
            # a field the driver needs as a value (a sink without a writer, a solver) stays one
            if (event.index, key) in stored and key not in task.values:
                event.fields[key] = stored[event.index, key]


def run_chunk(task: ChunkTask, side: dict[str, Any] | None = None) -> ChunkResult:
    """Process one chunk, batch by batch. A stage that raises fails that event only.

    ``side`` replaces ``task.side`` (Dask passes broadcast results this way). The
    stages run with :data:`~lightpipe.core.blas.STAGE_BLAS_THREADS` BLAS threads (:class:`~lightpipe.core.blas.BlasThreads`).
    """
    with BLAS_THREADS.held():
        return _run_chunk(task, side)


def _run_chunk(task: ChunkTask, side: dict[str, Any] | None) -> ChunkResult:
    started = time.time()
    if side is not None:
        task.side = side
    seconds: dict[str, float] = {SOURCE: 0.0}
    trees = {
        name: TreeReducer(_stage(task, name).merge, task.positions[name])  # type: ignore[attr-defined]
        for name in task.plan.reduces if name in task.positions
    }
    done: list[Event] = []
    for lo, hi in _batches(task):
        t0 = time.perf_counter()
        events = task.reader.read(lo, hi)
        seconds[SOURCE] += time.perf_counter() - t0
        BLAS_THREADS.refresh()
        for event in events:
            if event.error is None:
                event.fields = {f"{SOURCE}.{k}": v for k, v in event.fields.items()}
                _check_source(event, task)
        _run_maps(task, events, seconds)
        _feed_reduces(task, events, trees, seconds)
        _keep_returned(task, events)
        done.extend(events)
    blocks = {name: tree.blocks() for name, tree in trees.items()}
    return ChunkResult(task.seq, task.start, task.stop, done, blocks, seconds, worker_name(), started, time.time())
