"""The local engine: in-process, the reference semantics that every other engine must match."""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

from lightpipe.core.allocator import tune_allocator
from lightpipe.core.bounds import MAX_WORKERS, Workers
from lightpipe.core.buffer import PipelineBuffer
from lightpipe.core.chunk import ChunkResult, ChunkTask, run_chunk
from lightpipe.core.engine import Engine, EngineParams
from lightpipe.core.stage import param


class LocalParams(EngineParams):
    """Options of the ``local`` engine."""

    workers: Workers = param(1, f"Threads running chunks at once, 1 to {MAX_WORKERS}; 1 runs chunks in order")


class LocalEngine(Engine):
    """Run chunks in this process, one at a time or on a few threads.

    Parameters
    ----------
    workers
        Threads running chunks at once. NumPy, h5py and the compression
        filters release the GIL for most of their work, so a few threads help on
        a multi-core beamline server. 1 (the default) runs chunks in order.
    window, chunk_size
        See :class:`~lightpipe.core.engine.Engine`.

    Notes
    -----
    The stages run in this process, so the engine applies the allocator settings
    of :mod:`lightpipe.core.allocator` to it: glibc then keeps frame-sized
    buffers (up to 256 MiB of freed memory) for reuse instead of page-faulting
    new ones in for every frame.
    """

    name = "local"
    Params = LocalParams

    def __init__(self, workers: int = 1, window: int | None = None, chunk_size: int | None = None) -> None:
        super().__init__(window=window, chunk_size=chunk_size)
        self.workers = workers
        tune_allocator()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "workers": self.workers}

    def execute(self, tasks: Iterable[ChunkTask], max_tasks: int, policy: str) -> Iterator[ChunkResult]:
        if self.workers <= 1:
            for task in tasks:
                yield run_chunk(task)
            return
        # Waiting chunks sit in the pipeline buffer, taken by policy; the driver stops
        # reading the source while the buffer and the workers are full.
        buffer: PipelineBuffer[ChunkTask] = PipelineBuffer(max(1, max_tasks), policy)  # type: ignore[arg-type]
        done: queue.SimpleQueue[tuple[ChunkResult | None, BaseException | None]] = queue.SimpleQueue()

        def work() -> None:
            while (task := buffer.get()) is not None:
                try:
                    done.put((run_chunk(task), None))
                except BaseException as exc:  # handed to the driver thread, which raises it
                    done.put((None, exc))

        threads = [threading.Thread(target=work, name=f"lightpipe-worker-{i}", daemon=True) for i in range(self.workers)]
        for t in threads:
            t.start()
        pending = 0
        source = iter(tasks)

        def outcome(item: tuple[ChunkResult | None, BaseException | None]) -> ChunkResult:
            result, error = item
            if error is not None:
                raise error
            assert result is not None
            return result

        try:
            exhausted = False
            while True:
                # Hand back every finished chunk before taking the next task: on a live
                # source taking a task waits for its frames, and results must not wait too.
                while pending:
                    try:
                        item = done.get_nowait()
                    except queue.Empty:
                        break
                    pending -= 1
                    yield outcome(item)
                if not exhausted and pending < buffer.capacity + self.workers:
                    task = next(source, None)
                    if task is None:
                        exhausted = True
                        buffer.close()
                    else:
                        buffer.put(task, priority=task.seq)
                        pending += 1
                    continue
                if pending == 0:
                    return
                item = done.get()
                pending -= 1
                yield outcome(item)
        finally:
            buffer.clear()
            buffer.close()
            for t in threads:
                t.join()
