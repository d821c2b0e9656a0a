"""What a job process tells the database while its pipeline runs: a run hook and a writer thread.

:class:`JobRecorder` subscribes to the run (:mod:`lightpipe.core.hooks`) like
the command line's progress display does. Its hooks only put records into
memory; :class:`DbWriter`, a thread of the job process, writes them every
:data:`FLUSH_EVERY_S` seconds in one transaction (progress counters, chunk
records, failed events, log lines), so the pipeline never waits for the
database. Scan starts and ends are written at once, in order.

The writer also reads the job's ``cancel_requested`` flag at every write: the
service cancels a running job through its control channel (``stop``), and the
flag covers a job cancelled before that channel was up (:meth:`DbWriter.when_cancelled`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from lightpipe.core.hooks import ChunkDone, RunHooks
from lightpipe.core.report import ScanReport
from lightpipe.service.db.models import ChunkRecord, FailedEventRecord, Job, LogLine, ScanRecord, utcnow
from lightpipe.service.db.session import transaction

if TYPE_CHECKING:
    from lightpipe.core.event import Scan

log = logging.getLogger(__name__)

#: Seconds between two writes of what a job did.
FLUSH_EVERY_S = 0.5
#: Most records waiting for the writer; beyond, the oldest chunk and log records are dropped (counted).
MAX_PENDING = 100_000

Write = Callable[[Session], None]


class DbWriter:
    """Writes a job's records from a thread of its own, in order; the newest progress replaces older progress.

    Parameters
    ----------
    factory
        Sessions on the service's database.
    job_id
        The job written about; its ``cancel_requested`` flag is read at every write (:attr:`cancelled`).
    """

    def __init__(self, factory: sessionmaker[Session], job_id: str) -> None:
        self.factory = factory
        self.job_id = job_id
        self.cancelled = threading.Event()
        self._on_cancel: Callable[[], object] | None = None
        self._pending: deque[Write] = deque(maxlen=MAX_PENDING)
        self._progress: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time, so that records are written in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lightpipe-job-db-{job_id}", daemon=True)
        self._thread.start()

    def put(self, write: Write) -> None:
        """Queue ``write`` (a function of a session) for the next flush."""
        self._pending.append(write)

    def when_cancelled(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once when the job's cancel flag is first read set (at once if it already was)."""
        with self._lock:
            self._on_cancel = callback
            now = self.cancelled.is_set()
        if now:
            callback()

    def progress(self, **values: Any) -> None:
        """Set the job's counters at the next flush (newer values replace older ones)."""
        with self._lock:
            self._progress.update(values)

    def flush(self) -> None:
        """Write what is pending now, on the calling thread; what cannot be written stays pending."""
        with self._flushing:
            with self._lock:
                progress, self._progress = self._progress, {}
                writes = list(self._pending)
                self._pending.clear()
            try:
                with transaction(self.factory) as session:
                    for write in writes:
                        write(session)
                    session.execute(update(Job).where(Job.id == self.job_id).values(**progress, updated=utcnow()))
                    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))
            except BaseException:
                with self._lock:
                    self._pending.extendleft(reversed(writes))
                    self._progress = {**progress, **self._progress}
                raise
        if cancel:
            with self._lock:
                callback = None if self.cancelled.is_set() else self._on_cancel
                self.cancelled.set()
            if callback is not None:
                callback()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_S):
            try:
                self.flush()
            except Exception:  # a database that went away: keep the records and try again
                log.exception("job %s: cannot write progress to the database; retrying", self.job_id)

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._thread.join()
        self.flush()


