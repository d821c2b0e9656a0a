"""The one-writer contract of a result file, and the status codes every result file gives its rows.

Every sink that writes a result file (the ``nexus`` and ``cxi`` sinks, and any
third-party one) takes its output the same way:

1. claim it with :class:`OutputClaim` (a lock file made with ``O_CREAT|O_EXCL``
   beside the output, naming the holder's host, pid, pipeline and start time), so
   that a second run on the same output is refused with a message naming the first;
2. write ``.<name>.partial`` in the same folder, saying the scan's state
   ``running`` from the start, so that a run killed with ``kill -9`` leaves a
   readable file whose name says it is not a result;
3. at close, write the scan's end state (``completed``, ``failed``, ``aborted``,
   ``interrupted``) and a status per row (:data:`STATUS_CODES`, written as
   attributes of the status dataset by :func:`write_status_codes`), then
   :meth:`OutputClaim.publish`: the partial file is renamed to the result's name
   and the lock removed. A file under the final name is a closed one.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lightpipe.core.errors import LightpipeError
from lightpipe.core.ledger import SCAN_STOPPED, Ledger

log = logging.getLogger(__name__)

#: Status of a row whose event was processed and written.
WRITTEN = 0
#: ... of a row whose event failed (in a stage, or its result could not be written).
FAILED = 1
#: ... of a row whose event was never processed: not received, or still in flight when the scan stopped.
NOT_PROCESSED = 2
#: The codes and their meaning, also written as attributes of each status dataset.
STATUS_CODES = {WRITTEN: "written", FAILED: "failed", NOT_PROCESSED: "not_processed"}


def write_status_codes(dataset: Any, description: str) -> None:
    """Write :data:`STATUS_CODES` (``written=0``, ...) and ``description`` as attributes of a status dataset.

    Parameters
    ----------
    dataset
        The ``h5py.Dataset`` of the per-row statuses (``int8``).
    description
        What the codes mean in this file: where failures are explained, what rows not written hold.
    """
    for code, meaning in STATUS_CODES.items():
        dataset.attrs[meaning] = np.int8(code)
    dataset.attrs["description"] = description


def mark_failures(status: np.ndarray, rows: dict[int, int], ledger: Ledger) -> None:
    """Set the status of each failed event's row: failed in a stage, or not processed when the scan stopped first.

    Parameters
    ----------
    status
        One code per row, updated in place.
    rows
        Row of each event index the file holds.
    ledger
        The scan's accounting, closed.
    """
    for event in ledger.failed:
        row = rows.get(event.index)
        if row is None:
            continue
        if event.stage != SCAN_STOPPED:
            status[row] = FAILED
        elif status[row] != WRITTEN:  # in flight when the scan stopped: received, never processed
            status[row] = NOT_PROCESSED


def write_state(process: Any, ledger: Ledger) -> None:
    """Replace ``state`` in ``process`` (an HDF5 group) by the scan's end state, with its error and counts."""
    del process["state"]
    process["state"] = ledger.state
    if ledger.error:
        process["error"] = ledger.error
    process.attrs["received"] = ledger.received
    process.attrs["written"] = ledger.written
    process.attrs["failed"] = len(ledger.failed)


@dataclass(frozen=True)
class ClaimHolder:
    """Who holds a result file: what a lock file records."""

    host: str
    pid: int
    pipeline: str
    started: str
    process_start: float  # the holder's process creation time: a reused pid is another process

    def alive(self) -> bool:
        """Whether the holder still runs; only answerable on its own host (``True`` elsewhere: assume it does)."""
        if self.host != socket.gethostname():
            return True
        import psutil

        try:
            return abs(psutil.Process(self.pid).create_time() - self.process_start) < 1.0
        except psutil.NoSuchProcess:
            return False

    def describe(self) -> str:
        return f"pipeline {self.pipeline!r} (host {self.host}, pid {self.pid}, started {self.started})"


class OutputClaim:
    """One writer per result file: a lock file beside ``path``, created with ``O_CREAT|O_EXCL``.

    Exclusive creation works across processes and across hosts that share the
    file system (NFSv3 and later honour it), which ``flock`` does not. The lock
    file ``.<name>.lock`` holds the holder's host, pid, pipeline and start time,
    so a refused run can say who writes the file. The results go to
    ``.<name>.partial`` until the scan closes.

    A lock left by a process that no longer runs on this host is taken over
    when its partial file is gone (the run died after renaming it, before
    removing the lock). When the partial file is still there, the scan was cut
    short by ``kill -9`` or a crash: the claim is refused with what to do, so
    that nothing the dead run wrote is overwritten unasked.

    Parameters
    ----------
    path
        The result file.
    pipeline
        The name of the pipeline that writes it.
    """

    def __init__(self, path: Path, pipeline: str) -> None:
        self.path = path
        self.pipeline = pipeline
        self.lock = path.with_name(f".{path.name}.lock")
        self.partial = path.with_name(f".{path.name}.partial")

    def holder(self) -> ClaimHolder | None:
        """Who holds the lock now, or ``None`` if the lock is gone or not written yet."""
        try:
            return ClaimHolder(**json.loads(self.lock.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def acquire(self) -> None:
        """Take the file, or raise :class:`LightpipeError` naming its holder and what to do."""
        import psutil

        me = ClaimHolder(socket.gethostname(), os.getpid(), self.pipeline, datetime.now(timezone.utc).isoformat(),
                         psutil.Process().create_time())
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    raise LightpipeError(
                        f"{self.path} is being claimed by another run right now, or its lock {self.lock} is unreadable; "
                        "give this run another output directory (-o), or run it when that one is done. If no run "
                        f"writes it, remove {self.lock}") from None
                if holder.alive():
                    raise LightpipeError(
                        f"{self.path} is being written by {holder.describe()}; one scan's result file has one writer. "
                        "Wait for that run to finish or stop it (lightpipe abort), or give this run another output "
                        f"directory (-o). If no such run exists, remove {self.lock}") from None
                if self.partial.exists():
                    raise LightpipeError(
                        f"{self.path} was left unfinished by {holder.describe()}, which no longer runs: it was killed "
                        f"before it could close the scan. What it wrote is in {self.partial}. To re-run the scan, "
                        f"remove (or move away) {self.partial} and remove {self.lock}, then run again") from None
                log.warning("taking over the lock of %s on %s from %s, which no longer runs", self.path.name,
                            self.path.parent, holder.describe())
                self.lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me.__dict__, f)
            return
        raise LightpipeError(f"{self.path}: another run took the lock {self.lock} while a stale one was removed; "
                             "give this run another output directory (-o)")

    @contextmanager
    def completing(self, scan: str) -> Iterator[None]:
        """Write the result's last parts in the ``with`` block; publish the file after it, or keep it partial.

        If the block raises, the partial file stays (its name says it is not a
        result), the lock is released and the error goes on.
        """
        try:
            yield
        except BaseException:
            log.error("scan %s: %s could not be completed; what was written is in %s", scan, self.path.name,
                      self.partial)
            self.release()
            raise
        self.publish()

    def publish(self) -> None:
        """Rename the closed partial file to the result's name (replacing an earlier run's), and release the lock."""
        os.replace(self.partial, self.path)
        self.release()

    def release(self) -> None:
        """Remove the lock (the partial file, if any, stays)."""
        self.lock.unlink(missing_ok=True)


__all__ = ["ClaimHolder", "FAILED", "NOT_PROCESSED", "OutputClaim", "STATUS_CODES", "WRITTEN", "write_status_codes"]
