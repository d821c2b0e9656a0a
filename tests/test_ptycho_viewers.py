"""Ptychography results as viewers read them: the phase image on axes in metres is the default plot.

silx (``silx.io.nxdata``, what ``silx view`` uses) opens the CXI and NeXus
files a short streaming pipeline writes, follows ``@default`` and must find a
valid NXdata whose signal is the 2-D object phase (rad) on 1-D axes in metres
that fit it. The axes are also checked against the simulation: the probe
position of each frame names the object pixel the probe's centre lit.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from silx.io.nxdata import get_default  # a test dependency: without silx these tests fail, they never skip

from lightpipe import load_pipeline
from lightpipe.core.event import Scan
from lightpipe.core.report import ScanReport
from lightpipe.core.sink import Sink
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.ptychography.cxi import (
    NEXUS_CLASSES,
    read_cxi,
    write_reconstruction,
    write_simulation_cxi,
)
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation
from lightpipe.testing import run_stage

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "ptycho-stream.yaml"
SIM = {"name": "small", "frame_shape": [64, 64], "distance_m": 1.0, "defocus_m": 2e-4, "n_positions": 25,
       "darks": 4, "seed": 3}
NAMES_NEXUS_RESERVES = {"errors", "data_errors", "phase_errors", "object_phase_errors"}


def phase_plot(path: Path) -> dict[str, Any]:
    """The default plot of ``path`` as silx finds it, checked to be a phase image on axes in metres."""
    with h5py.File(path, "r", locking=False) as f:
        nxdata = get_default(f)
        assert nxdata is not None, f"silx finds no valid default plot in {path.name}"
        signal = nxdata.signal
        assert signal.ndim == 2 and signal.dtype.kind == "f", (signal.name, signal.shape, signal.dtype)
        assert signal.attrs["units"] == "rad"
        axes = nxdata.axes
        assert len(axes) == 2 and all(axis is not None for axis in axes), nxdata.axes_dataset_names
        for axis, n in zip(axes, signal.shape):
            assert axis.ndim == 1 and len(axis) == n and axis.attrs["units"] == "m", (axis.name, axis.shape)
        assert not NAMES_NEXUS_RESERVES & set(nxdata.group), sorted(nxdata.group)
        return {"group": nxdata.group.name, "signal": signal[()], "y": axes[0][()], "x": axes[1][()]}


# ------------------------------------------------------------------------------- CXI files alone
@pytest.fixture(scope="module")
def scan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = PtychoSimParams(name="viewed", frame_shape=(32, 32), distance_m=0.5, defocus_m=1e-4, n_positions=6,
                             darks=2, seed=1)
    return write_simulation_cxi(tmp_path_factory.mktemp("cxi") / "viewed.cxi", params)


def test_cxi_groups_have_nexus_classes_and_the_frames_are_the_default_plot(scan_file: Path) -> None:
    with h5py.File(scan_file, "r", locking=False) as f:
        assert f["cxi_version"][()] == 160
        for name in ("entry_1", "entry_1/instrument_1", "entry_1/instrument_1/source_1",
                     "entry_1/instrument_1/detector_1", "entry_1/sample_1", "entry_1/data_1"):
            assert f[name].attrs["NX_class"] == NEXUS_CLASSES[name]
        assert f.attrs["default"] == "entry_1" and f["entry_1"].attrs["default"] == "data_1"
        detector = f["entry_1/instrument_1/detector_1"]
        for name, unit in (("distance", "m"), ("x_pixel_size", "m"), ("y_pixel_size", "m"), ("data", "counts"),
                           ("data_dark", "counts")):
            assert detector[name].attrs["units"] == unit
        assert f["entry_1/instrument_1/source_1/energy"].attrs["units"] == "J"
        assert f["entry_1/sample_1/geometry_1/translation"].attrs["units"] == "m"
        nxdata = get_default(f)
        assert nxdata is not None and nxdata.group.name == "/entry_1/data_1"
        assert nxdata.signal.shape == (6, 32, 32)  # the frames, through CXI's soft link


def test_cxi_reconstruction_is_the_default_plot_and_stays_cxi(scan_file: Path, tmp_path: Path) -> None:
    path = Path(tmp_path / "recon.cxi")
    path.write_bytes(scan_file.read_bytes())
    rng = np.random.default_rng(4)
    obj = np.exp(1j * rng.uniform(-3, 3, (40, 50))).astype(np.complex64)
    y, x = 1e-6 + 2e-8 * np.arange(40), -3e-6 + 3e-8 * np.arange(50)
    write_reconstruction(path, obj, np.ones((32, 32)), object_pixel_size_m=(2e-8, 3e-8), algorithm="DM**3",
                         errors={"fourier": [0.3, 0.2, 0.1], "iteration_seconds": [1.0, 1.0, 1.0]},
                         positions_px=np.zeros((6, 2)), axes_m=(y, x))
    plot = phase_plot(path)
    assert plot["group"] == "/entry_1/image_1"
    np.testing.assert_array_equal(plot["signal"], np.angle(obj).astype(np.float32))
    np.testing.assert_array_equal(plot["y"], y)
    np.testing.assert_array_equal(plot["x"], x)
    with h5py.File(path, "r", locking=False) as f:
        assert f["entry_1"].attrs["default"] == "image_1"
        assert f["entry_1/image_1/process_1"].attrs["NX_class"] == "NXcollection"  # an NXdata holds no NXprocess
        assert f["entry_1/image_1/process_1/errors/iteration_seconds"].attrs["units"] == "s"
        assert f["entry_1/image_1/x_pixel_size"].attrs["units"] == "m"
    recon = read_cxi(path).reconstruction  # CXI readers find what they always found
    assert recon is not None and np.array_equal(recon.object, obj)
    assert recon.errors["fourier"].tolist() == [0.3, 0.2, 0.1]


def test_cxi_axes_default_to_pixels_times_the_pixel_size_and_must_fit(tmp_path: Path) -> None:
    obj = np.ones((4, 5), np.complex64)
    path = write_reconstruction(tmp_path / "r.cxi", obj, np.ones((2, 2)), object_pixel_size_m=(1e-8, 2e-8),
                                algorithm="DM**1")
    plot = phase_plot(path)
    np.testing.assert_allclose(plot["y"], [0, 1e-8, 2e-8, 3e-8])
    np.testing.assert_allclose(plot["x"], 2e-8 * np.arange(5))
    with pytest.raises(ValueError, match="the object has 5 pixels along x but axes_m gives"):
        write_reconstruction(path, obj * 1j, np.ones((2, 2)), object_pixel_size_m=(1e-8, 2e-8), algorithm="DM**1",
                             axes_m=(np.zeros(4), np.zeros(3)))
    with h5py.File(path, "r", locking=False) as f:  # the refused reconstruction left the file as it was
        assert np.array_equal(f["entry_1/image_1/data"][()], obj) and f["entry_1"].attrs["default"] == "image_1"


# ------------------------------------------------------------------------------- a short pipeline
class LiveShapes(Sink):
    """Record the shapes of the reconstruction's results in every live update."""

    seen: list[dict[str, tuple[int, ...]]] = []

    def open(self, scan: Scan) -> None:
        pass

    def write(self, events: list[Any]) -> None:
        pass

    def update(self, results: dict[str, Any]) -> None:
        LiveShapes.seen.append({key: np.shape(value) for key, value in results.items() if key.startswith("recon.")})


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ScanReport, Path]:
    doc = copy.deepcopy(load_pipeline(PIPELINE).document)
    doc["source"]["params"] = SIM
    doc["stages"]["window"]["params"]["shape"] = [64, 64]
    doc["stages"]["frames"]["params"]["shape"] = [64, 64]
    for name in ("probe", "recon"):
        doc["stages"][name]["params"]["defocus_m"] = SIM["defocus_m"]
    doc["stages"]["recon"]["params"].update(chain="DM:4, ML:2", min_frames=8, probe_from_frames=8)
    doc["engine"] = {"chunk_size": 8}
    doc["sinks"] = [s for s in doc["sinks"] if s["use"] != "lavue"]
    doc["sinks"].append({"use": f"{__name__}:LiveShapes", "fields": ["recon.object_phase"]})
    LiveShapes.seen.clear()
    out = tmp_path_factory.mktemp("viewers")
    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(doc), out).scans
    assert scan.ledger.state == "completed" and not scan.ledger.failed
    return scan, out


