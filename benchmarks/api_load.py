"""API load: many clients submitting, polling and reading results from a real ``lightpipe serve``; and how
many job-progress writes per second its database absorbs.

What it measures
    For each database (SQLite, the default file; PostgreSQL, when a server
    can be had), ``lightpipe serve`` runs in its own process (uvicorn, as a
    user starts it) on a fresh state folder and a small simulated dataset.
    ``--clients`` asyncio clients (httpx, one connection each, all with one
    beamline account's token, so every job is readable by every client) run
    for ``--seconds``: each in turn reads a job's status (``GET
    /jobs/{id}``: the job it last submitted, else the seed job), lists the
    newest jobs (``GET /jobs?limit=20``) and reads a result (``GET
    /jobs/{id}/scans/scan/outputs/scalars.total`` of the finished seed job);
    together they submit a real job (``POST /jobs``, powder-profile on the
    dataset) every ``1/--submit-hz`` seconds, which then runs in a job
    process beside the server, as it would on a beamline server; a
    Prometheus stand-in scrapes ``/metrics`` every second. Before the clock
    starts, every client sends one status read, all at once (kind
    ``first``, reported apart): its connection opens and the server meets
    the load for the first time. The clients run
    once per pause of ``--think-s``: by default pausing 1 s between
    requests (a job page polling once a second: the target's case), then
    not at all (as fast as the server answers: its capacity). Reported per
    route kind: requests, requests/s, p50, p99 and max latency as the client
    saw it, the server's own mean time (its request histogram at
    ``/metrics``), errors (any status but 2xx, or no answer); and the CPU
    seconds the server process spent per request (its threads, not the job
    processes), which other load on the machine does not change, beside the
    CPU the clients themselves took from the same machine.

    Then the job processes' writer path: ``--writers`` threads in
    ``--writer-processes`` processes, each with a
    :class:`~lightpipe.service.recorder.DbWriter` of its own job, flush as fast
    as they can for ``--writer-seconds``; each flush is what a job process
    writes every half second: one chunk record inserted and the job's
    progress updated, in one transaction. Reported: transactions/s, p50/p99
    of a flush, errors, and how many running jobs that rate carries at the
    recorder's flush interval.

Reference (same run)
    The service's targets: no errors, p99 below 100 ms for status reads at
    50 clients (the service issue); ExaFEL's job database took about 8,000
    transactions/s from 4,096 ranks. The same load on SQLite and PostgreSQL.

PostgreSQL comes from ``tests/postgres.py``: ``LIGHTPIPE_TEST_POSTGRES``, or a
throwaway server it starts (``fsync=off``: commits are not flushed to disk,
as SQLite's ``synchronous=NORMAL`` in WAL mode does not flush them either);
without either, only SQLite is measured and the figures say why.

Run ``python benchmarks/api_load.py`` (about 4 minutes; ``--quick`` for a
smoke run under a minute, ``--json`` for the figures on stdout).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE = REPO / "pipelines" / "powder-profile.yaml"
DATASET = "visit1/scan_master.h5"
#: The service issue's target for status reads at 50 clients.
TARGET_STATUS_P99_S = 0.1
#: ExaFEL's job database, for comparison (transactions per second from 4,096 ranks).
EXAFEL_TRANSACTIONS_PER_S = 8000
KINDS = ("status", "list", "results", "submit", "metrics", "first")


# -- a served lightpipe ----------------------------------------------------------------------------------------

class Served:
    """``lightpipe serve`` in a process of its own on a fresh state folder, with an admin token made beforehand.

    Parameters
    ----------
    folder
        State folder, data root (``data/``) and working directory of the server.
    database_url
        PostgreSQL URL; ``None``: the SQLite file in the state folder.
    """

    def __init__(self, folder: Path, database_url: str | None = None) -> None:
        from lightpipe.service.app import open_database
        from lightpipe.service.auth import create_token
        from lightpipe.service.db.session import transaction
        from lightpipe.service.settings import ServiceSettings

        self.folder = folder
        self.data = folder / "data"
        self.settings = ServiceSettings(state_dir=folder / "state", data_root=self.data, database_url=database_url)
        sessions = open_database(self.settings)  # sets up the schema, as the server's first start would
        with transaction(sessions) as session:
            self.admin = create_token(session, "admin", "admin", 1.0, label="benchmark")[1]
        sessions.kw["bind"].dispose()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "lightpipe.cli.main", "serve", "--port", str(port),
                   "--state-dir", str(self.settings.state_dir), "--data-root", str(self.data),
                   "--database", self.settings.database]
        self.log = open(folder / "serve.log", "wb")
        # cwd without a pipelines/ folder: no template is registered but the benchmark's
        self.process = subprocess.Popen(command, cwd=folder, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        import httpx

        while True:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lightpipe serve did not start: {(folder / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def client(self, token: str | None = None) -> Any:
        from lightpipe.client import Client

        return Client(self.url, token or self.admin, timeout_s=60)

    def close(self) -> None:
        """Stop the server as Ctrl-C does: running jobs are interrupted, their files closed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def make_dataset(data: Path, frames: int = 40, shape: tuple[int, int] = (64, 80), frames_per_file: int = 16) -> None:
    """A simulated DECTRIS-style scan (powder rings, 8 darks first) at ``data/visit1/scan_master.h5``."""
    from lightpipe.simulators.frames import FrameSimParams, write_nxmx

    write_nxmx(data / DATASET, FrameSimParams(name="scan", frames=frames, darks=8, flats=0, shape=shape,
                                              photons=100.0, seed=3), frames_per_file=frames_per_file)


