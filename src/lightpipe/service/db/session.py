"""Database engines, sessions, the schema check and ``lightpipe db upgrade``.

SQLite (the default, one file) is opened in WAL mode with a busy timeout, so
that the web server and the job processes write to it side by side. Its
connections are pooled (opening one and setting its pragmas cost a third of a
status request's time), and each is checked out only while the path still
names the file it opened: a database moved away or replaced is noticed on the
next request rather than hidden behind a pooled handle. PostgreSQL is used by
URL, with a pool.

The schema is Alembic's: :func:`upgrade` brings a database to the newest
revision shipped in the package, :func:`check_schema` refuses one that is behind
(or ahead) with the command that fixes it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from lightpipe.core.errors import LightpipeError

#: Milliseconds a SQLite writer waits for another (the server, a job process) to finish its transaction.
SQLITE_BUSY_MS = 15_000
#: SQLite connections a pool keeps open; more are opened while the server's threads need them, closed after.
SQLITE_POOL_SIZE = 8


class DatabaseError(LightpipeError):
    """A database that cannot be reached, or whose schema does not match this lightpipe."""


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///file.db``, ``postgresql://user@host/db``); a SQLite file's folder is made.

    Raises
    ------
    DatabaseError
        For a URL that is not one, or whose driver is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"{url!r} is not a database URL; write sqlite:///path/to/file.db or "
                            "postgresql://user@host/dbname") from None
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, in the server extra
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            if not parsed.database or parsed.database == ":memory:":
                engine = create_engine(parsed, poolclass=NullPool)
                event.listen(engine, "connect", _sqlite_pragmas)
                return engine
            engine = create_engine(parsed, pool_size=SQLITE_POOL_SIZE, max_overflow=-1,
                                   connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "connect", _note_sqlite_file(parsed.database), insert=True)
            event.listen(engine, "checkout", _same_sqlite_file(parsed.database))
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"no driver for {parsed.drivername}: {exc}; install lightpipe[server], which has "
                            "psycopg for PostgreSQL") from None


def _file_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of ``path``, or ``None`` when nothing is there."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _note_sqlite_file(path: str) -> Callable[[Any, Any], None]:
    """A ``connect`` listener that records which file a new connection opened."""

    def note(connection: Any, record: Any) -> None:
        record.info["file"] = _file_identity(path)

    return note


def _same_sqlite_file(path: str) -> Callable[[Any, Any, Any], None]:
    """A ``checkout`` listener that refuses a pooled connection whose file was moved away or replaced.

    The pool then drops the connection and opens the path afresh, which fails (a 503) when the
    database is gone, as a server without a pool would.
    """

    def check(connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("file") != _file_identity(path) or record.info.get("file") is None:
            raise DisconnectionError(f"the database file {path} was moved or replaced")

    return check


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe from corruption in WAL mode
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine`` that keep loaded objects readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed at the end of the block, or rolled back if it raises."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("lightpipe.service.db") / "migrations"))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest schema revision this lightpipe ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://"))).get_current_head()
    assert head is not None, "the package ships no migrations"
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the database, ``None`` for an empty one.

    Raises
    ------
    DatabaseError
        When the database cannot be reached.
    """
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: "
                            f"{_first_line(exc)}; check that it runs and the URL is right") from None


def is_empty(engine: Engine) -> bool:
    """Whether the database has no tables at all (a new one, which the first start may set up)."""
    try:
        return not inspect(engine).get_table_names()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: "
                            f"{_first_line(exc)}") from None


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database's schema to :func:`head_revision`; returns (revision before, revision after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, head_revision()


def check_schema(engine: Engine, url_hint: str = "") -> None:
    """Refuse a database whose schema is not this lightpipe's, saying which command fixes it.

    Raises
    ------
    DatabaseError
        Behind (``lightpipe db upgrade``), ahead (a newer lightpipe made it) or not a lightpipe database.
    """
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    where = f" --database {url_hint}" if url_hint else ""
    if current is None:
        raise DatabaseError(f"the database has no lightpipe schema; run `lightpipe db upgrade{where}` to create it")
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(_alembic_config(engine)).walk_revisions()}
    if current not in known:
        raise DatabaseError(f"the database's schema is at revision {current}, which this lightpipe does not know "
                            f"(its newest is {head}): a newer lightpipe made it; upgrade lightpipe")
    raise DatabaseError(f"the database's schema is at revision {current}, behind this lightpipe's {head}; back it "
                        f"up, then run `lightpipe db upgrade{where}`")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