def test_object_axes_put_each_probe_position_where_the_probe_was(streamed: tuple[ScanReport, Path]) -> None:
    scan, _ = streamed
    r = scan.results
    sim = PtychoSimulation(PtychoSimParams(**SIM))
    pixel = r["recon.object_pixel_size_m"]
    obj = r["recon.object"]
    assert r["recon.object_phase"].shape == obj.shape and r["recon.object_phase"].dtype == np.float32
    np.testing.assert_array_equal(r["recon.object_phase"], np.angle(obj).astype(np.float32))
    assert r["recon.object_y"].shape == (obj.shape[0],) and r["recon.object_x"].shape == (obj.shape[1],)
    # the reconstruction shares the simulation's origin (positions_px are the truth's), so object pixel j is
    # truth pixel j, which the probe's centre (pixel 32 of the window) lit when the window's corner was at j - 32
    np.testing.assert_allclose(r["recon.positions_px"], sim.recorded_positions_px, atol=1e-6)
    np.testing.assert_allclose(r["recon.object_y"] / pixel[0] + 32, np.arange(obj.shape[0]), atol=1e-6)
    np.testing.assert_allclose(r["recon.object_x"] / pixel[1] + 32, np.arange(obj.shape[1]), atol=1e-6)
    # each frame's position (m) names the object pixel under the probe's centre, to half a pixel
    positions_m = sim.recorded_positions_px * np.asarray(sim.object_pixel_size_m)
    centre = np.rint(r["recon.positions_px"]).astype(int) + 32
    assert np.all(np.abs(r["recon.object_y"][centre[:, 0]] - positions_m[:, 0]) <= pixel[0] / 2 + 1e-15)
    assert np.all(np.abs(r["recon.object_x"][centre[:, 1]] - positions_m[:, 1]) <= pixel[1] / 2 + 1e-15)
    np.testing.assert_allclose(np.diff(r["recon.probe_y"]), pixel[0])
    assert r["recon.probe_y"][32] == 0.0 and r["recon.probe_x"].shape == (64,)
    np.testing.assert_array_equal(r["recon.iteration"], np.arange(1, len(r["recon.fourier_error"]) + 1))


