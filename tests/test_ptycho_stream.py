"""The streaming ptychography pipeline: reconstruction quality, live updates before the scan ends, CXI output, bad input.

Every run goes through ``pipelines/ptycho-stream.yaml`` on the local engine,
with a small simulated scan: 64 x 64 frames (1 m to the detector, the zone
plate 0.2 mm out of focus: 25.8 nm object pixels, the probe about 23 pixels
across), whose window and downsampled shape are the whole frame unless a
test says otherwise, so the reconstruction's grid is the simulation's.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightpipe import MapStage, Port, PipelineError, StageParams, load_pipeline, param
from lightpipe.core.event import Event, Scan
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.report import ScanReport
from lightpipe.engines.local import LocalEngine
from lightpipe.core.sink import Sink
from lightpipe.techniques.ptychography.cxi import read_cxi, write_reconstruction, write_simulation_cxi
from lightpipe.techniques.ptychography.metrics import object_error, probe_error
from lightpipe.techniques.ptychography.geometry import object_pixel_size
from lightpipe.techniques.ptychography.probe import probe_from_intensity
from lightpipe.techniques.ptychography.sim_source import PtychoSimReader
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation
from lightpipe.testing import run_stage

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "ptycho-stream.yaml"
SIM = {"name": "small", "frame_shape": [64, 64], "distance_m": 1.0, "defocus_m": 2e-4, "n_positions": 49,
       "darks": 4, "seed": 3}


def stream_doc(sim: dict[str, Any] | None = None, chain: str = "DM:5, ML:2", window: int = 64, shape: int = 64,
               **recon: Any) -> dict[str, Any]:
    """The example pipeline on a small scan: ``window`` is the crop, ``shape`` the downsampled frame."""
    doc = copy.deepcopy(load_pipeline(PIPELINE).document)
    doc["source"]["params"] = {**SIM, **(sim or {})}
    doc["stages"]["window"]["params"]["shape"] = [window, window]
    doc["stages"]["frames"]["params"]["shape"] = [shape, shape]
    defocus = doc["source"]["params"]["defocus_m"]
    for name in ("probe", "recon"):
        doc["stages"][name]["params"].update(defocus_m=defocus)
    doc["stages"]["recon"]["params"].update({"chain": chain, "min_frames": 8, "probe_from_frames": 8, **recon})
    doc["engine"] = {"chunk_size": 8, "chunk_seconds": 0.1}
    for sink in doc["sinks"]:
        if sink["use"] == "lavue":
            sink["params"] = {**sink["params"], "port": 0}
    return doc


def run(doc: dict[str, Any], out: Path) -> ScanReport:
    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(doc), out).scans
    return scan


# ---------------------------------------------------------------- quality and the CXI file
@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ScanReport, Path]:
    out = tmp_path_factory.mktemp("stream")
    return run(stream_doc(chain="DM:60, ML:20"), out), out


def test_pipeline_reconstructs_the_object(reconstructed: tuple[ScanReport, Path]) -> None:
    scan, _ = reconstructed
    assert scan.ledger.state == "completed" and scan.ledger.failed == []
    r = scan.results
    truth = PtychoSimulation(PtychoSimParams(**SIM)).truth()
    # same pixel size and origin as the simulation: the arrays overlap from pixel (0, 0)
    np.testing.assert_allclose(r["recon.positions_px"], truth["recorded_positions_px"], atol=1e-6)
    h, w = (min(a, b) for a, b in zip(r["recon.object"].shape, truth["object"].shape))
    lit = truth["illumination"][:h, :w] > 0.3 * truth["illumination"].max()
    error = object_error(r["recon.object"][:h, :w], truth["object"][:h, :w], lit)
    blank = object_error(np.ones((h, w), np.complex64), truth["object"][:h, :w], lit)
    assert error < 0.12 < 0.3 < blank, (error, blank)
    beam = np.abs(truth["probe"]) > 0.2 * np.abs(truth["probe"]).max()
    flat = probe_from_intensity(r["probe.mean"])  # the estimate without the defocus: far off
    assert probe_error(r["recon.probe"], truth["probe"], beam) < 0.5 < probe_error(flat, truth["probe"], beam)
    assert len(r["recon.fourier_error"]) >= 80 and not r["recon.diverged"]
    np.testing.assert_array_equal(r["recon.iteration"], np.arange(1, len(r["recon.fourier_error"]) + 1))
    assert r["recon.fourier_error"][-1] < r["recon.fourier_error"][0] / 3
    assert r["recon.frames"] == SIM["n_positions"]
    # the STXM map: one cell per position of the 7 x 7 raster (jitter may leave an empty row or column)
    assert r["stxm_map.map"].ndim == 2 and 40 <= np.isfinite(r["stxm_map.map"]).sum() <= 49


def test_cxi_file_holds_frames_positions_reconstruction_and_parameters(reconstructed: tuple[ScanReport, Path]) -> None:
    scan, out = reconstructed
    path = out / "small.cxi"
    assert path in scan.files
    data = read_cxi(path)
    r = scan.results
    sim = PtychoSimulation(PtychoSimParams(**SIM))
    assert data.data is not None and data.data.shape == (SIM["n_positions"], 64, 64)
    assert data.energy_ev == pytest.approx(10000.0) and data.distance_m == pytest.approx(1.0)
    assert data.pixel_size_m == pytest.approx((75e-6, 75e-6))  # neither cropped nor downsampled
    np.testing.assert_allclose(data.positions_px, sim.recorded_positions_px, rtol=1e-9)
    recon = data.reconstruction
    assert recon is not None
    np.testing.assert_array_equal(recon.object, r["recon.object"])
    np.testing.assert_array_equal(recon.probe, r["recon.probe_modes"])
    np.testing.assert_array_equal(recon.errors["fourier"], r["recon.fourier_error"])
    assert len(recon.errors["iteration_seconds"]) == len(r["recon.fourier_error"])
    np.testing.assert_array_equal(recon.positions_px, r["recon.positions_px"])
    assert recon.object_pixel_size_m == pytest.approx(sim.object_pixel_size_m)
    assert recon.algorithm.startswith("DM**") and recon.algorithm.endswith(",ML**20")
    assert recon.parameters["params"]["chain"] == "DM:60, ML:20" and recon.parameters["diverged"] is False
    assert recon.parameters["pipeline"]["stages"]["recon"]["use"] == "ptycho_reconstruction"
    assert recon.parameters["pipeline"]["source"]["params"]["n_positions"] == SIM["n_positions"]
    # the frames are the pre-processed ones: no dark or noise left (to FFT rounding; the dark alone would add
    # 6 %), so that their mean is the true mean intensity
    assert data.data.min() > -0.01
    truth = np.mean([sim.diffraction(k) for k in range(SIM["n_positions"])], axis=0)
    assert np.abs(data.data.mean(axis=0) - truth).sum() < 0.03 * truth.sum()


# ------------------------------------------------------------------------------- streaming
class UpdateTimes(Sink):
    """Record when each intermediate result arrives and how many frames it had."""

    seen: list[tuple[float, int, int]] = []
    opened: list[float] = []

    def open(self, scan: Scan) -> None:
        UpdateTimes.opened.append(time.monotonic())

    def write(self, events: list[Any]) -> None:
        pass

    def update(self, results: dict[str, Any]) -> None:
        if "recon.frames" in results:
            UpdateTimes.seen.append((time.monotonic(), int(results["recon.frames"]), len(results["recon.iteration"])))


def test_reconstruction_starts_before_the_scan_ends(tmp_path: Path) -> None:
    rate = 40.0
    doc = stream_doc({"rate_hz": rate, "n_positions": 36})
    doc["sinks"].append({"use": f"{__name__}:UpdateTimes", "fields": ["recon.object"]})
    UpdateTimes.seen.clear()
    UpdateTimes.opened.clear()
    scan = run(doc, tmp_path)
    assert scan.ledger.state == "completed" and scan.ledger.written == 36 + SIM["darks"]
    # the sink opens before the acquisition's clock starts, so the last frame came at least this late
    last_frame = UpdateTimes.opened[0] + (36 + SIM["darks"]) / rate
    early = [(t, frames, iteration) for t, frames, iteration in UpdateTimes.seen if t < last_frame]
    assert len(early) >= 2, UpdateTimes.seen
    assert all(frames < 36 for _, frames, _ in early)  # partial data, iterated on
    assert early[-1][2] > early[0][2] >= 2
    assert scan.results["recon.frames"] == 36  # the end has every frame


@pytest.mark.dask
def test_same_reconstruction_whatever_the_engine_and_chunk_size(tmp_path: Path, dask_client: Any) -> None:
    """Updates are counted in frames, not in the engine's batches: the streamed iterations are the same."""
    from lightpipe.engines.dask import DaskEngine

    doc = stream_doc({"n_positions": 25}, chain="DM:8, ML:4", final_iterations=4, catch_up=True)
    results = []
    for k, (engine, chunk) in enumerate([(LocalEngine(), 8), (LocalEngine(workers=2), 5),
                                         (DaskEngine(client=dask_client), 3)]):
        with engine:
            (scan,) = engine.run(load_pipeline({**doc, "engine": {"chunk_size": chunk}}), tmp_path / str(k)).scans
        results.append(scan.results)
    first = results[0]
    assert len(first["recon.iteration"]) == 12  # 2 updates (at 8 and 24 frames) of 2 iterations, then the rest of 12
    for other in results[1:]:
        np.testing.assert_array_equal(other["recon.object"], first["recon.object"])
        np.testing.assert_array_equal(other["recon.fourier_error"], first["recon.fourier_error"])


