"""A real PostgreSQL server answers through SQLAlchemy and psycopg: the ground the service's tests stand on."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from postgres import postgres_url, sqlalchemy_url  # noqa: F401  (postgres_url is a fixture)


def test_round_trip(postgres_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(postgres_url)
    metadata = sa.MetaData()
    jobs = sa.Table(
        "jobs", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("overrides", sa.JSON, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    try:
        metadata.create_all(engine)
        created = dt.datetime(2026, 12, 7, 18, 30, tzinfo=dt.timezone.utc)
        with engine.begin() as conn:
            conn.execute(jobs.insert(), [{"name": "powder-1", "overrides": {"profile.bins": 200}, "created": created},
                                         {"name": "ptycho-2", "overrides": {}, "created": created}])
        with engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.name, jobs.c.overrides, jobs.c.created).order_by(jobs.c.id)).all()
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        assert [tuple(r) for r in rows] == [("powder-1", {"profile.bins": 200}, created), ("ptycho-2", {}, created)]
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        assert int(version.split(".")[0]) >= 13
        # the server enforces what SQLite would let through: a duplicate name is refused, the table unchanged
        try:
            with engine.begin() as conn:
                conn.execute(jobs.insert(), {"name": "powder-1", "overrides": {}, "created": created})
        except sa.exc.IntegrityError as exc:
            assert "duplicate key" in str(exc.orig)
        else:
            raise AssertionError("a duplicate job name was accepted")
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 2
    finally:
        engine.dispose()


def test_each_test_has_a_database_of_its_own(postgres_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one()
            name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        assert tables == 0  # the other test's table is in its own database, dropped with it
        assert name.startswith("lightpipe_test_") and name in postgres_url
    finally:
        engine.dispose()


def test_plain_postgresql_urls_get_the_psycopg_driver() -> None:
    assert sqlalchemy_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"
