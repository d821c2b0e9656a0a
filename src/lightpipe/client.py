"""A small Python client of the lightpipe service, for scripts and notebooks: the same API as the web UI.

Example
-------
>>> from lightpipe.client import Client
>>> with Client("http://beamline-server:8000", token) as lp:  # doctest: +SKIP
...     job = lp.submit("powder-profile", dataset="visit1/scan_master.h5", overrides={"photons.threshold": 5})
...     job = lp.wait(job["id"])
...     total = lp.output(job["id"], "scan", "scalars.total")
...     lp.download(job["id"], "scan.nxs", "results/")

The server and token may also come from ``LIGHTPIPE_SERVER`` and
``LIGHTPIPE_TOKEN``. Every error the service answers is raised as
:class:`ServiceError` with its status and the service's message.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lightpipe.core.errors import LightpipeError

SERVER_ENV = "LIGHTPIPE_SERVER"
TOKEN_ENV = "LIGHTPIPE_TOKEN"
DEFAULT_SERVER = "http://127.0.0.1:8000"
#: States a job ends in.
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "interrupted"})


class ServiceError(LightpipeError):
    """An error answer of the service (``status``: its HTTP status), or a service that cannot be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """Talks to a lightpipe service.

    Parameters
    ----------
    server
        Its URL; default ``$LIGHTPIPE_SERVER`` or ``http://127.0.0.1:8000``.
    token
        A token (``lightpipe token create``); default ``$LIGHTPIPE_TOKEN``.
    timeout_s
        Seconds to wait for each answer.
    """

    def __init__(self, server: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.server = (server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise ServiceError(f"no token: pass one, or set {TOKEN_ENV}; an admin makes one with "
                               "`lightpipe token create`")
        self._http = httpx.Client(base_url=f"{self.server}/api/v1", timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {token}"})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the lightpipe service at {self.server}: {exc}; is `lightpipe serve` "
                               "running there?") from None
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(f"{response.status_code}: {detail}", response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- pipelines -------------------------------------------------------------------------
    def pipelines(self) -> list[dict[str, Any]]:
        """The registered templates (newest version of each)."""
        return self._json("GET", "/pipelines")  # type: ignore[no-any-return]

    def pipeline(self, name: str) -> dict[str, Any]:
        """A template with its YAML, versions and parameter schema."""
        return self._json("GET", f"/pipelines/{name}")  # type: ignore[no-any-return]

    def register_pipeline(self, yaml_text: str, new_version_of: str | None = None) -> dict[str, Any]:
        """Register a template (admin), or a new version of ``new_version_of``."""
        path = f"/pipelines/{new_version_of}/versions" if new_version_of else "/pipelines"
        return self._json("POST", path, json={"yaml": yaml_text})  # type: ignore[no-any-return]

    # -- datasets --------------------------------------------------------------------------
    def datasets(self, path: str = "") -> list[dict[str, Any]]:
        """What a folder of the data root holds."""
        return self._json("GET", "/datasets", params={"path": path})["entries"]  # type: ignore[no-any-return]

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, pipeline: str, dataset: str | None = None, overrides: dict[str, Any] | None = None,
               version: int | None = None, stream: str | None = None) -> dict[str, Any]:
        """Submit ``pipeline`` for ``dataset`` (relative to the data root) or a live ``stream``; returns the job."""
        body = {"pipeline": pipeline, "dataset": dataset, "stream": stream, "overrides": overrides or {},
                "version": version}
        return self._json("POST", "/jobs", json=body)  # type: ignore[no-any-return]

    def jobs(self, state: str | None = None, pipeline: str | None = None, limit: int = 50,
             offset: int = 0) -> dict[str, Any]:
        """A page of jobs, newest first: ``items``, ``total``."""
        params = {k: v for k, v in {"state": state, "pipeline": pipeline, "limit": limit, "offset": offset}.items()
                  if v is not None}
        return self._json("GET", "/jobs", params=params)  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's state, progress, exact YAML and package versions."""
        return self._json("GET", f"/jobs/{job_id}")  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Wait for a job to end; returns it. Raises :class:`ServiceError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise ServiceError(f"job {job_id} is still {job['state']} after {timeout_s:g} s")
            time.sleep(poll_s)

    def cancel(self, job_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel a job (its current scan is aborted)."""
        return self._json("POST", f"/jobs/{job_id}/cancel", json={"reason": reason})  # type: ignore[no-any-return]

    def abort(self, job_id: str, reason: str = "") -> dict[str, Any]:
        """Abort the current scan of a running job."""
        return self._json("POST", f"/jobs/{job_id}/abort", json={"reason": reason})  # type: ignore[no-any-return]

    def log(self, job_id: str, after: int = 0, component: str | None = None) -> dict[str, Any]:
        """Lines of a job's log after id ``after``: ``lines``, ``next``."""
        params: dict[str, Any] = {"after": after}
        if component:
            params["component"] = component
        return self._json("GET", f"/jobs/{job_id}/log", params=params)  # type: ignore[no-any-return]

    # -- results ---------------------------------------------------------------------------
    def scans(self, job_id: str) -> list[dict[str, Any]]:
        """A job's scans, with their states and files."""
        return self._json("GET", f"/jobs/{job_id}/scans")  # type: ignore[no-any-return]

    def files(self, job_id: str) -> list[dict[str, Any]]:
        """A job's files."""
        return self._json("GET", f"/jobs/{job_id}/files")  # type: ignore[no-any-return]

    def download(self, job_id: str, path: str, to: str | Path = ".") -> Path:
        """Download file ``path`` of a job into the folder ``to``; returns where it went."""
        target = Path(to) / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._http.stream("GET", f"/jobs/{job_id}/files/{path}") as response:
            if response.is_error:
                response.read()
                raise ServiceError(f"{response.status_code}: {response.json().get('detail', response.text)}",
                                   response.status_code)
            with open(target, "wb") as f:
                for block in response.iter_bytes():
                    f.write(block)
        return target

    def output(self, job_id: str, scan: str, field: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Output ``field`` (``stage.name``) of a scan as an array; rows not written are NaN."""
        params: dict[str, Any] = {"start": start} if stop is None else {"start": start, "stop": stop}
        answer = self._json("GET", f"/jobs/{job_id}/scans/{scan}/outputs/{field}", params=params)
        data = answer["data"]
        if answer["dtype"].startswith("float"):
            return np.array(data, dtype=np.float64 if answer["dtype"] == "float64" else np.float32)
        return np.array(data, dtype=answer["dtype"])

    def failed(self, job_id: str, scan: str | None = None) -> list[dict[str, Any]]:
        """A job's failed events (the first thousand)."""
        params: dict[str, Any] = {"limit": 1000}
        if scan is not None:
            params["scan"] = scan
        return self._json("GET", f"/jobs/{job_id}/failed", params=params)["items"]  # type: ignore[no-any-return]