def postgres_database() -> tuple[str | None, str, Any]:
    """``(URL of a new database, why not, drop)``: a fresh database on the tests' PostgreSQL server, or the reason."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import sqlalchemy
        from postgres import PostgresUnavailable, server_url
    except ImportError as exc:
        return None, f"{exc.name} is not installed", None
    try:
        admin_url = server_url()
    except PostgresUnavailable as exc:
        return None, str(exc), None
    name = f"lightpipe_bench_{secrets.token_hex(6)}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return sqlalchemy.make_url(admin_url).set(database=name).render_as_string(hide_password=False), "", drop


# -- the clients -----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Latencies and errors of each route kind."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, started: float, response: Any | None, error: str = "") -> None:
        self.seconds[kind].append(time.perf_counter() - started)
        if response is not None and 200 <= response.status_code < 300:
            return
        self.errors[kind] += 1
        if len(self.examples) < 5:
            said = error if response is None else f"{response.status_code} {response.text[:200]}"
            self.examples.append(f"{kind}: {said}")


async def load(url: str, token: str, seed_job: str, clients: int, seconds: float, think_s: float,
               submit_hz: float, on_start: Callable[[], None]) -> tuple[Tally, float, list[str]]:
    """Run the clients for ``seconds``; the tally, the seconds they ran and the jobs they submitted.

    ``on_start`` is called when the clock starts, after each client's first request.
    """
    import httpx

    tally = Tally()
    submitted: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    # one TLS context for all: httpx would build one per client (~20 ms of the clients' CPU each, in the
    # clients' event loop, which delays every request in flight); the URL is plain HTTP anyway
    tls = ssl.create_default_context()
    sessions = [httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=30, verify=tls)
                for _ in range(clients)]

    async def request(client: httpx.AsyncClient, kind: str, method: str, path: str, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            tally.note(kind, started, None, f"{type(exc).__name__}: {exc}")
            return None
        tally.note(kind, started, response)
        return response

    async def user(i: int, client: httpx.AsyncClient) -> None:
        own: str | None = None
        step = i  # clients start at different places of the cycle, and at different times
        await asyncio.sleep(think_s * i / clients)
        while time.perf_counter() < end:
            if time.perf_counter() >= next_submit[0]:
                next_submit[0] += 1.0 / submit_hz
                r = await request(client, "submit", "POST", "/jobs", json={"pipeline": "powder-profile",
                                                                            "dataset": DATASET})
                if r is not None and r.status_code == 201:
                    own = r.json()["id"]
                    submitted.append(own)
            else:
                kind = ("status", "list", "status", "results")[step % 4]
                step += 1
                if kind == "status":
                    await request(client, kind, "GET", f"/jobs/{own or seed_job}")
                elif kind == "list":
                    await request(client, kind, "GET", "/jobs", params={"limit": 20})
                else:
                    await request(client, kind, "GET", f"/jobs/{seed_job}/scans/scan/outputs/scalars.total")
            if think_s > 0:
                await asyncio.sleep(think_s)

    async def prometheus() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            while time.perf_counter() < end:
                await request(client, "metrics", "GET", "/metrics")
                await asyncio.sleep(1.0)

    # each client's first request, all at once and reported apart: its connection is opened, and the server
    # meets the load for the first time (threads started, statements compiled, pooled connections opened)
    await asyncio.gather(*(request(client, "first", "GET", f"/jobs/{seed_job}") for client in sessions))
    on_start()
    start = time.perf_counter()
    end = start + seconds
    next_submit = [start + (1.0 / submit_hz if submit_hz > 0 else float("inf"))]
    try:
        await asyncio.gather(*(user(i, client) for i, client in enumerate(sessions)), prometheus())
    finally:
        await asyncio.gather(*(client.aclose() for client in sessions))
    return tally, time.perf_counter() - start, submitted


def summarise(tally: Tally, seconds: float) -> dict[str, Any]:
    kinds = {}
    for kind in KINDS:
        values = np.array(tally.seconds[kind])
        if not len(values):
            continue
        kinds[kind] = {"requests": int(len(values)), "per_s": len(values) / seconds,
                       "p50_s": float(np.percentile(values, 50)), "p99_s": float(np.percentile(values, 99)),
                       "max_s": float(values.max()), "errors": tally.errors[kind]}
    total = sum(len(v) for kind, v in tally.seconds.items() if kind != "first")  # those came before the clock
    return {"requests": total, "requests_per_s": total / seconds, "errors": sum(tally.errors.values()),
            "error_examples": tally.examples, "kinds": kinds}


def server_times(url: str, token: str) -> dict[str, tuple[float, float]]:
    """``{route: (seconds, requests)}`` of GET requests so far, from the service's own histogram at ``/metrics``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=60).text
    sums: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "lightpipe_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("method") == "GET" and sample.name.endswith(("_sum", "_count")):
                sums.setdefault(sample.labels["route"], [0.0, 0.0])[sample.name.endswith("_count")] += sample.value
    return {route: (v[0], v[1]) for route, v in sums.items()}


