"""The control channel of a running pipeline: ``status``, ``abort`` and ``stop`` over ZeroMQ.

A pipeline process serves its :class:`~lightpipe.core.topology.Topology` with
a :class:`ControlServer` (a REP socket on a daemon thread) and announces itself
with a small JSON file in the runtime directory, so that ``lightpipe status``
on the same host finds it without being told a port. A :class:`ControlClient`
finds running pipelines there and asks them for their status, to abort the
current scan, or to stop (end the run), with a timeout on every request.

Requests and replies are single JSON messages::

    {"command": "status"}                                 -> {"ok": true, "topology": {...}, "scans": [...]}
    {"command": "abort", "reason": "...", "token": "..."} -> {"ok": true, "scan": "..."}
    {"command": "stop", "reason": "...", "token": "..."}  -> {"ok": true, "scan": "..." or null}
    anything else                                         -> {"ok": false, "error": "..."}

``abort`` ends the current scan (closed as ``aborted``) and the pipeline
waits for the next one; between scans there is nothing to abort and it is
refused. ``stop`` ends the run: the current scan, if any (named in the
reply), is aborted, no other scan starts, and a source waiting for scans
stops waiting (:meth:`lightpipe.core.topology.Topology.request_stop`). The
service cancels a job this way.

Anyone on the host can find a pipeline and ask for its status. An abort or
a stop must carry the pipeline's token: a random string in a file beside the
run file that only the user who started the pipeline can read (mode 0600),
so other users of a shared beamline server cannot stop someone else's scan.

The server is a run hook (:mod:`lightpipe.core.hooks`): given to
``engine.run(..., hooks=[server])`` it also reports the scans the run has
finished, with their state, counts and files.

Example
-------
>>> from lightpipe.core.topology import Topology
>>> topology = Topology("powder")
>>> with ControlServer(topology) as server:
...     ControlClient().status(server.endpoint)["pipeline"]
'powder'
"""
from __future__ import annotations

import atexit
import hmac
import json
import logging
import os
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # a dependency of distributed
import zmq

from lightpipe.core.errors import LightpipeError
from lightpipe.core.hooks import RunHooks
from lightpipe.core.report import ScanReport
from lightpipe.core.topology import Topology

log = logging.getLogger(__name__)

RUNTIME_DIR_ENV = "LIGHTPIPE_RUNTIME_DIR"
COMMANDS = ("status", "abort", "stop")
_MAX_REQUEST_BYTES = 64 * 1024  # a stray sender must not make the pipeline allocate much
_POLL_MS = 50  # how soon the serving thread notices close()
RECENT_SCANS = 20  # finished scans a status reply lists, newest last

_names_in_use: set[str] = set()  # run files of this process's servers
_names_lock = threading.Lock()


class ControlError(LightpipeError):
    """A running pipeline that cannot be reached, or that refused a request."""


