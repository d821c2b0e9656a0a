"""Accounting of events: received = written + failed + in flight, at every moment."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


#: The ``stage`` of the failure recorded for an event still in flight when its scan stopped (abort,
#: interrupt, a failed scan): the event was received but never processed.
SCAN_STOPPED = "scan"

#: What ``Ledger.state`` may be once the scan is closed.
END_STATES = ("completed", "failed", "aborted", "interrupted")


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
    ``running``, then one of :data:`END_STATES`: ``completed``, or ``failed``
    (the scan could not finish), ``aborted`` (on request) or ``interrupted``
    (SIGINT or SIGTERM to the run), with ``error`` saying why.
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
        """End the scan: ``completed``, or ``state`` (``failed``, ``aborted``, ``interrupted``) with ``error``.

        Otherwise every event still in flight is recorded as failed at stage
        :data:`SCAN_STOPPED` with the scan's error, so that received = written
        + failed holds at the end.
        """
        if state not in END_STATES:
            raise ValueError(f"a scan ends as one of {', '.join(END_STATES)}, not {state!r}")
        with self._lock:
            self.state = "completed" if error is None else state
            self.error = error
            if error is None:
                return
            for indices in self._received:
                for index in indices:
                    if index not in self._finished:
                        self._finished.add(index)
                        self.failed.append(FailedEvent(index, "?", SCAN_STOPPED, f"scan {state}: {error}"))
