"""Parallel parts: a stage that needs several workers at once asks the engine it runs on.

A *part* is a stateful object that lives on one worker for the length of a
scan and is called again and again (one part of a distributed ptychographic
reconstruction, say). A stage never picks its own executor: the driver gives
every stage it creates the :class:`PartRunner` of the run's engine as
``stage.part_runner``. The ``local`` engine runs parts on threads of its own
process (:class:`ThreadPartRunner`); the ``dask`` engine runs each part as an
actor on a worker of that run's cluster, never on a process-global client.

Example
-------
>>> class Counter:
...     def __init__(self, start: int) -> None:
...         self.value = start
...     def add(self, n: int) -> int:
...         self.value += n
...         return self.value
>>> with ThreadPartRunner().start(Counter, [0, 10]) as group:
...     group.call("add", [(1,), (2,)])
[1, 12]
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol, Sequence, runtime_checkable


@runtime_checkable
class PartGroup(Protocol):
    """Parts started together, each on its worker; close it when done (or use it as a context manager)."""

    #: Where each part runs (a Dask worker address, or a thread pool's name), in the order of the parts.
    workers: list[str]

    def call(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Call ``method`` of every part at once, part ``k`` with ``args[k]``; return the results in order."""

    def close(self) -> None:
        """Stop the parts and free what they hold."""

    def __enter__(self) -> PartGroup:
        ...

    def __exit__(self, *exc: object) -> None:
        ...


@runtime_checkable
class PartRunner(Protocol):
    """What an engine offers a stage that needs several workers at once."""

    def start(self, factory: Callable[[Any], Any], data: Sequence[Any], threads_per_part: int = 1) -> PartGroup:
        """Start one part per item of ``data``, as ``factory(item)`` on its worker.

        Parameters
        ----------
        factory
            A picklable callable (usually a class) that builds a part from its data.
        data
            One item per part (its frames, settings, ...); each is sent to its worker once.
        threads_per_part
            Threads each part uses itself (its FFTs), so a runner on one machine
            does not start more parts at once than it has cores for.
        """


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ThreadGroup:
    """Parts in this process, called side by side on threads (NumPy and FFTs release the GIL)."""

    def __init__(self, factory: Callable[[Any], Any], data: Sequence[Any], lanes: int) -> None:
        self.parts = [factory(item) for item in data]
        self.pool = ThreadPoolExecutor(max(1, lanes), thread_name_prefix="lightpipe-part")
        self.workers = ["local"] * len(self.parts)

    def call(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Call ``method`` of every part at once on the pool; results in the order of the parts."""
        futures = [self.pool.submit(getattr(part, method), *a) for part, a in zip(self.parts, args)]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Shut the pool down and drop the parts."""
        self.pool.shutdown()
        self.parts = []

    def __enter__(self) -> ThreadGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadPartRunner:
    """Runs parts on threads of this process: the ``local`` engine's runner, and every stage's default.

    Parameters
    ----------
    cores
        Cores the parts may use together; ``None`` takes the cores this process may run on.
    """

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores

    def start(self, factory: Callable[[Any], Any], data: Sequence[Any], threads_per_part: int = 1) -> ThreadGroup:
        """Build every part here; as many run at once as the cores allow."""
        cores = self.cores or available_cores()
        lanes = min(len(data), max(1, cores // max(1, threads_per_part)))
        return ThreadGroup(factory, data, lanes)
