"""The service's first schema: users, tokens, pipeline templates, jobs, scans, failed events, chunks, log lines.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _counts() -> list[sa.Column]:
    return [sa.Column(name, sa.Integer(), nullable=False) for name in ("received", "written", "failed")]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        _time("created"),
    )
    op.create_table(
        "pipeline_templates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("params_schema", sa.JSON(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        _time("created"),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_index("ix_pipeline_templates_name", "pipeline_templates", ["name"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("folders", sa.JSON(), nullable=False),
        _time("created"),
        _time("expires"),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        _time("last_used", nullable=True),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("template_id", sa.Integer(), sa.ForeignKey("pipeline_templates.id"), nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("pipeline_version", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("engine", sa.JSON(), nullable=False),
        sa.Column("packages", sa.JSON(), nullable=False),
        sa.Column("output_dir", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _time("created"),
        _time("started", nullable=True),
        _time("finished", nullable=True),
        _time("updated", nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("control_endpoint", sa.String(200), nullable=False),
        sa.Column("scan", sa.String(200), nullable=False),
        *_counts(),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("lag_s", sa.Float(), nullable=False),
        sa.Column("buffer_fill", sa.Float(), nullable=False),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner_id", "created"])
    op.create_index("ix_jobs_pipeline", "jobs", ["pipeline"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        *_counts(),
        sa.Column("files", sa.JSON(), nullable=False),
        _time("started"),
        _time("finished", nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.UniqueConstraint("job_id", "name"),
    )
    op.create_index("ix_scans_job_id", "scans", ["job_id"])
    op.create_table(
        "failed_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("scan", sa.String(200), nullable=False),
        sa.Column("event_index", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_index("ix_failed_events_job_scan", "failed_events", ["job_id", "scan", "event_index"])
    op.create_table(
        "chunks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("scan", sa.String(200), nullable=False),
        sa.Column("pass_number", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("stop", sa.Integer(), nullable=False),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("finished", sa.Float(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("stage_seconds", sa.JSON(), nullable=False),
    )
    op.create_index("ix_chunks_job_started", "chunks", ["job_id", "started"])
    op.create_table(
        "log_lines",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("component", sa.String(200), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        _time("time"),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_index("ix_log_lines_job_id", "log_lines", ["job_id", "id"])


def downgrade() -> None:
    for table in ("log_lines", "chunks", "failed_events", "scans", "jobs", "tokens", "pipeline_templates", "users"):
        op.drop_table(table)
