"""The job runner of the service: a process per job, a queue, cancel and abort through the control channel.

Jobs never run in the web server's event loop: :class:`JobRunner` starts
``python -m lightpipe.service.worker`` for each (:mod:`lightpipe.service.worker`),
at most ``max_running_jobs`` at once, the rest waiting as ``queued``. A thread
of the runner starts queued jobs, notices processes that ended, and marks a
job whose process died without saying how it ended as ``failed``, with the
end of the process's log.

A running job is controlled through the control channel of ``lightpipe run``
(:class:`lightpipe.control.ControlClient`): the runner finds the job's
process in the runtime folder by its pid and sends, with its token,
``abort`` (the current scan ends, the job goes on) or ``stop`` (cancel: the
current scan is aborted, no other starts, a live job waiting for its next
series stops waiting, and the job ends as ``cancelled``). One control path
serves ``lightpipe abort``, ``lightpipe stop`` and the service. Cancelling
also sets the job's ``cancel_requested`` flag, which the job process reads
(:class:`~lightpipe.service.recorder.DbWriter`) and turns into the same stop
when its control channel was not up yet to be asked.

When the service starts, jobs that a previous server left ``running`` are
marked ``interrupted``: their records stay, and their result files say how
their scans ended.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lightpipe.control import RUNTIME_DIR_ENV, ControlClient, ControlError, RunInfo
from lightpipe.core.errors import LightpipeError
from lightpipe.service.db.models import FINAL_STATES, Job, LogLine, utcnow
from lightpipe.service.db.session import transaction

log = logging.getLogger(__name__)

#: Seconds between two looks at the job processes and the queue.
POLL_S = 0.2
#: Seconds a job process has to close its scan after SIGTERM when the service stops.
STOP_GRACE_S = 20.0
#: Characters of a dead job process's log kept as its error.
LOG_TAIL_CHARS = 2000
WORKER_LOG = "job.log"


class JobStateError(LightpipeError):
    """A request that does not fit the job's state: cancelling a finished job, aborting one that is not running."""


