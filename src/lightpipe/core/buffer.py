"""The pipeline buffer: a bounded window of work in flight that pushes back on its producer."""
from __future__ import annotations

import heapq
import itertools
import threading
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Policy = Literal["fifo", "lifo", "priority"]


class PipelineBuffer(Generic[T]):
    """A bounded buffer taken in fifo, lifo or priority order.

    :meth:`put` blocks while the buffer is full, so a source that fills it waits;
    nothing is ever dropped.

    Parameters
    ----------
    capacity
        Items held at most.
    policy
        ``fifo`` (oldest first), ``lifo`` (newest first, for a live view that
        must stay current) or ``priority`` (lowest ``priority`` value first,
        ties in arrival order).
    """

    def __init__(self, capacity: int, policy: Policy = "fifo") -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        self.capacity = capacity
        self.policy = policy
        self._heap: list[tuple[float, int, T]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def fill(self) -> float:
        """Fraction of the capacity in use."""
        return len(self._heap) / self.capacity

    def put(self, item: T, priority: float = 0.0, timeout: float | None = None) -> bool:
        """Add ``item``, waiting while the buffer is full. Returns ``False`` on timeout or close."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._heap) < self.capacity or self._closed, timeout):
                return False
            if self._closed:
                return False
            seq = next(self._count)
            key = {"fifo": seq, "lifo": -seq, "priority": priority}[self.policy]
            heapq.heappush(self._heap, (key, seq, item))
            self.high_water = max(self.high_water, len(self._heap))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Take the next item by policy; ``None`` when closed and empty, or on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap or self._closed, timeout):
                return None
            if not self._heap:
                return None
            item = heapq.heappop(self._heap)[2]
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more items will come; waiting getters drain what is left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        """Drop everything held (an aborted scan); returns how many items were dropped."""
        with self._cond:
            dropped = len(self._heap)
            self._heap.clear()
            self._cond.notify_all()
            return dropped
