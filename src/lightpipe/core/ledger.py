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
    """Counts of one scan's events, and the scan's state. Thread-safe; each event is finished once.

    ``written`` counts events whose processing completed (they reached the
    sinks, or the reduce and solver stages that take them). ``state`` is
    ``running``, then ``completed`` or ``failed`` (with ``error`` saying why).
    """

    received: int = 0
    written: int = 0
    failed: list[FailedEvent] = field(default_factory=list)
    state: str = "running"
    error: str | None = None
    _received: list[range] = field(default_factory=list, repr=False)
    _finished: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def in_flight(self) -> int:
        """Events received but neither written nor failed yet."""
        return self.received - self.written - len(self.failed)

    def receive(self, indices: range) -> None:
        """Record the events ``indices`` as accepted from the source."""
        with self._lock:
            self.received += len(indices)
            self._received.append(indices)

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

    def close(self, error: str | None = None, state: str = "failed") -> None:
        """End the scan: ``completed``, or ``state`` (``failed``, ``aborted``) with ``error``.

        Otherwise every event still in flight is recorded as failed with the
        scan's error, so that received = written + failed holds at the end.
        """
        with self._lock:
            self.state = "completed" if error is None else state
            self.error = error
            if error is None:
                return
            for indices in self._received:
                for index in indices:
                    if index not in self._finished:
                        self._finished.add(index)
                        self.failed.append(FailedEvent(index, "?", "scan", f"scan {state}: {error}"))
