"""CXI files: a simulated scan round-trips, links resolve, reconstructions are stored, and the cxi source runs,
with centred translations and a stored probe as users bring them."""
from __future__ import annotations

from pathlib import Path

import logging

import h5py
import numpy as np
import pytest
from silx.io.nxdata import get_default

from lightpipe import SourceError, load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.ptychography.cxi import (
    CXIParams,
    CXIReader,
    read_cxi,
    write_cxi,
    write_reconstruction,
    write_simulation_cxi,
)
from lightpipe.techniques.ptychography.optics import ELECTRON_VOLT_J
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation

PARAMS = PtychoSimParams(name="cxi_scan", frame_shape=(32, 32), distance_m=0.5, defocus_m=1e-4, n_positions=12,
                         darks=4, photons_per_frame=1e5, scan="fermat", seed=2)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_simulation_cxi(tmp_path_factory.mktemp("cxi") / "cxi_scan.cxi", PARAMS, compression="gzip")


def test_simulated_scan_round_trips(scan_file: Path) -> None:
    sim = PtychoSimulation(PARAMS)
    truth = sim.truth()
    data = read_cxi(scan_file)
    assert data.energy_ev == pytest.approx(1e4) and data.distance_m == 0.5
    assert data.pixel_size_m == (75e-6, 75e-6) and data.frame_shape == (32, 32)
    assert data.object_pixel_size_m == pytest.approx(truth["object_pixel_size_m"], rel=1e-12)
    np.testing.assert_allclose(data.positions_px, truth["positions_px"], rtol=1e-12)
    assert data.data is not None and data.darks is not None
    assert np.array_equal(data.data, np.stack([sim.frame(i)[1] for i in sim.streams["data"]]))
    assert np.array_equal(data.darks, np.stack([sim.frame(i)[1] for i in sim.streams["dark"]]))
    assert data.reconstruction is None
    assert PtychoSimParams(**data.simulation) == PARAMS  # the truth can be made again from the file
    lean = read_cxi(scan_file, frames=False)
    assert lean.data is None and lean.darks is None and lean.positions_m.shape == (12, 2)


def test_layout_and_soft_links(scan_file: Path) -> None:
    with h5py.File(scan_file, "r", locking=False) as f:
        assert f["cxi_version"][()] == 160
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(1e4 * ELECTRON_VOLT_J)
        assert f["entry_1/instrument_1/source_1/energy"].attrs["units"] == "J"
        for link, target in [
            ("entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data"),
            ("entry_1/data_1/translation", "/entry_1/sample_1/geometry_1/translation"),
        ]:
            soft = f.get(link, getlink=True)
            assert isinstance(soft, h5py.SoftLink) and soft.path == target
            assert np.array_equal(f[link][()], f[target][()])
        translation = f["entry_1/sample_1/geometry_1/translation"][()]
        assert translation.shape == (12, 3) and np.all(translation[:, 2] == 0)
        pixel = PtychoSimulation(PARAMS).object_pixel_size_m
        corners = PtychoSimulation(PARAMS).positions_px
        np.testing.assert_allclose(translation[:, 0], corners[:, 1] * pixel[1])  # CXI vectors are (x, y, z)
        assert f["entry_1/data_1/data"].shape == (12, 32, 32)
        assert f["entry_1/instrument_1/detector_1/data"].compression == "gzip"


def test_reconstruction_is_stored_and_replaced(tmp_path: Path) -> None:
    path = write_cxi(tmp_path / "r.cxi", np.ones((3, 8, 8), np.float32), np.zeros((3, 2)),
                     energy_ev=700.0, distance_m=0.1, pixel_size_m=30e-6)
    rng = np.random.default_rng(0)
    obj = np.exp(1j * rng.random((20, 24))).astype(np.complex64)
    probe = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
    write_reconstruction(path, obj * 0, probe, object_pixel_size_m=(1e-8, 1e-8), algorithm="first")
    write_reconstruction(path, obj, probe, object_pixel_size_m=(2e-8, 3e-8), algorithm="DM**100,ML**50",
                         errors={"fourier": [0.5, 0.2, 0.1]}, parameters={"probe_update": True},
                         positions_px=np.arange(6.0).reshape(3, 2))
    recon = read_cxi(path).reconstruction
    assert recon is not None
    assert np.array_equal(recon.object, obj) and np.allclose(recon.probe, probe.astype(np.complex64))
    assert recon.algorithm == "DM**100,ML**50" and recon.parameters == {"probe_update": True}
    assert recon.object_pixel_size_m == (2e-8, 3e-8)
    assert list(recon.errors) == ["fourier"] and recon.errors["fourier"].tolist() == [0.5, 0.2, 0.1]
    assert recon.positions_px is not None and recon.positions_px.shape == (3, 2)
    with h5py.File(path, "r", locking=False) as f:
        assert f["entry_1/image_1/data"].dtype == np.complex64
        assert f["entry_1/image_1/data_type"].asstr()[()] == "object"


