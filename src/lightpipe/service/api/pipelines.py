"""``/api/v1/pipelines``: the registered templates, their versions and parameter schemas; admins add and retire."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lightpipe.service.api.deps import Db
from lightpipe.service.auth import Admin, CurrentUser
from lightpipe.service.db.models import PipelineTemplate
from lightpipe.service.templates import MAX_TEMPLATE_CHARS, check_template, params_schema

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


class TemplateText(BaseModel):
    """A pipeline file's text, to register as a template (or as a new version of one)."""

    yaml: str = Field(description="The pipeline YAML, as `lightpipe validate` reads it", max_length=MAX_TEMPLATE_CHARS)


def template_json(t: PipelineTemplate, full: bool = True) -> dict[str, Any]:
    """A template as the API shows it; ``full`` adds its YAML and parameter schema."""
    out: dict[str, Any] = {"name": t.name, "version": t.version, "description": t.description,
                           "retired": t.retired, "created": t.created.isoformat(), "created_by": t.created_by}
    if full:
        out.update(yaml=t.yaml, params_schema=t.params_schema)
    return out


def latest(session: Session, name: str, include_retired: bool = False) -> PipelineTemplate:
    """The newest version of template ``name`` (404 naming the known ones if there is none)."""
    query = select(PipelineTemplate).where(PipelineTemplate.name == name)
    if not include_retired:
        query = query.where(PipelineTemplate.retired.is_(False))
    found = session.scalars(query.order_by(PipelineTemplate.version.desc()).limit(1)).first()
    if found is None:
        known = session.scalars(select(PipelineTemplate.name).where(PipelineTemplate.retired.is_(False))
                                .distinct().order_by(PipelineTemplate.name)).all()
        raise HTTPException(404, f"no pipeline template {name!r}; known templates: {', '.join(known) or 'none'}")
    return found


def register(session: Session, text: str, by: str, name: str | None = None) -> PipelineTemplate:
    """Check ``text`` and store it as the next version of its pipeline's template.

    ``name``, when given, must be the pipeline's own ``name``. Raises ``PipelineError`` (422) for a file
    that does not validate.
    """
    pipeline = check_template(text, name=f"<template {name or 'upload'}>")
    if name is not None and pipeline.name != name:
        raise HTTPException(422, f"the YAML's name is {pipeline.name!r}, not {name!r}: a new version keeps the "
                                 "template's name")
    newest = session.scalar(select(func.max(PipelineTemplate.version)).where(PipelineTemplate.name == pipeline.name))
    template = PipelineTemplate(name=pipeline.name, version=(newest or 0) + 1, description=pipeline.description,
                                yaml=text, params_schema=params_schema(pipeline), retired=False, created_by=by)
    session.add(template)
    return template


@router.get("", summary="List the templates (newest version of each)")
def list_templates(session: Db, user: CurrentUser,
                   retired: bool = Query(False, description="Include retired templates")) -> list[dict[str, Any]]:
    newest = (select(PipelineTemplate.name, func.max(PipelineTemplate.version).label("version"))
              .group_by(PipelineTemplate.name).subquery())
    query = select(PipelineTemplate).join(newest, (PipelineTemplate.name == newest.c.name)
                                          & (PipelineTemplate.version == newest.c.version))
    if not retired:
        query = query.where(PipelineTemplate.retired.is_(False))
    return [template_json(t, full=False) for t in session.scalars(query.order_by(PipelineTemplate.name))]


@router.post("", status_code=201, summary="Register a new template (admin)")
def create_template(body: TemplateText, session: Db, admin: Admin) -> dict[str, Any]:
    name = check_template(body.yaml).name
    if session.scalar(select(PipelineTemplate.id).where(PipelineTemplate.name == name).limit(1)) is not None:
        raise HTTPException(409, f"template {name!r} exists; register a new version with "
                                 f"POST /api/v1/pipelines/{name}/versions")
    template = register(session, body.yaml, admin.user)
    try:
        session.commit()
    except IntegrityError:  # registered by another request in the meantime
        raise HTTPException(409, f"template {name!r} was registered at the same time by another request") from None
    return template_json(template)


@router.get("/{name}", summary="The newest version of a template, with its YAML and parameter schema")
def get_template(name: str, session: Db, user: CurrentUser) -> dict[str, Any]:
    template = latest(session, name, include_retired=True)
    versions = session.scalars(select(PipelineTemplate.version).where(PipelineTemplate.name == name)
                               .order_by(PipelineTemplate.version)).all()
    return {**template_json(template), "versions": list(versions)}


@router.get("/{name}/versions/{version}", summary="One version of a template")
def get_version(name: str, version: int, session: Db, user: CurrentUser) -> dict[str, Any]:
    template = session.scalar(select(PipelineTemplate).where(PipelineTemplate.name == name,
                                                             PipelineTemplate.version == version))
    if template is None:
        raise HTTPException(404, f"template {name!r} has no version {version}")
    return template_json(template)


@router.post("/{name}/versions", status_code=201, summary="Register a new version of a template (admin)")
def create_version(name: str, body: TemplateText, session: Db, admin: Admin) -> dict[str, Any]:
    previous = latest(session, name, include_retired=True)
    if previous.yaml == body.yaml and not previous.retired:
        raise HTTPException(409, f"version {previous.version} of {name!r} has this very text; nothing to add")
    template = register(session, body.yaml, admin.user, name=name)
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(409, f"another version of {name!r} was registered at the same time; retry") from None
    return template_json(template)


@router.post("/{name}/retire", summary="Retire a template: no new jobs; its versions and jobs stay (admin)")
def retire_template(name: str, session: Db, admin: Admin) -> dict[str, Any]:
    versions = session.scalars(select(PipelineTemplate).where(PipelineTemplate.name == name)).all()
    if not versions:
        raise HTTPException(404, f"no pipeline template {name!r}")
    if all(t.retired for t in versions):
        raise HTTPException(409, f"template {name!r} is already retired")
    for t in versions:
        t.retired = True
    session.commit()
    return template_json(max(versions, key=lambda t: t.version), full=False)
