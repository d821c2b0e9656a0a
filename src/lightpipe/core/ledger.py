"""Accounting of events: received = written + failed + in flight, at every moment."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class FailedEvent:
    """An event that could not be processed, and why."""

    index: int
    stream: str
    stage: str
    message: str


@dataclass
class Ledger:
    """Counts of one scan's events. Thread-safe; each event is finished once.

    ``written`` counts events whose processing completed (they reached the
    sinks, or the reduce and solver stages that take them).
    """

    received: int = 0
    written: int = 0
    failed: list[FailedEvent] = field(default_factory=list)
    _finished: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def in_flight(self) -> int:
        """Events received but neither written nor failed yet."""
        return self.received - self.written - len(self.failed)

    def receive(self, count: int) -> None:
        """Record ``count`` events accepted from the source."""
        with self._lock:
            self.received += count

    def finish(self, index: int, stream: str, error: tuple[str, str] | None = None) -> bool:
        """Record event ``index`` as written, or failed with ``(stage, message)``.

        Returns ``False`` if the event had been finished before (it is not counted twice).
        """
        with self._lock:
            if index in self._finished:
                return False
            self._finished.add(index)
            if error is None:
                self.written += 1
            else:
                self.failed.append(FailedEvent(index, stream, *error))
            return True

    def is_finished(self, index: int) -> bool:
        """Whether event ``index`` was already written or failed."""
        return index in self._finished
