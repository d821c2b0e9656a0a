"""The engine guarantees, checked on the local engine and on a real Dask LocalCluster."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.core.hooks import Progress, RunHooks
from lightpipe.engines.dask import DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation

PIPELINE = Path(__file__).parents[1] / "pipelines" / "dark-flat-correction.yaml"
SMALL = {"frames": 45, "darks": 9, "flats": 7, "shape": [48, 56], "seed": 5, "rings_px": [8.0, 16.0]}


def _pipeline(**overrides: Any) -> Any:
    p = load_pipeline(PIPELINE)
    doc = dict(p.document)
    doc["source"] = {"use": "simulated_frames", "params": {**SMALL, **overrides}}
    doc["stages"] = {**doc["stages"], "roi": {"use": "roi_sum", "params": {"y": [20, 28], "x": [24, 32]}}}
    return load_pipeline(doc)


def _datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and not name.startswith(("entry/process", "entry/start", "entry/end")):
                found[name] = obj[()]
        f.visititems(visit)
    return found


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _run(engine: Any, pipeline: Any, out: Path) -> tuple[Any, dict[str, np.ndarray]]:
    checks: list[tuple[int, int, int, int]] = []

    def progress(p: Progress) -> None:
        led = p.ledger
        checks.append((led.received, led.written, len(led.failed), led.in_flight))

    with engine:
        report = engine.run(pipeline, out, progress=progress)
    for received, written, failed, in_flight in checks:
        assert received == written + failed + in_flight and in_flight >= 0
    (scan,) = report.scans
    return scan, _datasets(scan.files[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, np.ndarray]]:
    return _run(LocalEngine(), _pipeline(), tmp_path_factory.mktemp("local"))


def test_results_match_the_simulated_truth(reference: tuple[Any, dict[str, np.ndarray]]) -> None:
    scan, data = reference
    assert (scan.ledger.received, scan.ledger.written, scan.ledger.failed) == (61, 61, [])
    truth = FrameSimulation(FrameSimParams(**SMALL)).truth()
    good = ~truth["bad_pixels"]
    dark_err = np.abs(data["entry/dark/mean"] - truth["dark"])[good]
    assert dark_err.max() < 6 * 2.0 / np.sqrt(9)  # read noise 2 counts over 9 darks
    assert np.array_equal(data["entry/dark/mask"], truth["bad_pixels"])
    gain = truth["gain"] / np.median(truth["gain"][good])
    assert np.abs(data["entry/flat/flat"] - gain)[good].max() < 0.05
    expected = truth["signal"] * truth["monitor"][:, None, None] * np.median(truth["gain"][good])
    frames = data["entry/normalised/frame"]
    assert frames.shape == (45, 48, 56)
    bright = (truth["signal"] > 50) & good
    rel = np.abs(frames.mean(axis=0) - expected.mean(axis=0))[bright] / expected.mean(axis=0)[bright]
    assert np.median(rel) < 0.05
    assert np.array_equal(data["entry/events/index"], np.arange(16, 61))


@pytest.mark.parametrize("workers,chunk", [(1, 1), (1, 13), (3, 4)])
def test_local_engine_is_independent_of_chunks_and_threads(
    reference: tuple[Any, dict[str, np.ndarray]], tmp_path: Path, workers: int, chunk: int
) -> None:
    _, expected = reference
    _, data = _run(LocalEngine(workers=workers, chunk_size=chunk), _pipeline(), tmp_path)
    assert data.keys() == expected.keys()
    for key in expected:
        assert _same(data[key], expected[key]), key


@pytest.mark.dask
@pytest.mark.parametrize("chunk", [5, 64])
def test_dask_engine_writes_identical_results(
    reference: tuple[Any, dict[str, np.ndarray]], tmp_path: Path, dask_client: Any, chunk: int
) -> None:
    _, expected = reference
    scan, data = _run(DaskEngine(client=dask_client, chunk_size=chunk), _pipeline(), tmp_path)
    assert data.keys() == expected.keys()
    for key in expected:
        assert _same(data[key], expected[key]), key
    with h5py.File(scan.files[0]) as f:
        frame = f["entry/normalised/frame"]
        assert frame.is_virtual  # workers wrote composite files, the scan file maps them
        sources = {vs.file_name for vs in frame.virtual_sources()}
    parts = list((tmp_path / "simulated_parts").glob("*.h5"))
    assert 1 <= len(parts) <= 2 and len(sources) == len(parts)  # one file per worker, not per event


def _failing_pipeline() -> Any:
    doc = dict(_pipeline().document)
    stages = dict(doc["stages"])
    picky = {"use": "stages_for_tests:RefuseBright", "inputs": {"frame": "normalised.frame", "monitor": "source.monitor"}}
    items = list(stages.items())
    at = [k for k, _ in items].index("normalised") + 1
    doc["stages"] = dict(items[:at] + [("picky", picky)] + items[at:])
    doc["sinks"] = [{"use": "nexus", "fields": ["picky.frame", "roi.sum", "scalars.total"]}]
    return load_pipeline(doc)


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_stage_failing_on_some_events_fails_only_those(tmp_path: Path, engine: str, request: Any) -> None:
    eng = LocalEngine(chunk_size=4) if engine == "local" else DaskEngine(client=request.getfixturevalue("dask_client"))
    scan, data = _run(eng, _failing_pipeline(), tmp_path)
    monitor = FrameSimulation.monitor(np.arange(45))
    bad = set((np.flatnonzero(monitor > 1.09) + 16).tolist())
    assert bad and len(bad) < 45
    assert {f.index for f in scan.ledger.failed} == bad
    assert all(f.stage == "picky" and "above 1.09" in f.message for f in scan.ledger.failed)
    assert scan.ledger.written == 61 - len(bad)
    status = data["entry/events/status"]
    assert set((np.flatnonzero(status) + 16).tolist()) == bad
    assert set(data["entry/failed_events/index"].tolist()) == bad
    rows = np.array(sorted(bad)) - 16
    assert np.isnan(data["entry/picky/frame"][rows]).all()
    assert np.isnan(data["entry/roi/sum"][rows]).all()  # the failed event's other outputs are not kept either
    good = np.setdiff1d(np.arange(45), rows)
    assert np.isfinite(data["entry/roi/sum"][good]).all()


def test_a_scan_that_cannot_finish_is_closed_with_its_state(tmp_path: Path) -> None:
    doc = dict(_pipeline(darks=0).document)
    with LocalEngine() as engine:
        scan = engine.run(load_pipeline(doc), tmp_path).scans[0]
    assert scan.ledger.state == "failed"
    assert "stage 'dark' needs events of stream dark but scan 'simulated' has none" in str(scan.ledger.error)
    with h5py.File(scan.files[0]) as f:
        assert f["entry/process/state"][()] == b"failed"
        assert b"has none" in f["entry/process/error"][()]


def test_failure_in_the_middle_of_a_scan_accounts_for_every_event(tmp_path: Path) -> None:
    class Stopping(LocalEngine):
        """Loses its executor after some chunks, as a cluster going away would."""

        def execute(self, tasks: Any, max_tasks: int, policy: str) -> Any:
            for n, result in enumerate(super().execute(tasks, max_tasks, policy)):
                if n == 3 and result.start > 20:  # the fourth chunk of the data pass
                    raise ConnectionError("scheduler lost")
                yield result

    with Stopping(chunk_size=4) as engine:
        scan = engine.run(_pipeline(), tmp_path).scans[0]
    led = scan.ledger
    assert led.state == "failed" and "ConnectionError: scheduler lost" in str(led.error)
    assert led.received == led.written + len(led.failed) and led.in_flight == 0
    assert led.written > 0 and any(f.stage == "scan" for f in led.failed)


def test_the_file_opens_on_the_powder_pattern(reference: tuple[Any, dict[str, np.ndarray]]) -> None:
    scan, _ = reference
    with h5py.File(scan.files[0]) as f:
        assert f.attrs["default"] == "entry" and f["entry"].attrs["default"] == "pattern"
        pattern = f["entry/pattern"]
        assert pattern.attrs["signal"] == "intensity" and list(pattern.attrs["axes"]) == ["radius"]
        group = f["entry/normalised"]  # the corrected frames, one row per event
        assert group.attrs["NX_class"] == "NXdata" and group.attrs["signal"] == "frame"
        assert list(group.attrs["axes"]) == ["index", ".", "."]
        assert f["entry/process/version"][()].decode() and f["entry/process_corrected/program"][()] == b"dark_correction"


class _Updates(RunHooks):
    """Records the intermediate results of every solver update, in the order they come."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def intermediate_result(self, scan: str, results: dict[str, Any]) -> None:
        self.seen.append(dict(results))


@pytest.mark.dask
def test_solvers_update_once_per_chunk_in_acquisition_order(dask_client: Any, tmp_path: Path) -> None:
    doc = dict(load_pipeline(Path(__file__).parents[1] / "pipelines" / "beam-spot.yaml").document)
    doc["source"] = {**doc["source"], "params": {**doc["source"]["params"], "frames": 40}}
    doc["engine"] = {"chunk_size": 4}  # ten chunks of data, most of them in flight at once on two workers
    pipeline = load_pipeline(doc)
    runs = {}
    for name, engine in (("local", LocalEngine()), ("dask", DaskEngine(client=dask_client))):
        updates = _Updates()
        with engine:
            engine.run(pipeline, tmp_path / name, hooks=[updates])
        runs[name] = updates.seen
    local, dask = runs["local"], runs["dask"]
    assert len(local) == 40 // 4  # one update per chunk of data frames
    assert [u["spot.iterations"] for u in local] == sorted(u["spot.iterations"] for u in local)
    assert len(dask) == len(local)
    for a, b in zip(local, dask):  # the same fit after each chunk, bit for bit
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