class DbLogHandler(logging.Handler):
    """Log records of the job process as the job's log lines, by component (the logger's name under lightpipe)."""

    def __init__(self, writer: DbWriter, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("sqlalchemy"):
            return
        try:
            line = LogLine(job_id=self.writer.job_id, component=record.name.removeprefix("lightpipe."),
                           level=record.levelname.lower(), message=self.format(record),
                           time=datetime.fromtimestamp(record.created, timezone.utc))
        except Exception:
            self.handleError(record)
            return
        self.writer.put(lambda session: session.add(line))


class JobRecorder(RunHooks):
    """Records a job's scans, progress, chunks and failed events through a :class:`DbWriter`.

    Parameters
    ----------
    writer
        Where records go.
    output_dir
        The job's output folder: scan files are recorded relative to it.
    """

    def __init__(self, writer: DbWriter, output_dir: Path) -> None:
        self.writer = writer
        self.output_dir = output_dir
        self.done = {"received": 0, "written": 0, "failed": 0}  # of the scans already closed
        self.recorded: set[int] = set()  # failed events of the current scan already queued
        self.last = (time.monotonic(), 0)  # when the rate was last measured, and events finished then

    def scan_started(self, scan: Scan, passes: int) -> None:
        job_id, name, now = self.writer.job_id, scan.name, utcnow()
        self.recorded = set()

        def start(session: Session) -> None:
            record = session.scalar(select(ScanRecord).where(ScanRecord.job_id == job_id, ScanRecord.name == name))
            if record is None:  # a scan of the same name again (a detector series name reused) is one record
                session.add(ScanRecord(job_id=job_id, name=name, state="running", error="", received=0, written=0,
                                       failed=0, files=[], seconds=0.0, started=now))
            else:
                record.state, record.started, record.finished = "running", now, None

        self.writer.put(start)
        self.writer.progress(scan=name)

    def chunk_done(self, chunk: ChunkDone) -> None:
        p = chunk.progress
        ledger = p.ledger
        failed = len(ledger.failed)
        record = ChunkRecord(job_id=self.writer.job_id, scan=chunk.scan, pass_number=chunk.pass_number,
                             worker=chunk.worker, start=chunk.start, stop=chunk.stop, started=chunk.started,
                             finished=chunk.finished, failed=sum(c.failed for c in chunk.stages.values()),
                             stage_seconds={name: c.seconds for name, c in chunk.stages.items()})
        self.writer.put(lambda session: session.add(record))
        now, finished = time.monotonic(), ledger.written + failed
        then, before = self.last
        values: dict[str, Any] = {}
        if now - then >= 1.0:  # events per second over the last second or more
            values["rate"] = (finished - before) / (now - then)
            self.last = (now, finished)
        self.writer.progress(received=self.done["received"] + ledger.received,
                             written=self.done["written"] + ledger.written,
                             failed=self.done["failed"] + failed, in_flight=p.in_flight, total=p.total,
                             buffer_fill=p.buffer_fill, lag_s=float(p.source.get("lag_s", 0.0) or 0.0), **values)

    def event_failed(self, scan: str, index: int, stream: str, stage: str, message: str) -> None:
        self.recorded.add(index)
        record = FailedEventRecord(job_id=self.writer.job_id, scan=scan, event_index=index, stream=stream,
                                   stage=stage, message=message)
        self.writer.put(lambda session: session.add(record))

    def scan_finished(self, report: ScanReport) -> None:
        ledger = report.ledger
        job_id = self.writer.job_id
        # events in flight when the scan stopped are failed at close, without a hook of their own (SCAN_STOPPED)
        stopped = [FailedEventRecord(job_id=job_id, scan=report.scan, event_index=e.index, stream=e.stream,
                                     stage=e.stage, message=e.message)
                   for e in ledger.failed if e.index not in self.recorded]
        now = utcnow()
        files = [str(Path(f).relative_to(self.output_dir)) if Path(f).is_relative_to(self.output_dir) else str(f)
                 for f in report.files]

        def finish(session: Session) -> None:
            session.add_all(stopped)
            session.execute(update(ScanRecord).where(ScanRecord.job_id == job_id, ScanRecord.name == report.scan)
                            .values(state=ledger.state, error=ledger.error or "", received=ledger.received,
                                    written=ledger.written, failed=len(ledger.failed), files=files,
                                    finished=now, seconds=report.seconds))

        self.writer.put(finish)
        for key, value in (("received", ledger.received), ("written", ledger.written),
                           ("failed", len(ledger.failed))):
            self.done[key] += value
        self.writer.progress(**self.done, in_flight=0, buffer_fill=0.0)
        self.writer.flush()  # a scan's end is seen at once
