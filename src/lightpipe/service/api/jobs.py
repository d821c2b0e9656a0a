"""``/api/v1/jobs``: submit a template for a dataset or a live stream; list, read, cancel, abort; logs and scans."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lightpipe.service.api.deps import Db, Parts, Service, readable_job
from lightpipe.service.api.pipelines import latest
from lightpipe.service.auth import CurrentUser, Principal
from lightpipe.service.db.models import JOB_STATES, Job, LogLine, PipelineTemplate, ScanRecord, User
from lightpipe.service.templates import check_template, job_document

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: Most jobs, log lines a page holds.
MAX_PAGE = 1000
LIVE_SCHEMES = {"eiger": "v1", "eiger2": "v2"}


class Submit(BaseModel):
    """A job to run: a template, a dataset (or a live stream) and parameter changes."""

    pipeline: str = Field(min_length=1, max_length=200, description="Template name")
    version: int | None = Field(None, ge=1, description="Template version; default the newest")
    dataset: str | None = Field(None, max_length=4096,
                                description="File, folder or glob relative to the data root")
    stream: str | None = Field(None, max_length=300,
                               description="A live detector instead of a dataset: eiger://HOST:PORT (stream v1) "
                                           "or eiger2://HOST:PORT (v2); one scan per series until cancelled")
    overrides: dict[str, Any] = Field(default_factory=dict, max_length=200,
                                      description='Parameter changes, {"stage.param": value}')


class Reason(BaseModel):
    """Why a job is cancelled or its scan aborted (recorded in the log and the result file)."""

    reason: str = Field("", max_length=500)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_json(job: Job, full: bool = False) -> dict[str, Any]:
    """A job as the API shows it; ``full`` adds the exact YAML, package versions and engine."""
    now = datetime.now(timezone.utc)
    out: dict[str, Any] = {
        "id": job.id, "owner": job.owner.name, "pipeline": job.pipeline, "version": job.pipeline_version,
        "dataset": job.dataset, "overrides": job.overrides, "state": job.state, "error": job.error,
        "cancel_requested": job.cancel_requested, "created": _iso(job.created), "started": _iso(job.started),
        "finished": _iso(job.finished), "updated": _iso(job.updated),
        "heartbeat_age_s": (now - job.updated).total_seconds() if job.updated and job.state == "running" else None,
        "progress": {"scan": job.scan, "received": job.received, "written": job.written, "failed": job.failed,
                     "in_flight": job.in_flight, "total": job.total, "rate": job.rate, "lag_s": job.lag_s,
                     "buffer_fill": job.buffer_fill},
    }
    if full:
        out.update(yaml=job.yaml, packages=job.packages, engine=job.engine, pid=job.pid, host=job.host)
    return out


def _live_source(url: str, template_source: dict[str, Any]) -> dict[str, Any]:
    scheme, sep, address = url.partition("://")
    host, colon, port = address.rpartition(":")
    if not sep or scheme not in LIVE_SCHEMES or not colon or not host or not port.isdigit():
        raise HTTPException(400, f"stream {url!r}: write eiger://HOST:PORT (stream v1) or eiger2://HOST:PORT (v2)")
    keep = template_source.get("params", {}) if template_source.get("use") == "eiger" else {}
    return {"use": "eiger", "params": {**keep, "endpoint": f"tcp://{address}", "version": LIVE_SCHEMES[scheme]}}


def create_job(session: Session, parts: Service, user: Principal, body: Submit) -> Job:
    """Check a submission and add its job, queued, to ``session`` (the caller commits and wakes the runner).

    Raises ``HTTPException`` or lightpipe's errors, which the error handlers turn into 400, 403, 404, 409 or 422.
    """
    if (body.dataset is None) == (body.stream is None):
        raise HTTPException(400, "give a dataset (a path in the data root) or a stream (eiger://HOST:PORT), one of them")
    if body.version is None:
        template = latest(session, body.pipeline)
    else:
        found = session.scalar(select(PipelineTemplate).where(PipelineTemplate.name == body.pipeline,
                                                              PipelineTemplate.version == body.version))
        if found is None:
            raise HTTPException(404, f"template {body.pipeline!r} has no version {body.version}")
        template = found
    if template.retired:
        raise HTTPException(409, f"template {template.name!r} is retired; an admin registers a new version to use it")
    if body.dataset is not None:
        path = parts.data.resolve(body.dataset, user.folders)
        pipeline, text = job_document(template.yaml, body.overrides, dataset=path)
    else:
        assert body.stream is not None
        if not user.is_admin and body.stream not in parts.settings.live_streams:
            allowed = ", ".join(parts.settings.live_streams) or "none"
            raise HTTPException(403, f"stream {body.stream!r} is not one this service lets users start jobs on "
                                     f"(setting live_streams: {allowed}); ask an admin")
        source = _live_source(body.stream, dict(check_template(template.yaml).document["source"]))
        pipeline, text = job_document(template.yaml, body.overrides, live=source)
    job_id = uuid.uuid4().hex[:12]
    job = Job(id=job_id, owner_id=user.user_id, template_id=template.id, pipeline=template.name,
              pipeline_version=template.version, dataset=body.dataset or body.stream or "", overrides=body.overrides,
              yaml=text, engine=parts.settings.engine_spec(), packages={},
              output_dir=str(parts.settings.jobs_dir / job_id), state="queued", error="", cancel_requested=False,
              host="", control_endpoint="", scan="", received=0, written=0, failed=0, in_flight=0, total=0,
              rate=0.0, lag_s=0.0, buffer_fill=0.0)
    session.add(job)
    session.add(LogLine(job_id=job_id, component="service", level="info",
                        message=f"{user.user} submitted {template.name} v{template.version} for {job.dataset} "
                                f"({len(pipeline.stages)} stages)"))
    return job


@router.post("", status_code=201, summary="Submit a job: a template for a dataset or a live stream")
def submit(body: Submit, session: Db, parts: Parts, user: CurrentUser) -> dict[str, Any]:
    job = create_job(session, parts, user, body)
    session.commit()
    parts.runner.wake()
    return job_json(job, full=True)


@router.get("", summary="List jobs, newest first (yours; every user's for an admin)")
def list_jobs(session: Db, user: CurrentUser,
              state: str | None = Query(None, description=f"One of {', '.join(JOB_STATES)}"),
              pipeline: str | None = Query(None, max_length=200),
              owner: str | None = Query(None, max_length=200, description="A user's name (admins)"),
              limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    if state is not None and state not in JOB_STATES:
        raise HTTPException(422, f"state {state!r}: use one of {', '.join(JOB_STATES)}")
    query = select(Job)
    if not user.is_admin:
        if owner is not None and owner != user.user:
            raise HTTPException(403, "only admins list other users' jobs")
        query = query.where(Job.owner_id == user.user_id)
    elif owner is not None:
        query = query.join(User, Job.owner_id == User.id).where(User.name == owner)
    if state is not None:
        query = query.where(Job.state == state)
    if pipeline is not None:
        query = query.where(Job.pipeline == pipeline)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    jobs = session.scalars(query.order_by(Job.created.desc(), Job.id).limit(limit).offset(offset)).all()
    return {"items": [job_json(j) for j in jobs], "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", summary="A job: state, progress, the exact YAML and package versions")
def get_job(job_id: str, session: Db, user: CurrentUser) -> dict[str, Any]:
    return job_json(readable_job(session, user, job_id), full=True)


@router.post("/{job_id}/cancel", summary="Cancel a job: a queued one at once; a running one is stopped (its current scan aborted, no other started)")
def cancel(job_id: str, session: Db, parts: Parts, user: CurrentUser, body: Reason | None = None) -> dict[str, Any]:
    readable_job(session, user, job_id)
    session.close()  # the runner changes the job in a transaction of its own
    state = parts.runner.cancel(job_id, body.reason if body else "")
    return {"id": job_id, "state": state, "cancel_requested": True}


@router.post("/{job_id}/abort", summary="Abort the current scan of a running job (the job goes on to its next scan)")
def abort(job_id: str, session: Db, parts: Parts, user: CurrentUser, body: Reason | None = None) -> dict[str, Any]:
    job = readable_job(session, user, job_id)
    reason = (body.reason if body else "") or f"aborted by {user.user} through the service"
    scan = parts.runner.abort(job, reason)
    session.add(LogLine(job_id=job_id, component="service", level="warning", message=f"scan {scan} aborted: {reason}"))
    session.commit()
    return {"id": job_id, "scan": scan}


@router.get("/{job_id}/log", summary="The job's log, oldest first, per component and level")
def job_log(job_id: str, session: Db, user: CurrentUser,
            component: str | None = Query(None, max_length=200), level: str | None = Query(None, max_length=16),
            after: int = Query(0, ge=0, description="Only lines after this id (the last `next` you got)"),
            limit: int = Query(500, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
    readable_job(session, user, job_id)
    query = select(LogLine).where(LogLine.job_id == job_id, LogLine.id > after)
    if component is not None:
        query = query.where(LogLine.component == component)
    if level is not None:
        query = query.where(LogLine.level == level.lower())
    lines = session.scalars(query.order_by(LogLine.id).limit(limit)).all()
    components = session.scalars(select(LogLine.component).where(LogLine.job_id == job_id).distinct()).all()
    return {"lines": [{"id": x.id, "time": x.time.isoformat(), "component": x.component, "level": x.level,
                       "message": x.message} for x in lines],
            "next": lines[-1].id if lines else after, "components": sorted(components)}


@router.get("/{job_id}/scans", summary="The job's scans: state, counts and result files")
def scans(job_id: str, session: Db, user: CurrentUser) -> list[dict[str, Any]]:
    readable_job(session, user, job_id)
    records = session.scalars(select(ScanRecord).where(ScanRecord.job_id == job_id).order_by(ScanRecord.id)).all()
    return [scan_json(s) for s in records]


def scan_json(s: ScanRecord) -> dict[str, Any]:
    return {"name": s.name, "state": s.state, "error": s.error, "received": s.received, "written": s.written,
            "failed": s.failed, "files": list(s.files), "started": _iso(s.started), "finished": _iso(s.finished),
            "seconds": s.seconds}