def test_positions_that_do_not_match_the_frames_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"positions_m must be \(N, 2\) = \(3, 2\)"):
        write_cxi(tmp_path / "bad.cxi", np.ones((3, 8, 8)), np.zeros((3, 3)), energy_ev=700.0, distance_m=0.1,
                  pixel_size_m=30e-6)


def test_files_that_are_not_ptychography_cxi_are_explained(tmp_path: Path, nxmx_file: Path) -> None:
    with pytest.raises(SourceError, match="CXI file not found"):
        read_cxi(tmp_path / "missing.cxi")
    with pytest.raises(SourceError, match="is not a ptychography CXI file: it has no /entry_1/data_1/data"):
        read_cxi(nxmx_file)
    text = tmp_path / "notes.cxi"
    text.write_text("not hdf5")
    with pytest.raises(SourceError, match="cannot open"):
        CXIReader(CXIParams(path=str(text)))


def test_pipeline_reads_frames_and_positions_from_cxi(scan_file: Path, tmp_path: Path) -> None:
    doc = {
        "version": 1,
        "name": "cxi-scalars",
        "source": {"use": "cxi", "params": {"path": str(scan_file)}},
        "stages": {"s": {"use": "frame_scalars"}},
        "sinks": [{"use": "nexus", "fields": ["s.total", "source.position_y_m", "source.position_x_m"]}],
    }
    with LocalEngine(chunk_size=5) as engine:
        report = engine.run(load_pipeline(doc), tmp_path).scans[0]
    assert report.ledger.written == 12 and not report.ledger.failed
    data = read_cxi(scan_file)
    with h5py.File(report.files[0], "r", locking=False) as f:
        np.testing.assert_allclose(f["entry/s/total"][()], data.data.sum(axis=(1, 2)))
        np.testing.assert_allclose(f["entry/source/position_y_m"][()], data.positions_m[:, 0])
        np.testing.assert_allclose(f["entry/source/position_x_m"][()], data.positions_m[:, 1])
        pixel = f["entry/process/scan_metadata/object_pixel_size_m"][()]
        np.testing.assert_allclose(pixel, data.object_pixel_size_m)


def test_rows_a_run_did_not_write_are_not_read_as_frames(scan_file: Path, tmp_path: Path) -> None:
    """A file with ``frame_status`` (the cxi sink's): read_cxi skips rows not written, the cxi source fails them."""
    import shutil

    path = Path(shutil.copy(scan_file, tmp_path / "stopped.cxi"))
    status = np.zeros(12, np.int8)
    status[[3, 10, 11]] = [1, 2, 2]
    with h5py.File(path, "a", locking=False) as f:
        f["entry_1/instrument_1/detector_1/frame_status"] = status
    full, data = read_cxi(scan_file), read_cxi(path)
    assert data.data is not None and full.data is not None
    assert np.array_equal(data.data, full.data[status == 0])
    assert np.array_equal(data.positions_m, full.positions_m[status == 0])
    doc = {
        "version": 1,
        "name": "cxi-scalars",
        "source": {"use": "cxi", "params": {"path": str(path)}},
        "stages": {"s": {"use": "frame_scalars"}},
        "sinks": [{"use": "nexus", "fields": ["s.total"]}],
    }
    with LocalEngine(chunk_size=5) as engine:
        report = engine.run(load_pipeline(doc), tmp_path / "out").scans[0]
    assert report.ledger.received == 12 and report.ledger.written == 9  # the frames the file holds
    # the source numbers the darks first: frame row k is event darks + k
    assert sorted(e.index - PARAMS.darks for e in report.ledger.failed) == [3, 10, 11]
    assert all("its frame_status says it was not written" in e.message for e in report.ledger.failed)