#: The route template of each kind a client reads, as the service's histogram names it.
ROUTES = {"status": "/api/v1/jobs/{job_id}", "list": "/api/v1/jobs",
          "results": "/api/v1/jobs/{job_id}/scans/{scan}/outputs/{field}"}


def api_load(database: str, url: str | None, workdir: str | None, clients: int, seconds: float,
             thinks: list[float], submit_hz: float) -> list[dict[str, Any]]:
    """The client load against ``lightpipe serve`` on one database, once per pause in ``thinks``."""
    import httpx
    import psutil

    phases = []
    with tempfile.TemporaryDirectory(prefix=f"lightpipe-api-load-{database}-", dir=workdir) as tmp:
        folder = Path(tmp)
        make_dataset(folder / "data")
        served = Served(folder, url)
        try:
            with served.client() as admin:
                admin.register_pipeline(TEMPLATE.read_text())
            # one beamline account for every client: each reads the jobs the others submit
            token = httpx.post(f"{served.url}/api/v1/tokens", json={"user": "beamline", "days": 1}, timeout=60,
                               headers={"Authorization": f"Bearer {served.admin}"}).json()["token"]
            with served.client(token) as beamline:
                seed = beamline.submit("powder-profile", dataset=DATASET)["id"]
                seed_state = beamline.wait(seed, timeout_s=120, poll_s=0.2)["state"]
                if seed_state != "completed":
                    raise RuntimeError(f"the seed job ended {seed_state}; see {folder / 'serve.log'}")
            server = psutil.Process(served.process.pid)
            for think_s in thinks:
                marks: dict[str, Any] = {}

                def clock_starts() -> None:
                    marks.update(times=server_times(served.url, served.admin), server=server.cpu_times(),
                                 clients=psutil.Process().cpu_times())

                tally, ran, submitted = asyncio.run(load(served.url, token, seed, clients, seconds, think_s,
                                                         submit_hz, clock_starts))
                before, cpu_before, clients_before = marks["times"], marks["server"], marks["clients"]
                cpu_after, clients_after = server.cpu_times(), psutil.Process().cpu_times()
                after = server_times(served.url, served.admin)
                with served.client(token) as beamline:
                    states = [beamline.job(j)["state"] for j in submitted]
                figures = summarise(tally, ran)
                for kind, route in ROUTES.items():
                    if kind in figures["kinds"]:
                        (s0, n0), (s1, n1) = before.get(route, (0.0, 0.0)), after[route]
                        figures["kinds"][kind]["server_mean_s"] = (s1 - s0) / max(n1 - n0, 1)
                status = figures["kinds"].get("status", {})
                # the server's own CPU (its threads, not the job processes): what a request costs, whatever else runs
                cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
                figures.update(server_cpu_s=cpu_s, server_cpu_ms_per_request=1000 * cpu_s / max(figures["requests"], 1),
                               clients_cpu_s=(clients_after.user + clients_after.system)
                               - (clients_before.user + clients_before.system))
                figures.update(database=database, clients=clients, seconds=ran, think_s=think_s, submit_hz=submit_hz,
                               jobs_submitted=len(submitted), jobs_completed_during=states.count("completed"),
                               meets_target=figures["errors"] == 0
                               and status.get("p99_s", float("inf")) < TARGET_STATUS_P99_S)
                phases.append(figures)
        finally:
            served.close()
    return phases