def test_simulated_source_streams_at_its_rate() -> None:
    reader = PtychoSimReader(PtychoSimParams(**{**SIM, "n_positions": 16, "rate_hz": 50.0}))
    t0 = time.monotonic()
    assert reader.ready(0, 5, 10.0) == 5
    assert 0.09 < time.monotonic() - t0 < 0.5  # the fifth event is acquired 0.1 s after the first call
    assert reader.ready(5, 20, 0.0) < 20  # no wait: only what has arrived
    assert reader.status()["held"] >= 5 and reader.status()["lag_s"] > 0
    worker = reader.for_chunk(0, 5)
    assert worker.ready(0, 20, 0.0) == 20 and worker.status() == {}  # workers read; they never wait
    assert [e.index for e in worker.read(0, 5)] == list(range(5))
    instant = PtychoSimReader(PtychoSimParams(**SIM))
    assert instant.ready(0, 53, 0.0) == 53 and instant.for_chunk(0, 53) is instant


# ------------------------------------------------------------------------------- geometry
def test_cropped_and_downsampled_frames_get_their_pixel_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # downsampling rings, leaving negative counts: tolerated here, the test is about geometry
    doc = stream_doc({"n_positions": 16}, window=56, shape=48, negative_tolerance=1e9)
    scan = run(doc, tmp_path)
    data = read_cxi(tmp_path / "small.cxi", frames=False)
    assert data.frame_shape == (48, 48)
    assert data.pixel_size_m == pytest.approx((75e-6 * 56 / 48, 75e-6 * 56 / 48))
    sim = PtychoSimulation(PtychoSimParams(**SIM))
    expected = sim.object_pixel_size_m[0] * 64 / 56  # the crop enlarges object pixels, downsampling does not
    assert scan.results["recon.object_pixel_size_m"] == pytest.approx([expected, expected])
    assert data.reconstruction is not None
    assert data.reconstruction.object_pixel_size_m == pytest.approx((expected, expected))
    assert data.object_pixel_size_m == pytest.approx((expected, expected))  # the file is self-consistent
    assert "check its object_pixel_size_m" not in caplog.text
    # the object pixel of the uncropped frames, given by hand: the reconstruction uses it, and the CXI sink says so
    doc["stages"]["recon"]["params"]["object_pixel_size_m"] = list(sim.object_pixel_size_m)
    with caplog.at_level(logging.WARNING):
        run(doc, tmp_path / "wrong")
    assert "check its object_pixel_size_m" in caplog.text
    # the sink's parameter wins over what it follows from the stages
    cxi = next(s for s in doc["sinks"] if s["use"] == "cxi")
    cxi["params"] = {"pixel_size_m": [1e-4, 2e-4]}
    run(doc, tmp_path / "given")
    assert read_cxi(tmp_path / "given" / "small.cxi", frames=False).pixel_size_m == pytest.approx((1e-4, 2e-4))


