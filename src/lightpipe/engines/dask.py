"""The Dask engine: chunks run on Dask distributed workers.

The cluster is a LocalCluster by default, any running scheduler by address
(``tcp://host:8786``), or a dask-jobqueue cluster named by its section of the
user's own Dask configuration (``slurm``, ``pbs``, ``sge``, ...), so a
facility's existing ``jobqueue.yaml`` works unchanged. lightpipe never manages
cluster processes itself.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from distributed import WorkerPlugin
from pydantic import field_validator
from threadpoolctl import threadpool_limits

from lightpipe.core.allocator import ALLOCATOR_ENV, tune_allocator
from lightpipe.core.bounds import MAX_WORKERS, Workers, split_endpoint
from lightpipe.core.blas import STAGE_BLAS_THREADS
from lightpipe.core.chunk import ChunkResult, ChunkTask, run_chunk
from lightpipe.core.engine import Engine, EngineParams
from lightpipe.core.errors import LightpipeError
from lightpipe.core.stage import param

#: dask-jobqueue cluster classes by the name of their configuration section.
JOBQUEUE_CLUSTERS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "oar": "OARCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
}


#: Environment of LocalCluster workers. Dask's default (``MALLOC_TRIM_THRESHOLD_=65536``)
#: makes every buffer over 128 KiB a fresh mmap, page-faulted in and unmapped on free:
#: for detector frames that doubled the time per frame (benchmarks/overhead.py). The
#: allocator settings (:mod:`lightpipe.core.allocator`) let glibc reuse frame-sized
#: buffers; one OpenMP thread keeps compression filters from oversubscribing the cores.
WORKER_ENV = {**ALLOCATOR_ENV, "OMP_NUM_THREADS": "1"}


#: Dask settings of the LocalClusters lightpipe starts. Dask's housekeeping (event-loop ticks
#: every 20 ms, a statistical profiler sampling every worker thread every 10 ms, memory and
#: system monitors) took 0.94 CPU seconds in 10 s of an idle 2-worker cluster, 5 % of a
#: 2-core machine taken from the stages; with these, 0.16 s. The workers' profile (the
#: dashboard's Profile tab) is off; the memory limits are still enforced, checked every second.
LOCAL_CLUSTER_CONFIG = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing-interval": "1s",
    "distributed.worker.profile.enabled": False,
}


class AllocatorPlugin(WorkerPlugin):
    """Applies the allocator settings and the stages' BLAS thread count in every worker, present and future.

    Workers lightpipe did not start (a scheduler address, a batch system) get
    :func:`~lightpipe.core.allocator.tune_allocator` this way; LocalCluster
    workers also have it from the start. The BLAS libraries are set to
    :data:`~lightpipe.core.blas.STAGE_BLAS_THREADS` here, on the worker's main
    thread: OpenBLAS lets only the thread that first set its pool change it, and
    the worker threads that run chunks are not that thread, so a Slurm worker
    started without ``OMP_NUM_THREADS=1`` computes the same bits as the local engine.
    """

    name = "lightpipe-allocator"

    def setup(self, worker: Any) -> None:
        tune_allocator()
        threadpool_limits(STAGE_BLAS_THREADS, user_api="blas")


def make_cluster(cluster: str | None, n_workers: int, threads_per_worker: int) -> tuple[Any, Any]:
    """Return ``(client, cluster_or_None)`` for ``cluster``, with :class:`AllocatorPlugin` on its workers.

    See :func:`connect` for what ``cluster`` may be.
    """
    client, owned = connect(cluster, n_workers, threads_per_worker)
    client.register_plugin(AllocatorPlugin())
    return client, owned


def import_jobqueue(cluster: str) -> Any:
    """Import dask-jobqueue for ``--cluster cluster``, leaving this process's Ctrl-C handler as it was.

    dask-jobqueue (0.9) replaces the SIGINT handler with ``sys.exit()`` when its runner
    module is imported, as its SLURM cluster does: Ctrl-C would then end ``lightpipe run``
    with status 0, without closing the scan or cancelling the jobs.

    Raises
    ------
    LightpipeError
        When dask-jobqueue is not installed, naming the extra that installs it.
    """
    in_main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise LightpipeError(
            f"--cluster {cluster} needs dask-jobqueue; install it with: pip install 'lightpipe[cluster]'"
        ) from exc
    finally:
        if handler is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, handler)
    return dask_jobqueue


def connect(cluster: str | None, n_workers: int, threads_per_worker: int) -> tuple[Any, Any]:
    """Return ``(client, cluster_or_None)`` for ``cluster``: ``None``, an address, or a jobqueue name.

    Raises
    ------
    LightpipeError
        When ``cluster`` is neither an address nor a known jobqueue section, or
        dask-jobqueue cannot build that cluster from the Dask configuration.
    """
    from distributed import Client, LocalCluster

    if cluster is None:
        import dask

        # glibc reads MALLOC_* once, when a process starts: they must be in the environment the
        # nanny spawns the worker with, not set in it afterwards (LocalCluster's env= is too late)
        pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENV}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn, **LOCAL_CLUSTER_CONFIG}):
            local = LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=":0",
            )
        return Client(local), local
    if "://" in cluster or ":" in cluster:
        return Client(cluster), None
    if cluster in JOBQUEUE_CLUSTERS:
        dask_jobqueue = import_jobqueue(cluster)
        try:
            jq = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[cluster])()
        except Exception as exc:  # dask-jobqueue's own message says which setting is missing
            raise LightpipeError(
                f"dask-jobqueue cannot build a {cluster} cluster from your Dask configuration: {exc}; "
                f"set jobqueue.{cluster} in ~/.config/dask/jobqueue.yaml (see docs/deploying.md)"
            ) from exc
        jq.scale(jobs=n_workers)
        return Client(jq), jq
    known = ", ".join(JOBQUEUE_CLUSTERS)
    raise LightpipeError(f"--cluster {cluster!r} is neither a scheduler address (tcp://host:8786) nor one of: {known}")


class ActorGroup:
    """One Dask actor per part, on the cluster's workers taken in turn; each part's data goes to its worker once.

    Parameters
    ----------
    client
        The run's client (the engine's, never a process-global default).
    factory, data
        Part ``k`` is ``factory(data[k])``, built on its worker.
    """

    def __init__(self, client: Any, factory: Callable[[Any], Any], data: Sequence[Any]) -> None:
        workers = sorted(client.scheduler_info().get("workers", {}))
        if not workers:
            raise LightpipeError("the Dask cluster has no workers to start parts on; start some (scale the "
                                 "cluster), or run with --engine local")
        self.client = client
        self.workers = [workers[k % len(workers)] for k in range(len(data))]
        self.futures: list[Any] = []
        self.actors: list[Any] = []
        try:
            for item, worker in zip(data, self.workers):
                [shipped] = client.scatter([item], workers=[worker], hash=False)
                self.futures.append(client.submit(factory, shipped, actor=True, workers=[worker],
                                                  allow_other_workers=False, pure=False))
                del shipped  # the actor holds its copy: the worker may drop the data
            self.actors = [f.result() for f in self.futures]
        except BaseException:
            self.close()
            raise

    def call(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Call ``method`` of every actor at once; wait for all, results in order."""
        calls = [getattr(actor, method)(*a) for actor, a in zip(self.actors, args)]
        return [c.result() for c in calls]

    def close(self) -> None:
        """Release the actors' futures, which removes the actors from their workers."""
        self.actors = []
        self.client.cancel(self.futures)
        self.futures = []

    def __enter__(self) -> ActorGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ActorPartRunner:
    """Starts parts as actors on the workers of one client: the ``dask`` engine's :class:`~lightpipe.core.parts.PartRunner`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def start(self, factory: Callable[[Any], Any], data: Sequence[Any], threads_per_part: int = 1) -> ActorGroup:
        """One actor per item of ``data``; each worker's own threads set how fast its parts run."""
        return ActorGroup(self.client, factory, data)


