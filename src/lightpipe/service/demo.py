"""``lightpipe serve --demo``: a simulated dataset in the data root, the templates registered and a demo job.

So that a first look at the service (and the web UI built on it) has
something to show at once: ``<data root>/demo/demo_master.h5``, a DECTRIS-style
powder scan from lightpipe's simulator, the ``demo`` template (the pipeline
of ``lightpipe demo``) and a job of it on that scan, which finishes within
seconds of the start; and a live one: :class:`DemoStream`, a simulated EIGER
that streams a direct-beam spot at 10 Hz, series after series, and a job of
the ``demo-live`` template on it, which runs until it is stopped.
"""
from __future__ import annotations

import logging
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

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
LIVE_TEMPLATE = "demo-live"
#: What the demo's detector sees: a direct-beam spot (a ring of radius 0) on weak scattering, as in
#: pipelines/beam-spot.yaml.
SPOT_FRAMES: dict[str, Any] = {"name": "beam", "frames": 20, "darks": 0, "flats": 0, "shape": [256, 256],
                               "rings_px": [0.0], "beam_center": [141.3, 118.6], "photons": 200.0}


class DemoStream:
    """A simulated EIGER for the demo's live job: series of ``frames`` frames at ``rate_hz``, one after another.

    The stream waits for its receiver (a series starts when the live job
    connects); :meth:`stop` ends the series under way and the thread.

    Parameters
    ----------
    rate_hz
        Frames per second.
    frames
        Frames per series (one scan of the live job each).
    """

    def __init__(self, rate_hz: float = 10.0, frames: int = 300) -> None:
        from lightpipe.simulators.eiger import EigerSimulator
        from lightpipe.simulators.eiger_frames import FrameSource

        self.frames = frames
        self.simulator = EigerSimulator(FrameSource.from_simulator(params=SPOT_FRAMES), stream_port=0, rest_port=0,
                                        rate_hz=rate_hz)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._acquire, name="lightpipe-demo-stream", daemon=True)

    def start(self) -> DemoStream:
        """Bind the stream and start acquiring; returns ``self``."""
        self.simulator.start()
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """The stream as a job names it: ``eiger://127.0.0.1:PORT``."""
        return f"eiger://127.0.0.1:{self.simulator.stream_port}"

    def _acquire(self) -> None:
        from lightpipe.core.errors import LightpipeError

        while not self._stopping.is_set():
            try:
                self.simulator.acquire(self.frames)
            except LightpipeError as exc:  # the simulator was stopped under a series
                if not self._stopping.is_set():
                    log.warning("demo stream stopped: %s", exc)
                return

    def stop(self) -> None:
        """End the series under way, the thread and the simulator's sockets."""
        self._stopping.set()
        self.simulator.stop()
        self._thread.join(10)

    def __enter__(self) -> DemoStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def prepare_demo(parts: Service, stream: str | None = None) -> str | None:
    """Write the demo dataset, register the demo templates and submit the demo jobs, each unless there already.

    With ``stream`` (a :class:`DemoStream`'s :attr:`~DemoStream.url`), a
    ``demo-live`` job on it is submitted too, unless one is queued or running.
    Returns the finished demo job's id, ``None`` when one existed.
    """
    from lightpipe.simulators.frames import FrameSimParams, write_nxmx

    raw = parts.settings.data_root / DEMO_DATASET
    if not raw.exists():
        params = FrameSimParams(name="demo", frames=DEMO_FRAMES, darks=20, flats=0, shape=(256, 256), photons=40.0)
        write_nxmx(raw, params, frames_per_file=100)
    with transaction(parts.sessions) as session:
        if session.scalar(select(PipelineTemplate.id).where(PipelineTemplate.name == DEMO_TEMPLATE)) is None:
            register(session, _demo_template(raw), "admin")
    job_id = None
    with transaction(parts.sessions) as session:
        admin = _admin(session)
        if admin is not None and session.scalar(select(Job.id).where(Job.pipeline == DEMO_TEMPLATE).limit(1)) is None:
            job_id = create_job(session, parts, admin, Submit(pipeline=DEMO_TEMPLATE, dataset=DEMO_DATASET)).id
    if stream is not None:
        submit_live(parts, stream)
    parts.runner.wake()
    return job_id


def _admin(session: Session) -> Principal | None:
    """The first admin token's principal, whom the demo's jobs belong to (``None`` if there is none)."""
    token = session.scalars(select(Token).where(Token.role == "admin", Token.revoked.is_(False))
                            .order_by(Token.id)).first()
    return None if token is None else Principal(token.user_id, token.user.name, "admin", token.id, token.expires)


def submit_live(parts: Service, stream: str) -> str | None:
    """Register the ``demo-live`` template unless there, and submit a job of it on ``stream`` unless one runs.

    Returns the new job's id (``None`` when one was queued or running, or no admin token exists); the caller
    wakes the runner.
    """
    with transaction(parts.sessions) as session:
        if session.scalar(select(PipelineTemplate.id).where(PipelineTemplate.name == LIVE_TEMPLATE)) is None:
            register(session, (files("lightpipe.service") / "demo-live.yaml").read_text(), "admin")
    with transaction(parts.sessions) as session:
        admin = _admin(session)
        running = select(Job.id).where(Job.pipeline == LIVE_TEMPLATE, Job.state.in_(("queued", "running"))).limit(1)
        if admin is None or session.scalar(running) is not None:
            return None
        return create_job(session, parts, admin, Submit(pipeline=LIVE_TEMPLATE, stream=stream)).id