def test_frame_geometry_follows_crops_and_downsampling() -> None:
    doc = stream_doc(window=56, shape=28)
    doc["stages"]["binned"] = {"use": "bin", "inputs": {"frame": "frames.frame"}, "params": {"factor": 2}}
    doc["stages"]["corner"] = {"use": "crop", "inputs": {"frame": "binned.frame"},
                               "params": {"y": [2, 12], "x": [0, 8]}}
    pipeline = load_pipeline(doc)
    assert pipeline.frame_geometry("frames.frame", [64, 64]) == FrameGeometry((28, 28), (2.0, 2.0))
    assert pipeline.frame_geometry("binned.frame", [64, 64]) == FrameGeometry((14, 14), (4.0, 4.0))
    assert pipeline.frame_geometry("corner.frame", [64, 64]) == FrameGeometry((10, 8), (4.0, 4.0))
    assert pipeline.frame_geometry("window.frame", [64, 64]) == FrameGeometry((56, 56), (1.0, 1.0))
    assert pipeline.frame_geometry("source.frame", None) is None


@pytest.mark.parametrize(("pipeline", "frame", "window"), [
    ("ptycho-stream.yaml", "frames.frame", 72),  # centred_crop to 72, fft_downsample keeping 72
    ("ptycho-distributed.yaml", "downsampled.frame", 96),  # centred_crop to 96, fft_downsample to 64
])
def test_stages_take_the_detector_window_from_the_pipeline(pipeline: str, frame: str, window: int) -> None:
    """The window the example pipelines once wrote by hand (detector_window_px) follows from their stages."""
    loaded = load_pipeline(PIPELINE.parent / pipeline)
    scan = next(iter(loaded.create_source().scans())).scan
    geometry = loaded.frame_geometry(frame, scan.metadata["frame_shape"])
    assert geometry is not None and geometry.window_px == (window, window)
    recon = loaded.start_stage("recon", scan)
    assert recon.input_geometry["frame"] == geometry
    by_hand = [p * 128 / window for p in scan.metadata["object_pixel_size_m"]]  # the scan's 128-pixel frames
    assert object_pixel_size(scan.metadata, None, recon.input_geometry["frame"]) == pytest.approx(by_hand)


