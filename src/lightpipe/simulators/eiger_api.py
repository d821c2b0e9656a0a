"""The SIMPLON REST API of the EIGER simulator: detector config, commands, stream config.

Paths are those of a DECTRIS DCU, with any API version in them:
``GET/PUT /detector/api/<version>/config/<name>``, ``PUT
/detector/api/<version>/command/<name>``, ``GET
/detector/api/<version>/status/state`` and ``GET/PUT
/stream/api/<version>/config/<name>``. Values travel as ``{"value": ...}``;
a refused request answers ``{"detail": "<what is wrong>"}`` with status 400,
404 (unknown name) or 409 (wrong state).

The API knows the detector only as a :class:`SimplonDetector`, so it serves
any object that answers those calls; the simulator imports this module, never
the other way round. Needs the ``server`` extra (FastAPI).
"""
from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from lightpipe.simulators.eiger_config import SimplonError


class SimplonDetector(Protocol):
    """What the REST API asks of a detector; each call raises :class:`SimplonError` to refuse."""

    @property
    def state(self) -> str:
        """``idle``, ``ready`` or ``acquire``."""

    def get_config(self, name: str) -> dict[str, Any]:
        """A detector configuration value as SIMPLON answers it."""

    def set_config(self, name: str, value: Any) -> list[str]:
        """Set a detector configuration value; the names it changed."""

    def get_stream_config(self, name: str) -> dict[str, Any]:
        """A stream configuration value as SIMPLON answers it."""

    def set_stream_config(self, name: str, value: Any) -> list[str]:
        """Set a stream configuration value; the names it changed."""

    def command(self, name: str) -> dict[str, Any]:
        """Run a command; answers ``{"sequence id": N}``."""


class Value(BaseModel):
    """The body of a SIMPLON PUT."""

    value: Any


def create_app(detector: SimplonDetector) -> FastAPI:
    """The FastAPI application that controls ``detector``."""
    app = FastAPI(title="lightpipe EIGER simulator", description="SIMPLON REST API of a simulated DECTRIS EIGER")

    @app.exception_handler(SimplonError)
    def refused(request: Request, exc: SimplonError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    # Plain (not async) handlers run in a thread pool: a trigger blocks its request, as on a DCU,
    # while other requests (abort) are still answered.
    @app.get("/detector/api/{version}/config/{name}")
    def get_config(version: str, name: str) -> dict[str, Any]:
        return detector.get_config(name)

    @app.put("/detector/api/{version}/config/{name}")
    def put_config(version: str, name: str, body: Value) -> list[str]:
        return detector.set_config(name, body.value)

    @app.put("/detector/api/{version}/command/{name}")
    def command(version: str, name: str) -> dict[str, Any]:
        return detector.command(name)

    @app.get("/detector/api/{version}/status/{name}")
    def status(version: str, name: str) -> dict[str, Any]:
        if name != "state":
            raise SimplonError(f"unknown detector status {name!r}; known: state", 404)
        return {"value": detector.state, "value_type": "string", "access_mode": "r"}

    @app.get("/stream/api/{version}/config/{name}")
    def get_stream_config(version: str, name: str) -> dict[str, Any]:
        return detector.get_stream_config(name)

    @app.put("/stream/api/{version}/config/{name}")
    def put_stream_config(version: str, name: str, body: Value) -> list[str]:
        return detector.set_stream_config(name, body.value)

    return app