# -- the job processes' writer path ----------------------------------------------------------------------------

def writer_process(url: str, job_ids: list[str], seconds: float, start_at: float) -> dict[str, Any]:
    """In a process of its own: one DbWriter per job, each on its own thread, flushing for ``seconds``."""
    from lightpipe.service.db.models import ChunkRecord
    from lightpipe.service.db.session import make_engine, session_factory
    from lightpipe.service.recorder import DbWriter

    factory = session_factory(make_engine(url))
    flushes: list[list[float]] = [[] for _ in job_ids]
    errors = [0] * len(job_ids)

    def write(k: int, job_id: str) -> None:
        writer = DbWriter(factory, job_id)
        try:
            while time.time() < start_at:
                time.sleep(0.001)
            end = start_at + seconds
            n = 0
            while time.time() < end:
                record = ChunkRecord(job_id=job_id, scan="scan", pass_number=0, worker="bench", start=n, stop=n + 1,
                                     started=time.time(), finished=time.time(), failed=0,
                                     stage_seconds={"profile": 0.001})
                writer.put(lambda session, record=record: session.add(record))
                writer.progress(received=n + 1, written=n + 1, failed=0, in_flight=0, total=10**6, rate=100.0,
                                buffer_fill=0.1, lag_s=0.0)
                started = time.perf_counter()
                try:
                    writer.flush()
                except Exception:
                    errors[k] += 1
                flushes[k].append(time.perf_counter() - started)
                n += 1
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(k, j)) for k, j in enumerate(job_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    factory.kw["bind"].dispose()
    return {"flush_s": [x for f in flushes for x in f], "errors": sum(errors)}


def make_jobs(url: str, n: int) -> list[str]:
    """``n`` running jobs' rows (a user and a template first), as the service's submissions make them."""
    from lightpipe.service.db.models import Job, PipelineTemplate, User
    from lightpipe.service.db.session import make_engine, session_factory, transaction, upgrade

    engine = make_engine(url)
    upgrade(engine)
    with transaction(session_factory(engine)) as session:
        user = User(name="beamline")
        template = PipelineTemplate(name="powder-profile", version=1, yaml=TEMPLATE.read_text(), params_schema={})
        session.add_all([user, template])
        session.flush()
        ids = [f"bench{k:07d}" for k in range(n)]
        session.add_all([Job(id=i, owner_id=user.id, template_id=template.id, pipeline="powder-profile",
                             pipeline_version=1, dataset=DATASET, yaml="", output_dir="", state="running")
                         for i in ids])
    engine.dispose()
    return ids


def progress_writes(database: str, url: str | None, workdir: str | None, writers: int, processes: int,
                    seconds: float) -> dict[str, Any]:
    """Transactions/s of ``writers`` DbWriters in ``processes`` processes against one database."""
    from lightpipe.service.recorder import FLUSH_EVERY_S

    with tempfile.TemporaryDirectory(prefix=f"lightpipe-writes-{database}-", dir=workdir) as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'lightpipe.db'}"
        ids = make_jobs(url, writers)
        groups = [ids[p::processes] for p in range(processes)]
        start_at = time.time() + 3.0  # every process imported and connected before the clock starts
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(writer_process, [url] * processes, groups, [seconds] * processes,
                                    [start_at] * processes))
    flush_s = np.array([x for r in results for x in r["flush_s"]])
    per_s = len(flush_s) / seconds
    return {"database": database, "writers": writers, "processes": processes, "seconds": seconds,
            "transactions": int(len(flush_s)), "transactions_per_s": per_s,
            "flush_p50_s": float(np.percentile(flush_s, 50)), "flush_p99_s": float(np.percentile(flush_s, 99)),
            "errors": sum(r["errors"] for r in results), "flush_every_s": FLUSH_EVERY_S,
            "running_jobs_carried": int(per_s * FLUSH_EVERY_S),
            "vs_exafel": per_s / EXAFEL_TRANSACTIONS_PER_S}


