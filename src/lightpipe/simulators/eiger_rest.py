"""The EIGER simulator's SIMPLON REST server: uvicorn on a background thread, on a socket bound first.

The socket is bound before uvicorn starts, so that port 0 gives a free port
that is known at once and a port in use is a clear error instead of a log line
on another thread. Needs the ``server`` extra (FastAPI and uvicorn).
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

from lightpipe.core.errors import SourceError
from lightpipe.simulators.eiger_api import SimplonDetector, create_app


class RestServer:
    """Serves the SIMPLON REST API of ``detector`` on ``host:port`` until :meth:`stop`.

    Parameters
    ----------
    detector
        What the API controls.
    host, port
        Where to listen; port 0 picks a free port (read it from :attr:`port`).
    """

    def __init__(self, detector: SimplonDetector, host: str, port: int) -> None:
        self.detector = detector
        self.host = host
        self.requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> RestServer:
        """Bind, serve, and return once the server answers requests (``SourceError`` if it does not)."""
        self._socket = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((self.host, self.requested_port))
        except OSError as exc:
            self._socket.close()
            self._socket = None
            raise SourceError(f"cannot bind the REST server to {self.host}:{self.requested_port} ({exc}); choose "
                              "another --rest-port, or 0 for any free port") from exc
        config = uvicorn.Config(create_app(self.detector), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="eiger-rest", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SourceError("the simulator's REST server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (requests in progress get 2 s) and close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    @property
    def port(self) -> int:
        """The bound port; 0 when not started."""
        return self._socket.getsockname()[1] if self._socket is not None else 0