def test_centred_translations_and_a_stored_probe_reconstruct_as_they_come(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A CXI file as other programs write it: translations centred on the scan (half of them negative) and the
    probe in ``source_1/illumination``. The reconstruction starts from that probe, places the object where the
    positions fall, and its files tie object, positions and pixel size together."""
    sim = PtychoSimulation(PtychoSimParams(name="centred", frame_shape=(32, 32), distance_m=0.5, defocus_m=1e-4,
                                           n_positions=16, photons_per_frame=1e6, seed=4))
    pixel = np.asarray(sim.object_pixel_size_m)
    positions_m = sim.recorded_positions_px * pixel
    positions_m -= positions_m.mean(axis=0)
    path = write_cxi(tmp_path / "centred.cxi", sim.intensities(), positions_m, energy_ev=1e4, distance_m=0.5,
                     pixel_size_m=75e-6, probe=3 * sim.probe)
    data = read_cxi(path)
    assert data.probe is not None and np.allclose(data.probe, 3 * sim.probe)
    assert (data.positions_px < 0).any()
    doc = {
        "version": 2,
        "name": "centred",
        "source": {"use": "cxi", "params": {"path": str(path)}},
        "stages": {"recon": {"use": "ptycho_reconstruction",
                             "inputs": {"frame": "source.frame", "position_y_m": "source.position_y_m",
                                        "position_x_m": "source.position_x_m"},
                             "params": {"chain": "DM:6, ML:2", "min_frames": 16}}},
        "sinks": [{"use": "cxi", "fields": ["source.frame", "source.position_y_m", "source.position_x_m",
                                            "recon.object"]},
                  {"use": "nexus", "fields": ["recon.object_phase", "recon.object_y", "recon.object_x",
                                              "recon.object_origin_m", "recon.positions_px", "recon.probe_scale",
                                              "recon.stalled", "recon.object_pixel_size_m"]}],
    }
    caplog.set_level(logging.INFO, logger="lightpipe.techniques.ptychography")
    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(doc), tmp_path / "out").scans
    assert scan.ledger.state == "completed" and not scan.ledger.failed
    r = scan.results
    # the stored probe was the guess, scaled to the frames' power (3x too strong), and that is said
    mean_photons = float(data.data.sum(axis=(1, 2), dtype=np.float64).mean())
    stored_power = float(np.sum(np.abs(data.probe) ** 2))
    assert r["recon.probe_scale"] == pytest.approx(np.sqrt(mean_photons / stored_power), rel=1e-4)
    assert r["recon.probe_scale"] < 0.34
    assert any(str(path) in m and "scaled by" in m for m in caplog.messages)
    assert not r["recon.stalled"]
    # the object sits where the centred positions fall: position = positions_px * pixel + origin
    origin = r["recon.object_origin_m"]
    np.testing.assert_allclose(r["recon.positions_px"] * pixel + origin, positions_m, atol=1e-15)
    assert (origin < 0).all()
    np.testing.assert_allclose(r["recon.object_y"][0], origin[0] - 16 * pixel[0])
    # both files carry the frame: CXI's image_1/origin and the axes; silx plots the phase on axes in metres
    recon = read_cxi(tmp_path / "out" / "centred.cxi").reconstruction
    assert recon is not None and recon.origin_m is not None
    np.testing.assert_allclose(recon.origin_m, origin)
    for name in ("centred.cxi", "centred.nxs"):
        with h5py.File(tmp_path / "out" / name, "r", locking=False) as f:
            plot = get_default(f)
            assert plot is not None and plot.signal.ndim == 2 and plot.signal.attrs["units"] == "rad"
            y, x = plot.axes
            np.testing.assert_allclose(y[()], r["recon.object_y"])
            np.testing.assert_allclose(x[()], r["recon.object_x"])
            assert y.attrs["units"] == "m" and x.attrs["units"] == "m"
    with h5py.File(tmp_path / "out" / "centred.cxi", "r", locking=False) as f:
        parameters = f["entry_1/image_1/process_1/parameters"].asstr()[()]
    assert '"stalled": false' in parameters and f'"probe_scale": {float(r["recon.probe_scale"])}' in parameters