# -- the report ------------------------------------------------------------------------------------------------

def table(figures: dict[str, Any]) -> str:
    jobs = f"a job submitted every {1 / figures['submit_hz']:.1f} s" if figures["submit_hz"] else "no jobs submitted"
    lines = [f"API load: {figures['clients']} clients, {figures['seconds']:.0f} s per pause and database, {jobs} "
             f"(target: no errors, status p99 < {TARGET_STATUS_P99_S * 1000:.0f} ms); latency as the clients saw it, "
             "and the server's own mean"]
    lines.append(f"{'database':<11} {'pause s':>7} {'kind':<8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} "
                 f"{'p99 ms':>8} {'max ms':>8} {'server ms':>9} {'errors':>7}")
    for run in figures["api"]:
        for kind, k in run["kinds"].items():
            server = f"{k['server_mean_s'] * 1000:>9.1f}" if "server_mean_s" in k else f"{'':>9}"
            lines.append(f"{run['database']:<11} {run['think_s']:>7.1f} {kind:<8} {k['requests']:>9} "
                         f"{k['per_s']:>8.1f} {k['p50_s'] * 1000:>8.1f} {k['p99_s'] * 1000:>8.1f} "
                         f"{k['max_s'] * 1000:>8.1f} {server} {k['errors']:>7}")
        lines.append(f"{run['database']:<11} {run['think_s']:>7.1f} {'all':<8} {run['requests']:>9} "
                     f"{run['requests_per_s']:>8.1f}   "
                     f"server CPU {run['server_cpu_ms_per_request']:.1f} ms/request, clients' CPU "
                     f"{run['clients_cpu_s'] / run['seconds']:.2f} s/s; "
                     f"jobs submitted {run['jobs_submitted']}, completed during the run "
                     f"{run['jobs_completed_during']}; meets target: {run['meets_target']}")
        lines.extend(f"    error: {e}" for e in run["error_examples"])
    lines.append("")
    lines.append(f"Job-progress writes (DbWriter flushes: a chunk record and the job's row, one transaction each; "
                 f"ExaFEL: ~{EXAFEL_TRANSACTIONS_PER_S} transactions/s)")
    lines.append(f"{'database':<11} {'writers':>8} {'procs':>6} {'tx/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                 f"{'errors':>7} {'jobs carried':>13}")
    for w in figures["writes"]:
        lines.append(f"{w['database']:<11} {w['writers']:>8} {w['processes']:>6} {w['transactions_per_s']:>9.0f} "
                     f"{w['flush_p50_s'] * 1000:>8.2f} {w['flush_p99_s'] * 1000:>8.2f} {w['errors']:>7} "
                     f"{w['running_jobs_carried']:>13}")
    if figures.get("postgresql_missing"):
        lines.append(f"PostgreSQL not measured: {figures['postgresql_missing']}")
    lines.append(f"load average before {figures['load_before']}, after {figures['load_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent API clients (default 50)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of load per database (default 30)")
    parser.add_argument("--think-s", default="1,0",
                        help="pauses between a client's requests, one run each, comma-separated (default 1,0: "
                             "polling once a second as a job page does, then as fast as the server answers)")
    parser.add_argument("--submit-hz", type=float, default=0.5, help="jobs submitted per second, all clients")
    parser.add_argument("--writers", type=int, default=32, help="concurrent DbWriters, one job each (default 32)")
    parser.add_argument("--writer-processes", type=int, default=4, help="processes they run in (default 4)")
    parser.add_argument("--writer-seconds", type=float, default=10.0, help="seconds of writes per database")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--workdir", help="where the temporary state folders go")
    parser.add_argument("--quick", action="store_true", help="small settings for a smoke run (under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.writers, args.writer_processes, args.writer_seconds = 10, 3.0, 4, 2, 1.5
        args.think_s = "0.5"
    thinks = [float(x) for x in args.think_s.split(",")]
    figures: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "think_s": thinks,
                               "submit_hz": args.submit_hz, "target_status_p99_s": TARGET_STATUS_P99_S,
                               "load_before": os.getloadavg()[0], "api": [], "writes": []}
    databases: list[tuple[str, str | None, Any]] = []
    for name in args.databases.split(","):
        if name == "sqlite":
            databases.append(("sqlite", None, None))
        elif name == "postgresql":
            for purpose in ("api", "writes"):
                url, why, drop = postgres_database()
                if url is None:
                    figures["postgresql_missing"] = why
                    break
                databases.append((f"postgresql:{purpose}", url, drop))
        else:
            parser.error(f"unknown database {name!r}: sqlite or postgresql")
    try:
        for name, url, _ in databases:
            if not name.endswith(":writes"):
                figures["api"].extend(api_load(name.split(":")[0], url, args.workdir, args.clients, args.seconds,
                                               thinks, args.submit_hz))
            if not name.endswith(":api"):
                figures["writes"].append(progress_writes(name.split(":")[0], url, args.workdir, args.writers,
                                                         args.writer_processes, args.writer_seconds))
    finally:
        for _, _, drop in databases:
            if drop is not None:
                drop()
    figures["load_after"] = os.getloadavg()[0]
    # the target is for clients that poll (the first pause); flat out, the figures are the server's capacity
    figures["meets_target"] = all(run["meets_target"] for run in figures["api"] if run["think_s"] == thinks[0])
    print(table(figures), file=sys.stderr)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
