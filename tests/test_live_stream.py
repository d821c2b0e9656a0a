"""Live DECTRIS streams through whole pipelines: replay identity, spilling, both engines."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.core.event import Scan
from lightpipe.core.hooks import Progress
from lightpipe.engines.dask import DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource
from lightpipe.simulators.frames import FrameSimParams, write_nxmx
from lightpipe.sources.hdf5 import hdf5_defaults
from lightpipe.testing import run_stage

SIM = FrameSimParams(name="live", frames=37, darks=0, flats=0, shape=(48, 40), photons=80.0, seed=9)

STAGES = {
    "photons": {"use": "threshold", "params": {"threshold": 105.0}},
    "scalars": {"use": "frame_scalars"},
    "roi": {"use": "roi_sum", "params": {"y": [10, 30], "x": [8, 24]}},
    "binned": {"use": "bin", "params": {"factor": 2}},
    "powder": {"use": "sum_frames", "inputs": {"frame": "photons.frame"}},
}
FIELDS = ["binned.frame", "scalars.total", "scalars.com_x", "roi.sum", "powder.sum", "powder.count"]


def _pipeline(source: dict[str, Any], first: dict[str, Any] | None = None) -> Any:
    """The test pipeline; ``first`` is a stage run on every frame before the others."""
    stages = dict(STAGES)
    if first is not None:
        stages = {"first": first, **STAGES, "photons": {**STAGES["photons"], "inputs": {"frame": "first.frame"}}}
    doc = {"version": 1, "name": "live", "source": source, "stages": stages,
           "sinks": [{"use": "nexus", "fields": FIELDS}], "engine": {"chunk_size": 5, "chunk_seconds": 0.2}}
    return load_pipeline(doc)


def _datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        for group in ("binned", "scalars", "roi", "powder", "events"):
            for name, ds in f["entry"][group].items():
                found[f"{group}/{name}"] = np.asarray(ds[()])  # a title is text
    return found


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nxmx(tmp_path_factory.mktemp("rec") / "live.h5", SIM)


@pytest.fixture
def simulator(recorded: Path, request: pytest.FixtureRequest) -> Iterator[EigerSimulator]:
    fmt = getattr(request, "param", "v1")
    with EigerSimulator(FrameSource.from_hdf5(str(recorded)), stream_port=0, rest_port=0, format=fmt) as sim:
        yield sim


def _acquire_when_connected(sim: EigerSimulator, nimages: int) -> threading.Thread:
    thread = threading.Thread(target=sim.acquire, args=(nimages,), daemon=True)
    thread.start()  # arm waits until the pipeline's receiver has connected
    return thread


@pytest.mark.parametrize("simulator", ["v1", "v2"], indirect=True)
def test_live_run_equals_the_replay_of_the_recorded_file(simulator: EigerSimulator, recorded: Path, tmp_path: Path) -> None:
    version = simulator.format
    live = _pipeline({"use": "eiger", "params": {"endpoint": simulator.stream_endpoint, "version": version,
                                                  "max_scans": 1}})
    thread = _acquire_when_connected(simulator, SIM.frames)
    with LocalEngine() as engine:
        (scan,) = engine.run(live, tmp_path / "live").scans
    thread.join(10)
    assert scan.ledger.state == "completed" and scan.ledger.written == SIM.frames and not scan.ledger.failed
    assert scan.scan.startswith("series_")
    with h5py.File(scan.files[0]) as f:
        meta = f["entry/process/scan_metadata"]
        assert meta["distance_m"][()] == pytest.approx(0.2) and list(meta["frame_shape"][()]) == [48, 40]
    replay = live.with_source("hdf5", hdf5_defaults(str(recorded)))
    with LocalEngine(chunk_size=7) as engine:
        (file_scan,) = engine.run(replay, tmp_path / "replay").scans
    a, b = _datasets(scan.files[0]), _datasets(file_scan.files[0])
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key  # byte-identical


def test_live_run_on_dask_and_the_lag_is_reported(simulator: EigerSimulator, tmp_path: Path, dask_client: Any) -> None:
    simulator.rate_hz = 200.0
    live = _pipeline({"use": "eiger", "params": {"endpoint": simulator.stream_endpoint, "max_scans": 1}})
    seen: list[dict[str, Any]] = []
    thread = _acquire_when_connected(simulator, SIM.frames)
    with DaskEngine(client=dask_client) as engine:
        (scan,) = engine.run(live, tmp_path, progress=lambda p: seen.append(dict(p.source))).scans
    thread.join(10)
    assert scan.ledger.written == SIM.frames and scan.ledger.state == "completed"
    assert seen and all({"held", "spilled", "lag_s"} <= s.keys() for s in seen)


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_results_come_back_while_the_scan_is_acquired(simulator: EigerSimulator, tmp_path: Path, engine: str,
                                                      request: pytest.FixtureRequest) -> None:
    # 37 frames: 7.4 s of acquisition, chunks of 5 frames. The first result typically comes 0.5 s after the
    # first frame; the acquisition is long enough that it may take 5.9 s (12x) on a loaded machine
    simulator.rate_hz = 5.0
    live = _pipeline({"use": "eiger", "params": {"endpoint": simulator.stream_endpoint, "max_scans": 1}})
    collected: list[tuple[float, int]] = []
    ended: list[float] = []

    def acquire() -> None:
        simulator.acquire(SIM.frames)
        ended.append(time.monotonic())

    thread = threading.Thread(target=acquire, daemon=True)
    thread.start()
    runner = LocalEngine(workers=2) if engine == "local" else DaskEngine(client=request.getfixturevalue("dask_client"))
    with runner:
        (scan,) = runner.run(live, tmp_path, progress=lambda p: collected.append((time.monotonic(), p.done))).scans
    thread.join(10)
    assert scan.ledger.written == SIM.frames and scan.ledger.state == "completed"
    # with several chunks in flight, finished ones are collected (written, shown) while frames still arrive
    first = min(t for t, done in collected if done > 0)
    assert first < ended[0] - 1.5  # held back until the window filled, the first came after the last frame


def test_a_stage_reads_the_detectors_pixel_mask_from_the_series_header(simulator: EigerSimulator, recorded: Path,
                                                                        tmp_path: Path) -> None:
    bad = np.zeros((48, 40), np.uint32)
    bad[:, 5] = 1  # a dead column
    bad[20, 30] = 8  # a noisy pixel
    simulator.pixel_mask = bad
    simulator.set_stream_config("header_detail", "all")
    doc = {"version": 1, "name": "masked",
           "source": {"use": "eiger", "params": {"endpoint": simulator.stream_endpoint, "max_scans": 1}},
           "stages": {"profile": {"use": "radial_profile", "params": {"bins": 8},
                                  "inputs": {"frame": "source.frame", "mask": "scan.pixel_mask"}}},
           "sinks": [{"use": "nexus", "fields": ["profile.profile"]}]}
    thread = _acquire_when_connected(simulator, SIM.frames)
    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(doc), tmp_path).scans
    thread.join(10)
    assert scan.ledger.state == "completed" and scan.ledger.written == SIM.frames
    with h5py.File(recorded) as f:
        frames = f["entry/data/data"][()]
    with h5py.File(scan.files[0]) as f:  # the beam centre the series header gave
        meta = {k: f[f"entry/process/scan_metadata/{k}"][()] for k in ("beam_center_x_px", "beam_center_y_px")}
    expected = run_stage("radial_profile", {"bins": 8}, [{"frame": fr, "mask": bad != 0} for fr in frames],
                         Scan("s", {"data": range(len(frames))}, meta))
    unmasked = run_stage("radial_profile", {"bins": 8}, [{"frame": fr, "mask": np.zeros((48, 40), bool)}
                                                        for fr in frames], Scan("s", {"data": range(len(frames))}, meta))
    with h5py.File(scan.files[0]) as f:
        profiles = f["entry/profile/profile"][()]
    assert np.allclose(profiles, [e["profile"] for e in expected])
    assert not np.allclose(profiles, [u["profile"] for u in unmasked])  # the mask did change the profile

    # a series whose header does not carry the mask: that scan fails and says why
    simulator.set_stream_config("header_detail", "basic")
    thread = _acquire_when_connected(simulator, 4)
    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(doc), tmp_path / "basic").scans
    thread.join(10)
    assert scan.ledger.state == "failed"
    assert "reads 'scan.pixel_mask'" in str(scan.ledger.error) and "header_detail 'all'" in str(scan.ledger.error)


def test_a_slow_pipeline_spills_to_disk_and_loses_nothing(simulator: EigerSimulator, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    live = _pipeline(
        {"use": "eiger", "params": {"endpoint": simulator.stream_endpoint, "max_scans": 1, "memory_mb": 0.01,
                                    "spill_dir": str(spill)}},
        first={"use": "stages_for_tests:Sleep", "params": {"seconds": 0.02}},
    )
    peak = {"spilled": 0, "lag_s": 0.0}
    segments: set[str] = set()

    def progress(p: Progress) -> None:
        peak["spilled"] = max(peak["spilled"], p.source.get("spilled", 0))
        peak["lag_s"] = max(peak["lag_s"], p.source.get("lag_s", 0.0))
        segments.update(x.name for x in spill.iterdir())

    thread = _acquire_when_connected(simulator, SIM.frames)
    with LocalEngine(chunk_size=2) as engine:
        (scan,) = engine.run(live, tmp_path / "out", progress=progress).scans
    thread.join(10)
    assert scan.ledger.written == SIM.frames and not scan.ledger.failed
    assert peak["spilled"] > 10 and peak["lag_s"] > 0.05 and segments  # frames waited on disk
    assert list(spill.iterdir()) == []  # and were removed once processed