def test_live_updates_carry_the_phase_and_its_axes(streamed: tuple[ScanReport, Path]) -> None:
    assert len(LiveShapes.seen) >= 2  # updates at 8 and 24 frames
    for shapes in LiveShapes.seen:
        hy, hx = shapes["recon.object_phase"]
        assert shapes["recon.object_y"] == (hy,) and shapes["recon.object_x"] == (hx,)
        assert shapes["recon.object"] == (hy, hx)
        assert shapes["recon.iteration"] == shapes["recon.fourier_error"] != (0,)
        assert "recon.errors" not in shapes and "recon.phase" not in shapes
        assert shapes["recon.stalled"] == shapes["recon.probe_scale"] == () and shapes["recon.object_origin_m"] == (2,)


def test_cxi_file_of_the_pipeline_shows_the_phase(streamed: tuple[ScanReport, Path]) -> None:
    scan, out = streamed
    r = scan.results
    plot = phase_plot(out / "small.cxi")
    assert plot["group"] == "/entry_1/image_1"
    np.testing.assert_array_equal(plot["signal"], r["recon.object_phase"])
    np.testing.assert_array_equal(plot["y"], r["recon.object_y"])
    np.testing.assert_array_equal(plot["x"], r["recon.object_x"])
    with h5py.File(out / "small.cxi", "r", locking=False) as f:
        assert f["entry_1/process_1"].attrs["NX_class"] == "NXprocess"
        assert f["entry_1/instrument_1/detector_1/data"].attrs["units"] == "counts"


def test_nexus_file_of_the_pipeline_shows_the_phase(streamed: tuple[ScanReport, Path]) -> None:
    """The ``nexus`` sink plots the last stage's main result (``Port.main``) on its declared axes."""
    scan, out = streamed
    r = scan.results
    plot = phase_plot(out / "small.nxs")
    np.testing.assert_array_equal(plot["signal"], r["recon.object_phase"])
    np.testing.assert_array_equal(plot["y"], r["recon.object_y"])
    np.testing.assert_array_equal(plot["x"], r["recon.object_x"])
    # the object's frame: pixel size, origin and the positions on it, which give back the scan's positions
    sim = PtychoSimulation(PtychoSimParams(**SIM))
    with h5py.File(out / "small.nxs", "r", locking=False) as f:
        recon = f[plot["group"]]
        pixel, origin = recon["object_pixel_size_m"][()], recon["object_origin_m"][()]
        positions_m = recon["positions_px"][()] * pixel + origin
        assert not recon["stalled"][()] and recon["probe_scale"][()] == 1.0  # the estimate has the frames' power
    np.testing.assert_allclose(positions_m, sim.recorded_positions_px * np.asarray(sim.object_pixel_size_m),
                               rtol=1e-12, atol=1e-18)


def test_distributed_stage_gives_the_phase_on_its_axes() -> None:
    sim = PtychoSimulation(PtychoSimParams(**{**SIM, "n_positions": 16}))
    positions_m = sim.recorded_positions_px * np.asarray(sim.object_pixel_size_m)
    events = [{"frame": frame, "position_y_m": np.float64(y), "position_x_m": np.float64(x)}
              for frame, (y, x) in zip(sim.intensities(), positions_m)]
    out = run_stage("ptycho_distributed", {"chain": "DM:2", "parts": 2, "merge_every": 1}, events,
                    Scan("ptycho", {"data": range(16)}, sim.metadata()))
    assert isinstance(out, dict)
    obj, pixel = out["object"], out["object_pixel_size_m"]
    np.testing.assert_allclose(pixel, sim.object_pixel_size_m)
    np.testing.assert_array_equal(out["object_phase"], np.angle(obj).astype(np.float32))
    assert out["object_y"].shape == (obj.shape[0],) and out["object_x"].shape == (obj.shape[1],)
    # the object starts at the first window's corner: the probe's centre there is 32 pixels on
    first = positions_m.min(axis=0)
    np.testing.assert_allclose(out["object_y"], first[0] + (np.arange(obj.shape[0]) - 32) * pixel[0])
    np.testing.assert_allclose(out["object_x"], first[1] + (np.arange(obj.shape[1]) - 32) * pixel[1])
    np.testing.assert_allclose(out["object_origin_m"], first)
    assert not out["stalled"] and out["probe_scale"] == pytest.approx(1.0)  # the estimate has the frames' power
    np.testing.assert_array_equal(out["iteration"], [1, 2])
    assert out["fourier_error"].shape == (2,) and "errors" not in out
