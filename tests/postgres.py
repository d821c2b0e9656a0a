"""A real PostgreSQL server for the tests, and a fresh database on it for each test that asks.

Import the fixture into a test module (``from postgres import postgres_url``;
the tests folder is on the path, as for ``stages_for_tests``) and ask for it::

    def test_round_trip(postgres_url: str) -> None:
        engine = sqlalchemy.create_engine(postgres_url)

Where the server comes from, first that applies:

1. ``LIGHTPIPE_TEST_POSTGRES``: the URL of a database on a server that
   ``.ci/run`` (or a developer) started; its user may create databases.
2. A throwaway server this module starts itself: ``initdb`` and ``pg_ctl``
   of the newest ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql``
   package) into a temporary folder, listening on a free port of 127.0.0.1
   with ``trust`` authentication, as the current user (as ``postgres``
   through ``runuser`` when that is root, which PostgreSQL refuses to run
   as), stopped when the test process ends.
3. Otherwise the test is skipped, with the reason; with
   ``LIGHTPIPE_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it) it fails instead.

Each test gets a database of its own (``lightpipe_test_<random>``), dropped
after the test, so tests never see each other's tables. The URL names the
``psycopg`` driver (``postgresql+psycopg://``), the one lightpipe installs.
"""
from __future__ import annotations

import atexit
import functools
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

URL_ENV = "LIGHTPIPE_TEST_POSTGRES"
REQUIRE_ENV = "LIGHTPIPE_REQUIRE_POSTGRES"
#: Seconds the throwaway server may take to start.
START_TIMEOUT_S = 60


class PostgresUnavailable(Exception):
    """No PostgreSQL server to test against; the message says why."""


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg (3) driver named: a plain ``postgresql://`` would make SQLAlchemy ask for psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresUnavailable(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) and {URL_ENV} "
                                  "is not set; `apt-get install postgresql`, or run .ci/run, which does both")
    return Path(found[-1]).parent


def _as_server_user() -> list[str]:
    """The command prefix that runs a program as the server's user: PostgreSQL refuses root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no 'postgres' user to run a server as; install "
                                  "Debian's postgresql package, which makes one, or set " + URL_ENV) from None
    return ["runuser", "-u", "postgres", "--"]


@functools.lru_cache(maxsize=1)
def _throwaway_server() -> str:
    """Start a server for this process (once); the URL of its ``postgres`` database."""
    bin_dir, prefix = _postgres_bin(), _as_server_user()
    folder = Path(tempfile.mkdtemp(prefix="lightpipe-postgres-"))
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-2000:]}")

    run(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres", "--encoding=UTF8")
    # fsync off: the data lives as long as the test process; sockets in our folder, not /run/postgresql
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w",
        "-t", str(START_TIMEOUT_S), "start")

    def stop() -> None:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=START_TIMEOUT_S)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


def server_url() -> str:
    """The URL of a database whose user may create databases: ``LIGHTPIPE_TEST_POSTGRES`` or a throwaway server.

    Raises
    ------
    PostgresUnavailable
        When there is neither.
    """
    url = os.environ.get(URL_ENV)
    return sqlalchemy_url(url) if url else _throwaway_server()


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but there is no PostgreSQL to test against: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {reason}")


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty PostgreSQL database, dropped after the test."""
    try:
        import sqlalchemy
        import psycopg  # noqa: F401  (the driver the URL names)
    except ImportError as exc:
        _unavailable(f"{exc.name} is not installed (pip install -e '.[server]')")
    try:
        admin_url = server_url()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    name = f"lightpipe_test_{secrets.token_hex(6)}"
    # CREATE and DROP DATABASE cannot run in a transaction
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        _unavailable(f"cannot reach {sqlalchemy.make_url(admin_url).render_as_string(hide_password=True)}: "
                     f"{exc.orig}")
    try:
        yield sqlalchemy.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        deadline = time.monotonic() + 10
        with admin.connect() as conn:
            while True:  # a connection the test left open is ended with the database (FORCE)
                try:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except sqlalchemy.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        admin.dispose()
