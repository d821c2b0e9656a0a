"""The local engine: in-process, the reference semantics that every other engine must match."""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Iterable, Iterator

from lightpipe.core.chunk import ChunkResult, ChunkTask, run_chunk
from lightpipe.engines.base import Engine


class LocalEngine(Engine):
    """Run chunks in this process, one at a time or on a few threads.

    Parameters
    ----------
    workers
        Threads running chunks at once. NumPy, h5py and the compression
        filters release the GIL for most of their work, so a few threads help on
        a multi-core beamline server. 1 (the default) runs chunks in order.
    window, chunk_size
        See :class:`~lightpipe.engines.base.Engine`.
    """

    name = "local"

    def __init__(self, workers: int = 1, window: int | None = None, chunk_size: int | None = None) -> None:
        super().__init__(window=window, chunk_size=chunk_size)
        self.workers = workers

    def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]:
        if self.workers <= 1:
            for task in tasks:
                yield run_chunk(task)
            return
        limit = max(1, min(max_tasks, 2 * self.workers))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="lightpipe-worker") as pool:
            pending: set[Future[ChunkResult]] = set()
            for task in tasks:
                while len(pending) >= limit:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in finished)
                pending.add(pool.submit(run_chunk, task))
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in finished)
