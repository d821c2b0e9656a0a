"""What the routers share: a database session per request, the service's parts, and who may read a job."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from lightpipe.service.auth import Principal
from lightpipe.service.db.models import Job
from lightpipe.service.jobs import JobRunner
from lightpipe.service.paths import DataRoot
from lightpipe.service.settings import ServiceSettings


@dataclass
class Service:
    """The parts of a running service that the routes use (``app.state.service``)."""

    settings: ServiceSettings
    sessions: sessionmaker[Session]
    data: DataRoot
    runner: JobRunner


def service(request: Request) -> Service:
    """FastAPI dependency: the running service's parts."""
    return request.app.state.service  # type: ignore[no-any-return]


def db_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: a session for the request; a route that changes something commits it."""
    with request.app.state.sessions() as session:
        yield session


Db = Annotated[Session, Depends(db_session)]
Parts = Annotated[Service, Depends(service)]


def readable_job(session: Session, principal: Principal, job_id: str) -> Job:
    """The job ``job_id`` if ``principal`` may read it: its owner or an admin (404 if none, 403 if another's)."""
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}; `lightpipe jobs` or GET /api/v1/jobs lists yours")
    if not principal.is_admin and job.owner_id != principal.user_id:
        raise HTTPException(403, f"job {job_id} belongs to another user; only its owner and admins may see it")
    return job
