"""``/api/v1/topology`` and per-job topology and chunk records: what runs where, and the weather plot's marks."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from lightpipe.service.api.deps import Db, Parts, readable_job
from lightpipe.service.api.jobs import job_json
from lightpipe.service.auth import CurrentUser
from lightpipe.service.db.models import ChunkRecord, Job

router = APIRouter(tags=["topology"])

#: Most chunk records one request returns.
MAX_CHUNKS = 50_000


def _topology(parts: Parts, job: Job) -> dict[str, Any]:
    """A running job's progress from the database, and its components from its control channel."""
    status = parts.runner.status(job)
    return {**job_json(job), "reachable": status is not None,
            "components": status.get("components", []) if status else [],
            "scans": status.get("scans", []) if status else [],
            "current_scan": status.get("scan") if status else None}


@router.get("/topology", summary="Every running job (yours; all for an admin): components, workers, heartbeats, "
                                 "buffer fill and rates")
def topology(session: Db, parts: Parts, user: CurrentUser) -> dict[str, Any]:
    query = select(Job).where(Job.state == "running")
    if not user.is_admin:
        query = query.where(Job.owner_id == user.user_id)
    return {"jobs": [_topology(parts, job) for job in session.scalars(query.order_by(Job.started))]}


@router.get("/jobs/{job_id}/topology", summary="One job's components (when it runs) and progress")
def job_topology(job_id: str, session: Db, parts: Parts, user: CurrentUser) -> dict[str, Any]:
    return _topology(parts, readable_job(session, user, job_id))


@router.get("/jobs/{job_id}/chunks", summary="Per-worker record of every chunk: the computational weather plot")
def chunks(job_id: str, session: Db, user: CurrentUser,
           after: int = Query(0, ge=0, description="Only records after this id (the last `next` you got)"),
           limit: int = Query(5000, ge=1, le=MAX_CHUNKS)) -> dict[str, Any]:
    readable_job(session, user, job_id)
    rows = session.scalars(select(ChunkRecord).where(ChunkRecord.job_id == job_id, ChunkRecord.id > after)
                           .order_by(ChunkRecord.id).limit(limit)).all()
    return {"items": [{"id": r.id, "scan": r.scan, "pass": r.pass_number, "worker": r.worker, "start": r.start,
                       "stop": r.stop, "started": r.started, "finished": r.finished, "failed": r.failed,
                       "stages": r.stage_seconds} for r in rows],
            "next": rows[-1].id if rows else after}
