"""MX spot finding against DIALS itself: the same strong spots, per image and joined across images, on the same images.

DIALS runs in its own Python through its command-line programs
(:mod:`lightpipe.techniques.mx.dials`). Without ``dials.find_spots`` these
tests are skipped with the reason, unless ``LIGHTPIPE_REQUIRE_DIALS=1`` makes
that a failure (CI that installs ``python3-dials``).
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("scipy")

from lightpipe.core.pipeline import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.mx.dials import DialsSpots, dials_python, find_spots_with_dials
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation
from lightpipe.techniques.mx.stages import DispersionParams
from lightpipe.techniques.mx.writers import write_cbf_series, write_nxmx

pytestmark = pytest.mark.dials

if dials_python() is None:
    if os.environ.get("LIGHTPIPE_REQUIRE_DIALS") == "1":
        raise RuntimeError("LIGHTPIPE_REQUIRE_DIALS=1 but dials.find_spots is not on PATH; apt-get install python3-dials")
    pytest.skip("dials.find_spots is not installed (apt-get install python3-dials)", allow_module_level=True)

#: A small rotation: 8 images of 384 x 384 pixels, about 45 spots each.
SIM = RotationSimParams(name="dials", images=8, shape=(384, 384), distance_m=0.08)
#: Not DIALS's defaults everywhere, so that each parameter is seen to be passed on.
PARAMS = DispersionParams(kernel_size=(2, 3), sigma_background=5.0, sigma_strong=3.5, min_local=4, min_spot_size=2,
                          global_threshold=3)
#: For 3-D spots, a peak-centroid distance that drops some: 173 spots with it taken in 3-D (as DIALS), 182 in x, y only.
PARAMS_3D = PARAMS.model_copy(update={"min_spot_size": 3, "max_separation": 0.6})
#: What spot_table writes of the 3-D spots.
SPOTS_3D = ["spot3d_x", "spot3d_y", "spot3d_z", "spot3d_intensity", "spot3d_first_image", "spot3d_last_image",
            "spot3d_bbox_x0", "spot3d_bbox_x1", "spot3d_bbox_y0", "spot3d_bbox_y1"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rotation")
    sim = RotationSimulation(SIM)
    write_cbf_series(folder / "cbf", sim)
    write_nxmx(folder / "rotation.nxs", sim)
    return folder


@pytest.fixture(scope="module")
def dials_spots(images: Path) -> DialsSpots:
    return find_spots_with_dials(sorted((images / "cbf").glob("*.cbf")), images / "dials", PARAMS)


def _lightpipe_table(source: dict[str, object], out: Path, params: DispersionParams = PARAMS) -> dict[str, np.ndarray]:
    # spot_table's filters of 3-D spots: DIALS applies the same spotfinder.filter values to them
    joined = {"min_spot_size": params.min_spot_size, "max_spot_size": params.max_spot_size,
              "max_separation": params.max_separation}
    doc = {"version": 2, "name": "mx", "source": source,
           "stages": {"spots": {"use": "dispersion_spots", "params": params.model_dump()},
                      "table": {"use": "spot_table", "params": joined}},
           "sinks": [{"use": "nexus", "fields": ["table.spot_count", "table.image", "table.spot_image", "table.spot_x",
                                                 "table.spot_y", "table.spot_intensity",
                                                 *(f"table.{k}" for k in SPOTS_3D)]}]}
    with LocalEngine() as engine:
        [scan] = engine.run(load_pipeline(doc), out).scans
    assert scan.ledger.failed == []
    with h5py.File(scan.files[0]) as f:
        return {k: f["entry/table"][k][()] for k in f["entry/table"]}


def test_the_same_strong_spots_as_dials(images: Path, dials_spots: DialsSpots, tmp_path: Path) -> None:
    ours = _lightpipe_table({"use": "image_series", "params": {"path": str(images / "cbf" / "*.cbf")}}, tmp_path)
    per_image = np.bincount(dials_spots.image, minlength=SIM.images + 1)[1:]
    assert per_image.sum() >= SIM.images * 20
    # counts: within 2 % per image and overall (equal here: the same algorithm on the same pixels)
    np.testing.assert_allclose(ours["spot_count"], per_image, rtol=0.02, atol=0)
    matched = 0
    for image in range(1, SIM.images + 1):
        mine = ours["spot_image"] == image
        theirs = dials_spots.image == image
        distance = np.hypot(ours["spot_x"][mine][:, None] - dials_spots.x[theirs][None, :],
                            ours["spot_y"][mine][:, None] - dials_spots.y[theirs][None, :])
        nearest = distance.min(axis=0)
        assert np.all(nearest <= 0.5), f"image {image}: DIALS spots with no lightpipe spot within 0.5 px"
        matched += len(nearest)
        order = distance.argmin(axis=0)
        np.testing.assert_allclose(ours["spot_intensity"][mine][order], dials_spots.intensity[theirs], rtol=1e-9)
    assert matched == len(dials_spots.x)


def test_dials_reads_the_nxmx_file_as_the_cbf_files(images: Path, dials_spots: DialsSpots, tmp_path: Path) -> None:
    from_nexus = find_spots_with_dials([images / "rotation.nxs"], tmp_path, PARAMS)
    np.testing.assert_array_equal(from_nexus.image, dials_spots.image)
    np.testing.assert_allclose(from_nexus.x, dials_spots.x, atol=1e-9)
    np.testing.assert_allclose(from_nexus.y, dials_spots.y, atol=1e-9)
    ours = _lightpipe_table({"use": "hdf5", "params": {"path": str(images / "rotation.nxs")}}, tmp_path / "ours")
    np.testing.assert_array_equal(ours["spot_count"], np.bincount(from_nexus.image, minlength=SIM.images + 1)[1:])


def test_the_same_3d_spots_as_dials(images: Path, tmp_path: Path) -> None:
    """DIALS's default spot finding (force_2d=False): strong pixels joined across images, filtered as a whole."""
    theirs = find_spots_with_dials(sorted((images / "cbf").glob("*.cbf")), tmp_path / "dials", PARAMS_3D,
                                   force_2d=False)
    ours = _lightpipe_table({"use": "image_series", "params": {"path": str(images / "cbf" / "*.cbf")}},
                            tmp_path / "ours", PARAMS_3D)
    # the same spots, in the same order (both number them by their first pixel in (image, row, column) order)
    assert len(ours["spot3d_x"]) == len(theirs.x) >= SIM.images * 15
    assert len(theirs.x) < ours["spot_count"].sum()  # fewer than the 2-D spots: reflections on two images are one
    assert np.any(theirs.bbox[:, 5] - theirs.bbox[:, 4] > 1)
    # centroids within 1e-6 px and images (the same arithmetic in another order), intensities to 1e-9
    np.testing.assert_allclose(ours["spot3d_x"], theirs.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["spot3d_y"], theirs.y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["spot3d_z"], theirs.z, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["spot3d_intensity"], theirs.intensity, rtol=1e-9)
    # and the same boxes: DIALS's z0 is the first image less one, its z1 the last image
    box = np.column_stack([ours[f"spot3d_bbox_{k}"] for k in ("x0", "x1", "y0", "y1")]
                          + [ours["spot3d_first_image"] - 1, ours["spot3d_last_image"]])
    np.testing.assert_array_equal(box, theirs.bbox)
