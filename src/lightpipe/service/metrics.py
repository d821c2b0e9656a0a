"""Prometheus metrics of the service: requests, jobs, events, lag, failures, at ``GET /metrics``.

Names (all prefixed ``lightpipe_``):

``http_requests_total{method, route, status}``
    Requests answered, by route template (``/api/v1/jobs/{job_id}``, never
    the raw path, so the number of series stays small).
``http_request_duration_seconds{method, route}``
    Histogram of the time from a request's arrival to the end of its answer.
``jobs{state}``
    Jobs in each state.
``job_events_received{job, pipeline}``, ``job_events_written{...}``, ``job_events_failed{...}``, ``job_events_in_flight{...}``, ``job_events_per_second{...}``, ``job_lag_seconds{...}``, ``job_buffer_fill{...}``
    Per running job, as its process last wrote them to the database (every
    half second, :mod:`lightpipe.service.recorder`); a job's series go when
    it ends.
``events_written_total``, ``events_failed_total``
    Events of every job the database holds: ``rate()`` of them is the
    service's events/s and failures/s.

Everything about jobs is read from the database when Prometheus scrapes
(:func:`jobs_snapshot`, two queries: one ``GROUP BY`` over the jobs and the
rows of at most :data:`MAX_JOB_SERIES` running jobs): the job processes write
their progress there anyway, so the numbers survive a restart of the server
and nothing is counted twice.

One registry per process (:data:`REGISTRY`), not prometheus_client's global
one: the service's numbers are not mixed with whatever else the process
registers, and two apps made in one process (tests) share it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lightpipe.service.db.models import Job

REGISTRY = CollectorRegistry(auto_describe=True)

#: Latency buckets, seconds: status reads should sit in the first few (the service's target is p99 < 0.1 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Route label of a request that matched no route (a 404): one series for all of them.
UNMATCHED = "<unmatched>"
#: Most running jobs given series of their own at one scrape (the oldest first), so a scrape stays cheap.
MAX_JOB_SERIES = 500

REQUESTS = Counter("lightpipe_http_requests", "HTTP requests answered", ["method", "route", "status"],
                   registry=REGISTRY)
LATENCY = Histogram("lightpipe_http_request_duration_seconds", "Time to answer an HTTP request",
                    ["method", "route"], buckets=LATENCY_BUCKETS, registry=REGISTRY)

#: The per-job gauges: (metric name, help, the job's field in :class:`JobProgress`).
JOB_GAUGES = (
    ("lightpipe_job_events_received", "Events a running job's source handed out so far", "received"),
    ("lightpipe_job_events_written", "Events of a running job processed so far", "written"),
    ("lightpipe_job_events_failed", "Events of a running job that failed so far", "failed"),
    ("lightpipe_job_events_in_flight", "Events of a running job between its source and its sinks", "in_flight"),
    ("lightpipe_job_events_per_second", "Events per second a running job processes (last second or more)", "rate"),
    ("lightpipe_job_lag_seconds", "How far a running job is behind its live source", "lag_s"),
    ("lightpipe_job_buffer_fill", "Fraction of a running job's pipeline buffer in use", "buffer_fill"),
)


@dataclass(frozen=True)
class JobProgress:
    """Where a running job stands, as its process last wrote it."""

    job: str
    pipeline: str
    received: int = 0
    written: int = 0
    failed: int = 0
    in_flight: int = 0
    rate: float = 0.0
    lag_s: float = 0.0
    buffer_fill: float = 0.0


@dataclass(frozen=True)
class JobsSnapshot:
    """What ``/metrics`` says about jobs: counts by state, the running jobs, and events over all jobs."""

    states: dict[str, int] = field(default_factory=dict)
    running: tuple[JobProgress, ...] = ()
    written_total: int = 0
    failed_total: int = 0


def jobs_snapshot(sessions: sessionmaker[Session]) -> JobsSnapshot:
    """Read a :class:`JobsSnapshot` from the service's database (two queries in one session)."""
    with sessions() as session:
        by_state = session.execute(select(Job.state, func.count(), func.coalesce(func.sum(Job.written), 0),
                                          func.coalesce(func.sum(Job.failed), 0)).group_by(Job.state)).all()
        rows = session.execute(
            select(Job.id, Job.pipeline, Job.received, Job.written, Job.failed, Job.in_flight, Job.rate, Job.lag_s,
                   Job.buffer_fill).where(Job.state == "running").order_by(Job.started, Job.id)
            .limit(MAX_JOB_SERIES)).all()
    return JobsSnapshot(states={state: n for state, n, _, _ in by_state},
                        running=tuple(JobProgress(*row) for row in rows),
                        written_total=sum(int(w) for _, _, w, _ in by_state),
                        failed_total=sum(int(f) for _, _, _, f in by_state))


class _Jobs(Collector):
    """Everything about jobs, asked of the service at each scrape."""

    def __init__(self) -> None:
        self.snapshot: Callable[[], JobsSnapshot] | None = None

    def collect(self) -> Any:
        snap = self.snapshot() if self.snapshot is not None else JobsSnapshot()
        states = GaugeMetricFamily("lightpipe_jobs", "Jobs in each state", labels=["state"])
        for state, n in sorted(snap.states.items()):
            states.add_metric([state], n)
        yield states
        for name, text, attribute in JOB_GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["job", "pipeline"])
            for job in snap.running:
                gauge.add_metric([job.job, job.pipeline], float(getattr(job, attribute)))
            yield gauge
        yield CounterMetricFamily("lightpipe_events_written", "Events processed by every job the service holds",
                                  value=snap.written_total)
        yield CounterMetricFamily("lightpipe_events_failed", "Events failed in every job the service holds",
                                  value=snap.failed_total)

    def describe(self) -> Any:
        return []  # asked at scrape time only, so registering never calls the service


_JOBS = _Jobs()
REGISTRY.register(_JOBS)


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
            template = route_template(scope)
            method = scope.get("method", "")
            LATENCY.labels(method, template).observe(time.perf_counter() - start)
            REQUESTS.labels(method, template, str(status[0])).inc()


def route_template(scope: Scope) -> str:
    """The template of the route that answered a request (``/api/v1/jobs/{job_id}``), or :data:`UNMATCHED`.

    FastAPI hands a request to the route of an included router without the
    router's prefix in the route's own template (``/jobs/{job_id}``); the
    prefix is the part of the request's path before the piece the route's
    pattern matches.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return UNMATCHED
    pattern = getattr(route, "path_regex", None)
    path = scope.get("path", "")
    if pattern is not None:
        for i, char in enumerate(path):
            if char == "/" and pattern.fullmatch(path[i:]):
                return str(path[:i] + template)
    return str(template)


def metrics_router(dependencies: Sequence[Any] = ()) -> Any:
    """A router with ``GET /metrics`` in Prometheus' text format (left out of the OpenAPI schema)."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/metrics", include_in_schema=False, dependencies=[Depends(d) for d in dependencies])
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def install_metrics(app: FastAPI, jobs: Callable[[], JobsSnapshot] | None = None,
                    dependencies: Sequence[Any] = ()) -> None:
    """Time every request of ``app`` and serve ``GET /metrics``.

    Parameters
    ----------
    app
        The service's app; call before it starts.
    jobs
        Returns where the jobs stand (:func:`jobs_snapshot` on the service's
        database), called at each scrape; without it the job series are empty.
    dependencies
        FastAPI dependencies of ``/metrics`` (e.g. one that wants a token);
        none: anyone who reaches the service may scrape.
    """
    app.add_middleware(MetricsMiddleware)
    app.include_router(metrics_router(dependencies))
    _JOBS.snapshot = jobs
