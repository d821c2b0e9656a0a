"""``/api/v1/datasets``: browse the data root and see what a source finds in a dataset, within the token's folders."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from lightpipe.service.api.deps import Parts
from lightpipe.service.auth import CurrentUser

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("", summary="List a folder of the data root: folders, HDF5/NeXus files, image series, master files")
async def browse(parts: Parts, user: CurrentUser,
                 path: str = Query("", max_length=4096, description="Folder relative to the data root")
                 ) -> dict[str, Any]:
    entries = await run_in_threadpool(parts.data.browse, path, user.folders)
    return {"path": path, "entries": entries}


@router.get("/describe", summary="The source that reads a dataset, and the scans and metadata it finds")
async def describe(parts: Parts, user: CurrentUser,
                   path: str = Query(..., max_length=4096, description="Dataset relative to the data root")
                   ) -> dict[str, Any]:
    return await run_in_threadpool(parts.data.describe, path, user.folders)
