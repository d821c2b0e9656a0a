"""MX spot counts against each image's own rotation angle: an NXmx file whose goniometer jumped; impossible angles."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("scipy")

from lightpipe.core.pipeline import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation
from lightpipe.techniques.mx.writers import write_nxmx

#: 6 images of 160 x 160 pixels, 0.25 deg each, about 15 spots per image.
SIM = RotationSimParams(name="jump", images=6, shape=(160, 160), distance_m=0.05, omega_start_deg=30.0,
                        omega_increment_deg=0.25)
TABLE = ["spot_count", "image", "rotation_angle", "spot_rotation_angle", "spot_image", "spot3d_z",
         "spot3d_rotation_angle", "spot3d_first_image", "spot3d_last_image"]


@pytest.fixture(scope="module")
def sim() -> RotationSimulation:
    return RotationSimulation(SIM)


def _with_angles(sim: RotationSimulation, path: Path, angles: list[float]) -> Path:
    """An NXmx file of the rotation whose goniometer says ``angles`` (deg), one per image, at each image's start."""
    write_nxmx(path, sim)
    with h5py.File(path, "a") as f:
        omega = "entry/sample/transformations/omega"
        attrs = dict(f[omega].attrs)
        del f[omega]
        f[omega] = np.asarray(angles)
        f[omega].attrs.update(attrs)
    return path


def _run(path: Path, out: Path, table: dict | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    doc = {"version": 2, "name": "mx", "source": {"use": "hdf5", "params": {"path": str(path)}},
           "stages": {"spots": {"use": "dispersion_spots"}, "table": {"use": "spot_table", "params": table or {}}},
           "sinks": [{"use": "nexus", "fields": [f"table.{k}" for k in TABLE]}]}
    with LocalEngine() as engine:
        [scan] = engine.run(load_pipeline(doc), out).scans
    if scan.ledger.state == "failed":
        return scan, {}
    with h5py.File(scan.files[0]) as f:
        assert list(f["entry/table"].attrs["axes"]) == ["rotation_angle"]
        return scan, {k: f["entry/table"][k][()] for k in TABLE}


def test_spot_counts_are_plotted_against_each_images_own_angle(sim: RotationSimulation, tmp_path: Path) -> None:
    angles = [30.0, 30.25, 30.5, 32.0, 32.25, 32.5]  # the goniometer stopped after image 3 and jumped 1.25 deg
    _, table = _run(_with_angles(sim, tmp_path / "jump.nxs", angles), tmp_path / "out")
    np.testing.assert_array_equal(table["image"], np.arange(1, 7))
    np.testing.assert_allclose(table["rotation_angle"], np.array(angles) + 0.125)  # each image's middle
    assert table["spot_count"].sum() > 6 * 5
    np.testing.assert_allclose(table["spot_rotation_angle"], np.array(angles)[table["spot_image"] - 1] + 0.125)
    # a 3-D spot on images 1 to 3 lies between their middles, one on images 4 to 6 past the jump
    angle, z = table["spot3d_rotation_angle"], table["spot3d_z"]
    before, after = table["spot3d_last_image"] <= 3, table["spot3d_first_image"] >= 4
    assert before.any() and after.any()
    np.testing.assert_allclose(angle[before], 30.0 + (z[before] - 0.5) * 0.25)
    np.testing.assert_allclose(angle[after], 32.0 + (z[after] - 3.5) * 0.25)
    # each image's width given as a parameter wins over the angles' usual step
    _, table = _run(tmp_path / "jump.nxs", tmp_path / "width", {"omega_increment_deg": 0.1})
    np.testing.assert_allclose(table["rotation_angle"], np.array(angles) + 0.05)


@pytest.mark.parametrize("angles, message", [
    ([30.0, 30.25, 30.5, 30.25, 32.25, 32.5], "do not turn one way: image 3 starts at 30.5 deg and image 4 at 30.25 "
                                              "deg; check the rotation axis in the file"),
    ([30.0, 30.25, 30.5, 32.0, 32.25, 32.5, 32.75], "gives 7 rotation angles .omega_deg., one per image, but has 6 "
                                                    "images"),
])
def test_angles_that_cannot_be_the_images_fail_the_scan_saying_why(sim: RotationSimulation, tmp_path: Path,
                                                                   angles: list[float], message: str) -> None:
    scan, _ = _run(_with_angles(sim, tmp_path / "bad.nxs", angles), tmp_path / "out")
    assert scan.ledger.state == "failed" and scan.ledger.written == 0
    assert scan.ledger.error is not None and re.search(message, scan.ledger.error)
    # giving the rotation as parameters is the way out the message names
    scan, table = _run(tmp_path / "bad.nxs", tmp_path / "given", {"omega_start_deg": 30.0, "omega_increment_deg": 0.25})
    assert scan.ledger.state != "failed"
    np.testing.assert_allclose(table["rotation_angle"], 30.0 + (np.arange(6) + 0.5) * 0.25)
