"""Prometheus metrics: request latency by route template, job gauges, event counters, in the text format."""
from __future__ import annotations

import anyio
import httpx
from fastapi import FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from lightpipe.service.metrics import forget_job, install_metrics, record_job_progress


def make_app(states: dict[str, int]) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/jobs/{job_id}")
    def job(job_id: str) -> dict[str, str]:
        if job_id == "missing":
            raise HTTPException(404, "no such job")
        return {"id": job_id}

    @app.get("/api/v1/crash")
    def crash() -> None:
        raise RuntimeError("a bug")

    install_metrics(app, job_states=lambda: states)
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
    app = make_app({})
    before = scrape(app)
    responses = fetch(app, "/api/v1/jobs/a", "/api/v1/jobs/b", "/api/v1/jobs/missing", "/nowhere", "/api/v1/crash")
    assert [r.status_code for r in responses] == [200, 200, 404, 404, 500]
    after = scrape(app)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/api/v1/jobs/{job_id}"  # the template, never /api/v1/jobs/a: one series per route
    assert grew("lightpipe_http_requests_total", method="GET", route=route, status="200") == 2
    assert grew("lightpipe_http_requests_total", method="GET", route=route, status="404") == 1
    assert grew("lightpipe_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert grew("lightpipe_http_requests_total", method="GET", route="/api/v1/crash", status="500") == 1
    assert grew("lightpipe_http_request_duration_seconds_count", method="GET", route=route) == 3
    assert grew("lightpipe_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf") == 3
    assert grew("lightpipe_http_request_duration_seconds_sum", method="GET", route=route) > 0
    assert not any("/api/v1/jobs/a" in str(labels) for _, labels in after)


def test_jobs_by_state_are_asked_at_each_scrape() -> None:
    states = {"running": 2, "completed": 5}
    app = make_app(states)
    first = scrape(app)
    assert first[("lightpipe_jobs", (("state", "running"),))] == 2
    assert first[("lightpipe_jobs", (("state", "completed"),))] == 5
    states.update(running=1, failed=1)
    second = scrape(app)
    assert second[("lightpipe_jobs", (("state", "running"),))] == 1
    assert second[("lightpipe_jobs", (("state", "failed"),))] == 1


def test_job_progress_gauges_and_event_counters() -> None:
    app = make_app({})
    before = scrape(app)
    record_job_progress("job-7", written=100, failed=2, lag_s=0.5)
    record_job_progress("job-7", written=300, failed=3, lag_s=0.25)
    record_job_progress("job-8", written=10, failed=0, lag_s=0.0)
    after = scrape(app)
    job = (("job", "job-7"),)
    assert after[("lightpipe_job_events_written", job)] == 300
    assert after[("lightpipe_job_events_failed", job)] == 3
    assert after[("lightpipe_job_lag_seconds", job)] == 0.25
    assert after[("lightpipe_job_events_per_second", job)] > 0
    assert after[("lightpipe_events_written_total", ())] - before.get(("lightpipe_events_written_total", ()), 0) == 310
    assert after[("lightpipe_events_failed_total", ())] - before.get(("lightpipe_events_failed_total", ()), 0) == 3
    # a new scan starts its counts again: its events are new ones, never subtracted
    record_job_progress("job-7", written=50, failed=0, lag_s=0.0)
    again = scrape(app)
    assert again[("lightpipe_events_written_total", ())] - after[("lightpipe_events_written_total", ())] == 50
    forget_job("job-7")
    forget_job("job-8")
    forget_job("never-seen")
    gone = scrape(app)
    assert not any(dict(labels).get("job") in ("job-7", "job-8") for _, labels in gone)
    assert gone[("lightpipe_events_written_total", ())] == again[("lightpipe_events_written_total", ())]


def test_metrics_can_want_a_token() -> None:
    def token(authorization: str = "") -> None:
        raise HTTPException(401, "a token is needed")

    app = FastAPI()
    install_metrics(app, dependencies=[token])
    [response] = fetch(app, "/metrics")
    assert response.status_code == 401
    assert "/metrics" not in app.openapi()["paths"]


def test_the_scrape_is_the_text_format() -> None:
    [response] = fetch(make_app({}), "/metrics")
    assert "# TYPE lightpipe_http_request_duration_seconds histogram" in response.text
    assert "# HELP lightpipe_jobs Jobs in each state" in response.text
