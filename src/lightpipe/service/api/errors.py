"""Every error a client sees is a status and a sentence: exception handlers and the request-size limit.

No traceback ever reaches a client: lightpipe's own errors map to the status
that fits (:data:`STATUS`), a database that cannot be reached to 503, a
request that fails validation to 422 naming the field, and anything else to
500 with a pointer to the server's log, where the traceback goes.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lightpipe.core.errors import LightpipeError, PipelineError, PluginError, SourceError
from lightpipe.service.db.session import DatabaseError
from lightpipe.service.jobs import JobStateError
from lightpipe.service.paths import PathNotAllowed, PathNotFound
from lightpipe.service.templates import OverrideError

log = logging.getLogger(__name__)

#: HTTP status of each of lightpipe's errors (the first match in this order wins).
STATUS: tuple[tuple[type[LightpipeError], int], ...] = (
    (PathNotAllowed, 403),
    (PathNotFound, 404),
    (OverrideError, 400),
    (JobStateError, 409),
    (DatabaseError, 503),
    (PipelineError, 422),
    (PluginError, 422),
    (SourceError, 422),
    (LightpipeError, 400),
)


def _body(message: str, **extra: Any) -> dict[str, Any]:
    return {"detail": message, **extra}


def _lightpipe_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for cls, code in STATUS if isinstance(exc, cls))
    extra: dict[str, Any] = {}
    if isinstance(exc, PipelineError):
        problems = getattr(exc, "errors", [exc])
        extra["problems"] = [{"line": e.line, "field": e.field, "message": e.message} for e in problems]
    return JSONResponse(_body(str(exc), **extra), status_code=status)


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    # the driver's own words (no SQL, no parameters), e.g. "unable to open database file"
    text = str(getattr(exc, "orig", None) or "").strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return JSONResponse(_body(f"the database is unavailable ({reason}); nothing was changed by this request. Try "
                              "again in a moment; if it persists, an admin should check the database server or "
                              "file"), status_code=503, headers={"Retry-After": "5"})


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "the request"
        problems.append(f"{where}: {err['msg']}")
    return JSONResponse(_body("; ".join(problems), problems=[
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]), status_code=422)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(_body(f"the server failed on this request ({type(exc).__name__}); the traceback is in the "
                              "service's log. Please report it with the time of the request"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error with ``{"detail": "..."}`` and the right status, never a traceback."""
    app.add_exception_handler(LightpipeError, _lightpipe_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """ASGI middleware: refuse a request body larger than ``max_bytes`` with 413, declared or streamed.

    Parameters
    ----------
    app
        The application it guards.
    max_bytes
        The largest body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # a body sent without its length, or longer than it said
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (f"the request body is larger than {self.max_bytes} bytes, the most this service accepts (setting "
                "max_body_bytes)")

    async def _refuse(self, send: Send) -> None:
        await JSONResponse(_body(self._message()), status_code=413)({"type": "http"}, _disconnected, send)


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}
