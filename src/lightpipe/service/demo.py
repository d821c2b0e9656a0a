"""``lightpipe serve --demo``: a simulated dataset in the data root, the templates registered and a demo job.

So that a first look at the service (and the web UI built on it) has
something to show at once: ``<data root>/demo/demo_master.h5``, a DECTRIS-style
powder scan from lightpipe's simulator, the ``demo`` template (the pipeline
of ``lightpipe demo``) and a job of it on that scan, which finishes within
seconds of the start.
"""
from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lightpipe.service.api.deps import Service
from lightpipe.service.api.jobs import Submit, create_job
from lightpipe.service.api.pipelines import register
from lightpipe.service.auth import Principal
from lightpipe.service.db.models import Job, PipelineTemplate, Token
from lightpipe.service.db.session import transaction

log = logging.getLogger(__name__)

DEMO_DATASET = "demo/demo_master.h5"
DEMO_TEMPLATE = "demo"
#: Small enough to finish in seconds on two cores, large enough to show progress.
DEMO_FRAMES = 200


def seed_templates(sessions: sessionmaker[Session], folder: Path | None, by: str = "admin") -> list[str]:
    """Register every pipeline file of ``folder`` that validates, when no template is registered yet.

    Returns the names registered; a file that does not validate here (a plug-in
    not installed) is logged and skipped.
    """
    registered: list[str] = []
    with transaction(sessions) as session:
        if folder is None or session.scalar(select(PipelineTemplate.id).limit(1)) is not None:
            return registered
    for path in sorted(folder.glob("*.yaml")):
        try:
            with transaction(sessions) as session:
                registered.append(register(session, path.read_text(), by).name)
        except Exception as exc:  # one file that does not validate here must not stop the others
            log.warning("template %s not registered: %s", path.name, exc)
    return registered


def _demo_template(raw: Path) -> str:
    """The pipeline of ``lightpipe demo``, its source reading the demo dataset's darks as ``lightpipe demo`` does."""
    import yaml

    from lightpipe.sources.hdf5 import hdf5_defaults

    document = yaml.safe_load((files("lightpipe.cli") / "demo.yaml").read_text())
    document["source"]["params"] = hdf5_defaults(str(raw))
    return yaml.safe_dump(document, sort_keys=False)


def prepare_demo(parts: Service) -> str | None:
    """Write the demo dataset, register the demo template and submit the demo job, each unless there already.

    Returns the demo job's id, ``None`` when one existed.
    """
    from lightpipe.simulators.frames import FrameSimParams, write_nxmx

    raw = parts.settings.data_root / DEMO_DATASET
    if not raw.exists():
        params = FrameSimParams(name="demo", frames=DEMO_FRAMES, darks=20, flats=0, shape=(256, 256), photons=40.0)
        write_nxmx(raw, params, frames_per_file=100)
    with transaction(parts.sessions) as session:
        if session.scalar(select(PipelineTemplate.id).where(PipelineTemplate.name == DEMO_TEMPLATE)) is None:
            register(session, _demo_template(raw), "admin")
    with transaction(parts.sessions) as session:
        if session.scalar(select(Job.id).where(Job.pipeline == DEMO_TEMPLATE).limit(1)) is not None:
            return None
        admin = session.scalars(select(Token).where(Token.role == "admin", Token.revoked.is_(False))
                                .order_by(Token.id)).first()
        if admin is None:
            return None
        principal = Principal(admin.user_id, admin.user.name, "admin", admin.id, admin.expires)
        job = create_job(session, parts, principal, Submit(pipeline=DEMO_TEMPLATE, dataset=DEMO_DATASET))
        job_id = job.id
    parts.runner.wake()
    return job_id
