"""The data sorter: restores acquisition order for order-sensitive stages and sinks."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Sorter(Generic[T]):
    """Hold items that arrive out of order and release them by consecutive sequence number.

    Examples
    --------
    >>> s = Sorter()
    >>> list(s.add(1, "b"))
    []
    >>> list(s.add(0, "a"))
    ['a', 'b']
    """

    def __init__(self, first: int = 0) -> None:
        self._next = first
        self._waiting: dict[int, T] = {}

    def add(self, seq: int, item: T) -> Iterator[T]:
        """Accept item number ``seq``; yield every item that is now in order."""
        if seq < self._next or seq in self._waiting:
            raise ValueError(f"item {seq} was already released or is waiting (a retried task must replace, not add)")
        self._waiting[seq] = item
        while self._next in self._waiting:
            yield self._waiting.pop(self._next)
            self._next += 1

    @property
    def held(self) -> int:
        """Items waiting for an earlier one."""
        return len(self._waiting)
