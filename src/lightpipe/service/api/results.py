"""Results of a job: its files (download), the scalar and table outputs of a scan (JSON), its failed events."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from sqlalchemy import func, select

from lightpipe.service.api.deps import Db, Parts, readable_job
from lightpipe.service.auth import CurrentUser
from lightpipe.service.db.models import FailedEventRecord, Job, ScanRecord

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])

#: Groups of a NeXus result that hold bookkeeping, not outputs (``/entry/events`` is the per-row status).
NOT_OUTPUTS = frozenset({"process", "failed_events"})
RESULT_SUFFIXES = (".nxs", ".h5", ".cxi")


def job_file(job: Job, relative: str) -> Path:
    """A file in the job's output folder (403 outside it, 404 if missing)."""
    root = Path(job.output_dir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(403, f"{relative!r} is outside the job's output folder")
    if not path.is_file():
        raise HTTPException(404, f"job {job.id} has no file {relative!r}; GET /api/v1/jobs/{job.id}/files lists them")
    return path


@router.get("/files", summary="The job's files: result files, partial ones while a scan runs, the job's log")
def files(job_id: str, session: Db, user: CurrentUser) -> list[dict[str, Any]]:
    job = readable_job(session, user, job_id)
    root = Path(job.output_dir)
    scan_of = {f: s.name for s in session.scalars(select(ScanRecord).where(ScanRecord.job_id == job_id))
               for f in s.files}
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
        relative = path.relative_to(root).as_posix()
        stat = path.stat()
        found.append({"path": relative, "bytes": stat.st_size, "modified": stat.st_mtime,
                      "scan": scan_of.get(relative), "partial": path.name.endswith(".partial"),
                      "viewer": f"job:{job_id}/{relative}"})
    return found


@router.get("/files/{path:path}", summary="Download one of the job's files")
def download(job_id: str, path: str, session: Db, user: CurrentUser) -> FileResponse:
    job = readable_job(session, user, job_id)
    target = job_file(job, path)
    return FileResponse(target, filename=target.name, media_type="application/octet-stream")


def _result_files(session: Db, job: Job, scan: str) -> list[Path]:
    record = session.scalar(select(ScanRecord).where(ScanRecord.job_id == job.id, ScanRecord.name == scan))
    if record is None:
        names = session.scalars(select(ScanRecord.name).where(ScanRecord.job_id == job.id)).all()
        raise HTTPException(404, f"job {job.id} has no scan {scan!r}; its scans: {', '.join(names) or 'none yet'}")
    if not record.files:
        raise HTTPException(409, f"scan {scan!r} of job {job.id} has no result file yet ({record.state})")
    return [job_file(job, f) for f in record.files if f.endswith(RESULT_SUFFIXES)]


@router.get("/scans/{scan}/outputs", summary="The outputs in a scan's result files: field, shape, dtype, unit")
def outputs(job_id: str, scan: str, session: Db, user: CurrentUser) -> list[dict[str, Any]]:
    import h5py

    job = readable_job(session, user, job_id)
    found = []
    for path in _result_files(session, job, scan):
        with h5py.File(path, "r", locking=False) as f:
            entry = f.get("entry")
            for group in (entry.values() if isinstance(entry, h5py.Group) else []):
                if not isinstance(group, h5py.Group) or group.name.rsplit("/", 1)[1] in NOT_OUTPUTS:
                    continue
                for name, item in group.items():
                    if isinstance(item, h5py.Dataset) and item.dtype.kind in "biuf":
                        found.append({"field": f"{group.name.rsplit('/', 1)[1]}.{name}", "shape": list(item.shape),
                                      "dtype": str(item.dtype), "unit": _text(item.attrs.get("units")),
                                      "file": path.name})
    return found


@router.get("/scans/{scan}/outputs/{field}", summary="One output of a scan as JSON (a scalar, 1-D or 2-D array)")
def output(job_id: str, scan: str, field: str, session: Db, parts: Parts, user: CurrentUser,
           start: int = Query(0, ge=0, description="First row"),
           stop: int | None = Query(None, ge=0, description="Row after the last; default the end")) -> dict[str, Any]:
    import h5py

    job = readable_job(session, user, job_id)
    group, dot, name = field.partition(".")
    if not dot or not group or not name or "/" in field:
        raise HTTPException(400, f"output {field!r}: name it stage.field, e.g. scalars.total")
    for path in _result_files(session, job, scan):
        with h5py.File(path, "r", locking=False) as f:
            item = f.get(f"entry/{group}/{name}")
            if not isinstance(item, h5py.Dataset):
                continue
            if item.ndim > 2 or item.dtype.kind not in "biuf":
                raise HTTPException(422, f"{field} is {item.ndim}-D {item.dtype}: only numbers up to 2-D come as "
                                         "JSON; download the file or open it in the viewer")
            rows = slice(start, stop)
            shape = (len(range(*rows.indices(item.shape[0]))), *item.shape[1:]) if item.ndim else ()
            size = math.prod(shape)
            if size > parts.settings.max_output_elements:
                raise HTTPException(400, f"{field} has {size} values here, more than {parts.settings.max_output_elements}"
                                         " the service returns at once; ask for fewer rows (start, stop) or open the "
                                         "file in the viewer")
            data = np.asarray(item[rows] if item.ndim else item[()])
            return {"field": field, "scan": scan, "shape": list(data.shape), "dtype": str(data.dtype),
                    "unit": _text(item.attrs.get("units")), "start": start if item.ndim else None,
                    "data": _jsonable(data)}
    raise HTTPException(404, f"scan {scan!r} of job {job_id} has no output {field!r}; "
                             f"GET /api/v1/jobs/{job_id}/scans/{scan}/outputs lists them")


def _jsonable(data: np.ndarray) -> Any:
    """Numbers as JSON: NaN and infinities (rows not written) become ``null``."""
    if data.dtype.kind == "f":
        values = data.astype(object)
        values[~np.isfinite(data)] = None
        return values.tolist()
    return data.tolist()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@router.get("/failed", summary="The job's failed events: scan, index, stream, stage and message")
def failed(job_id: str, session: Db, user: CurrentUser, scan: str | None = Query(None, max_length=200),
           limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    readable_job(session, user, job_id)
    query = select(FailedEventRecord).where(FailedEventRecord.job_id == job_id)
    if scan is not None:
        query = query.where(FailedEventRecord.scan == scan)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(FailedEventRecord.scan, FailedEventRecord.event_index)
                           .limit(limit).offset(offset)).all()
    return {"items": [{"scan": r.scan, "index": r.event_index, "stream": r.stream, "stage": r.stage,
                       "message": r.message} for r in rows], "total": total, "limit": limit, "offset": offset}
