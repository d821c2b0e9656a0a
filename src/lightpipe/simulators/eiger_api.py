"""The SIMPLON REST API of the EIGER simulator: detector config, commands, stream config.

Paths are those of a DECTRIS DCU, with any API version in them:
``GET/PUT /detector/api/<version>/config/<name>``, ``PUT
/detector/api/<version>/command/<name>``, ``GET
/detector/api/<version>/status/state`` and ``GET/PUT
/stream/api/<version>/config/<name>``. Values travel as ``{"value": ...}``;
a refused request answers ``{"detail": "<what is wrong>"}`` with status 400,
404 (unknown name) or 409 (wrong state).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

if TYPE_CHECKING:
    from lightpipe.simulators.eiger import EigerSimulator


class Value(BaseModel):
    """The body of a SIMPLON PUT."""

    value: Any


def create_app(simulator: EigerSimulator) -> FastAPI:
    """The FastAPI application that controls ``simulator``."""
    from lightpipe.simulators.eiger import SimplonError

    app = FastAPI(title="lightpipe EIGER simulator", description="SIMPLON REST API of a simulated DECTRIS EIGER")

    @app.exception_handler(SimplonError)
    def refused(request: Request, exc: SimplonError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    # Plain (not async) handlers run in a thread pool: a trigger blocks its request, as on a DCU,
    # while other requests (abort) are still answered.
    @app.get("/detector/api/{version}/config/{name}")
    def get_config(version: str, name: str) -> dict[str, Any]:
        return simulator.get_config(name)

    @app.put("/detector/api/{version}/config/{name}")
    def put_config(version: str, name: str, body: Value) -> list[str]:
        return simulator.set_config(name, body.value)

    @app.put("/detector/api/{version}/command/{name}")
    def command(version: str, name: str) -> dict[str, Any]:
        return simulator.command(name)

    @app.get("/detector/api/{version}/status/{name}")
    def status(version: str, name: str) -> dict[str, Any]:
        if name != "state":
            raise SimplonError(f"unknown detector status {name!r}; known: state", 404)
        return {"value": simulator.state, "value_type": "string", "access_mode": "r"}

    @app.get("/stream/api/{version}/config/{name}")
    def get_stream_config(version: str, name: str) -> dict[str, Any]:
        if name not in simulator.stream_config:
            raise SimplonError(f"unknown stream config {name!r}; known: {', '.join(sorted(simulator.stream_config))}",
                               404)
        return {"value": simulator.stream_config[name], "access_mode": "rw"}

    @app.put("/stream/api/{version}/config/{name}")
    def put_stream_config(version: str, name: str, body: Value) -> list[str]:
        return simulator.set_stream_config(name, body.value)

    return app
