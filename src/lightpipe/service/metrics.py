"""Prometheus metrics of the service: requests, jobs, events, lag, failures, at ``GET /metrics``.

Names (all prefixed ``lightpipe_``):

``http_requests_total{method, route, status}``
    Requests answered, by route template (``/api/v1/jobs/{job_id}``, never
    the raw path, so the number of series stays small).
``http_request_duration_seconds{method, route}``
    Histogram of the time from a request's arrival to the end of its answer.
``jobs{state}``
    Jobs in each state, counted when Prometheus scrapes (from the function
    given to :func:`install_metrics`).
``job_events_written{job}``, ``job_events_failed{job}``, ``job_events_per_second{job}``, ``job_lag_seconds{job}``
    Per running job, from :func:`record_job_progress`; removed by
    :func:`forget_job` when the job ends.
``events_written_total``, ``events_failed_total``
    Counters over every job since the service started: ``rate()`` of them is
    the service's events/s and failures/s.

One registry per process (:data:`REGISTRY`), not prometheus_client's global
one: the service's numbers are not mixed with whatever else the process
registers, and two apps made in one process (tests) share it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry(auto_describe=True)

#: Latency buckets, seconds: status reads should sit in the first few (the service's target is p99 < 0.1 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Route label of a request that matched no route (a 404): one series for all of them.
UNMATCHED = "<unmatched>"

REQUESTS = Counter("lightpipe_http_requests", "HTTP requests answered", ["method", "route", "status"],
                   registry=REGISTRY)
LATENCY = Histogram("lightpipe_http_request_duration_seconds", "Time to answer an HTTP request",
                    ["method", "route"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
JOB_WRITTEN = Gauge("lightpipe_job_events_written", "Events of a running job processed so far", ["job"],
                    registry=REGISTRY)
JOB_FAILED = Gauge("lightpipe_job_events_failed", "Events of a running job that failed so far", ["job"],
                   registry=REGISTRY)
JOB_RATE = Gauge("lightpipe_job_events_per_second", "Events per second a running job processes (recent)", ["job"],
                 registry=REGISTRY)
JOB_LAG = Gauge("lightpipe_job_lag_seconds", "How far a running job is behind its live source", ["job"],
                registry=REGISTRY)
WRITTEN = Counter("lightpipe_events_written", "Events processed by every job since the service started",
                  registry=REGISTRY)
FAILED = Counter("lightpipe_events_failed", "Events failed in every job since the service started",
                 registry=REGISTRY)

_last: dict[str, tuple[float, int, int]] = {}  # job -> (monotonic time, written, failed) of its last report
_last_lock = threading.Lock()


def record_job_progress(job_id: str, written: int, failed: int, lag_s: float) -> None:
    """Record where a running job stands (called as its progress reaches the service).

    Parameters
    ----------
    job_id
        The job.
    written, failed
        Its events processed and failed so far (over all its scans).
    lag_s
        How far it is behind its live source, in seconds (0 for files).
    """
    now = time.monotonic()
    with _last_lock:
        before = _last.get(job_id)
        _last[job_id] = (now, written, failed)
    if before is not None:
        t0, written0, failed0 = before
        # a count that goes down is a new scan's or a restarted job's: its events are new ones
        WRITTEN.inc(written - written0 if written >= written0 else written)
        FAILED.inc(failed - failed0 if failed >= failed0 else failed)
        if now > t0 and written >= written0:
            JOB_RATE.labels(job_id).set((written - written0) / (now - t0))
    else:
        WRITTEN.inc(written)
        FAILED.inc(failed)
    JOB_WRITTEN.labels(job_id).set(written)
    JOB_FAILED.labels(job_id).set(failed)
    JOB_LAG.labels(job_id).set(lag_s)


def forget_job(job_id: str) -> None:
    """Remove a finished job's series (the totals keep its events)."""
    with _last_lock:
        _last.pop(job_id, None)
    for gauge in (JOB_WRITTEN, JOB_FAILED, JOB_RATE, JOB_LAG):
        try:
            gauge.remove(job_id)
        except KeyError:
            pass


class _JobStates(Collector):
    """``lightpipe_jobs{state}``, asked of the service at each scrape."""

    def __init__(self) -> None:
        self.count: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Any:
        family = GaugeMetricFamily("lightpipe_jobs", "Jobs in each state", labels=["state"])
        if self.count is not None:
            for state, n in sorted(self.count().items()):
                family.add_metric([state], n)
        yield family

    def describe(self) -> Any:
        return []  # asked at scrape time only, so registering never calls the service


_JOB_STATES = _JobStates()
REGISTRY.register(_JOB_STATES)


class MetricsMiddleware:
    """Times every HTTP request and counts it by method, route template and status (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            LATENCY.labels(method, template).observe(time.perf_counter() - start)
            REQUESTS.labels(method, template, str(status[0])).inc()


def metrics_router(dependencies: Sequence[Any] = ()) -> Any:
    """A router with ``GET /metrics`` in Prometheus' text format (left out of the OpenAPI schema)."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/metrics", include_in_schema=False, dependencies=[Depends(d) for d in dependencies])
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def install_metrics(app: FastAPI, job_states: Callable[[], Mapping[str, int]] | None = None,
                    dependencies: Sequence[Any] = ()) -> None:
    """Time every request of ``app`` and serve ``GET /metrics``.

    Parameters
    ----------
    app
        The service's app; call before it starts.
    job_states
        Returns the number of jobs in each state (a database count), called
        at each scrape; without it ``lightpipe_jobs`` is empty.
    dependencies
        FastAPI dependencies of ``/metrics`` (e.g. one that wants a token);
        none: anyone who reaches the service may scrape.
    """
    app.add_middleware(MetricsMiddleware)
    app.include_router(metrics_router(dependencies))
    if job_states is not None:
        _JOB_STATES.count = job_states
