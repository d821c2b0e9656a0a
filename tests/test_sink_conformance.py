"""The sink protocol, checked on every registered sink through a real pipeline run.

A new sink must add an entry to ``SINKS``: the parameters to run it with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightpipe import MapStage, Port, ReduceStage, StageParams, load_pipeline, param
from lightpipe.core import registry
from lightpipe.engines import get_engine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation

#: Registered sink name -> parameters for the conformance run.
SINKS: dict[str, dict[str, Any]] = {
    "nexus": {"compression": "gzip"},
    "preview": {"every": 3},
    "command": {"command": "echo {scan}"},
    "lavue": {"host": "127.0.0.1", "port": 0, "summary": "{scan}_liveview.json"},
    "cxi": {"compression": "gzip"},
    "cxi_peaks": {"hits_only": False},
    "tiff_slices": {},
}
#: Sinks of per-scan volumes: they get the stack of the scan's checked frames as a 3-D result.
VOLUME_SINKS = {"tiff_slices"}

SIM = FrameSimParams(name="sinks", frames=10, darks=3, flats=0, shape=(16, 20), scans=2, seed=9)
LIMIT = 1.09


class FailParams(StageParams):
    """Parameters of :class:`FailAbove`."""

    limit: float = param(description="Events whose monitor is above this fail")


class FailAbove(MapStage):
    """Fail the events whose monitor is above a limit; pass the others' frames on as float32."""

    Params = FailParams
    inputs = {"frame": Port(ndim=2), "monitor": Port(ndim=0, dtype="float")}
    outputs = {"frame": Port(ndim=2, dtype="float32", unit="counts")}

    def process(self, frame: Any, monitor: Any) -> dict[str, Any]:
        if monitor > self.params.limit:
            raise ValueError(f"monitor {monitor} is above {self.params.limit}")
        return {"frame": frame.astype(np.float32)}


class StackFrames(ReduceStage[list[tuple[int, np.ndarray]]]):
    """Stack the scan's frames, in acquisition order, into a volume (a stand-in for a reconstruction)."""

    wants_index = True
    inputs = {"frame": Port(ndim=2, dtype="float32")}
    outputs = {"volume": Port(ndim=3, dtype="float32", scan=True)}

    def partial(self, frame: Any) -> list[tuple[int, np.ndarray]]:
        return [(0, np.asarray(frame))]

    def merge(self, left: list[tuple[int, np.ndarray]], right: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
        return left + right

    def finish(self, total: list[tuple[int, np.ndarray]] | None) -> dict[str, Any]:
        return {"volume": np.stack([frame for _, frame in total or []])}


def test_every_registered_sink_has_a_conformance_entry() -> None:
    missing = set(registry.names("sinks")) - set(SINKS)
    assert not missing, f"add entries for {sorted(missing)} to SINKS in {__file__}"


@pytest.mark.parametrize("name", registry.names("sinks"))
def test_sink_writes_files_and_survives_failed_events(name: str, tmp_path: Path) -> None:
    if name not in SINKS:
        pytest.fail(f"sink {name!r} is registered but has no entry in SINKS of {__file__}; add one")
    doc = {
        "version": 1,
        "name": "sink-conformance",
        "source": {"use": "simulated_frames", "params": SIM.model_dump()},
        "stages": {
            "dark": {"use": "dark_statistics", "stream": "dark"},
            "checked": {"use": f"{__name__}:FailAbove", "params": {"limit": LIMIT}},
        },
        "sinks": [{"use": name, "params": SINKS[name]}],
        "engine": {"chunk_size": 4},
    }
    if name in VOLUME_SINKS:
        doc["stages"]["stack"] = {"use": f"{__name__}:StackFrames", "inputs": {"frame": "checked.frame"}}
        doc["sinks"][0]["fields"] = ["stack.volume"]
    monitor = FrameSimulation.monitor(np.arange(SIM.frames))
    failed = [SIM.darks + i for i in np.flatnonzero(monitor > LIMIT)]
    assert 0 < len(failed) < SIM.frames  # the run must mix failed and good events
    with get_engine("local") as engine:
        report = engine.run(load_pipeline(doc), tmp_path)
    assert [s.scan for s in report.scans] == ["sinks_000", "sinks_001"]
    for scan in report.scans:
        assert [f.index for f in scan.ledger.failed] == failed
        assert scan.ledger.written == SIM.darks + SIM.frames - len(failed)
        assert scan.files, f"sink {name!r} returned no files from close"
        missing = [str(path) for path in scan.files if not Path(path).is_file()]
        assert not missing, f"sink {name!r} returned files that do not exist: {missing}"
