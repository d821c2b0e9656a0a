"""MX spot finding: the dispersion criterion, spots against the simulator's truth, the files it writes, bad input."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from lightpipe.core.errors import LightpipeError, PipelineError
from lightpipe.core.pipeline import load_pipeline
from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader, hdf5_defaults
from lightpipe.sources.image_series import ImageSeriesParams, ImageSeriesReader, read_image
from lightpipe.techniques.mx import dispersion
from lightpipe.techniques.mx.dispersion import find_spots, strong_pixels, strong_pixels_numpy
from lightpipe.techniques.mx.join import join_images
from lightpipe.techniques.mx.rotation import rotation_of
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation
from lightpipe.techniques.mx.stages import DispersionSpots, SpotTable
from lightpipe.techniques.mx.writers import write_cbf_series, write_nxmx
from lightpipe.testing import check_stage, run_stage

#: A small rotation: 256 x 256 pixels of 75 um at 60 mm, 0.5 deg per image.
SMALL = {"images": 4, "shape": (256, 256), "distance_m": 0.06}


@pytest.fixture(scope="module")
def sim() -> RotationSimulation:
    return RotationSimulation(RotationSimParams(**SMALL))


def naive_strong(image: np.ndarray, valid: np.ndarray, k: tuple[int, int], gain: float, nb: float, ns: float,
                 threshold: float, min_local: int) -> np.ndarray:
    """The dispersion criterion pixel by pixel, straight from its definition (variance / mean of each box)."""
    ky, kx = k
    out = np.zeros(image.shape, bool)
    for j in range(image.shape[0]):
        for i in range(image.shape[1]):
            box = (slice(max(j - ky, 0), j + ky + 1), slice(max(i - kx, 0), i + kx + 1))
            values = image[box][valid[box]].astype(np.float64)
            m = len(values)
            if not valid[j, i] or m < min_local or m < 2 or image[j, i] <= threshold:
                continue
            mean = values.mean()
            if mean <= 0:
                continue
            dispersion_index = values.var(ddof=1) / mean
            out[j, i] = (dispersion_index > gain * (1 + nb * np.sqrt(2 / (m - 1)))
                         and image[j, i] > mean + ns * np.sqrt(gain * mean))
    return out


@pytest.mark.parametrize("kernel, gain, min_local, holes", [
    ((3, 3), 1.0, 2, 0.05), ((3, 3), 1.0, 2, 0.0), ((1, 2), 1.7, 0, 0.05), ((2, 1), 0.5, 5, 0.05),
    ((8, 1), 1.0, 2, 0.05),  # a window of 17 rows: summed by cumulative sums, not shifted adds
])
@pytest.mark.parametrize("find", [strong_pixels, strong_pixels_numpy])  # compiled where Numba is, and NumPy's
def test_strong_pixels_follow_the_definition_across_strips(monkeypatch: pytest.MonkeyPatch, kernel: tuple[int, int],
                                                           gain: float, min_local: int, holes: float,
                                                           find: Callable[..., np.ndarray]) -> None:
    monkeypatch.setattr(dispersion, "STRIP_ROWS", 16)  # several strips on a small image: their seams are checked
    rng = np.random.default_rng(3)
    image = rng.poisson(8, (50, 37)).astype(np.int32)
    image[10:13, 20:23] += 120
    image[40, 5] += 60
    image[:3, :] += rng.poisson(40, (3, 37)).astype(np.int32)  # a band near the edge, where boxes are cut
    valid = rng.random(image.shape) >= holes
    fast = find(image, valid, kernel=kernel, gain=gain, sigma_background=6, sigma_strong=3, global_threshold=2,
                min_local=min_local)
    slow = naive_strong(image, valid, kernel, gain, 6, 3, 2, min_local or (2 * kernel[0] + 1) * (2 * kernel[1] + 1))
    assert slow.sum() >= 4  # the comparison compares something
    np.testing.assert_array_equal(fast, slow)


def test_spots_are_measured_and_filtered() -> None:
    image = np.full((40, 40), 2, np.int32)
    image[10, 10:13] = [50, 100, 50]  # a 3-pixel spot
    image[30, 30] = 400  # one pixel: below min_spot_size
    image[20:22, 5] = [80, 80]  # two pixels
    rng = np.random.default_rng(0)
    image += rng.poisson(2, image.shape).astype(np.int32) * 0  # exact background: strong pixels are the spots
    spots = find_spots(image, np.ones(image.shape, bool), min_spot_size=2)
    assert len(spots) == 2
    order = np.argsort(spots.y)
    np.testing.assert_allclose(spots.x[order], [11.0, 5.0])
    np.testing.assert_allclose(spots.y[order], [10.0, 20.5])
    np.testing.assert_array_equal(spots.intensity[order], [200, 160])
    np.testing.assert_array_equal(spots.pixels[order], [3, 2])
    np.testing.assert_array_equal(spots.bbox[order], [[10, 13, 10, 11], [5, 6, 20, 22]])
    assert len(find_spots(image, np.ones(image.shape, bool), min_spot_size=3)) == 1
    assert len(find_spots(image, np.ones(image.shape, bool), min_spot_size=1, max_spot_size=2)) == 2


def test_the_simulated_crystal_diffracts_where_ewald_says(sim: RotationSimulation) -> None:
    obs = sim.observations
    assert len(obs) > 50
    p = sim.params
    # rotate each reciprocal-lattice point to its crossing angle: s0 + r must lie on the Ewald sphere
    r0 = obs.hkl @ sim.ub.T
    t = np.radians(obs.phi_deg)
    r = np.column_stack([r0[:, 0], np.cos(t) * r0[:, 1] - np.sin(t) * r0[:, 2],
                         np.sin(t) * r0[:, 1] + np.cos(t) * r0[:, 2]])
    np.testing.assert_allclose(np.linalg.norm(sim.s0 + r, axis=1), 1 / p.wavelength_a, rtol=1e-9)
    # Bragg's law: the spot's scattering angle on the detector gives its d spacing
    bx, by = sim.beam_center
    radius = np.hypot(obs.x + 0.5 - bx, obs.y + 0.5 - by) * p.pixel_size_m
    d = p.wavelength_a / (2 * np.sin(np.arctan2(radius, p.distance_m) / 2))
    np.testing.assert_allclose(d, obs.d_a, rtol=1e-9)
    parts = sum(sim.partials(k)[1].sum() for k in range(-20, p.images + 20))
    # every reflection's partials add up to one, less the slivers under SMALLEST_PART left off the images
    assert parts == pytest.approx(len(obs), rel=1e-4)


def test_spots_are_found_where_the_simulator_put_them(sim: RotationSimulation) -> None:
    found = recall = 0
    errors = []
    for k in range(sim.params.images):
        spots = find_spots(sim.frame(k), np.ones(sim.params.shape, bool))
        obs, fraction = sim.partials(k)
        counts = obs.intensity * fraction
        # bright, whole spots away from the edges and from each other: the ones any spot finder must find
        clear = (counts > 400) & (obs.x > 4) & (obs.x < 251) & (obs.y > 4) & (obs.y < 251)
        near = np.hypot(obs.x[:, None] - obs.x[None, :], obs.y[:, None] - obs.y[None, :])
        np.fill_diagonal(near, np.inf)
        clear &= near.min(axis=1, initial=np.inf) > 6
        for x, y in zip(obs.x[clear], obs.y[clear]):
            distance = np.hypot(spots.x - x, spots.y - y)
            recall += 1
            if len(distance) and distance.min() < 1.5:
                found += 1
                errors.append(distance.min())
    assert recall >= 20
    assert found / recall >= 0.98
    assert np.sqrt(np.mean(np.square(errors))) < 0.3  # centroid error, px rms


def test_nxmx_and_cbf_files_carry_the_frames_and_geometry(sim: RotationSimulation, tmp_path: Path) -> None:
    master = write_nxmx(tmp_path / "rot.nxs", sim)
    reader = HDF5Reader(HDF5Params(**hdf5_defaults(str(master))))
    try:
        meta = reader.scan.metadata
        for key in ("distance_m", "beam_center_x_px", "beam_center_y_px", "x_pixel_size_m", "wavelength_a"):
            assert meta[key] == pytest.approx(sim.metadata()[key])
        np.testing.assert_array_equal(reader.read(2, 3)[0].fields["frame"], sim.frame(2))
    finally:
        reader.close()
    files = write_cbf_series(tmp_path / "cbf", sim)
    assert [f.name for f in files] == [f"rotation_{k:05d}.cbf" for k in range(1, 5)]
    series = ImageSeriesReader(ImageSeriesParams(path=str(tmp_path / "cbf" / "*.cbf")))
    np.testing.assert_array_equal(series.read(3, 4)[0].fields["frame"], sim.frame(3))
    _, header = read_image(str(files[1]))
    text = header["_array_data.header_contents"]
    for line in ("# Wavelength 0.976300 A", "# Detector_distance 0.060000 m", "# Beam_xy (128.00, 128.00) pixels",
                 "# Start_angle 0.5000 deg.", "# Angle_increment 0.5000 deg.", "# Pixel_size 7.5e-05 m x 7.5e-05 m"):
        assert line in text


def test_saturated_negative_and_nan_pixels_are_left_out() -> None:
    rng = np.random.default_rng(1)
    clean = rng.poisson(5, (64, 64)).astype(np.float32)
    clean[20:23, 20:23] += 200
    [reference] = run_stage(DispersionSpots, None, [clean])
    assert reference["spot_count"] == 1
    bad = clean.copy()
    bad[40:43, 40:43] = np.nan  # NaN, negative (PILATUS gaps are -1) and huge values make no spot of their own
    bad[5:8, 50:53] = -1
    bad[50:53, 5:8] = 1e30
    bad[21, 21] = np.nan  # and a NaN inside the real spot only takes that pixel away
    [out] = run_stage(DispersionSpots, {"max_valid": 1e9}, [bad])
    assert out["spot_count"] == 1
    assert out["pixels"][0] == reference["pixels"][0] - 1
    saturated = np.asarray(clean, np.uint16)
    saturated[50:53, 5:8] = np.iinfo(np.uint16).max  # an unsigned frame's largest value marks saturation
    [out] = run_stage(DispersionSpots, None, [saturated])
    assert out["spot_count"] == 1 and out["x"][0] == pytest.approx(reference["x"][0])


def test_a_mask_of_the_wrong_shape_names_the_file_and_what_to_change(tmp_path: Path) -> None:
    np.save(tmp_path / "mask.npy", np.zeros((10, 12), np.uint8))
    with pytest.raises(LightpipeError, match=r"the mask in '.*mask.npy' is 10 x 12 but the frames are 64 x 64; give "
                                             r"the mask of this detector"):
        run_stage(DispersionSpots, {"mask": str(tmp_path / "mask.npy")}, [np.ones((64, 64), np.int32)])
    doc = {"version": 2, "name": "x", "source": {"use": "rotation_sim", "params": {"images": 2, "shape": [64, 64]}},
           "stages": {"spots": {"use": "dispersion_spots", "params": {"mask": str(tmp_path / "nothere.npy")}}},
           "sinks": [{"use": "nexus", "fields": ["spots.spot_count"]}]}
    with pytest.raises(PipelineError, match="mask file '.*nothere.npy' does not exist"):
        load_pipeline(doc)


def test_the_mask_file_leaves_its_pixels_out(tmp_path: Path) -> None:
    frame = np.full((32, 32), 3, np.int32)
    frame[8:11, 8:11] += 100
    frame[20:23, 20:23] += 100
    mask = np.zeros(frame.shape, np.uint8)
    mask[18:25, 18:25] = 1  # an EIGER pixel_mask: non-zero is bad
    np.save(tmp_path / "mask.npy", mask)
    [out] = run_stage(DispersionSpots, {"mask": str(tmp_path / "mask.npy")}, [frame])
    assert out["spot_count"] == 1 and out["x"][0] == pytest.approx(9.0)


def test_an_image_of_strong_pixels_fails_with_what_to_do() -> None:
    frame = np.random.default_rng(0).poisson(5, (64, 64)).astype(np.int32)
    frame[:, :40] += np.random.default_rng(1).poisson(500, (64, 40)).astype(np.int32) * np.arange(40) // 8
    with pytest.raises(ValueError, match="more than max_strong_fraction=0.01"):
        run_stage(DispersionSpots, {"max_strong_fraction": 0.01}, [frame])


def test_spot_table_keeps_image_order_and_angles() -> None:
    events = []
    # strong pixels: a 3-pixel spot on images 1 and 2 (one reflection) and a 2-pixel speck on image 3
    strong = {1: ([5, 6, 7], [4, 4, 4], [10.0, 30.0, 10.0]), 2: ([5, 6, 7], [4, 4, 4], [10.0, 20.0, 10.0]),
              3: ([20, 21], [9, 9], [5.0, 5.0])}
    for image, n in ((1, 2), (2, 0), (3, 1)):
        x, y, counts = strong[image]
        events.append({"image": np.int64(image), "x": np.arange(n, dtype=float) + image, "y": np.zeros(n),
                       "intensity": np.full(n, 10.0 * image), "pixels": np.full(n, 3), "bbox_x0": np.zeros(n, int),
                       "bbox_x1": np.ones(n, int), "bbox_y0": np.zeros(n, int), "bbox_y1": np.ones(n, int),
                       "strong_x": np.array(x, np.int32), "strong_y": np.array(y, np.int32),
                       "strong_counts": np.array(counts)})
    out = run_stage(SpotTable, {"omega_start_deg": 10.0, "omega_increment_deg": 0.1}, events, chunk_size=2)
    np.testing.assert_array_equal(out["spot_count"], [2, 0, 1])
    np.testing.assert_allclose(out["rotation_angle"], [10.05, 10.15, 10.25])
    np.testing.assert_array_equal(out["spot_image"], [1, 1, 3])
    np.testing.assert_array_equal(out["spot_x"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(out["spot_rotation_angle"], [10.05, 10.05, 10.25])
    # one 3-D spot: 6 pixels over images 1 and 2; the speck is below min_spot_size
    np.testing.assert_allclose([out["spot3d_x"][0], out["spot3d_y"][0], out["spot3d_z"][0]], [6.0, 4.0, 130 / 90])
    assert out["spot3d_rotation_angle"][0] == pytest.approx(10.0 + (130 / 90 - 0.5) * 0.1)
    assert (out["spot3d_intensity"].tolist(), out["spot3d_pixels"].tolist()) == ([90.0], [6])
    assert (out["spot3d_first_image"].tolist(), out["spot3d_last_image"].tolist()) == ([1], [2])
    assert [out[f"spot3d_bbox_{k}"][0] for k in ("x0", "x1", "y0", "y1")] == [5, 8, 4, 5]
    assert np.isnan(run_stage(SpotTable, None, events)["rotation_angle"]).all()  # no rotation known: NaN
    assert "spot3d_x" not in run_stage(SpotTable, {"join_images": False}, events)


def test_stages_conform() -> None:
    # uniform random frames are all "strong": the conformance check needs the strong-pixel limit lifted
    check_stage(DispersionSpots, {"max_strong_fraction": 1.0})
    check_stage(SpotTable)


def naive_spots_3d(volume: np.ndarray, first_image: int, min_size: int, max_size: int, max_separation: float
                   ) -> list[tuple[float, ...]]:
    """3-D spots straight from their definition: a labelled image stack (6-connectivity), measured spot by spot."""
    from scipy import ndimage

    labels, n = ndimage.label(volume > 0, structure=ndimage.generate_binary_structure(3, 1))
    spots = []
    for label in range(1, n + 1):  # ndimage numbers the spots by their first pixel in (image, row, column) order
        z, y, x = np.nonzero(labels == label)
        w = volume[z, y, x]
        centroid = np.array([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / w.sum()
        peak = np.argmax(w)  # the first of equals in (image, row, column) order
        separation = np.linalg.norm([x[peak], y[peak], z[peak]] - centroid)
        if not min_size <= len(w) <= max_size or separation > max_separation:
            continue
        spots.append((centroid[0], centroid[1], centroid[2] + first_image, w.sum(), len(w), z.min() + first_image,
                      z.max() + first_image, x.min(), x.max() + 1, y.min(), y.max() + 1))
    return spots


def test_joined_spots_are_those_of_a_labelled_image_stack() -> None:
    rng = np.random.default_rng(7)
    volume = np.where(rng.random((7, 30, 26)) < 0.12, rng.integers(1, 6, (7, 30, 26)), 0).astype(np.float64)
    volume[2:5, 10:13, 8:12] = rng.integers(20, 60, (3, 3, 4))  # a reflection over three images
    volume[:, 0, :] = volume[:, :, -1] = 1  # a full first row and last column: no step may wrap to the next line
    volume[3] = 0  # an image that failed: nothing joins across it
    z, y, x = np.nonzero(volume)
    first = 11  # image numbers of the stack: 11 to 17
    order = np.lexsort((x, y, z))  # the pixels as the images deliver them, image by image, row by row
    spots = join_images(z[order] + first, x[order], y[order], volume[z, y, x][order], min_spot_size=2,
                        max_spot_size=40, max_separation=2.5)
    expected = naive_spots_3d(volume, first, 2, 40, 2.5)
    assert 20 <= len(expected) == len(spots)
    got = np.column_stack([spots.x, spots.y, spots.z, spots.intensity, spots.pixels, spots.first_image,
                           spots.last_image, spots.bbox])
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-12, atol=1e-12)
    assert spots.last_image.max() > spots.first_image.min() + 1  # some spots do span images
    kept = spots.pixel_spot >= 0
    np.testing.assert_array_equal(np.bincount(spots.pixel_spot[kept]), spots.pixels)
    # and the order of the input pixels does not matter
    shuffled = rng.permutation(len(order))
    again = join_images(z[order][shuffled] + first, x[order][shuffled], y[order][shuffled],
                        volume[z, y, x][order][shuffled], min_spot_size=2, max_spot_size=40, max_separation=2.5)
    np.testing.assert_array_equal(again.bbox, spots.bbox)
    np.testing.assert_allclose(again.z, spots.z, rtol=1e-12)


def test_no_strong_pixels_join_into_no_spots() -> None:
    none = np.zeros(0)
    spots = join_images(none, none, none, none)
    assert len(spots) == 0 and spots.bbox.shape == (0, 4)


def test_per_image_angles_give_each_image_its_own_middle() -> None:
    rotation = rotation_of({"omega_start_deg": 30.0, "omega_deg": [30.0, 30.25, 30.5, 31.5, 31.75]}, images=5)
    assert rotation is not None
    np.testing.assert_allclose(rotation.middle(np.arange(1, 6)), [30.125, 30.375, 30.625, 31.625, 31.875])
    wider = rotation_of({"omega_deg": [30.0, 30.25, 30.5, 31.5, 31.75]}, width=0.1)  # each image's width given
    assert wider is not None
    np.testing.assert_allclose(wider.middle(np.array([1, 4])), [30.05, 31.55])
    falling = rotation_of({"omega_deg": [10.0, 9.5, 9.0, 7.0]}, images=4)
    assert falling is not None
    np.testing.assert_allclose(falling.middle(np.arange(1, 5)), [9.75, 9.25, 8.75, 6.75])
    even = rotation_of({"omega_deg": [1.0, 2.0, 5.0]}, start=0.0, width=0.5)  # both parameters: even steps
    assert even is not None and even.middle(np.array([3]))[0] == pytest.approx(1.25)
    assert rotation_of({"omega_start_deg": 1.0}) is None


@pytest.mark.parametrize("meta, kwargs, message", [
    ({"omega_deg": [30.0, 30.25, 30.0, 31.5]}, {}, "do not turn one way: image 2 starts at 30.25 deg and image 3 at "
                                                   "30 deg; check the rotation axis in the file"),
    ({"omega_deg": [30.0, 30.0, 30.5]}, {}, "do not turn one way: image 1 starts at 30 deg and image 2 at 30 deg"),
    ({"omega_deg": [30.0, 30.25, 31.0]}, {"images": 4}, "gives 3 rotation angles .omega_deg., one per image, but has "
                                                        "4 images"),
    ({"omega_deg": [30.0, float("nan"), 31.0]}, {}, "not a list of finite numbers"),
    ({"omega_deg": [30.0]}, {}, "does not say how far it turns; set spot_table's omega_increment_deg"),
    ({"omega_deg": [30.0, 30.5, 32.0]}, {"start": 5.0}, "omega_start_deg is set but the scan gives each image's own "
                                                        "angle"),
])
def test_per_image_angles_that_cannot_be_right_are_refused(meta: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(LightpipeError, match=message):
        rotation_of(meta, **kwargs)


def test_without_joining_there_are_no_3d_spots_to_write() -> None:
    doc = {"version": 2, "name": "x", "source": {"use": "rotation_sim", "params": {"images": 2, "shape": [64, 64]}},
           "stages": {"spots": {"use": "dispersion_spots"},
                      "table": {"use": "spot_table", "params": {"join_images": False}}},
           "sinks": [{"use": "nexus", "fields": ["table.spot_count", "table.spot3d_x"]}]}
    with pytest.raises(PipelineError, match="table.spot3d_x"):
        load_pipeline(doc)
    doc["sinks"][0]["fields"] = ["table.spot_count"]
    load_pipeline(doc)
    with pytest.raises(PipelineError, match="max_spot_size 2 is below min_spot_size 3"):
        load_pipeline({**doc, "stages": {**doc["stages"], "table": {"use": "spot_table",
                                                                     "params": {"max_spot_size": 2}}}})