def test_object_pixel_size_sources() -> None:
    meta = {"object_pixel_size_m": [3e-8, 2e-8], "frame_shape": [128, 128], "energy_ev": 10000.0,
            "distance_m": 2.0, "y_pixel_size_m": 75e-6, "x_pixel_size_m": 75e-6}
    assert object_pixel_size(meta, (1e-8, 1e-8), FrameGeometry((96, 96))) == (1e-8, 1e-8)
    assert object_pixel_size(meta, None, FrameGeometry((96, 64))) == pytest.approx((4e-8, 4e-8))
    geometric = {k: v for k, v in meta.items() if k != "object_pixel_size_m"}
    assert object_pixel_size(geometric, None, None) == pytest.approx(PtychoSimulation(PtychoSimParams()).object_pixel_size_m)
    with pytest.raises(ValueError, match="set the stage's parameter object_pixel_size_m"):
        object_pixel_size({"frame_shape": [64, 64]}, None, None)


def test_initial_probe_from_the_mean_frame() -> None:
    sim = PtychoSimulation(PtychoSimParams(**SIM))
    truth = sim.probe
    mean = sim.intensities().mean(axis=0)
    lit = np.abs(truth) > 0.2 * np.abs(truth).max()
    flat = probe_from_intensity(mean)
    moved = probe_from_intensity(mean, SIM["defocus_m"], sim.wavelength_m, sim.object_pixel_size_m)
    for probe in (flat, moved):  # the far field holds the mean photon count of a frame
        assert np.sum(np.abs(probe) ** 2) == pytest.approx(mean.sum(), rel=1e-4)
    assert probe_error(moved, truth, lit) < 0.5 < probe_error(flat, truth, lit)
    stage = run_stage("initial_probe", {"defocus_m": SIM["defocus_m"]}, list(sim.intensities()[:10]), chunk_size=3,
                      scan=Scan("s", {"data": range(10)}, sim.metadata()))
    assert stage["probe"].dtype == np.complex64
    assert probe_error(stage["probe"], truth, lit) < 0.5
    with pytest.raises(ValueError, match="no photon"):
        probe_from_intensity(np.zeros((8, 8)))


