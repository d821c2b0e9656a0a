"""``lightpipe serve``, ``submit``, ``jobs``, ``logs``, ``db upgrade`` and ``token create``: the service's commands.

``serve``, ``db`` and ``token`` work on the service's own machine and
database; ``submit``, ``jobs`` and ``logs`` talk to a running service over
HTTP (``--server``, ``$LIGHTPIPE_SERVER``) with a token (``--token``,
``$LIGHTPIPE_TOKEN``), through :class:`lightpipe.client.Client`. The heavy
modules (FastAPI, SQLAlchemy) are imported only when one of these runs, and a
missing ``server`` extra is named.
"""
from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightpipe.core.errors import LightpipeError

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise LightpipeError(f"the service needs the server extra ({exc.name} is missing): "
                             "pip install 'lightpipe[server]'") from None


def _settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", help="YAML settings file (flags and LIGHTPIPE_* variables win over it)")
    p.add_argument("--database", help="database URL (default: a SQLite file in the state folder), "
                                      "e.g. postgresql://user@host/lightpipe")
    p.add_argument("--state-dir", help="folder of the database, job outputs and run files (default ./.lightpipe)")


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="the service's URL (default $LIGHTPIPE_SERVER or http://127.0.0.1:8000)")
    p.add_argument("--token", help="your token (default $LIGHTPIPE_TOKEN)")