#: Most retries of a task: a task that kills this many workers kills them all.
MAX_RETRIES = 100
#: Schemes of scheduler addresses (None: host:port, taken as tcp); the others need a Dask extra we do not test.
SCHEDULER_SCHEMES = (None, "tcp", "tls")


class DaskParams(EngineParams):
    """Options of the ``dask`` engine."""

    cluster: str | None = param(None, "Scheduler address (tcp://host:8786) or dask-jobqueue section (slurm, pbs, "
                                      "...); default: a new LocalCluster")
    workers: Workers = param(2, f"Workers of a new LocalCluster, or jobs to request from a batch system; 1 to "
                                f"{MAX_WORKERS}")
    threads_per_worker: Workers = param(1, f"Threads in each LocalCluster worker process; 1 to {MAX_WORKERS}")
    retries: int = param(2, f"Times a task is retried elsewhere when its worker dies; 0 to {MAX_RETRIES}", ge=0,
                         le=MAX_RETRIES)

    @field_validator("cluster")
    @classmethod
    def _check_cluster(cls, value: str | None) -> str | None:
        if value is None or value in JOBQUEUE_CLUSTERS:
            return value
        parts = split_endpoint(value)
        if parts is None or parts[0] not in SCHEDULER_SCHEMES:
            raise ValueError(f"{value!r} is neither a scheduler address (tcp://host:port, port 1 to 65535) nor one of "
                             f"the dask-jobqueue sections {', '.join(JOBQUEUE_CLUSTERS)}; e.g. tcp://scheduler:8786")
        return value


