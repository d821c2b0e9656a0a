"""The engine contract: what executes a pipeline, found by entry point like every other plug-in.

An engine decides only *where* a chunk of events runs (:meth:`Engine.execute`);
the driver (:mod:`lightpipe.core.driver`) that cuts chunks, sorts results,
merges reduces and feeds sinks is the same for every engine. A new engine is
one subclass of :class:`Engine` with a ``name``, a ``Params`` model of its
options and :meth:`Engine.execute`, registered under the ``lightpipe.engines``
entry-point group; ``lightpipe run --engine NAME`` then finds it and offers
its options as flags.

Example
-------
>>> from collections.abc import Iterable, Iterator
>>> from lightpipe.core.chunk import ChunkResult, ChunkTask, run_chunk
>>> class InOrder(Engine):
...     '''Runs chunks one after the other in this process.'''
...     name = "in_order"
...     def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]:
...         for task in tasks:
...             yield run_chunk(task)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from pydantic import BaseModel, ConfigDict

from lightpipe.core.bounds import InFlight
from lightpipe.core.chunk import ChunkResult, ChunkTask
from lightpipe.core.driver import ScanRun
from lightpipe.core.hooks import HookSet, OnProgress, ProgressCallback, RunHooks, RunStarted
from lightpipe.core.monitor import TopologyHooks
from lightpipe.core.parts import PartRunner, ThreadPartRunner
from lightpipe.core.pipeline import Pipeline
from lightpipe.core.plan import PassPlan
from lightpipe.core.report import RunReport, ScanReport
from lightpipe.core.source import ScanReader
from lightpipe.core.stage import param
from lightpipe.core.topology import Topology


class EngineParams(BaseModel):
    """Options every engine takes; an engine's ``Params`` adds its own. Unknown options are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: InFlight | None = param(None, "Most events in flight at once (the pipeline buffer); default: the "
                                          "smallest buffer capacity of the stages")
    chunk_size: InFlight | None = param(None, "Events fused into one task; default: the pipeline's "
                                              "engine.chunk_size")


class Engine:
    """Base class of engines: subclass it, set ``name`` and ``Params``, implement :meth:`execute`.

    Engines are built from their options by keyword (``LocalEngine(workers=2)``),
    or from a dict checked against ``Params`` (:meth:`from_options`).

    Parameters
    ----------
    window
        Most events in flight at once (the pipeline buffer); the source waits
        beyond it. ``None`` takes the smallest stage buffer capacity.
    chunk_size
        Events fused into one task; ``None`` takes the pipeline's ``engine.chunk_size``.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[EngineParams]] = EngineParams

    def __init__(self, window: int | None = None, chunk_size: int | None = None) -> None:
        self.window = window
        self.chunk_size = chunk_size

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Engine:
        """An engine built from ``options``, checked against :attr:`Params` (pydantic errors name the option)."""
        return cls(**cls.Params.model_validate(options).model_dump())

    # -- what engines implement ---------------------------------------------------------
    def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]:
        """Run ``tasks`` with at most ``max_tasks`` in flight; yield results as they complete.

        ``policy`` (``fifo``, ``lifo``, ``priority``) says which waiting task goes first.
        """
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

    def part_runner(self) -> PartRunner:
        """Where a stage's parallel parts run (:mod:`lightpipe.core.parts`): threads of this process by default."""
        return ThreadPartRunner()

    def workers_seen(self) -> dict[str, float]:
        """Workers and when each was last seen alive (``time.monotonic`` seconds)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The engine's name and settings, for the topology."""
        return {"engine": self.name, "window": self.window, "chunk_size": self.chunk_size}

    def close(self) -> None:
        """Release the engine's resources."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the driver asks ---------------------------------------------------------------
    def chunk_size_for(self, pipeline: Pipeline) -> int:
        """Events fused into one task for ``pipeline``."""
        return self.chunk_size or pipeline.engine.chunk_size

    def limits(self, pipeline: Pipeline, pp: PassPlan) -> tuple[int, int, str]:
        """Window in events, tasks in flight, and buffer policy for a pass."""
        nodes = [pipeline.stages[n] for n in {*sum(pp.maps.values(), ()), *pp.reduces, *pp.solvers}]
        window = self.window or min((n.buffer_capacity for n in nodes), default=256)
        chunk = self.chunk_size_for(pipeline)
        tasks = max(1, window // chunk)
        workers = [n.workers for n in nodes if n.workers]
        if workers:
            tasks = min(tasks, min(workers))
        policies = {n.buffer_policy for n in nodes} or {"fifo"}
        policy = "lifo" if "lifo" in policies else "priority" if "priority" in policies else "fifo"
        return tasks * chunk, tasks, policy

    # -- running ---------------------------------------------------------------------------
    def run(
        self,
        pipeline: Pipeline,
        output_dir: str | Path = "results",
        progress: ProgressCallback | None = None,
        max_scans: int | None = None,
        topology: Topology | None = None,
        hooks: Sequence[RunHooks] = (),
    ) -> RunReport:
        """Run ``pipeline`` on every scan its source yields (at most ``max_scans``).

        Parameters
        ----------
        pipeline
            What to run.
        output_dir
            Where the sinks write.
        progress
            Shorthand for a hook that receives the :class:`~lightpipe.core.hooks.Progress` of each chunk.
        max_scans
            Stop after this many scans (a live source yields scans until stopped).
        topology
            Receives the run's components and counters, and carries abort and
            stop requests; a private one if ``None``.
        hooks
            Subscribers to the run (:mod:`lightpipe.core.hooks`), called in order.

        Notes
        -----
        After :meth:`Topology.request_stop <lightpipe.core.topology.Topology.request_stop>`
        the run ends normally, with the report of the scans done: the current
        scan closes as ``aborted``, a scan the source hands out afterwards is
        closed unread (no file), and a source waiting for scans stops waiting.
        """
        output_dir = Path(output_dir).resolve()  # workers may run in another directory
        output_dir.mkdir(parents=True, exist_ok=True)
        topology = topology if topology is not None else Topology(pipeline.name)
        subscribers: list[RunHooks] = [TopologyHooks(topology), *hooks]
        if progress is not None:
            subscribers.append(OnProgress(progress))
        hook_set = HookSet(subscribers)
        report = RunReport()
        hook_set.run_started(RunStarted(pipeline, self.describe()))
        try:
            source = pipeline.create_source()
            source.attach(topology)
            for reader in source.scans():
                try:
                    if topology.stop_requested:
                        break
                    report.scans.append(ScanRun(self, pipeline, reader, output_dir, hook_set, topology).run())
                finally:
                    reader.close()
                if topology.stop_requested or (max_scans is not None and len(report.scans) >= max_scans):
                    break
        finally:
            hook_set.run_finished(report)
        return report

    def run_scan(self, pipeline: Pipeline, reader: ScanReader, output_dir: str | Path,
                 hooks: Sequence[RunHooks] = ()) -> ScanReport:
        """Run every pass of ``pipeline`` over one scan and close its sinks (no source, no topology)."""
        return ScanRun(self, pipeline, reader, Path(output_dir), HookSet(hooks)).run()
