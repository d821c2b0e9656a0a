"""The service's tables, as SQLAlchemy 2 models.

Nothing here is edited in place once other rows refer to it: a pipeline
template gets a new version, a token is revoked rather than changed, and a
job keeps the exact YAML and package versions it ran with. Times are UTC.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

#: What a job's ``state`` may be; the last four are final.
JOB_STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "interrupted"})
ROLES = ("user", "admin")


def utcnow() -> datetime:
    """Now, in UTC, aware."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every database (SQLite drops the zone; it is put back on reading)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Base of every model."""


class User(Base):
    """Someone who holds tokens and owns jobs."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tokens: Mapped[list[Token]] = relationship(back_populates="user")


class Token(Base):
    """An API token: only its SHA-256 is stored; the secret is shown once, when it is made."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    #: The secret's first characters, so that a person can tell tokens apart in a list.
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16))
    #: Folders of the data root the token may read and process, relative to it; empty: all of it.
    folders: Mapped[list[str]] = mapped_column(JSON, default=list)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    #: loaded with the token (a join), since every request that shows a token names its user
    user: Mapped[User] = relationship(back_populates="tokens", lazy="joined")


class PipelineTemplate(Base):
    """One version of a registered pipeline: its YAML and the schema of the parameters a user may change."""

    __tablename__ = "pipeline_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    yaml: Mapped[str] = mapped_column(Text)
    params_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class Job(Base):
    """A template run on a dataset (or a live stream) for a user, with its progress and outcome."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_created", "owner_id", "created"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    template_id: Mapped[int] = mapped_column(ForeignKey("pipeline_templates.id"))
    pipeline: Mapped[str] = mapped_column(String(200), index=True)
    pipeline_version: Mapped[int] = mapped_column(Integer)
    #: The dataset as the user named it (relative to the data root), or the live stream's URL.
    dataset: Mapped[str] = mapped_column(Text)
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The exact pipeline the job runs: the template with the overrides and the dataset's source.
    yaml: Mapped[str] = mapped_column(Text)
    engine: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    packages: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    output_dir: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the job process last reported: its heartbeat.
    updated: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str] = mapped_column(String(200), default="")
    control_endpoint: Mapped[str] = mapped_column(String(200), default="")
    scan: Mapped[str] = mapped_column(String(200), default="")
    received: Mapped[int] = mapped_column(Integer, default=0)
    written: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    rate: Mapped[float] = mapped_column(Float, default=0.0)
    lag_s: Mapped[float] = mapped_column(Float, default=0.0)
    buffer_fill: Mapped[float] = mapped_column(Float, default=0.0)

    #: loaded with the job (a join): every view of a job names its owner
    owner: Mapped[User] = relationship(lazy="joined")
    template: Mapped[PipelineTemplate] = relationship()


class ScanRecord(Base):
    """One scan of a job: its state, counts and result files (relative to the job's output folder)."""

    __tablename__ = "scans"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str] = mapped_column(Text, default="")
    received: Mapped[int] = mapped_column(Integer, default=0)
    written: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    files: Mapped[list[str]] = mapped_column(JSON, default=list)
    started: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


class FailedEventRecord(Base):
    """An event that failed, with the stage and the message; kept aside, as in the result file."""

    __tablename__ = "failed_events"
    __table_args__ = (Index("ix_failed_events_job_scan", "job_id", "scan", "event_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    scan: Mapped[str] = mapped_column(String(200))
    event_index: Mapped[int] = mapped_column(Integer)
    stream: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)


class ChunkRecord(Base):
    """Where and when one chunk of events ran, and the seconds each stage spent on it: the weather plot's marks."""

    __tablename__ = "chunks"
    __table_args__ = (Index("ix_chunks_job_started", "job_id", "started"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    scan: Mapped[str] = mapped_column(String(200))
    pass_number: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(200))
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    started: Mapped[float] = mapped_column(Float)
    finished: Mapped[float] = mapped_column(Float)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    stage_seconds: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class LogLine(Base):
    """A line of a job's log: which component said it, how loud, when."""

    __tablename__ = "log_lines"
    __table_args__ = (Index("ix_log_lines_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    component: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(16))
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message: Mapped[str] = mapped_column(Text)
