"""Geometry and rotation from real MX files: NXmx and DECTRIS HDF5, miniCBF headers, in whatever units they use."""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("scipy")

from lightpipe.cli.main import main
from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader, hdf5_defaults
from lightpipe.sources.units import convert
from lightpipe.sources.image_series import ImageSeriesParams, ImageSeriesReader, pilatus_metadata
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation
from lightpipe.techniques.mx.writers import write_cbf_series, write_nxmx

#: A small rotation that does not start at zero: 96 x 128 pixels of 75 um at 60 mm, 0.25 deg per image from 30 deg.
SMALL = {"images": 5, "shape": (96, 128), "distance_m": 0.06, "omega_start_deg": 30.0, "omega_increment_deg": 0.25}
#: What every reader of these files must find, in lightpipe's names and units.
GEOMETRY = ("distance_m", "x_pixel_size_m", "y_pixel_size_m", "beam_center_x_px", "beam_center_y_px", "wavelength_a",
            "omega_start_deg", "omega_increment_deg")


@pytest.fixture(scope="module")
def sim() -> RotationSimulation:
    return RotationSimulation(RotationSimParams(**SMALL))


def _hdf5_metadata(path: Path) -> dict:
    reader = HDF5Reader(HDF5Params(**hdf5_defaults(str(path))))
    reader.close()
    return reader.scan.metadata


def _series_metadata(pattern: Path) -> dict:
    return ImageSeriesReader(ImageSeriesParams(path=str(pattern))).scan.metadata


def _restate(f: h5py.File, path: str, value: object, unit: str) -> None:
    """Replace a dataset by ``value`` in ``unit``, keeping its other attributes (NeXus transformations)."""
    attrs = dict(f[path].attrs)
    del f[path]
    f[path] = value
    f[path].attrs.update({**attrs, "units": unit})


def _assert_geometry(meta: dict, sim: RotationSimulation) -> None:
    for key in GEOMETRY:
        assert meta[key] == pytest.approx(sim.metadata()[key], rel=1e-9), key


def test_units_convert_to_lightpipes() -> None:
    assert convert(150.0, "mm", "length") == 0.15
    assert convert(172.0, "\u00b5m", "length") == 172e-6
    assert convert(0.09763, "nm", "length", scale=1e-10) == pytest.approx(0.9763)
    assert convert(np.pi / 2, "rad", "angle") == pytest.approx(90.0)
    assert convert(0.5, "deg.", "angle") == 0.5 and convert(2.0, "degrees", "angle") == 2.0
    assert convert(12.7, "keV", "energy") == 12700.0 and convert(100.0, "ms", "time") == 0.1
    assert convert(7.5, "mm", "pixel", pixel_size_m=75e-6) == pytest.approx(100.0)
    assert convert(3.0, None, "length", scale=1e-10) == 3.0  # no unit: already in the key's
    with pytest.raises(ValueError, match="'furlong'"):
        convert(1.0, "furlong", "length")
    with pytest.raises(ValueError, match="'s' is a unit of time, not of length"):
        convert(1.0, "s", "length")
    with pytest.raises(ValueError, match="needs the pixel size"):
        convert(1.0, "mm", "pixel")


def test_nxmx_file_gives_geometry_and_rotation(sim: RotationSimulation, tmp_path: Path) -> None:
    meta = _hdf5_metadata(write_nxmx(tmp_path / "rot.nxs", sim))
    _assert_geometry(meta, sim)
    assert meta["rotation_axis"] == "omega" and meta["count_time_s"] == 0.1
    assert "omega_deg" not in meta  # evenly spaced: start and increment say it all


def test_nxmx_file_in_other_units_gives_the_same(sim: RotationSimulation, tmp_path: Path) -> None:
    path = write_nxmx(tmp_path / "mm.nxs", sim)
    bx, by = sim.beam_center
    with h5py.File(path, "a") as f:
        det = "entry/instrument/detector/"
        _restate(f, det + "distance", 60.0, "mm")
        _restate(f, det + "x_pixel_size", 75.0, "um")
        _restate(f, det + "y_pixel_size", 0.075, "mm")
        _restate(f, det + "beam_center_x", bx * 0.075, "mm")  # a beam centre as a length, from the first pixel
        _restate(f, det + "beam_center_y", by * 75e-6, "m")
        _restate(f, det + "count_time", 100.0, "ms")
        _restate(f, "entry/instrument/beam/incident_wavelength", 0.09763, "nm")
        _restate(f, "entry/sample/transformations/omega", np.deg2rad(f["entry/sample/transformations/omega"][()]), "rad")
        _restate(f, "entry/sample/transformations/omega_increment_set", np.deg2rad(0.25), "rad")
        f["entry/instrument/beam/incident_energy"] = 12.7
        f["entry/instrument/beam/incident_energy"].attrs["units"] = "keV"
    meta = _hdf5_metadata(path)
    _assert_geometry(meta, sim)
    assert meta["count_time_s"] == pytest.approx(0.1) and meta["energy_ev"] == pytest.approx(12700.0)