# ------------------------------------------------------------------------------- bad input
class SpoilParams(StageParams):
    """Parameters of :class:`Spoil`."""

    nan_at: int = param(-1, "Event given a NaN pixel")
    negative_at: int = param(-1, "Event given strongly negative counts")
    cropped_at: int = param(-1, "Event whose frame loses a row")
    lost_position_at: int = param(-1, "Event whose position is NaN")


class Spoil(MapStage):
    """Spoil chosen events: a NaN pixel, negative counts, a frame of another shape, a lost position."""

    name = "spoil"
    Params = SpoilParams
    wants_index = True
    inputs = {"frame": Port(ndim=2, dtype="number"), "y": Port(ndim=0, dtype="float")}
    outputs = {"frame": Port(ndim=2, dtype="float32"), "y": Port(ndim=0, dtype="float")}

    def process(self, frame: Any, y: Any, index: int) -> dict[str, Any]:
        p = self.params
        out = np.array(frame, dtype=np.float32)
        if index == p.nan_at:
            out[3, 3] = np.nan
        if index == p.negative_at:
            out[:4] = -50.0
        if index == p.cropped_at:
            out = out[1:]
        return {"frame": out, "y": np.float64(np.nan) if index == p.lost_position_at else y}


def test_bad_frames_fail_alone(tmp_path: Path) -> None:
    doc = stream_doc({"n_positions": 25})
    first = SIM["darks"]
    spoilt = {"use": f"{__name__}:Spoil", "inputs": {"frame": "frames.frame", "y": "source.position_y_m"},
              "params": {"nan_at": first + 3, "negative_at": first + 9, "cropped_at": first + 12,
                         "lost_position_at": first + 20}}
    stages = list(doc["stages"].items())  # stages are listed in data-flow order: spoil just before the solver
    doc["stages"] = dict(stages[:-1] + [("spoilt", spoilt), stages[-1]])
    doc["stages"]["recon"]["inputs"] = {"frame": "spoilt.frame", "position_y_m": "spoilt.y",
                                        "position_x_m": "source.position_x_m"}
    cxi = next(s for s in doc["sinks"] if s["use"] == "cxi")
    cxi["fields"] = ["frames.frame", "source.position_y_m", "source.position_x_m", "recon.object"]
    scan = run(doc, tmp_path)
    assert scan.ledger.state == "completed"
    failed = {f.index: f for f in scan.ledger.failed}
    assert sorted(failed) == [first + 3, first + 9, first + 12, first + 20]
    assert all(f.stage == "recon" for f in failed.values())
    assert "NaN or infinite" in failed[first + 3].message
    assert "negative counts (down to -50" in failed[first + 9].message
    assert "63x64 frame but the reconstruction's frames are 64x64" in failed[first + 12].message
    assert "has no position" in failed[first + 20].message
    r = scan.results
    assert r["recon.frames"] == 21 and len(r["recon.positions_px"]) == 21  # the rest goes on
    assert np.all(np.isfinite(r["recon.object"]))
    assert read_cxi(tmp_path / "small.cxi").data.shape[0] == 21  # the file holds what was reconstructed


def _feed_all(params: dict[str, Any], scan: Scan, frames: np.ndarray, positions_m: np.ndarray,
              indices: list[int] | None = None) -> dict[str, Any]:
    first = scan.streams["data"].start
    chosen = range(len(frames)) if indices is None else indices
    events = [{"frame": frames[k], "position_y_m": np.float64(positions_m[k, 0]),
               "position_x_m": np.float64(positions_m[k, 1])} for k in chosen]
    return run_stage("ptycho_reconstruction", params, [Event(first + k, fields=e) for k, e in zip(chosen, events)],
                     scan=scan, chunk_size=8)