def runtime_dir() -> Path:
    """Where running pipelines announce themselves.

    ``$LIGHTPIPE_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/lightpipe``,
    else ``~/.cache/lightpipe/run``.
    """
    if os.environ.get(RUNTIME_DIR_ENV):
        return Path(os.environ[RUNTIME_DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "lightpipe"
    return Path.home() / ".cache" / "lightpipe" / "run"


@dataclass(frozen=True)
class RunInfo:
    """A running pipeline, as announced in the runtime directory."""

    endpoint: str
    pipeline: str
    pid: int
    host: str
    started_at: float
    path: Path
    #: The secret an abort or stop must carry; "" when its token file cannot be read (another user's pipeline).
    token: str = ""


class ControlServer(RunHooks):
    """Serve a topology's status, abort and stop requests until :meth:`close`; a run hook that records finished scans.

    Parameters
    ----------
    topology
        What ``status`` reports and ``abort`` and ``stop`` act on.
    bind
        ZeroMQ endpoint to bind; port 0 picks a free one. The default answers
        only on this host. Anyone who can connect may ask for the status; an
        abort or a stop must carry :attr:`token`.
    directory
        Runtime directory to announce in (default :func:`runtime_dir`).

    Attributes
    ----------
    token
        The secret an ``abort`` or ``stop`` request must carry, written beside the run
        file (``<pid>.token``) readable by this user only.
    """

    def __init__(
        self, topology: Topology, bind: str = "tcp://127.0.0.1:0", directory: str | Path | None = None
    ) -> None:
        self.topology = topology
        self.scans: deque[dict[str, Any]] = deque(maxlen=RECENT_SCANS)
        self.token = secrets.token_urlsafe(24)
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, _MAX_REQUEST_BYTES)
        try:
            self._socket.bind(bind)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise ControlError(f"cannot bind the control channel to {bind!r}: {exc}; "
                               "give a free endpoint such as tcp://127.0.0.1:0") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        directory = Path(directory) if directory is not None else runtime_dir()
        try:
            self.run_file = self._announce(directory)
        except OSError as exc:
            self._socket.close()
            raise ControlError(f"cannot announce the pipeline in {directory}: {exc}; set {RUNTIME_DIR_ENV} "
                               "to a directory you can write") from None
        atexit.register(self._withdraw)  # a pipeline that ends without close() leaves no run file
        self._stop = threading.Event()
        # the socket is used only by this thread from now on (starting a thread is a memory barrier)
        self._thread = threading.Thread(target=self._serve, name=f"lightpipe-control-{topology.pipeline}", daemon=True)
        self._thread.start()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and remove the run file (once; later calls do nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._withdraw()
        atexit.unregister(self._withdraw)

    def scan_finished(self, report: ScanReport) -> None:
        """Remember the scan's outcome for ``status`` replies (read on the serving thread: a deque append is atomic)."""
        ledger = report.ledger
        self.scans.append({"scan": report.scan, "state": ledger.state, "error": ledger.error or "",
                           "received": ledger.received, "written": ledger.written, "failed": len(ledger.failed),
                           "files": [str(f) for f in report.files]})

    # -- the run file ------------------------------------------------------------------
    def _announce(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        t = self.topology
        with _names_lock:
            name, k = f"{t.pid}.json", 1
            while name in _names_in_use:  # several pipelines in one process (the service)
                k += 1
                name = f"{t.pid}-{k}.json"
            _names_in_use.add(name)
        path = directory / name
        record = {"endpoint": self.endpoint, "pipeline": t.pipeline, "pid": t.pid, "host": t.host,
                  "started_at": t.started_at}
        partial = directory / f".{name}.partial"  # renamed into place so readers never see half a file
        try:
            # the token first, readable by this user only: it is what lets an abort or a stop through
            # (a file left by an earlier process of this pid goes first: O_EXCL sets the mode afresh)
            _token_file(path).unlink(missing_ok=True)
            fd = os.open(_token_file(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
            partial.write_text(json.dumps(record))
            os.replace(partial, path)
        except OSError:
            _token_file(path).unlink(missing_ok=True)
            with _names_lock:
                _names_in_use.discard(name)
            raise
        return path

    def _withdraw(self) -> None:
        self.run_file.unlink(missing_ok=True)
        _token_file(self.run_file).unlink(missing_ok=True)
        with _names_lock:
            _names_in_use.discard(self.run_file.name)

    # -- serving -----------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(_POLL_MS):
                    continue
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                self._socket.send(self._reply(frames))
        except zmq.ZMQError:
            log.exception("control channel of pipeline %s stopped", self.topology.pipeline)
        finally:
            self._socket.close(linger=0)

    def _reply(self, frames: list[bytes]) -> bytes:
        try:
            reply = self._handle(frames)
            return json.dumps(reply).encode()
        except Exception as exc:  # a bad request or a bug must never end the control thread
            log.exception("control request failed")
            return json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode()

    def _handle(self, frames: list[bytes]) -> dict[str, Any]:
        if len(frames) != 1:
            return _refuse(f"expected one JSON message, got {len(frames)} frames")
        try:
            request = json.loads(frames[0])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _refuse(f"the request is not JSON ({exc}); send e.g. {{\"command\": \"status\"}}")
        if not isinstance(request, dict) or "command" not in request:
            return _refuse("the request must be a JSON object with a \"command\" field, e.g. {\"command\": \"status\"}")
        command = request["command"]
        if command == "status":
            return {"ok": True, "topology": self.topology.snapshot(), "scans": list(self.scans)}
        if command in ("abort", "stop"):
            token = request.get("token", "")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token.encode()):
                return _refuse(f"{command} needs this pipeline's token, kept beside its run file in the runtime "
                               "directory and readable only by the user who started it: run "
                               f"`lightpipe {command}` as that user (it reads the token), or pass RunInfo.token "
                               f"to ControlClient.{command}")
            reason = request.get("reason", "")
            if not isinstance(reason, str):
                return _refuse(f"\"reason\" must be a string, got {type(reason).__name__}")
            if command == "stop":
                return {"ok": True, "scan": self.topology.request_stop(reason)}
            scan = self.topology.request_abort(reason)
            if scan is None:
                return _refuse(f"pipeline {self.topology.pipeline!r} is not processing a scan; nothing to abort")
            return {"ok": True, "scan": scan}
        return _refuse(f"unknown command {command!r}; known commands: {', '.join(COMMANDS)}")


def _refuse(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def _token_file(run_file: Path) -> Path:
    """Where the token of the pipeline announced by ``run_file`` is kept."""
    return run_file.with_suffix(".token")


def _read_token(run_file: Path) -> str:
    """The token beside ``run_file``; "" when this user may not read it or it is gone."""
    try:
        return _token_file(run_file).read_text().strip()
    except OSError:
        return ""


class ControlClient:
    """Find running pipelines and send them requests.

    Every request uses a fresh REQ socket with a receive timeout, so a
    pipeline that died or hangs gives a :class:`ControlError` after
    ``timeout_s`` instead of blocking the caller.
    """

    def __init__(self) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()

    @staticmethod
    def discover(directory: str | Path | None = None) -> list[RunInfo]:
        """The pipelines running on this host, oldest first.

        Run files of processes that no longer exist are deleted; files from
        other hosts (a runtime directory on a shared home) are left alone and
        not listed, and unreadable files are skipped.
        """
        directory = Path(directory) if directory is not None else runtime_dir()
        host = socket.gethostname()
        runs = []
        for path in sorted(directory.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                info = RunInfo(str(record["endpoint"]), str(record["pipeline"]), int(record["pid"]),
                               str(record["host"]), float(record["started_at"]), path, _read_token(path))
            except FileNotFoundError:  # its pipeline closed while we looked
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable run file %s: %s", path, exc)
                continue
            if info.host != host:
                continue
            if not psutil.pid_exists(info.pid):
                log.info("removing the run file of pipeline %s: process %d is gone", info.pipeline, info.pid)
                path.unlink(missing_ok=True)
                _token_file(path).unlink(missing_ok=True)
                continue
            runs.append(info)
        return sorted(runs, key=lambda r: (r.started_at, r.pid))

    def request(self, endpoint: str, message: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any]:
        """Send ``message`` to the pipeline at ``endpoint`` and return its reply, ``ok`` or not."""
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(timeout_s * 1000)))
        try:
            sock.connect(endpoint)
            sock.send(json.dumps(message).encode())
            raw = sock.recv()
        except zmq.Again:
            raise ControlError(f"no answer from the pipeline at {endpoint} within {timeout_s:g} s: its process "
                               "may have stopped or be stuck; `lightpipe status` lists the pipelines running "
                               "here") from None
        except zmq.ZMQError as exc:
            raise ControlError(f"cannot reach a pipeline at {endpoint!r}: {exc}; an endpoint looks like "
                               "tcp://127.0.0.1:5555") from None
        finally:
            sock.close(linger=0)
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ControlError(f"{endpoint} answered with something that is not JSON; is it a lightpipe "
                               "control channel?") from None
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ControlError(f"{endpoint} answered {reply!r}, not a lightpipe control reply")
        return reply

    def status(self, endpoint: str, timeout_s: float = 2.0) -> dict[str, Any]:
        """The topology snapshot of the pipeline at ``endpoint``, with its finished scans as ``scans``."""
        reply = self._ok(endpoint, self.request(endpoint, {"command": "status"}, timeout_s))
        return {**reply["topology"], "scans": reply.get("scans", [])}

    def abort(self, endpoint: str, reason: str = "", timeout_s: float = 2.0, *, token: str) -> dict[str, Any]:
        """Ask the pipeline at ``endpoint`` to abort its current scan; the reply names the scan.

        ``token`` is the pipeline's (:attr:`RunInfo.token`, :attr:`ControlServer.token`).
        """
        message = {"command": "abort", "reason": reason, "token": token}
        return self._ok(endpoint, self.request(endpoint, message, timeout_s))

    def stop(self, endpoint: str, reason: str = "", timeout_s: float = 2.0, *, token: str) -> dict[str, Any]:
        """Ask the pipeline at ``endpoint`` to end its run: abort its current scan and start no other.

        The reply's ``scan`` names the scan being aborted, ``None`` between
        scans. The run ends once that scan's files are closed; ``status``
        says ``stop.requested`` meanwhile. ``token`` is the pipeline's
        (:attr:`RunInfo.token`, :attr:`ControlServer.token`).
        """
        message = {"command": "stop", "reason": reason, "token": token}
        return self._ok(endpoint, self.request(endpoint, message, timeout_s))

    @staticmethod
    def _ok(endpoint: str, reply: dict[str, Any]) -> dict[str, Any]:
        if not reply["ok"]:
            raise ControlError(f"the pipeline at {endpoint} refused: {reply.get('error', 'no reason given')}")
        return reply
