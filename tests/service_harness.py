"""What the service tests share: a real running service, small datasets, a PostgreSQL server a test may stop,
and stages that fail on purpose.

- :class:`RunningService`: ``create_app`` served by uvicorn on a free port, in a thread, with an admin token.
- :func:`make_data`: two visits' folders with a small simulated DECTRIS-style scan each.
- :class:`PostgresServer`: a throwaway PostgreSQL server of one test's own, which it may stop and start
  again (the database gone away mid-request); ``tests/postgres.py`` gives the shared server, which no test
  may stop.
- :class:`RefuseOddFrames` and :class:`NoCalibration`: a stage that fails some events, one that fails the
  whole scan. Job processes import them as ``service_harness:...`` with this folder on ``PYTHONPATH``
  (:func:`importable_by_jobs`).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from lightpipe import MapStage, Port, ReduceStage
from lightpipe.service.app import create_app, first_start
from lightpipe.service.auth import create_token
from lightpipe.service.db.session import transaction
from lightpipe.service.settings import ServiceSettings
from lightpipe.simulators.frames import FrameSimParams, write_nxmx

REPO = Path(__file__).parents[1]
TESTS = Path(__file__).parent
POWDER = (REPO / "pipelines" / "powder-profile.yaml").read_text()


class RunningService:
    """A real service: ``create_app`` served by uvicorn on a free port in a thread, with an admin token.

    Parameters
    ----------
    settings
        The service's settings.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        secret = first_start(self.app.state.sessions, settings)
        assert secret is not None
        self.admin = secret
        self._socket = tcp_socket()
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        # as `lightpipe serve` runs it: websockets without per-message deflate
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", ws="websockets-sansio",
                                                    ws_per_message_deflate=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]},
                                       name="uvicorn-service-test")
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the service did not start"
            time.sleep(0.01)

    def token(self, user: str, role: str = "user", folders: tuple[str, ...] = (), days: float = 1.0) -> str:
        with transaction(self.app.state.sessions) as session:
            return create_token(session, user, role, days, folders=folders)[1]

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=30)

    def register(self, text: str = POWDER) -> dict[str, Any]:
        """Register a template as the admin; its JSON."""
        with self.client(self.admin) as c:
            r = c.post("/pipelines", json={"yaml": text})
            assert r.status_code == 201, r.text
            return r.json()  # type: ignore[no-any-return]

    def wait(self, token: str, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        with self.client(token) as c:
            deadline = time.monotonic() + timeout_s
            while True:
                job = c.get(f"/jobs/{job_id}").json()
                if job["state"] not in ("queued", "running"):
                    return job  # type: ignore[no-any-return]
                assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout_s} s"
                time.sleep(0.2)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self._socket.close()


def tcp_socket() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1, for uvicorn's ``sockets=``.

    Made with ``IPPROTO_TCP`` named: asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on
    sockets whose protocol says TCP, and a plain ``socket.socket()`` says 0; with Nagle on, every
    answer waited for the client's delayed ACK, about 45 ms a request.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


def make_data(root: Path) -> None:
    """Two visits' folders with a small simulated DECTRIS-style scan each, and a secret folder."""
    params = FrameSimParams(name="scan", frames=40, darks=8, flats=6, shape=(64, 80), photons=100.0, seed=3)
    write_nxmx(root / "visit1" / "scan_master.h5", params, frames_per_file=16)
    write_nxmx(root / "visit2" / "scan_master.h5", params, frames_per_file=16)


def importable_by_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let job processes (which inherit the environment) import this folder's stages, as the tests do."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


# -- stages that fail on purpose ---------------------------------------------------------------------------------
# A template's YAML names each by its path (service_harness:Class): no entry point registers them.

class RefuseOddFrames(MapStage):
    """Fail every event whose frame sums to an odd number of counts (a stage that fails some events)."""

    name = "service_harness:RefuseOddFrames"
    inputs = {"frame": Port(ndim=2)}
    outputs = {"frame": Port(ndim=2)}

    def process(self, frame: Any) -> dict[str, Any]:
        total = int(np.asarray(frame).sum())
        if total % 2:
            raise ValueError(f"frame sum {total} is odd: refused")
        return {"frame": frame}


class NoCalibration(ReduceStage[int]):
    """Count the frames, then fail the scan at its end (a stage that raises for the whole scan)."""

    name = "service_harness:NoCalibration"
    inputs = {"frame": Port(ndim=2)}
    outputs = {"frames": Port(ndim=0, dtype="int", scan=True, description="Frames seen")}

    def partial(self, frame: Any) -> int:
        return 1

    def merge(self, left: int, right: int) -> int:
        return left + right

    def finish(self, total: int | None) -> dict[str, Any]:
        raise ValueError(f"no calibration for this scan ({total} frames seen); register a PONI file first")


# -- a PostgreSQL server of one test's own --------------------------------------------------------------------------

class PostgresServer:
    """A throwaway PostgreSQL server that a test may stop and start again; :meth:`close` removes it.

    Started as ``tests/postgres.py`` starts its shared one (``initdb`` and ``pg_ctl`` of the newest
    ``/usr/lib/postgresql/*/bin``, trust authentication on a free port of 127.0.0.1, as ``postgres`` when
    the tests run as root), but the test owns it. Skips the test when PostgreSQL is not installed.
    """

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
        if not found:
            pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl)")
        self.bin = found[-1].parent
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="lightpipe-pg-own-"))
        if self.prefix:
            shutil.chown(self.folder, "postgres", "postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._run("initdb", "-D", str(self.folder / "data"), "--auth=trust", "--username=postgres",
                  "--encoding=UTF8")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "lightpipe")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/lightpipe"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bin / program), *args], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, f"{program}: {(done.stderr or done.stdout)[-2000:]}"

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server (fast: open connections are ended, as when a database server goes down)."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