@pytest.fixture(scope="module")
def small_scan() -> tuple[PtychoSimulation, np.ndarray, np.ndarray]:
    sim = PtychoSimulation(PtychoSimParams(**{**SIM, "n_positions": 25}))
    frames = np.random.default_rng(1).poisson(sim.intensities()).astype(np.float32)
    positions_m = sim.recorded_positions_px * np.asarray(sim.object_pixel_size_m)
    return sim, frames, positions_m


PARAMS = {"chain": "DM:6, ML:2", "min_frames": 8, "probe_from_frames": 8, "defocus_m": SIM["defocus_m"]}


def test_more_frames_than_planned_positions_warn_and_grow_the_object(
        small_scan: tuple[PtychoSimulation, np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    sim, frames, positions_m = small_scan
    meta = {**sim.metadata(), "positions_px": sim.recorded_positions_px[:15].tolist()}
    planned_extent = Scan("short", sim.streams, {**sim.metadata()})
    with caplog.at_level(logging.WARNING):
        full = _feed_all(PARAMS, planned_extent, frames, positions_m)
        out = _feed_all(PARAMS, Scan("short", sim.streams, meta), frames, positions_m)
    assert "plans 15 positions but its data stream has 25 frames" in caplog.text
    assert "it and the frames after it are placed by their own positions" in caplog.text
    assert out["frames"] == 25 and out["object"].shape == full["object"].shape  # grown to hold them all
    np.testing.assert_allclose(out["positions_px"], full["positions_px"])
    assert np.all(np.isfinite(out["object"]))


def test_no_planned_positions_extent_from_the_frames(small_scan: tuple[PtychoSimulation, np.ndarray, np.ndarray]) -> None:
    sim, frames, positions_m = small_scan
    meta = {k: v for k, v in sim.metadata().items() if k != "positions_px"}
    out = _feed_all(PARAMS, Scan("unplanned", sim.streams, meta), frames, positions_m)
    assert out["frames"] == 25 and len(out["iteration"]) >= 8
    corners, shape = out["positions_px"], np.array(out["object"].shape)
    assert corners.min() >= 0 and np.all(np.rint(corners).max(axis=0) + 64 <= shape)


def test_frames_missing_from_the_stream_weigh_nothing(small_scan: tuple[PtychoSimulation, np.ndarray, np.ndarray]) -> None:
    sim, frames, positions_m = small_scan
    scan = Scan("holes", sim.streams, sim.metadata())
    kept = [k for k in range(25) if k % 3]
    out = _feed_all(PARAMS, scan, frames, positions_m, kept)
    assert out["frames"] == len(kept) == len(out["positions_px"])
    np.testing.assert_allclose(out["positions_px"], sim.recorded_positions_px[kept], atol=1e-9)
    assert np.all(np.isfinite(out["object"]))


def test_late_updates_run_as_one_without_catch_up(small_scan: tuple[PtychoSimulation, np.ndarray, np.ndarray]) -> None:
    sim, frames, positions_m = small_scan
    scan = Scan("late", sim.streams, sim.metadata())
    events = [Event(scan.streams["data"].start + k, fields={
        "frame": frames[k], "position_y_m": np.float64(positions_m[k, 0]), "position_x_m": np.float64(positions_m[k, 1])})
        for k in range(25)]
    # one call after all 25 frames: the updates due at 8 and 24 frames are late together
    every = run_stage("ptycho_reconstruction", PARAMS, events, scan=scan, chunk_size=25)
    merged = run_stage("ptycho_reconstruction", {**PARAMS, "catch_up": False}, events, scan=scan, chunk_size=25)
    on_time = run_stage("ptycho_reconstruction", {**PARAMS, "catch_up": False}, events, scan=scan, chunk_size=8)
    chain = 8  # DM:6, ML:2, all kept for the end (final_iterations 20); streamed iterations come on top
    assert len(every["iteration"]) == chain + 2 * 2 and len(merged["iteration"]) == chain + 2
    np.testing.assert_array_equal(on_time["fourier_error"], every["fourier_error"])  # on time, nothing is merged


def test_probe_guess_of_the_wrong_shape_falls_back_to_the_estimate(
        small_scan: tuple[PtychoSimulation, np.ndarray, np.ndarray], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    sim, frames, positions_m = small_scan
    scan = Scan("guess", sim.streams, sim.metadata())
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((32, 32), np.complex64))
    with caplog.at_level(logging.WARNING):
        out = _feed_all({**PARAMS, "probe_guess": str(wrong)}, scan, frames, positions_m)
    assert "is (32, 32) but the frames are 64x64; the probe is estimated" in caplog.text
    assert np.all(np.isfinite(out["object"])) and out["probe"].shape == (64, 64)
    # a CXI file's reconstruction is a guess too: the truth's probe, scaled to the frames
    cxi = write_simulation_cxi(tmp_path / "previous.cxi", PtychoSimParams(**{**SIM, "n_positions": 4}))
    write_reconstruction(cxi, sim.object, sim.probe * 3, object_pixel_size_m=sim.object_pixel_size_m, algorithm="DM**1")
    out = _feed_all({**PARAMS, "probe_guess": str(cxi), "chain": "DM:1", "final_iterations": 0,
                     "iterations_per_update": 0}, scan, frames, positions_m)
    assert probe_error(out["probe"], sim.probe) < 0.05


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_diverging_engine_keeps_the_last_good_object(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = stream_doc({"n_positions": 25}, chain="AP:30", engine_params={"AP": {"object_step": 1e6}})
    with caplog.at_level(logging.ERROR), pytest.warns(RuntimeWarning, match="AP is diverging"):
        scan = run(doc, tmp_path)
    assert scan.ledger.state == "completed" and scan.ledger.failed == []  # the scan and its other results go on
    r = scan.results
    assert r["recon.diverged"]
    assert "diverged" in caplog.text and "good iterations; the reconstruction stops there" in caplog.text
    assert np.all(np.isfinite(r["recon.object"])) and np.all(np.isfinite(r["recon.probe"]))
    assert 0 < len(r["recon.fourier_error"]) < 30 and np.all(np.isfinite(r["recon.fourier_error"]))
    assert len(r["recon.iteration"]) == len(r["recon.fourier_error"])
    assert np.isfinite(r["stxm_map.map"]).sum() == 25
    recon = read_cxi(tmp_path / "small.cxi", frames=False).reconstruction
    assert recon is not None and recon.parameters["diverged"] is True
    np.testing.assert_array_equal(recon.object, r["recon.object"])


def test_scan_without_geometry_is_a_clear_error(small_scan: tuple[PtychoSimulation, np.ndarray, np.ndarray]) -> None:
    sim, frames, positions_m = small_scan
    with pytest.raises(ValueError, match="set the stage's parameter object_pixel_size_m"):
        _feed_all(PARAMS, Scan("bare", sim.streams, {}), frames, positions_m)
    out = _feed_all({**PARAMS, "object_pixel_size_m": list(sim.object_pixel_size_m), "defocus_m": 0.0},
                    Scan("bare", sim.streams, {}), frames[:10], positions_m)
    assert out["frames"] == 10


@pytest.mark.parametrize(("params", "words"), [
    ({"chain": "DM:10, QQ:3"}, ["stages.recon.params.chain", "unknown algorithm 'QQ'"]),
    ({"chain": "DM:0"}, ["stages.recon.params.chain", "positive integer"]),
    ({"engine_params": {"DM": {"beta": 2}}}, ["stages.recon.params.engine_params", "beta", "alpha"]),
    ({"probe_guess": "/nonexistent/probe.npy"}, ["stages.recon.params.probe_guess", "does not exist"]),
    ({"object_pixel_size_m": [0, 4e-8]}, ["stages.recon.params.object_pixel_size_m", "> 0"]),
])
def test_bad_parameters_are_refused_at_load_time(params: dict[str, Any], words: list[str]) -> None:
    doc = stream_doc(**params)
    with pytest.raises(PipelineError) as info:
        load_pipeline(doc, file="ptycho-stream.yaml")
    for word in words:
        assert word in str(info.value)