def test_unknown_unit_leaves_that_value_out_with_a_warning(sim: RotationSimulation, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    path = write_nxmx(tmp_path / "odd.nxs", sim)
    with h5py.File(path, "a") as f:
        _restate(f, "entry/instrument/detector/distance", 6.0, "cubits")
        _restate(f, "entry/instrument/detector/x_pixel_size", 75e-6, "s")
    with caplog.at_level(logging.WARNING, logger="lightpipe.sources.hdf5"):
        meta = _hdf5_metadata(path)
    assert "distance_m" not in meta and "x_pixel_size_m" not in meta
    assert "unknown unit 'cubits'" in caplog.text and "'s' is a unit of time, not of length" in caplog.text
    assert meta["wavelength_a"] == pytest.approx(0.9763) and meta["omega_start_deg"] == 30.0  # the rest is read


def test_angles_not_evenly_spaced_are_kept_per_image(sim: RotationSimulation, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = write_nxmx(tmp_path / "gap.nxs", sim)
    angles = [30.0, 30.25, 30.5, 31.5, 31.75]  # the goniometer jumped after image 3
    with h5py.File(path, "a") as f:
        _restate(f, "entry/sample/transformations/omega", angles, "deg")
    with caplog.at_level(logging.WARNING, logger="lightpipe.sources.hdf5"):
        meta = _hdf5_metadata(path)
    assert meta["omega_deg"] == angles and meta["omega_start_deg"] == 30.0
    assert "omega_increment_deg" not in meta and "not evenly spaced" in caplog.text


def test_spacing_wins_over_a_stated_increment_that_disagrees(sim: RotationSimulation, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = write_nxmx(tmp_path / "stated.nxs", sim)
    with h5py.File(path, "a") as f:
        _restate(f, "entry/sample/transformations/omega_increment_set", 0.2, "deg")
    with caplog.at_level(logging.WARNING, logger="lightpipe.sources.hdf5"):
        assert _hdf5_metadata(path)["omega_increment_deg"] == 0.25
    assert "0.2 deg, is not the spacing of its angles, 0.25 deg" in caplog.text


def test_the_rotating_axis_is_found_along_depends_on(sim: RotationSimulation, tmp_path: Path) -> None:
    path = write_nxmx(tmp_path / "phi.nxs", sim)
    with h5py.File(path, "a") as f:
        gonio = f["entry/sample/transformations"]
        _restate(f, gonio["omega"].name, 90.0, "deg")  # omega parked, phi turns
        gonio["phi"] = np.deg2rad(10.0 + 0.1 * np.arange(5))
        gonio["phi"].attrs.update(units="rad", transformation_type="rotation", vector=[-1.0, 0, 0], depends_on="chi")
        gonio["chi"] = 0.0
        gonio["chi"].attrs.update(units="deg", transformation_type="rotation", vector=[0, 0, 1.0],
                                  depends_on="/entry/sample/transformations/omega")
        del f["entry/sample/depends_on"]
        f["entry/sample/depends_on"] = "/entry/sample/transformations/phi"
    meta = _hdf5_metadata(path)
    assert meta["rotation_axis"] == "phi"
    assert meta["omega_start_deg"] == pytest.approx(10.0) and meta["omega_increment_deg"] == pytest.approx(0.1)


def test_dectris_master_file_layout(sim: RotationSimulation, tmp_path: Path) -> None:
    path = write_nxmx(tmp_path / "scan_master.h5", sim)
    with h5py.File(path, "a") as f:  # as an EIGER writes it: goniometer group, detector_distance, float32 angles
        f.move("entry/instrument/detector/distance", "entry/instrument/detector/detector_distance")
        del f["entry/sample/transformations"], f["entry/sample/depends_on"]
        gonio = f.create_group("entry/sample/goniometer")
        gonio["omega"] = (30.0 + 0.25 * np.arange(5)).astype(np.float32)
        gonio["omega_range_average"] = np.float32(0.25)
        for name in ("omega", "omega_range_average"):
            gonio[name].attrs["units"] = "degree"
    _assert_geometry(_hdf5_metadata(path), sim)


def test_cbf_series_gives_geometry_and_rotation(sim: RotationSimulation, tmp_path: Path) -> None:
    write_cbf_series(tmp_path / "cbf", sim)
    meta = _series_metadata(tmp_path / "cbf" / "*.cbf")
    _assert_geometry(meta, sim)
    assert meta["count_time_s"] == 0.1


def test_pilatus_header_in_other_units() -> None:
    header = "\r\n".join((
        "# Pixel_size 172 um x 0.172 mm", "# Detector_distance 250.0 mm", "# Wavelength 0.1 nm",
        "# Beam_xy (17.2, 34.4) mm", "# Start_angle 0.01745329 rad", "# Angle_increment 100 mrad",
        "# Exposure_time 20 ms", "# Phi 7.0 deg."))
    meta = pilatus_metadata({"_array_data.header_contents": header})
    expected = {"x_pixel_size_m": 172e-6, "y_pixel_size_m": 172e-6, "distance_m": 0.25, "wavelength_a": 1.0,
                "beam_center_x_px": 100.0, "beam_center_y_px": 200.0, "omega_start_deg": 1.0,
                "omega_increment_deg": np.rad2deg(0.1), "count_time_s": 0.02}
    assert meta == pytest.approx(expected, rel=1e-6)


def test_pilatus_header_without_units_and_with_an_unknown_one(caplog: pytest.LogCaptureFixture) -> None:
    header = "# Detector_distance 0.2\r\n# Wavelength 1.2 furlongs\r\n# Start_angle 5"
    with caplog.at_level(logging.WARNING, logger="lightpipe.sources.image_series"):
        meta = pilatus_metadata({"_array_data.header_contents": header}, "x.cbf")
    assert meta == {"distance_m": 0.2, "omega_start_deg": 5.0}
    assert "x.cbf: '# Wavelength 1.2 furlongs' is left out" in caplog.text


def test_a_series_with_a_file_missing_gives_no_increment(sim: RotationSimulation, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    files = write_cbf_series(tmp_path / "cbf", sim)
    files[2].unlink()  # image 3 of 5 lost: the last file starts one image later than four images put it
    with caplog.at_level(logging.WARNING, logger="lightpipe.sources.image_series"):
        meta = _series_metadata(tmp_path / "cbf" / "*.cbf")
    assert meta["omega_start_deg"] == 30.0 and "omega_increment_deg" not in meta
    assert "starts at 31 deg, but 3 images of 0.25 deg from 30 deg put it at 30.75 deg" in caplog.text


def test_an_unreadable_first_file_moves_the_start_back(sim: RotationSimulation, tmp_path: Path) -> None:
    files = write_cbf_series(tmp_path / "cbf", sim)
    files[0].write_bytes(b"not a CBF file")
    meta = _series_metadata(tmp_path / "cbf" / "*.cbf")
    assert meta["first_file"] == str(files[1])
    assert meta["omega_start_deg"] == 30.0 and meta["omega_increment_deg"] == 0.25  # image 2's start, less one image


def test_mx_pipeline_on_real_files_gives_rotation_angles(sim: RotationSimulation, tmp_path: Path) -> None:
    pipeline = str(Path(__file__).parents[1] / "pipelines" / "mx-spotfinding.yaml")
    master = write_nxmx(tmp_path / "nxmx" / "rot_master.h5", sim)
    write_cbf_series(tmp_path / "cbf", sim)
    expected = 30.0 + (np.arange(1, 6) - 0.5) * 0.25
    counts = []
    for given, out, name in ((master, tmp_path / "out_nxmx", "rot"), (tmp_path / "cbf" / "*.cbf", tmp_path / "out_cbf",
                                                                      "rotation")):
        assert main(["run", pipeline, "--input", str(given), "-o", str(out), "-q"]) == 0
        with h5py.File(out / f"{name}.nxs", "r") as f:
            np.testing.assert_allclose(f["entry/table/rotation_angle"][()], expected)
            assert f["entry/table/spot_rotation_angle"].size == f["entry/table/spot_count"][()].sum()
            assert np.isfinite(f["entry/table/spot_rotation_angle"][()]).all()
            counts.append(f["entry/table/spot_count"][()])
    np.testing.assert_array_equal(counts[0], counts[1])  # the same images through either file format
    assert counts[0].sum() > 0
