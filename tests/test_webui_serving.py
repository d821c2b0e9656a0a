"""The service serves the web UI's bundle at ``/`` (pages of the one-page app answer ``index.html``, assets are cached
for good, API paths stay API paths), and ``serve --demo`` adds a live job on a simulated detector stream."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from lightpipe.service.demo import LIVE_TEMPLATE, DemoStream, prepare_demo
from lightpipe.service.settings import ServiceSettings
from lightpipe.service.webui import WEB_DIR, install_web_ui
from service_harness import RunningService

REPO = Path(__file__).parents[1]
needs_bundle = pytest.mark.skipif(not (WEB_DIR / "index.html").is_file(),
                                  reason="the web UI bundle is not built (npm ci && npm run build in web/)")


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[RunningService]:
    running = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=tmp_path / "data"))
    try:
        yield running
    finally:
        running.close()


@needs_bundle
def test_pages_answer_the_app_and_assets_are_cached_for_good(service: RunningService) -> None:
    index = (WEB_DIR / "index.html").read_text()
    asset = next(p.name for p in (WEB_DIR / "assets").iterdir() if p.suffix == ".js")
    with httpx.Client(base_url=service.url) as c:
        for page in ("/", "/jobs/3f9c0a1b2c4d", "/view?file=visit1/scan_master.h5", "/admin"):
            r = c.get(page)
            assert r.status_code == 200 and r.text == index, page
            assert r.headers["cache-control"] == "no-cache"  # a new bundle is seen at once
        r = c.get(f"/assets/{asset}")
        assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
        assert r.content == (WEB_DIR / "assets" / asset).read_bytes()
        # the service's own paths stay its own: a sentence, not the app
        r = c.get("/api/v1/no-such-route")
        assert r.status_code == 404 and "/docs" in r.json()["detail"]
        assert c.get("/api/v1/jobs").status_code == 401
        assert "swagger" in c.get("/docs").text.lower()
        # nothing of the package beside the bundle is served, however the path climbs
        for climbing in ("/%2e%2e/app.py", "/assets/%2e%2e/%2e%2e/app.py", "/..%2Fapp.py"):
            r = c.get(climbing)
            assert "create_app" not in r.text and r.status_code in (200, 404), climbing


def test_without_a_bundle_the_root_says_how_to_build_it(tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/api/v1/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    install_web_ui(app, tmp_path)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            return await client.get("/"), await client.get("/api/v1/health")

    root, health = asyncio.run(ask())
    assert root.status_code == 503 and "npm run build" in root.text
    assert health.json() == {"ok": True}


def test_the_demo_adds_a_live_job_on_its_stream_once(tmp_path: Path) -> None:
    with DemoStream(rate_hz=20.0, frames=40) as stream:
        running = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=tmp_path / "data",
                                                 live_streams=[stream.url]))
        try:
            parts = running.app.state.service
            assert prepare_demo(parts, stream.url) is not None
            assert prepare_demo(parts, stream.url) is None  # a second start adds nothing
            with running.client(running.admin) as c:
                live = c.get("/jobs", params={"pipeline": LIVE_TEMPLATE}).json()["items"]
                assert [j["dataset"] for j in live] == [stream.url]
                assert c.get("/me").json()["live_streams"] == [stream.url]
                deadline = time.monotonic() + 60
                while c.get(f"/jobs/{live[0]['id']}").json()["progress"]["written"] == 0:
                    assert time.monotonic() < deadline, "the live job got no frame from the demo stream"
                    time.sleep(0.2)
                assert c.post(f"/jobs/{live[0]['id']}/cancel").status_code == 200
                final = running.wait(running.admin, live[0]["id"])
                assert final["state"] == "cancelled"
                scans = c.get(f"/jobs/{live[0]['id']}/scans").json()
                assert scans and scans[0]["written"] > 0
        finally:
            running.close()


@needs_bundle
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file() or importlib.util.find_spec("playwright") is None,
                    reason="needs Debian's chromium and playwright (test extra)")
def test_the_ui_live_benchmark_runs() -> None:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ui_live.py"), "--quick", "--json"],
                         capture_output=True, text=True, timeout=180, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["images_shown_per_s"] > 0 and figures["delay_p99_s"] > 0
    assert 0 < figures["main_gzip_bytes"] < figures["main_bytes"] < figures["viewer_bytes"]
