"""Prometheus metrics: request latency by route template, job gauges, event counters, in the text format.

The job series read from a real job's database rows are tested in ``test_service_jobs.py``.
"""
from __future__ import annotations

import anyio
import httpx
from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from lightpipe.service.metrics import JobProgress, JobsSnapshot, install_metrics


def make_app(jobs: list[JobsSnapshot]) -> FastAPI:
    """An app whose scrapes report ``jobs[-1]`` (a test appends what the jobs do next)."""
    app = FastAPI()

    @app.get("/api/v1/jobs/{job_id}")
    def job(job_id: str) -> dict[str, str]:
        if job_id == "missing":
            raise HTTPException(404, "no such job")
        return {"id": job_id}

    @app.get("/api/v1/crash")
    def crash() -> None:
        raise RuntimeError("a bug")

    scans = APIRouter(prefix="/jobs/{job_id}/scans")  # a router included with a prefix, as the service's are

    @scans.get("/{scan}")
    def scan(job_id: str, scan: str) -> dict[str, str]:
        return {"scan": scan}

    app.include_router(scans, prefix="/api/v1")

    install_metrics(app, jobs=lambda: jobs[-1])
    return app


def fetch(app: FastAPI, *paths: str) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(p) for p in paths]

    return anyio.run(go)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(app: FastAPI) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    [response] = fetch(app, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


def test_requests_are_counted_and_timed_by_route_template() -> None:
    app = make_app([JobsSnapshot()])
    before = scrape(app)
    responses = fetch(app, "/api/v1/jobs/a", "/api/v1/jobs/b", "/api/v1/jobs/missing", "/nowhere", "/api/v1/crash",
                      "/api/v1/jobs/a/scans/scans", "/api/v1/jobs/jobs/scans/x")
    assert [r.status_code for r in responses] == [200, 200, 404, 404, 500, 200, 200]
    after = scrape(app)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/api/v1/jobs/{job_id}"  # the template, never /api/v1/jobs/a: one series per route
    assert grew("lightpipe_http_requests_total", method="GET", route=route, status="200") == 2
    assert grew("lightpipe_http_requests_total", method="GET", route=route, status="404") == 1
    assert grew("lightpipe_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert grew("lightpipe_http_requests_total", method="GET", route="/api/v1/crash", status="500") == 1
    # the included router's prefix is part of the template, whatever the path's values look like
    assert grew("lightpipe_http_requests_total", method="GET", route="/api/v1/jobs/{job_id}/scans/{scan}",
                status="200") == 2
    assert grew("lightpipe_http_request_duration_seconds_count", method="GET", route=route) == 3
    assert grew("lightpipe_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf") == 3
    assert grew("lightpipe_http_request_duration_seconds_sum", method="GET", route=route) > 0
    assert not any("/api/v1/jobs/a" in str(labels) for _, labels in after)


def test_jobs_are_asked_at_each_scrape() -> None:
    jobs = [JobsSnapshot(states={"running": 2, "completed": 5}, written_total=1000, failed_total=4, running=(
        JobProgress("job-7", "powder-profile", received=120, written=100, failed=2, in_flight=18, rate=50.0,
                    lag_s=0.5, buffer_fill=0.25),
        JobProgress("job-8", "beam-spot", written=10)))]
    app = make_app(jobs)
    first = scrape(app)
    assert first[("lightpipe_jobs", (("state", "running"),))] == 2
    assert first[("lightpipe_jobs", (("state", "completed"),))] == 5
    job = (("job", "job-7"), ("pipeline", "powder-profile"))
    assert [first[(f"lightpipe_job_{name}", job)] for name in (
        "events_received", "events_written", "events_failed", "events_in_flight", "events_per_second",
        "lag_seconds", "buffer_fill")] == [120, 100, 2, 18, 50.0, 0.5, 0.25]
    assert first[("lightpipe_job_events_written", (("job", "job-8"), ("pipeline", "beam-spot")))] == 10
    assert first[("lightpipe_events_written_total", ())] == 1000 and first[("lightpipe_events_failed_total", ())] == 4
    jobs.append(JobsSnapshot(states={"completed": 7}, written_total=1300, failed_total=4))  # both jobs ended
    second = scrape(app)
    assert second[("lightpipe_jobs", (("state", "completed"),))] == 7
    assert ("lightpipe_jobs", (("state", "running"),)) not in second
    assert not any(dict(labels).get("job") for _, labels in second)  # an ended job's series are gone
    assert second[("lightpipe_events_written_total", ())] == 1300


def test_metrics_can_want_a_token() -> None:
    def token(authorization: str = "") -> None:
        raise HTTPException(401, "a token is needed")

    app = FastAPI()
    install_metrics(app, dependencies=[token])
    [response] = fetch(app, "/metrics")
    assert response.status_code == 401
    assert "/metrics" not in app.openapi()["paths"]


def test_the_scrape_is_the_text_format() -> None:
    [response] = fetch(make_app([JobsSnapshot()]), "/metrics")
    assert "# TYPE lightpipe_http_request_duration_seconds histogram" in response.text
    assert "# HELP lightpipe_jobs Jobs in each state" in response.text
