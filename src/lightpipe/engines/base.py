"""What every engine shares: the driver that runs passes, sorts results, merges reduces and feeds sinks.

Engines differ only in where :func:`~lightpipe.core.chunk.run_chunk` executes
(:meth:`Engine.execute`); the driver logic here is the same for all, which is
how the guarantees in ``docs/concepts.md`` hold everywhere.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lightpipe.core.chunk import ChunkResult, ChunkTask
from lightpipe.core.errors import LightpipeError
from lightpipe.core.ledger import Ledger
from lightpipe.core.pipeline import Pipeline
from lightpipe.core.plan import ExecutionPlan, PassPlan
from lightpipe.core.reduction import TreeReducer
from lightpipe.core.sorter import Sorter
from lightpipe.sinks.base import ShardWriter, Sink
from lightpipe.sources.base import ScanReader

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """A snapshot handed to progress callbacks."""

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


ProgressCallback = Callable[[Progress], None]


@dataclass
class ScanReport:
    """The outcome of one scan."""

    scan: str
    ledger: Ledger
    files: list[Path]
    results: dict[str, Any]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunReport:
    """The outcome of a run: one report per scan."""

    scans: list[ScanReport] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [f for s in self.scans for f in s.files]


class Engine:
    """Base class of engines.

    Parameters
    ----------
    window
        Most events in flight at once (the pipeline buffer); the source waits
        beyond it. ``None`` takes the smallest stage buffer capacity.
    chunk_size
        Events fused into one task; ``None`` takes the pipeline's ``engine.chunk_size``.
    """

    name = ""

    def __init__(self, window: int | None = None, chunk_size: int | None = None) -> None:
        self.window = window
        self.chunk_size = chunk_size

    # -- what engines implement ---------------------------------------------------------
    def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]:
        """Run ``tasks`` with at most ``max_tasks`` in flight; yield results as they complete."""
        raise NotImplementedError

    def share(self, value: dict[str, Any]) -> Any:
        """Make scan-level ``value`` available to all tasks (e.g. broadcast it once)."""
        return value

    def shards_enabled(self) -> bool:
        """Whether sinks should write per-event fields on the workers."""
        return False

    def run_on_workers(self, function: Callable[[], None]) -> None:
        """Call ``function`` once in every worker process."""
        function()

    def close(self) -> None:
        """Release the engine's resources."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the driver ------------------------------------------------------------------------
    def run(
        self,
        pipeline: Pipeline,
        output_dir: str | Path = "results",
        progress: ProgressCallback | None = None,
        max_scans: int | None = None,
    ) -> RunReport:
        """Run ``pipeline`` on every scan its source yields (at most ``max_scans``)."""
        output_dir = Path(output_dir).resolve()  # workers may run in another directory
        output_dir.mkdir(parents=True, exist_ok=True)
        report = RunReport()
        source = pipeline.create_source()
        for reader in source.scans():
            try:
                report.scans.append(self.run_scan(pipeline, reader, output_dir, progress))
            finally:
                reader.close()
            if max_scans is not None and len(report.scans) >= max_scans:
                break
        return report

    def run_scan(
        self, pipeline: Pipeline, reader: ScanReader, output_dir: Path, progress: ProgressCallback | None = None
    ) -> ScanReport:
        """Run every pass of ``pipeline`` over one scan and close its sinks."""
        t0 = time.perf_counter()
        plan = ExecutionPlan(pipeline)
        scan = reader.scan
        ledger = Ledger()
        files: list[Path] = []  # sinks close in order; a later sink sees the earlier ones' files
        context = {"pipeline": pipeline, "output_dir": output_dir, "files": files}
        sinks: list[Sink] = [s.cls(s.params, s.fields, s.streams, context) for s in pipeline.sinks]
        for sink in sinks:
            try:
                sink.open(scan)
            except OSError as exc:
                raise LightpipeError(f"sink {sink.name!r} cannot start scan {scan.name!r}: {exc}; check that "
                                     f"the output directory {output_dir} is writable") from exc
        results: dict[str, Any] = {}
        stage_seconds: dict[str, float] = {}
        token = uuid.uuid4().hex
        shards = [w for s in sinks if (w := s.shard_writer()) is not None] if self.shards_enabled() else []
        read_streams: set[str] = set()
        try:
            self._check_streams(pipeline, plan, scan)
            for pp in plan.passes:
                last_of = {s: plan.last_pass_of(s) == pp.number for s in pp.streams}
                fresh = pp.streams - read_streams
                read_streams |= pp.streams
                self._run_pass(pipeline, plan, pp, reader, sinks, shards if pp.feeds_sinks else [], results, ledger,
                               token, fresh, last_of, stage_seconds, progress)
        except LightpipeError as exc:  # the scan cannot finish: close it with its state recorded
            log.error("scan %s failed: %s", scan.name, exc)
            ledger.close(str(exc))
        except Exception as exc:
            log.exception("scan %s failed", scan.name)
            ledger.close(f"{type(exc).__name__}: {exc}")
        else:
            ledger.close()
        for writer_type in {type(w) for w in shards}:
            self.run_on_workers(writer_type.close_all)
        for sink in sinks:
            files.extend(sink.close(results, ledger))
        return ScanReport(scan.name, ledger, files, results, time.perf_counter() - t0, stage_seconds)

    @staticmethod
    def _check_streams(pipeline: Pipeline, plan: ExecutionPlan, scan: Any) -> None:
        """Refuse a scan that lacks a stream a reduce or solver stage needs (no darks for dark statistics)."""
        for pp in plan.passes:
            for name in (*pp.reduces, *pp.solvers):
                node = pipeline.stages[name]
                if not any(len(scan.streams.get(s, ())) for s in node.streams):
                    raise LightpipeError(
                        f"stage {name!r} needs events of stream {'/'.join(sorted(node.streams))} but scan "
                        f"{scan.name!r} has none (its streams: {', '.join(f'{k} {len(v)}' for k, v in scan.streams.items())}); "
                        "record them, point the source at them (e.g. source.params.dark), or remove the stage"
                    )

    def _chunk_size(self, pipeline: Pipeline) -> int:
        return self.chunk_size or pipeline.engine.chunk_size

    def _limits(self, pipeline: Pipeline, pp: PassPlan) -> tuple[int, int, str]:
        """Window in events, tasks in flight, and buffer policy for a pass."""
        nodes = [pipeline.stages[n] for n in {*sum(pp.maps.values(), ()), *pp.reduces, *pp.solvers}]
        window = self.window or min((n.buffer_capacity for n in nodes), default=256)
        chunk = self._chunk_size(pipeline)
        tasks = max(1, window // chunk)
        workers = [n.workers for n in nodes if n.workers]
        if workers:
            tasks = min(tasks, min(workers))
        policies = {n.buffer_policy for n in nodes} or {"fifo"}
        policy = "lifo" if "lifo" in policies else "priority" if "priority" in policies else "fifo"
        return tasks * chunk, tasks, policy

    def _run_pass(
        self,
        pipeline: Pipeline,
        plan: ExecutionPlan,
        pp: PassPlan,
        reader: ScanReader,
        sinks: list[Sink],
        shards: list[ShardWriter],
        results: dict[str, Any],
        ledger: Ledger,
        token: str,
        fresh: set[str] | frozenset[str],
        last_of: dict[str, bool],
        stage_seconds: dict[str, float],
        progress: ProgressCallback | None,
    ) -> None:
        scan = reader.scan
        chunk = self._chunk_size(pipeline)
        window, max_tasks, policy = self._limits(pipeline, pp)
        side = self.share({k: results[k] for k in pp.side_inputs})
        ranges = scan.indices(set(pp.streams))
        total = sum(len(r) for r in ranges)
        # position of each range's first event among the events each reduce takes
        offsets: dict[str, dict[int, int]] = {}
        for name in pp.reduces:
            taken = pipeline.stages[name].streams
            pos, offsets[name] = 0, {}
            for r in ranges:
                if scan.stream_of(r.start) in taken:
                    offsets[name][r.start] = pos
                    pos += len(r)
        reducers = {}
        for name in pp.reduces:
            reducers[name] = pipeline.stages[name].create()
            reducers[name].setup(scan)
        trees = {n: TreeReducer(reducers[n].merge) for n in pp.reduces}
        solvers = {}
        for name in pp.solvers:
            solvers[name] = pipeline.stages[name].create()
            solvers[name].setup(scan)
        in_flight = {"events": 0}
        done = 0

        def tasks() -> Iterator[ChunkTask]:
            seq = 0
            for r in ranges:
                stream = scan.stream_of(r.start)
                start = r.start
                while start < r.stop:
                    # a live source makes the chunk wait for its events, at most chunk_seconds for a full one
                    stop = reader.ready(start, min(start + chunk, r.stop), pipeline.engine.chunk_seconds)
                    positions = {
                        n: offsets[n][r.start] + (start - r.start) for n in pp.reduces if r.start in offsets[n]
                    }
                    if stream in fresh:
                        ledger.receive(range(start, stop))
                    in_flight["events"] += stop - start
                    yield ChunkTask(seq, token, pipeline, pp, reader.for_chunk(start, stop), start, stop, side,
                                    positions, shards)
                    seq += 1
                    start = stop

        sorter: Sorter[ChunkResult] = Sorter()
        for result in self.execute(tasks(), max_tasks, policy):
            for ordered in sorter.add(result.seq, result):
                in_flight["events"] -= ordered.stop - ordered.start
                done += ordered.stop - ordered.start
                self._collect(pipeline, pp, ordered, trees, solvers, sinks, results, ledger, last_of)
                if last_of[scan.stream_of(ordered.start)]:
                    reader.release(ordered.start, ordered.stop)
                for name, sec in ordered.seconds.items():
                    stage_seconds[name] = stage_seconds.get(name, 0.0) + sec
                if progress is not None:
                    progress(Progress(scan.name, pp.number, len(plan.passes), done, total,
                                      in_flight["events"], window, ledger, reader.status()))
            for name, solver in solvers.items():
                update = solver.update()
                if update is not None:
                    results.update({f"{name}.{k}": v for k, v in update.items()})
        for name, tree in trees.items():
            results.update({f"{name}.{k}": v for k, v in reducers[name].finish(tree.result()).items()})
        for name, solver in solvers.items():
            results.update({f"{name}.{k}": v for k, v in solver.finish().items()})

    @staticmethod
    def _collect(
        pipeline: Pipeline,
        pp: PassPlan,
        result: ChunkResult,
        trees: dict[str, TreeReducer[Any]],
        solvers: dict[str, Any],
        sinks: list[Sink],
        results: dict[str, Any],
        ledger: Ledger,
        last_of: dict[str, bool],
    ) -> None:
        """Take one chunk's results in acquisition order."""
        for name, blocks in result.blocks.items():
            for block in blocks:
                trees[name].push(block)
        for event in result.events:
            for name, solver in solvers.items():
                node = pipeline.stages[name]
                if event.error is None and event.stream in node.streams:
                    try:
                        solver.feed(event.index, **{k: results[r] if r in results else event.fields[r]
                                                    for k, r in node.inputs.items()})
                    except Exception as exc:  # like a map stage: this event fails, the scan goes on
                        event.fail(name, f"{type(exc).__name__}: {exc}")
            if event.error is not None:
                ledger.finish(event.index, event.stream, (event.failed_at or "?", event.error))
        if pp.feeds_sinks:
            for sink in sinks:
                chosen = [e for e in result.events if e.stream in sink.streams]
                if chosen:
                    sink.write(chosen)
        for event in result.events:
            if event.error is None and last_of[event.stream]:
                ledger.finish(event.index, event.stream)
