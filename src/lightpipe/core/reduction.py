"""Merging partial results in a tree fixed by position, so sums are bit-identical everywhere.

A reduce stage's partial results are leaves at positions 0, 1, 2, ... (the
rank of each event among the events the stage takes). Every engine, whatever
its chunk size or number of workers, combines them in the same binary tree:
aligned blocks ``[k * 2**j, (k + 1) * 2**j)`` are merged from their two halves,
and the blocks left at the end are folded from the right. Chunks ship their
finished aligned blocks; the driver carries on with the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Block(Generic[T]):
    """A merged partial result of positions ``[start, start + size)``; ``value`` ``None`` if all failed."""

    start: int
    size: int
    value: T | None


class TreeReducer(Generic[T]):
    """Merge blocks pushed in position order into the canonical tree.

    Parameters
    ----------
    merge
        The stage's associative merge, called with (earlier, later) values.
    start
        Position of the first block that will be pushed.

    Examples
    --------
    >>> tree = TreeReducer(lambda a, b: a + b)
    >>> for value in [1.0, 2.0, 3.0]:
    ...     tree.push_leaf(value)
    >>> tree.result()
    6.0
    """

    def __init__(self, merge: Callable[[T, T], T], start: int = 0) -> None:
        self._merge = merge
        self._next = start
        self._stack: list[Block[T]] = []

    def merge(self, left: T | None, right: T | None) -> T | None:
        """Merge two values where either may be missing."""
        if left is None:
            return right
        if right is None:
            return left
        return self._merge(left, right)

    def push(self, block: Block[T]) -> None:
        """Append ``block``, which must start where the previous one ended."""
        if block.start != self._next:
            raise ValueError(f"block at {block.start} pushed where {self._next} was expected")
        self._stack.append(block)
        self._next = block.start + block.size
        stack = self._stack
        while len(stack) >= 2:
            left, right = stack[-2], stack[-1]
            if left.size != right.size or left.start % (2 * left.size):
                break
            stack[-2:] = [Block(left.start, 2 * left.size, self.merge(left.value, right.value))]

    def push_leaf(self, value: T | None) -> None:
        """Append the partial result of the next position (``None`` for a failed event)."""
        self.push(Block(self._next, 1, value))

    def blocks(self) -> list[Block[T]]:
        """The aligned blocks merged so far, to ship to another reducer."""
        return list(self._stack)

    def result(self) -> T | None:
        """Fold the remaining blocks from the right: the root of the canonical tree."""
        total: T | None = None
        for block in reversed(self._stack):
            total = self.merge(block.value, total)
        return total