def add_service_commands(sub: Any) -> None:
    """Add the service's subcommands to the ``lightpipe`` parser's subparsers."""
    serve = sub.add_parser("serve", help="start the service: REST API, jobs, live events")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-root", help="folder of the datasets users may process (default ./data)")
    serve.add_argument("--cluster", help="run jobs on this Dask cluster: a scheduler address or a dask-jobqueue "
                                         "section, as for run --engine dask --cluster")
    serve.add_argument("--demo", action="store_true", help="add a simulated dataset, the demo template and a demo job")
    _settings_flags(serve)

    submit = sub.add_parser("submit", help="submit a job to a running service")
    submit.add_argument("pipeline", help="template name (lightpipe submit --list shows them)", nargs="?")
    submit.add_argument("--dataset", help="file, folder or glob, relative to the service's data root")
    submit.add_argument("--stream", help="a live detector instead: eiger://HOST:PORT or eiger2://HOST:PORT")
    submit.add_argument("-p", "--param", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                        help="change a parameter, e.g. -p photons.threshold=5 (repeatable)")
    submit.add_argument("--version", type=int, help="template version (default the newest)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end and show its scans")
    submit.add_argument("--list", action="store_true", help="list the templates instead")
    _client_flags(submit)

    jobs = sub.add_parser("jobs", help="list jobs of a running service")
    jobs.add_argument("--state", help="only jobs in this state (queued, running, completed, failed, ...)")
    jobs.add_argument("--pipeline", help="only jobs of this template")
    jobs.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    _client_flags(jobs)

    logs = sub.add_parser("logs", help="show a job's log")
    logs.add_argument("job", help="the job's id")
    logs.add_argument("--component", help="only this component's lines (job, service, core.driver, ...)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep showing new lines until the job ends")
    _client_flags(logs)

    db = sub.add_parser("db", help="the service's database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _settings_flags(db_sub.add_parser("upgrade", help="bring the database's schema to this lightpipe's"))

    token = sub.add_parser("token", help="the service's tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="make a token; its secret is printed once")
    create.add_argument("--user", required=True, help="who it is for (made if new)")
    create.add_argument("--role", choices=("user", "admin"), default="user")
    create.add_argument("--days", type=float, help="lifetime in days (default the service's token_days, 90)")
    create.add_argument("--folder", action="append", default=[], help="limit it to this folder of the data root "
                                                                       "(repeatable; default all)")
    create.add_argument("--label", default="", help="what it is for")
    create.add_argument("--data-root", help="the service's data root, to check --folder (default ./data)")
    _settings_flags(create)


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    _server_extra()
    from pydantic import ValidationError

    from lightpipe.service.settings import ServiceSettings

    names = {"settings": "settings_file", "database": "database_url", "state_dir": "state_dir", "host": "host",
             "port": "port", "data_root": "data_root", "cluster": "cluster"}
    given = {field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag, None) is not None}
    try:
        return ServiceSettings(**given, **extra)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise LightpipeError(f"bad service settings: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, **({"demo": True} if args.demo else {}))
    import uvicorn

    from lightpipe.service.app import create_app, first_start
    from lightpipe.service.demo import DemoStream, prepare_demo, seed_templates

    # the demo's simulated detector streams from its own port, which users may then start live jobs on
    stream = DemoStream().start() if settings.demo else None
    try:
        if stream is not None:
            settings = settings.model_copy(update={"live_streams": [*settings.live_streams, stream.url]})
        app = create_app(settings)
        secret = first_start(app.state.sessions, settings)
        seeded = seed_templates(app.state.sessions, settings.seed_dir())
        if seeded:
            out.print(f"registered templates: {', '.join(seeded)}")
        if stream is not None:
            job = prepare_demo(app.state.service, stream.url)
            out.print(f"demo: dataset {settings.data_root / 'demo'}" + (f", job {job}" if job else "")
                      + f"; a simulated EIGER streams at {stream.url}, with a demo-live job on it")
        url = f"http://{settings.host}:{settings.port}"
        out.print(f"lightpipe service at [bold]{url}[/] (web UI; API {url}/docs), database "
                  f"{escape(_safe(settings.database))}")
        if secret:
            out.print(f"first start: admin token [bold]{secret}[/]\nit is shown only now; keep it (e.g. export "
                      "LIGHTPIPE_TOKEN=...), log in to the web UI with it, and make more with `lightpipe token create`")
        # what start-up built lives as long as the server: out of the collector's reach, so that no full
        # collection stalls requests for tens of milliseconds (benchmarks/api_load.py)
        gc.collect()
        gc.freeze()
        # no per-message deflate: compressing a live image costs ~30 ms and saves little (benchmarks/live_latency.py)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", ws="websockets-sansio",
                    ws_per_message_deflate=False)
    finally:
        if stream is not None:
            stream.stop()
    return 0


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from lightpipe.service.db.session import make_engine, upgrade

    before, after = upgrade(make_engine(settings.database))
    if before == after:
        out.print(f"the database {escape(_safe(settings.database))} is up to date (revision {after})")
    else:
        out.print(f"upgraded {escape(_safe(settings.database))} from revision {before or 'none'} to {after}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from lightpipe.service.app import open_database
    from lightpipe.service.auth import create_token
    from lightpipe.service.db.session import transaction
    from lightpipe.service.paths import DataRoot

    folders = DataRoot(settings.data_root).check_folders(args.folder) if args.folder else []
    sessions = open_database(settings)
    try:
        with transaction(sessions) as session:
            token, secret = create_token(session, args.user, args.role, args.days or settings.token_days, args.label,
                                         folders)
            expires = token.expires
    except ValueError as exc:
        raise LightpipeError(str(exc)) from None
    where = f", limited to {', '.join(folders)}" if folders else ""
    out.print(f"token for {escape(args.user)} ({args.role}{where}), expires {expires:%Y-%m-%d}:")
    out.print(secret, markup=False)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from lightpipe.client import Client

    return Client(args.server, args.token)


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.list or not args.pipeline:
            table = Table(title="pipeline templates")
            for col in ("name", "version", "description"):
                table.add_column(col)
            for t in client.pipelines():
                table.add_row(t["name"], str(t["version"]), t["description"])
            out.print(table)
            return 0
        from lightpipe.service.templates import parse_overrides

        job = client.submit(args.pipeline, dataset=args.dataset, stream=args.stream,
                            overrides=parse_overrides(args.param), version=args.version)
        out.print(f"job {job['id']}: {job['pipeline']} v{job['version']} on {escape(job['dataset'])}, {job['state']}")
        if not args.wait:
            return 0
        job = client.wait(job["id"], timeout_s=float("inf"))
        for scan in client.scans(job["id"]):
            out.print(f"scan {escape(scan['name'])} {scan['state']}: {scan['written']} written, {scan['failed']} "
                      f"failed; files {', '.join(scan['files'])}")
        if job["error"]:
            console.print(f"[red]job {job['id']} {job['state']}:[/] {escape(job['error'])}")
        return 0 if job["state"] == "completed" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs(state=args.state, pipeline=args.pipeline, limit=args.limit)
    table = Table(title=f"jobs ({len(page['items'])} of {page['total']})")
    for col in ("id", "owner", "pipeline", "dataset", "state", "written", "failed", "created"):
        table.add_column(col)
    for j in page["items"]:
        p = j["progress"]
        table.add_row(j["id"], j["owner"], f"{j['pipeline']} v{j['version']}", j["dataset"], j["state"],
                      str(p["written"]), str(p["failed"]), (j["created"] or "")[:19])
    out.print(table)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from lightpipe.client import FINAL_STATES

    after = 0
    with _client(args) as client:
        while True:
            page = client.log(args.job, after=after, component=args.component)
            for line in page["lines"]:
                out.print(f"{line['time'][:19]} {line['level']:7} {line['component']}: {line['message']}", markup=False)
            after = page["next"]
            if not args.follow or (not page["lines"] and client.job(args.job)["state"] in FINAL_STATES):
                return 0
            time.sleep(0.5)


#: The service's subcommands and their functions, merged into the ``lightpipe`` command's.
SERVICE_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve, "submit": cmd_submit, "jobs": cmd_jobs, "logs": cmd_logs, "db": cmd_db, "token": cmd_token}
