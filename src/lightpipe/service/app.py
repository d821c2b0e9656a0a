"""The service's FastAPI application: ``create_app(settings)``.

Routers live under ``/api/v1`` (OpenAPI at ``/docs``): pipelines, datasets,
jobs, results, topology, tokens, the live websocket and the HDF5 preview for
h5web (``/api/v1/h5grove``); ``/metrics`` serves Prometheus, and ``/`` the web UI. Every route but
``/api/v1/health`` wants a token. The database must carry this lightpipe's
schema (:func:`~lightpipe.service.db.session.check_schema`); a new, empty one
is set up on the spot.

Example
-------
>>> app = create_app(ServiceSettings(state_dir=tmp, data_root=tmp / "data"))  # doctest: +SKIP
>>> uvicorn.run(app)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from lightpipe.core.version import __version__
from lightpipe.service.api import datasets, jobs, pipelines, results, tokens, topology
from lightpipe.service.api.deps import Service, readable_job
from lightpipe.service.api.errors import BodyLimit, install_error_handlers
from lightpipe.service.api.results import job_file
from lightpipe.service.auth import authenticate, create_token, current_user, principal_of
from lightpipe.service.db.models import Token, User
from lightpipe.service.db.session import check_schema, is_empty, make_engine, session_factory, transaction, upgrade
from lightpipe.service.h5preview import h5grove_router
from lightpipe.service.jobs import JobRunner
from lightpipe.service.live import LiveHub, live_router
from lightpipe.service.metrics import install_metrics, jobs_snapshot
from lightpipe.service.paths import DataRoot, PathNotAllowed
from lightpipe.service.settings import ServiceSettings
from lightpipe.service.webui import install_web_ui

log = logging.getLogger(__name__)

API = "/api/v1"
#: Prefix of a job's file in the HDF5 preview's ``file`` parameter: ``job:<id>/<path in its output folder>``.
JOB_FILE_PREFIX = "job:"


def open_database(settings: ServiceSettings) -> sessionmaker[Session]:
    """Sessions on the settings' database, whose schema must be current (an empty database is set up)."""
    engine = make_engine(settings.database)
    if is_empty(engine):
        upgrade(engine)
        log.info("set up a new database at %s", engine.url.render_as_string(hide_password=True))
    check_schema(engine, settings.database_url or "")
    return session_factory(engine)


def first_start(sessions: sessionmaker[Session], settings: ServiceSettings) -> str | None:
    """On a database with no token yet, make the first admin token; returns its secret (shown once), else ``None``."""
    with transaction(sessions) as session:
        if session.scalar(select(func.count()).select_from(Token)):
            return None
        _, secret = create_token(session, "admin", "admin", settings.token_days, label="first admin token")
        return secret


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for ``settings``: routes, error handlers, the job runner and the live hub.

    Raises
    ------
    DatabaseError
        When the database cannot be reached or its schema is not this lightpipe's (the message names the fix).
    """
    sessions = open_database(settings)
    settings.data_root.mkdir(parents=True, exist_ok=True)
    data = DataRoot(settings.data_root)
    hub = LiveHub()
    runner = JobRunner(sessions, settings.database, settings.runtime_dir, settings.max_running_jobs, hub.endpoint,
                       settings.job_niceness)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        await run_in_threadpool(runner.start)
        try:
            yield
        finally:
            await run_in_threadpool(runner.stop)
            await hub.stop()

    app = FastAPI(title="lightpipe", version=__version__, lifespan=lifespan,
                  description="Pipelines, datasets, jobs, results, topology and live events of lightpipe. "
                              "Send a token as `Authorization: Bearer <token>`.")
    app.state.sessions = sessions
    app.state.service = Service(settings, sessions, data, runner)
    app.state.hub = hub
    install_error_handlers(app)

    @app.get(f"{API}/health", tags=["service"], summary="Whether the service and its database answer (no token)")
    def health() -> dict[str, Any]:
        with sessions() as session:
            session.scalar(select(func.count()).select_from(User))
        return {"ok": True, "version": __version__}

    for module in (pipelines, datasets, jobs, results, topology, tokens):
        app.include_router(module.router, prefix=API)

    async def authorize(token: str, job_id: str) -> None:
        def check() -> None:
            principal = principal_of(sessions, token)
            with sessions() as session:
                readable_job(session, principal, job_id)

        await run_in_threadpool(check)

    app.include_router(live_router(hub, authorize))

    def resolve(request: Request, file: str) -> Path:
        principal = authenticate(sessions, request.headers.get("authorization"))
        job_id, relative = _job_file_of(file, settings)
        if job_id is None:
            return data.resolve(file, principal.folders)
        with sessions() as session:
            return job_file(readable_job(session, principal, job_id), relative)

    app.include_router(h5grove_router(resolve), prefix=f"{API}/h5grove", tags=["h5grove"],
                       dependencies=[Depends(current_user)])
    install_metrics(app, jobs=lambda: jobs_snapshot(sessions), dependencies=[current_user])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    install_web_ui(app)  # last: the UI's pages answer every path the routes above do not
    return app


def _job_file_of(file: str, settings: ServiceSettings) -> tuple[str | None, str]:
    """``(job id, path in its output folder)`` of a preview ``file`` that names a job's file, else ``(None, file)``.

    A job's file is named ``job:<id>/<path>``, or by its absolute path inside the jobs folder (the
    target of a link in a result file).
    """
    if file.startswith(JOB_FILE_PREFIX):
        job_id, _, relative = file[len(JOB_FILE_PREFIX):].partition("/")
        if not job_id or not relative:
            raise HTTPException(400, f"{file!r}: a job's file is named job:<job id>/<path in its output folder>")
        return job_id, relative
    path = Path(file)
    if path.is_absolute() and path.resolve().is_relative_to(settings.jobs_dir):
        parts = path.resolve().relative_to(settings.jobs_dir).parts
        if len(parts) < 2:
            raise PathNotAllowed(f"{file} is not a file of a job")
        return parts[0], "/".join(parts[1:])
    return None, file
