"""A job's process: ``python -m lightpipe.service.worker JOB_ID --database URL [--live ENDPOINT]``.

The service starts one per job (:mod:`lightpipe.service.jobs`), so pipelines
run outside the web server's event loop and a crashing stage cannot take the
server down. The process loads the job's exact YAML from the database and runs
it as ``lightpipe run`` does: the same pipeline loader, the same engine, the
same sinks, so the result file is the one ``lightpipe run`` writes. It
subscribes to the run with:

- the control channel of ``lightpipe run`` (:class:`lightpipe.control.ControlServer`),
  announced in the service's runtime folder: the service reads the status,
  aborts scans and cancels the job (``stop``) through it, as ``lightpipe
  status``, ``lightpipe abort`` and ``lightpipe stop`` do;
- :class:`~lightpipe.service.recorder.JobRecorder`: progress, scans, chunks,
  failed events and log lines into the database;
- :class:`~lightpipe.service.live.LiveForwarder`, when the service listens for live
  events.

SIGTERM or SIGINT close the current scan as ``interrupted`` (its file says so)
and end the job as ``interrupted``; so does the service going away (the process
watches its parent). A stopped run (a cancelled job) ends the job as
``cancelled``: its current scan is closed as ``aborted`` and no other starts.
A job cancelled before its control channel was up stops itself when it reads
its ``cancel_requested`` flag.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any, Sequence

from sqlalchemy import update

from lightpipe.control import ControlServer
from lightpipe.core.errors import LightpipeError
from lightpipe.core.hooks import RunHooks
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.topology import Topology
from lightpipe.engines import engine_class
from lightpipe.service.db.models import Job, utcnow
from lightpipe.service.db.session import make_engine, session_factory, transaction
from lightpipe.service.recorder import DbLogHandler, DbWriter, JobRecorder

log = logging.getLogger("lightpipe.job")

#: Packages whose versions a job records, beside Python's.
RECORDED_PACKAGES = ("lightpipe", "numpy", "h5py", "hdf5plugin", "pydantic", "dask", "distributed", "pyzmq",
                     "bitshuffle", "scipy", "scikit-image", "scikit-learn", "pyFFTW")
#: Seconds between two looks at whether the service that started this process still runs.
PARENT_CHECK_S = 1.0


def package_versions() -> dict[str, str]:
    """Versions of Python and of the installed packages of :data:`RECORDED_PACKAGES`."""
    found = {"python": sys.version.split()[0]}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _interrupt_on_signals() -> None:
    """The first SIGTERM or SIGINT raises ``KeyboardInterrupt`` (the driver closes the scan as interrupted)."""
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        log.warning("%s: closing the scan's files first", signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, interrupt)


def _watch_parent(stop: threading.Event) -> threading.Thread:
    """A thread that sends this process SIGTERM when the service that started it ends."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(PARENT_CHECK_S):
            if os.getppid() != parent:
                log.warning("the service stopped; closing the scan as interrupted")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="lightpipe-job-parent", daemon=True)
    thread.start()
    return thread


def run_job(job_id: str, database: str, live: str | None = None) -> int:
    """Run job ``job_id`` of the database at ``database`` to its end; returns the process's exit status."""
    factory = session_factory(make_engine(database))
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        if job is None:
            print(f"no job {job_id!r} in the database", file=sys.stderr)
            return 2
        text, engine_spec, output_dir = job.yaml, dict(job.engine), Path(job.output_dir)
        job.state, job.started, job.pid, job.host = "running", utcnow(), os.getpid(), socket.gethostname()
        job.packages = package_versions()
    writer = DbWriter(factory, job_id)
    handler = DbLogHandler(writer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    state, error = "failed", ""
    stop_watching = threading.Event()
    _watch_parent(stop_watching)
    try:
        state, error = _run(job_id, text, engine_spec, output_dir, writer, live)
    except KeyboardInterrupt as exc:
        state, error = "interrupted", f"{str(exc) or 'SIGINT'} received"
    except LightpipeError as exc:
        log.error("%s", exc)
        state, error = "failed", str(exc)
    except Exception as exc:
        log.exception("the job failed")
        state, error = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        stop_watching.set()
        logging.getLogger().removeHandler(handler)
        try:
            writer.close()
        except Exception:
            log.exception("job %s: the last progress could not be written", job_id)
    with transaction(factory) as session:
        cancelled = session.get(Job, job_id)
        if state != "failed" and cancelled is not None and cancelled.cancel_requested:
            state = "cancelled"
        session.execute(update(Job).where(Job.id == job_id).values(
            state=state, error=error, finished=utcnow(), control_endpoint="", in_flight=0, buffer_fill=0.0))
    return {"completed": 0, "cancelled": 0, "interrupted": 130}.get(state, 1)


def _run(job_id: str, text: str, engine_spec: dict[str, Any], output_dir: Path, writer: DbWriter,
         live: str | None) -> tuple[str, str]:
    """Run the pipeline; returns the job's end state and error. Raises on what ends it early."""
    _interrupt_on_signals()
    pipeline = load_pipeline(text, file=f"job {job_id}")
    topology = Topology(pipeline.name)
    writer.when_cancelled(lambda: topology.request_stop("the job was cancelled"))
    hooks: list[RunHooks] = []
    forwarder = None
    if live:
        from lightpipe.service.live import LiveForwarder

        forwarder = LiveForwarder(live, job_id)
        hooks.append(forwarder)
    cls = engine_class(engine_spec.get("name", "local"))
    try:
        with cls.from_options(engine_spec.get("options", {})) as engine, ControlServer(topology) as control:
            writer.progress(control_endpoint=control.endpoint)
            writer.flush()
            log.info("running %s on the %s engine, writing to %s (niceness %d)", pipeline.name, cls.name,
                     output_dir, os.nice(0))
            recorder = JobRecorder(writer, output_dir.resolve())
            report = engine.run(pipeline, output_dir, topology=topology, hooks=[control, *hooks, recorder])
    finally:
        if forwarder is not None:
            forwarder.close()
    failed = [s for s in report.scans if s.ledger.state == "failed"]
    if failed:
        return "failed", "; ".join(f"scan {s.scan}: {s.ledger.error}" for s in failed)
    if topology.stop_requested:
        log.info("the run was stopped after %d scans: %s", len(report.scans), topology.stop_reason or "no reason given")
        return "cancelled", ""
    return "completed", ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lightpipe.service.worker``."""
    parser = argparse.ArgumentParser(prog="python -m lightpipe.service.worker", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="the job's id")
    parser.add_argument("--database", required=True, help="the service's database URL")
    parser.add_argument("--live", help="ZeroMQ endpoint of the service's live hub")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_job(args.job, args.database, args.live)


if __name__ == "__main__":
    sys.exit(main())