class JobRunner:
    """Starts, watches, cancels and aborts job processes.

    Parameters
    ----------
    factory
        Sessions on the service's database.
    database
        Its URL, given to the job processes.
    runtime_dir
        Where job processes announce their control channels.
    max_running
        Jobs running at once.
    live
        Endpoint of the live hub the job processes send to, if any.
    niceness
        Added to the job processes' niceness (``nice``), so that the server answers
        promptly while jobs take every core; 0 runs them at the server's priority.
    """

    def __init__(self, factory: sessionmaker[Session], database: str, runtime_dir: Path, max_running: int = 2,
                 live: str | None = None, niceness: int = 0) -> None:
        self.factory = factory
        self.database = database
        self.runtime_dir = runtime_dir
        self.max_running = max_running
        self.live = live
        self.niceness = niceness
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        """Mark jobs left running by a previous server as interrupted, then start the queue's thread."""
        with transaction(self.factory) as session:
            left = session.scalars(select(Job).where(Job.state == "running")).all()
            for job in left:
                job.state, job.finished = "interrupted", utcnow()
                job.error = "the service stopped while the job ran; its result files say where each scan ended"
                job.control_endpoint = ""
                session.add(LogLine(job_id=job.id, component="service", level="warning", message=job.error))
        if left:
            log.warning("marked %d jobs left running by a previous server as interrupted", len(left))
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread = threading.Thread(target=self._loop, name="lightpipe-job-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the queue; interrupt running jobs (SIGTERM: their scans close as interrupted) and wait for them."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            processes = dict(self.processes)
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for job_id, process in processes.items():
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.error("job %s did not close its scan within %g s of SIGTERM; killing it", job_id, STOP_GRACE_S)
                process.kill()
                process.wait()
            self._reap(job_id, process)

    def wake(self) -> None:
        """Look at the queue now (a job was submitted)."""
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step()
            except Exception:  # a database gone for a moment must not end the runner
                log.exception("the job runner could not look at the queue; trying again")

    def _step(self) -> None:
        with self._lock:
            ended = {job_id: p for job_id, p in self.processes.items() if p.poll() is not None}
        for job_id, process in ended.items():
            self._reap(job_id, process)
        with self._lock:
            free = self.max_running - len(self.processes)
        if free <= 0:
            return
        with transaction(self.factory) as session:
            queued = session.scalars(select(Job).where(Job.state == "queued").order_by(Job.created).limit(free)).all()
            for job in queued:
                if job.cancel_requested:
                    job.state, job.finished = "cancelled", utcnow()
                    continue
                self._launch(session, job)

    def _launch(self, session: Session, job: Job) -> None:
        output = Path(job.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "lightpipe.service.worker", job.id, "--database", self.database]
        if self.live:
            command += ["--live", self.live]
        if self.niceness and shutil.which("nice"):
            command = ["nice", "-n", str(self.niceness), *command]  # nice runs the job in its own process
        env = {**os.environ, RUNTIME_DIR_ENV: str(self.runtime_dir)}
        with open(output / WORKER_LOG, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=output)
        job.state, job.pid, job.started = "running", process.pid, utcnow()
        session.add(LogLine(job_id=job.id, component="service", level="info",
                            message=f"started the job process, pid {process.pid}"))
        with self._lock:
            self.processes[job.id] = process

    def _reap(self, job_id: str, process: subprocess.Popen[bytes]) -> None:
        """Forget an ended process; a job it left unfinished failed, with the end of its log as the error."""
        code = process.wait()
        with self._lock:
            self.processes.pop(job_id, None)
        with transaction(self.factory) as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            session.add(LogLine(job_id=job_id, component="service", level="info" if code == 0 else "warning",
                                message=f"the job process ended with exit status {code}"))
            if job.state in FINAL_STATES:
                return
            tail = _tail(Path(job.output_dir) / WORKER_LOG)
            job.state, job.finished, job.control_endpoint = "failed", utcnow(), ""
            job.error = f"the job process ended with exit status {code} before it finished" + (
                f"; the end of its log:\n{tail}" if tail else "")

    # -- control ---------------------------------------------------------------------------
    def running_info(self, job: Job) -> RunInfo | None:
        """The announced control channel of a running job's process (with its token), if it is up."""
        for info in ControlClient.discover(self.runtime_dir):
            if info.pid == job.pid:
                return info
        return None

    def status(self, job: Job, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The topology of a running job, from its control channel; ``None`` when it cannot be reached."""
        info = self.running_info(job) if job.state == "running" else None
        if info is None:
            return None
        try:
            return ControlClient().status(info.endpoint, timeout_s)
        except ControlError as exc:
            log.warning("job %s: no status: %s", job.id, exc)
            return None

    def abort(self, job: Job, reason: str) -> str:
        """Abort the current scan of a running job through its control channel; returns the scan's name.

        Raises
        ------
        JobStateError
            The job is not running, or is between scans.
        """
        return str(self._control(job, "abort", reason)["scan"])

    def _control(self, job: Job, command: str, reason: str) -> dict[str, Any]:
        """Send ``abort`` or ``stop`` to a running job's control channel, with its token; the reply."""
        if job.state != "running":
            raise JobStateError(f"job {job.id} is {job.state}, not running; there is nothing to {command}")
        info = self.running_info(job)
        if info is None:
            raise JobStateError(f"job {job.id} is starting or ending: its control channel is not up; try again")
        client = ControlClient()
        send = client.stop if command == "stop" else client.abort
        try:
            return send(info.endpoint, reason, token=info.token)
        except ControlError as exc:
            raise JobStateError(f"job {job.id}: {exc}") from None

    def cancel(self, job_id: str, reason: str = "") -> str:
        """Cancel a job: a queued one at once; a running one is stopped through its control channel.

        A running job's current scan is aborted (its file says so), no other
        scan starts, and the job ends as ``cancelled`` once that scan's files
        are closed (a live job waiting for a series: within a second).
        Returns the job's state afterwards: ``cancelled``, or ``running`` while it ends.

        Raises
        ------
        JobStateError
            The job has already ended.
        """
        with transaction(self.factory) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobStateError(f"no job {job_id}")
            if job.state in FINAL_STATES:
                raise JobStateError(f"job {job.id} has already ended ({job.state}); there is nothing to cancel")
            job.cancel_requested = True
            session.add(LogLine(job_id=job.id, component="service", level="info",
                                message=f"cancel requested{': ' + reason if reason else ''}"))
            if job.state == "queued":
                job.state, job.finished = "cancelled", utcnow()
                return job.state
        # committed first: a job process whose control channel is not up yet reads the flag and stops itself
        try:
            self._control(job, "stop", reason or "the job was cancelled")
        except JobStateError as exc:
            log.info("job %s: cancel not sent through the control channel (%s); the job process reads the flag",
                     job.id, exc)
        return job.state


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_CHARS))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""
