"""The driver every engine shares: it runs passes, sorts results, merges reduces and feeds sinks.

Engines differ only in where :func:`~lightpipe.core.chunk.run_chunk` executes
(:meth:`~lightpipe.core.engine.Engine.execute`); the driver logic here is the
same for all, which is how the guarantees in ``docs/concepts.md`` hold
everywhere. What happens is reported through run hooks
(:mod:`lightpipe.core.hooks`), never to a concrete monitor.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import AbstractSet, Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from lightpipe.core.blas import BLAS_THREADS
from lightpipe.core.chunk import ChunkResult, ChunkTask
from lightpipe.core.errors import LightpipeError, ScanAborted
from lightpipe.core.hooks import ChunkDone, HookSet, Progress, StageCounts
from lightpipe.core.ledger import Ledger
from lightpipe.core.parts import PartRunner
from lightpipe.core.pipeline import SCAN, SOURCE, Pipeline
from lightpipe.core.plan import ExecutionPlan, PassPlan
from lightpipe.core.reduction import TreeReducer
from lightpipe.core.report import ScanReport
from lightpipe.core.sink import ShardWriter, Sink
from lightpipe.core.sorter import Sorter
from lightpipe.core.source import ScanReader
from lightpipe.core.topology import Topology

log = logging.getLogger(__name__)

#: Seconds between two questions to the engine about its workers (a scheduler round trip on Dask).
WORKERS_EVERY_S = 1.0


class ScanInterrupted(KeyboardInterrupt):
    """The run was interrupted (SIGINT, SIGTERM) during a scan, which was closed as ``interrupted``.

    Parameters
    ----------
    report
        The interrupted scan's report: its ledger, and the files its sinks closed.
    signal
        What interrupted it (``SIGINT``, ``SIGTERM``).
    """

    def __init__(self, report: ScanReport, signal: str) -> None:
        super().__init__(signal)
        self.report = report
        self.signal = signal


class Executor(Protocol):
    """What the driver asks of an engine (:class:`lightpipe.core.engine.Engine` documents each method)."""

    def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]: ...

    def share(self, value: dict[str, Any]) -> Any: ...

    def shards_enabled(self) -> bool: ...

    def run_on_workers(self, function: Callable[[], None]) -> None: ...

    def part_runner(self) -> PartRunner: ...

    def workers_seen(self) -> dict[str, float]: ...

    def chunk_size_for(self, pipeline: Pipeline) -> int: ...

    def limits(self, pipeline: Pipeline, pp: PassPlan) -> tuple[int, int, str]: ...


class ScanRun:
    """One scan through every pass of a pipeline: the driver's state and steps.

    Parameters
    ----------
    engine
        Where chunks execute.
    pipeline, reader
        What runs, on which scan.
    output_dir
        Where sinks write.
    hooks
        The run's subscribers (:mod:`lightpipe.core.hooks`).
    topology
        Carries abort requests, checked between chunks.
    """

    def __init__(self, engine: Executor, pipeline: Pipeline, reader: ScanReader, output_dir: Path,
                 hooks: HookSet, topology: Topology | None = None) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.plan = ExecutionPlan(pipeline)
        self.reader = reader
        self.scan = reader.scan
        self.output_dir = output_dir
        self.hooks = hooks
        self.topology = topology
        self._workers_asked = 0.0
        self.ledger = Ledger()
        self.results: dict[str, Any] = {}
        self.stage_seconds: dict[str, float] = {}
        self.token = uuid.uuid4().hex
        self.files: list[Path] = []  # sinks close in order; a later sink sees the earlier ones' files
        self.sinks: list[Sink] = []
        self.shards: list[ShardWriter] = []
        self.driver_fields: frozenset[str] = frozenset()

    def run(self) -> ScanReport:
        """Open the sinks, run the passes, close the scan with its state; never lose what was written.

        An interrupt (``KeyboardInterrupt``: SIGINT, or SIGTERM turned into one by
        the command line) closes the scan as ``interrupted`` and its sinks, like
        an abort, then stops the run with :class:`ScanInterrupted`.
        """
        t0 = time.perf_counter()
        scan = self.scan
        self._open_sinks()
        self.hooks.scan_started(scan, len(self.plan.passes))
        read_streams: set[str] = set()
        interrupt: KeyboardInterrupt | None = None
        try:
            self._check_streams()
            self.results.update(self._metadata_inputs())
            for pp in self.plan.passes:
                fresh = pp.streams - read_streams
                read_streams |= pp.streams
                self._run_pass(pp, fresh)
        except ScanAborted as exc:
            log.warning("scan %s: %s", scan.name, exc)
            self.ledger.close(str(exc), state="aborted")
        except KeyboardInterrupt as exc:  # the run stops, but only after the scan's files say so
            interrupt = exc
            log.warning("scan %s interrupted by %s", scan.name, str(exc) or "SIGINT")
            self.ledger.close(f"{str(exc) or 'SIGINT'} received", state="interrupted")
        except LightpipeError as exc:  # the scan cannot finish: close it with its state recorded
            log.error("scan %s failed: %s", scan.name, exc)
            self.ledger.close(str(exc))
        except Exception as exc:
            log.exception("scan %s failed", scan.name)
            self.ledger.close(f"{type(exc).__name__}: {exc}")
        else:
            self.ledger.close()
        self._close_sinks()
        report = ScanReport(scan.name, self.ledger, self.files, self.results, time.perf_counter() - t0,
                            self.stage_seconds)
        self.hooks.scan_finished(report)
        if interrupt is not None:
            raise ScanInterrupted(report, str(interrupt) or "SIGINT") from interrupt
        return report

    def _close_sinks(self) -> None:
        """Close the workers' shard files, then every sink, even when one of them fails; raise the first error."""
        errors: list[Exception] = []
        for writer_type in {type(w) for w in self.shards}:
            try:
                self.engine.run_on_workers(writer_type.close_all)
            except Exception as exc:  # a lost worker must not keep the scan's file from closing
                log.error("scan %s: closing %s on the workers failed: %s", self.scan.name, writer_type.__name__, exc)
        for sink in self.sinks:
            try:
                self.files.extend(sink.close(self.results, self.ledger))
            except Exception as exc:
                log.exception("scan %s: sink %r failed to close", self.scan.name, sink.name)
                errors.append(exc)
        if errors:
            raise errors[0]

    def _check_abort(self) -> None:
        """Raise :class:`ScanAborted` if an abort of the current scan was requested."""
        if self.topology is not None and self.topology.abort_requested:
            raise ScanAborted(f"scan aborted: {self.topology.abort_reason or 'on request'}")

    def _open_sinks(self) -> None:
        context = {"pipeline": self.pipeline, "output_dir": self.output_dir, "files": self.files}
        self.sinks = [s.cls(s.params, s.fields, s.streams, context) for s in self.pipeline.sinks]
        for sink in self.sinks:
            try:
                sink.open(self.scan)
            except OSError as exc:
                raise LightpipeError(f"sink {sink.name!r} cannot start scan {self.scan.name!r}: {exc}; check that "
                                     f"the output directory {self.output_dir} is writable") from exc
        if self.engine.shards_enabled():
            writers = {id(s): s.shard_writer() for s in self.sinks}
            self.shards = [w for w in writers.values() if w is not None]
            # what a sink without a writer of its own writes must reach the driver as values, not references
            self.driver_fields = frozenset(k for s in self.sinks if writers[id(s)] is None for k in s.fields)

    def _check_streams(self) -> None:
        """Refuse a scan that lacks a stream a reduce or solver stage needs (no darks for dark statistics)."""
        scan = self.scan
        for pp in self.plan.passes:
            for name in (*pp.reduces, *pp.solvers):
                node = self.pipeline.stages[name]
                if not any(len(scan.streams.get(s, ())) for s in node.streams):
                    have = ", ".join(f"{k} {len(v)}" for k, v in scan.streams.items())
                    raise LightpipeError(
                        f"stage {name!r} needs events of stream {'/'.join(sorted(node.streams))} but scan "
                        f"{scan.name!r} has none (its streams: {have}); "
                        "record them, point the source at them (e.g. source.params.dark), or remove the stage"
                    )

    def _metadata_inputs(self) -> dict[str, Any]:
        """The ``scan.<key>`` values the stages read, from the scan's metadata, checked against their ports.

        An integer array (a DECTRIS pixel mask of flag bits) feeding a ``bool`` port
        becomes ``True`` where any flag is set.
        """
        scan, values = self.scan, {}
        for name, node in self.pipeline.stages.items():
            for in_name, ref in node.inputs.items():
                if not ref.startswith(f"{SCAN}."):
                    continue
                key = ref.split(".", 1)[1]
                if key not in scan.metadata:
                    raise LightpipeError(
                        f"stage {name!r} input {in_name!r} reads {ref!r}, but scan {scan.name!r} has no {key!r} in "
                        f"its metadata (it has: {', '.join(sorted(scan.metadata)) or 'nothing'}); have the source "
                        f"record it (a DECTRIS stream sends its pixel mask with header_detail 'all') or connect the "
                        "input to a stage")
                port = node.cls.inputs[in_name]
                value = np.asarray(scan.metadata[key])
                if port.dtype == "bool" and value.dtype.kind in "iu":
                    value = value != 0
                why = port.check_value(value)
                if why:
                    raise LightpipeError(f"stage {name!r} input {in_name!r} reads {ref!r} of scan {scan.name!r}, "
                                         f"which {why}; connect the input to a value of that kind")
                values[ref] = value
        return values

    def _offsets(self, pp: PassPlan, ranges: list[range]) -> dict[str, dict[int, int]]:
        """Position of each range's first event among the events each reduce stage takes."""
        offsets: dict[str, dict[int, int]] = {}
        for name in pp.reduces:
            taken = self.pipeline.stages[name].streams
            pos, offsets[name] = 0, {}
            for r in ranges:
                if self.scan.stream_of(r.start) in taken:
                    offsets[name][r.start] = pos
                    pos += len(r)
        return offsets

    def _tasks(self, pp: PassPlan, ranges: list[range], fresh: AbstractSet[str], side: Any, window: int,
               in_flight: list[int]) -> Iterator[ChunkTask]:
        """Chunks of the pass, cut when their events are ready; checks for an abort before each."""
        chunk = self.engine.chunk_size_for(self.pipeline)
        offsets = self._offsets(pp, ranges)
        shards = self.shards if pp.feeds_sinks else []
        # a solver's inputs are fed on the driver: values too
        values = self.driver_fields | {ref for name in pp.solvers for ref in self.pipeline.stages[name].inputs.values()}
        seq = 0
        for r in ranges:
            stream = self.scan.stream_of(r.start)
            start = r.start
            while start < r.stop:
                # a live source makes the chunk wait for its events, at most chunk_seconds for a full one
                stop = start
                while stop == start:
                    self._check_abort()
                    stop = self.reader.ready(start, min(start + chunk, r.stop), self.pipeline.engine.chunk_seconds)
                positions = {n: offsets[n][r.start] + (start - r.start) for n in pp.reduces if r.start in offsets[n]}
                if stream in fresh:
                    self.ledger.receive(range(start, stop))
                in_flight[0] += stop - start
                self.hooks.events_submitted(self.scan.name, stop - start, in_flight[0], window, self.reader.status())
                yield ChunkTask(seq, self.token, self.pipeline, pp, self.reader.for_chunk(start, stop), start, stop,
                                side, positions, shards, values)
                seq += 1
                start = stop

    def _run_pass(self, pp: PassPlan, fresh: AbstractSet[str]) -> None:
        with BLAS_THREADS.held():  # the reduce and solver stages here, as the map stages in run_chunk
            self._run_stages(pp, fresh)

    def _run_stages(self, pp: PassPlan, fresh: AbstractSet[str]) -> None:
        pipeline, scan, engine = self.pipeline, self.scan, self.engine
        window, max_tasks, policy = engine.limits(pipeline, pp)
        side = engine.share({k: self.results[k] for k in pp.side_inputs})
        ranges = scan.indices(set(pp.streams))
        total = sum(len(r) for r in ranges)
        last_of = {s: self.plan.last_pass_of(s) == pp.number for s in pp.streams}
        parts: PartRunner = engine.part_runner()
        reducers = {name: pipeline.start_stage(name, scan, parts) for name in pp.reduces}
        solvers = {name: pipeline.start_stage(name, scan, parts) for name in pp.solvers}
        trees = {n: TreeReducer(reducers[n].merge) for n in pp.reduces}  # type: ignore[attr-defined]
        in_flight = [0]
        done = 0
        sorter: Sorter[ChunkResult] = Sorter()
        results = engine.execute(self._tasks(pp, ranges, fresh, side, window, in_flight), max_tasks, policy)
        try:
            for result in results:
                for ordered in sorter.add(result.seq, result):
                    in_flight[0] -= ordered.stop - ordered.start
                    done += ordered.stop - ordered.start
                    self._collect(pp, ordered, trees, solvers, last_of)
                    if last_of[scan.stream_of(ordered.start)]:
                        self.reader.release(ordered.start, ordered.stop)
                    for name, sec in ordered.seconds.items():
                        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + sec
                    progress = Progress(scan.name, pp.number, len(self.plan.passes), done, total, in_flight[0], window,
                                        self.ledger, self.reader.status())
                    self.hooks.chunk_done(ChunkDone(scan.name, pp.number, ordered.start, ordered.stop, ordered.worker,
                                                    ordered.started, ordered.finished, _stage_counts(pp, ordered),
                                                    progress))
                    self._report_workers()
                    self._check_abort()
                    # once per chunk in acquisition order, never per arrival: a solver's path (a fit's
                    # start for the next update) would otherwise follow the workers' timing
                    self._update_solvers(solvers)
                self._check_abort()
        finally:  # on an abort or an interrupt the engine stops its workers now, before the sinks close
            close = getattr(results, "close", None)
            if close is not None:
                close()
        for name, tree in trees.items():
            self.results.update({f"{name}.{k}": v for k, v in reducers[name].finish(tree.result()).items()})  # type: ignore[attr-defined]
        for name, solver in solvers.items():
            self.results.update({f"{name}.{k}": v for k, v in solver.finish().items()})  # type: ignore[attr-defined]

    def _update_solvers(self, solvers: dict[str, Any]) -> None:
        """Let each solver refine on what it was fed; send what it emits to the sinks and the hooks."""
        for name, solver in solvers.items():
            update = solver.update()
            if update is not None:
                fresh_results = {f"{name}.{k}": v for k, v in update.items()}
                self.results.update(fresh_results)
                for sink in self.sinks:
                    sink.update(fresh_results)
                self.hooks.intermediate_result(self.scan.name, fresh_results)

    def _collect(self, pp: PassPlan, result: ChunkResult, trees: dict[str, TreeReducer[Any]],
                 solvers: dict[str, Any], last_of: dict[str, bool]) -> None:
        """Take one chunk's results in acquisition order."""
        pipeline, ledger = self.pipeline, self.ledger
        for name, blocks in result.blocks.items():
            for block in blocks:
                trees[name].push(block)
        for event in result.events:
            for name, solver in solvers.items():
                node = pipeline.stages[name]
                if event.error is None and event.stream in node.streams:
                    try:
                        solver.feed(event.index, **{k: self.results[r] if r in self.results else event.fields[r]
                                                    for k, r in node.inputs.items()})
                    except Exception as exc:  # like a map stage: this event fails, the scan goes on
                        event.fail(name, f"{type(exc).__name__}: {exc}")
            if event.error is not None and ledger.finish(event.index, event.stream,
                                                         (event.failed_at or "?", event.error)):
                self.hooks.event_failed(self.scan.name, event.index, event.stream, event.failed_at or "?", event.error)
        if pp.feeds_sinks:
            for k, sink in enumerate(self.sinks):
                chosen = [e for e in result.events if e.stream in sink.streams]
                if chosen:
                    sink.write(chosen)
                    self.hooks.events_written(k, sink.name, len(chosen))
        for event in result.events:
            if event.error is None and last_of[event.stream]:
                ledger.finish(event.index, event.stream)

    def _report_workers(self) -> None:
        """Tell the hooks which workers the engine sees, at most every :data:`WORKERS_EVERY_S` seconds."""
        now = time.monotonic()
        if now - self._workers_asked >= WORKERS_EVERY_S:
            self._workers_asked = now
            self.hooks.workers_changed(self.engine.workers_seen())


def _stage_counts(pp: PassPlan, result: ChunkResult) -> dict[str, StageCounts]:
    """Events each stage of the pass took from ``result`` and failed, with its seconds (and the source's)."""
    counts = {SOURCE: StageCounts(len(result.events), sum(1 for e in result.events if e.failed_at == SOURCE),
                                  result.seconds.get(SOURCE, 0.0))}
    for name in {n for names in pp.maps.values() for n in names} | set(pp.reduces) | set(pp.solvers):
        taken = [e for e in result.events if name in pp.maps.get(e.stream, ()) or name in pp.reduces
                 or name in pp.solvers]
        counts[name] = StageCounts(len(taken), sum(1 for e in taken if e.failed_at == name),
                                   result.seconds.get(name, 0.0))
    return counts
