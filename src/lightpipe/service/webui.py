"""The web UI's files, served by the service at ``/``: the bundle that ``npm run build`` in ``web/`` writes here.

The bundle (``lightpipe/service/web/``: ``index.html`` and ``assets/``) is
committed inside the package, so ``pip install`` users never need node. Its
asset names carry a hash of their content, so browsers may keep them for good;
``index.html`` is asked for again each time, so a new bundle is seen at once.
Every other path that is no route of the API answers ``index.html`` too: the
UI's pages (``/jobs/3f9c...``) are paths of one page app, and a reload or a
shared link must open them. Paths under ``/api/`` never do: an unknown API
path stays a 404 with a sentence.
"""
from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles

log = logging.getLogger(__name__)

#: Where the built bundle lives in the installed package.
WEB_DIR = Path(str(files("lightpipe.service") / "web"))
#: Path prefixes that belong to the service, never to the UI.
SERVICE_PREFIXES = ("api/", "docs", "redoc", "openapi.json", "metrics")


class HashedAssets(StaticFiles):
    """Static files whose names change with their content: cached by browsers for a year."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def install_web_ui(app: FastAPI, folder: Path = WEB_DIR) -> None:
    """Serve the UI in ``folder`` at ``/`` (call after every other route: it answers what they do not).

    Without a bundle (a source checkout where nobody ran ``npm run build``), ``/``
    says how to build one and the API works as before.
    """
    index = folder / "index.html"
    if not index.is_file():
        log.warning("no web UI bundle in %s; build it with `npm ci && npm run build` in web/", folder)

        @app.get("/", include_in_schema=False)
        def no_bundle() -> HTMLResponse:
            return HTMLResponse("<p>The web UI is not built in this installation: run <code>npm ci && npm run build"
                                "</code> in <code>web/</code> of lightpipe's source. The API is at <a href='/docs'>"
                                "/docs</a>.</p>", status_code=503)
        return

    app.mount("/assets", HashedAssets(directory=folder / "assets"), name="web-assets")
    page = index.read_text()
    root = folder.resolve()

    @app.get("/{path:path}", include_in_schema=False)
    def web_ui(path: str) -> Response:
        if path.startswith(SERVICE_PREFIXES):
            raise HTTPException(404, f"no route /{path}; the API's routes are listed at /docs")
        if path:
            target = (root / path).resolve()
            if target.is_relative_to(root) and target.is_file():
                return FileResponse(target)
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
