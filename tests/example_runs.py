"""Run the example pipelines of ``pipelines/`` small, and check result files with tools lightpipe did not write.

Shared by the tests that run the examples (``test_example_pipelines.py``,
``test_viewers.py``) and usable by hand::

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); import example_runs as e; \
        print(e.run_small(e.PIPELINES[0], 'out').report.files)"

The runs are the examples as they stand with their sizes cut down, so a test
of every example stays quick: 12 frames from ``simulated_frames``, 16 positions
and a ``DM:5, ML:2`` chain for ptychography, one series of 12 frames from the
EIGER simulator for a live stream, and any free port for the Lavue publisher.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightpipe import load_pipeline
from lightpipe.core.event import Scan
from lightpipe.core.hooks import RunHooks
from lightpipe.core.pipeline import Pipeline
from lightpipe.core.report import RunReport
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource

#: The example pipelines, by file.
PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml"))
#: Frames of a small run from simulated frames or from the simulated EIGER.
SMALL_FRAMES = 12
#: Scan positions and engine chain of a small ptychography run.
SMALL_POSITIONS = 16
SMALL_CHAIN = "DM:5, ML:2"


def small_document(path: Path, endpoint: str | None = None) -> dict[str, Any]:
    """The document of the example ``path`` with its sizes cut down for a quick run.

    Parameters
    ----------
    path
        An example pipeline file.
    endpoint
        For a pipeline reading a live EIGER stream: the simulator's stream endpoint.
    """
    doc = dict(load_pipeline(path).document)
    params = doc["source"].get("params", {})
    use = doc["source"]["use"]
    if use == "simulated_frames":
        doc["source"] = {**doc["source"], "params": {**params, "frames": SMALL_FRAMES}}
    elif use == "ptycho_sim":
        doc["source"] = {**doc["source"], "params": {**params, "n_positions": SMALL_POSITIONS}}
        for stage in doc["stages"].values():
            if "chain" in stage.get("params", {}):
                stage["params"] = {**stage["params"], "chain": SMALL_CHAIN}
    elif use == "rotation_sim":
        doc["source"] = {**doc["source"], "params": {**params, "images": SMALL_FRAMES, "shape": [256, 256]}}
    elif use in ("xrf_sim", "scanning_sim"):
        doc["source"] = {**doc["source"], "params": {**params, "map_shape": [3, 4] if use == "xrf_sim" else [4, 5]}}
    elif use == "tomo_sim":
        doc["source"] = {**doc["source"], "params": {**params, "shape": [16, 32], "projections": 37, "darks": 2,
                                                       "flats": 2}}
    elif use == "powder_sim":  # a 3 x 4 map instead of 5 x 5
        doc["source"] = {**doc["source"], "params": {**params, "map_shape": [3, 4], "darks": 2}}
    elif use == "eiger":
        if endpoint is None:
            raise ValueError(f"{path.name} reads a live EIGER stream: give the simulator's endpoint")
        doc["source"] = {**doc["source"], "params": {**params, "endpoint": endpoint, "max_scans": 1}}
    for sink in doc.get("sinks", []):
        if sink["use"] == "lavue":  # any free port: the example's port may be taken on this machine
            sink["params"] = {**sink.get("params", {}), "port": 0}
    return doc


@contextmanager
def eiger_series(frames: int) -> Iterator[str]:
    """A simulated EIGER that streams one series of ``frames`` frames; yields its stream endpoint."""
    simulator = EigerSimulator(FrameSource.from_simulator(), stream_port=0, rest_port=0).start()
    try:
        threading.Thread(target=simulator.acquire, args=(frames,), daemon=True).start()
        yield simulator.stream_endpoint
    finally:
        simulator.stop()


@dataclass
class ExampleRun:
    """A small run of an example: the pipeline as run, what the run reported, and each scan's metadata."""

    pipeline: Pipeline
    report: RunReport
    metadata: dict[str, dict[str, Any]]


class _ScanMetadata(RunHooks):
    """Keeps each scan's metadata as the source gave it, for checks of what the result file says about it."""

    def __init__(self) -> None:
        self.metadata: dict[str, dict[str, Any]] = {}

    def scan_started(self, scan: Scan, passes: int) -> None:
        self.metadata[scan.name] = dict(scan.metadata)


def run_small(path: Path, output_dir: str | Path) -> ExampleRun:
    """Run the example ``path`` small (:func:`small_document`) on the local engine, writing to ``output_dir``."""
    if load_pipeline(path).document["source"]["use"] == "eiger":
        with eiger_series(SMALL_FRAMES) as endpoint:
            return _run(load_pipeline(small_document(path, endpoint), file=str(path)), output_dir)
    return _run(load_pipeline(small_document(path), file=str(path)), output_dir)


def _run(pipeline: Pipeline, output_dir: str | Path) -> ExampleRun:
    hook = _ScanMetadata()
    with LocalEngine() as engine:
        report = engine.run(pipeline, output_dir, hooks=[hook])
    return ExampleRun(pipeline, report, hook.metadata)


@dataclass
class Validation:
    """What a NeXus validator reported on one file: each message prefixed with the HDF5 path it concerns."""

    validator: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    """Gathers the validator's warnings and errors, each with the path of the item last announced."""

    # the validator announces each item at the CRITICAL level before what it found about it
    HEADER = re.compile(r"^\s*(?:Field|Link|NX\w+): (/\S*)$")

    def __init__(self, validation: Validation) -> None:
        super().__init__(logging.DEBUG)
        self.validation = validation
        self.path = "/"

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        header = self.HEADER.match(message)
        if header:
            self.path = header.group(1)
        elif record.levelno == logging.ERROR:
            self.validation.errors.append(f"{self.path}: {message.strip()}")
        elif record.levelno == logging.WARNING:
            self.validation.warnings.append(f"{self.path}: {message.strip()}")


def validate_nexus(path: str | Path) -> Validation:
    """Check ``path`` against the NeXus base classes with nexusformat's validator (``nxcheck``).

    nexusformat ships the NXDL definitions it checks against, so this runs
    offline. ``"."`` in an NXdata group's ``@axes`` is allowed, as NXdata says.

    Parameters
    ----------
    path
        A NeXus/HDF5 file.

    Returns
    -------
    Validation
        Its errors and warnings, each as ``"/hdf5/path: message"``.
    """
    import nexusformat
    from nexusformat.nexus import validate

    validation = Validation(f"nexusformat {nexusformat.__version__} (NXDL {_nxdl_version()})")
    logger = validate.logger
    handlers, level = logger.handlers[:], logger.level
    collect = _Collect(validation)
    logger.handlers = [collect]
    logger.setLevel(logging.WARNING)  # the headers are CRITICAL: they pass, the info messages do not
    try:
        counts = validate.validate_file(str(path))
    finally:
        logger.handlers, logger.level = handlers, level
    if counts is None:  # the file could not be opened or walked: the reason was logged as an error
        validation.errors.append(f"{path}: not validated")
    return validation


def _nxdl_version() -> str:
    from nexusformat.nexus.utils import get_definitions

    return (get_definitions() / "NXDL_VERSION").read_text().strip()