class DaskEngine(Engine):
    """Run chunks on a Dask cluster.

    Parameters
    ----------
    cluster
        ``None`` for a new LocalCluster, a scheduler address, or a dask-jobqueue
        section name (``slurm``, ``pbs``, ...) read from the Dask configuration.
    client
        An existing ``distributed.Client`` to use instead (not closed by the engine).
    workers
        Workers of a new LocalCluster, or jobs to request from a batch system.
    threads_per_worker
        Threads in each LocalCluster worker process.
    retries
        Times a task is retried elsewhere when its worker dies.
    window, chunk_size
        See :class:`~lightpipe.core.engine.Engine`.
    """

    name = "dask"
    Params = DaskParams

    def __init__(
        self,
        cluster: str | None = None,
        client: Any = None,
        workers: int = 2,
        threads_per_worker: int = 1,
        retries: int = 2,
        window: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(window=window, chunk_size=chunk_size)
        self._own = client is None
        if client is None:
            client, self._cluster = make_cluster(cluster, workers, threads_per_worker)
        else:
            self._cluster = None
        self.client = client
        self.retries = retries

    def share(self, value: dict[str, Any]) -> Any:
        if not value:
            return value
        # one future for the whole dict: its keys are not unique across passes and scans
        return self.client.scatter([value], broadcast=True, hash=False)[0]

    def shards_enabled(self) -> bool:
        return True

    def run_on_workers(self, function: Callable[[], None]) -> None:
        if self.client.status != "running":  # a lost scheduler: do not wait a connect timeout for nothing
            raise LightpipeError(f"the Dask client is {self.client.status}, not connected to its scheduler; "
                                 "the workers cannot be reached")
        self.client.run(function)

    def part_runner(self) -> ActorPartRunner:
        """Parts run as actors on this engine's cluster."""
        return ActorPartRunner(self.client)

    def workers_seen(self) -> dict[str, float]:
        now, wall = time.monotonic(), time.time()
        workers = self.client.scheduler_info().get("workers", {})
        return {addr: now - (wall - info.get("last_seen", wall)) for addr, info in workers.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scheduler": self.client.scheduler.address if self.client.scheduler else None}

    def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]:
        from distributed import as_completed

        limit = max_tasks
        queue = as_completed(loop=self.client.loop)  # not the default client's loop
        pending = 0
        for task in tasks:
            # finished chunks go back before the next task is taken (on a live source that
            # waits for frames), and at the limit the oldest in flight is waited for
            while pending and (pending >= limit or queue.has_ready()):
                yield self._result(next(queue))
                pending -= 1
            # Dask runs higher priority first: fifo favours early chunks, lifo late ones.
            priority = -task.seq if policy == "fifo" else task.seq if policy == "lifo" else 0
            side, task.side = task.side, {}
            queue.add(self.client.submit(run_chunk, task, side, priority=priority, retries=self.retries, pure=False))
            pending += 1
        for future in queue:
            yield self._result(future)

    def _result(self, future: Any) -> ChunkResult:
        """A finished chunk's result; a scheduler that went away is said to be the cause.

        Raises
        ------
        LightpipeError
            When the connection to the scheduler closed while the result was fetched.
        """
        from distributed.comm.core import CommClosedError

        try:
            return future.result()  # type: ignore[no-any-return]
        except CommClosedError as exc:
            address = self.client.scheduler.address if self.client.scheduler else "its address"
            raise LightpipeError(f"lost the connection to the Dask scheduler at {address} ({exc}); the scheduler "
                                 "or its network went away: start it (and its workers) again and rerun the scan") \
                from exc

    def close(self) -> None:
        if self._own:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()
