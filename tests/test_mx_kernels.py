"""MX spot finding compiled by Numba: the same strong pixels and spots as the NumPy path, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("scipy")

from scipy import ndimage

from lightpipe.techniques.mx import dispersion, kernels
from lightpipe.techniques.mx.dispersion import BIG_COUNTS, find_spots, strong_pixels, strong_pixels_numpy
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """A simulated rotation image, 200 x 240 int32, with spots near its edges and corners, hot and negative pixels."""
    sim = RotationSimulation(RotationSimParams(images=2, shape=(200, 240), distance_m=0.05))
    image = sim.frame(1)
    image[0, 0] += 500  # a corner, a side, the last row: boxes cut at the edges
    image[0:2, 100:103] += 300
    image[199, 50:52] += 400
    image[90:93, 239] += 250
    image[60:63, 60:63] += 200
    image[61, 61] = int(BIG_COUNTS)  # hot, in a spot: out of the box sums, strong itself
    image[120, 200] = int(BIG_COUNTS) + 1000  # hot, alone: its box is background without it
    image[150, 30:34] = -7  # negative (a PILATUS's gaps are -1)
    return image


def _valid(shape: tuple[int, int], holes: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    valid = rng.random(shape) >= holes
    valid[20:30, 40:80] = False  # a masked block (a module gap)
    return valid


@pytest.mark.parametrize("kernel, gain, min_local, threshold, holes", [
    ((3, 3), 1.0, 2, 0.0, 0.0),  # DIALS's defaults, nothing masked
    ((3, 3), 1.0, 2, 0.0, 0.03),
    ((1, 1), 1.3, 0, 1.0, 0.03),  # min_local 0: a whole box
    ((2, 5), 0.7, 5, 3.0, 0.1),
    ((8, 1), 1.0, 2, 0.0, 0.03),  # 17 rows: NumPy sums them by cumulative sums
    ((1, 9), 2.0, 4, 0.0, 0.03),  # 19 columns
    ((0, 0), 1.0, 1, 0.0, 0.0),  # a box of one pixel: never dispersed
])
def test_compiled_strong_pixels_are_numpys(frame: np.ndarray, kernel: tuple[int, int], gain: float, min_local: int,
                                           threshold: float, holes: float) -> None:
    valid = _valid(frame.shape, holes, 5)
    args = {"kernel": kernel, "gain": gain, "global_threshold": threshold, "min_local": min_local}
    reference = strong_pixels_numpy(frame, valid, **args)
    mask, flat = dispersion._strong_compiled(kernels, frame, valid, kernel, gain, 6.0, 3.0, threshold, min_local)
    if kernel != (0, 0):
        assert reference.sum() >= 20  # the comparison compares something
    np.testing.assert_array_equal(mask, reference)
    np.testing.assert_array_equal(flat, np.flatnonzero(reference))
    np.testing.assert_array_equal(strong_pixels(frame, valid, **args), reference)


def test_the_edges_and_the_hot_pixels_are_judged_alike(frame: np.ndarray) -> None:
    valid = _valid(frame.shape, 0.03, 5)
    strong = strong_pixels(frame, valid)
    # the planted spots at the edges and the hot pixels are found, the masked block never
    assert strong[0, 0] and strong[0:2, 100:103].any() and strong[199, 50:52].any() and strong[90:93, 239].any()
    assert strong[61, 61] and not strong[119:122, 199:202].any()
    assert not strong[20:30, 40:80].any()
    np.testing.assert_array_equal(strong, strong_pixels_numpy(frame, valid))


@pytest.mark.parametrize("dtype", ["uint16", "int32", "uint32", "int64", "float32", ">i4", "float16"])
@pytest.mark.parametrize("shape", [(97, 131), (5, 300), (300, 4), (1, 1), (2, 3)])
def test_random_integer_images_give_numpys_strong_pixels(dtype: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng([len(dtype), *shape])
    counts = rng.poisson(rng.choice([0.5, 3, 40], shape)) + (rng.random(shape) < 0.02) * rng.integers(20, 3000, shape)
    image = counts.astype(dtype) if dtype != "float16" else np.minimum(counts, 2000).astype(dtype)
    valid = rng.random(shape) >= 0.05
    for kernel, min_local in (((3, 3), 2), ((2, 1), 0), ((4, 9), 3)):
        reference = strong_pixels_numpy(image, valid, kernel=kernel, min_local=min_local)
        np.testing.assert_array_equal(strong_pixels(image, valid, kernel=kernel, min_local=min_local), reference)
    if shape == (97, 131):
        assert strong_pixels_numpy(image, valid).sum() >= 10


def test_non_finite_valid_pixels_are_judged_alike() -> None:
    rng = np.random.default_rng(11)
    image = rng.poisson(5, (60, 70)).astype(np.float64)
    image[29:32, 31:34] += 90
    image[30, 30], image[30, 40], image[45, 12] = -np.inf, np.inf, np.nan
    valid = np.ones(image.shape, bool)  # left valid on purpose: neither path counts them in the box sums
    for kernel in ((3, 3), (9, 2)):
        reference = strong_pixels_numpy(image, valid, kernel=kernel)
        assert reference[29:32, 31:34].sum() >= 5  # a spot beside -inf: not drowned by it
        np.testing.assert_array_equal(strong_pixels(image, valid, kernel=kernel), reference)


@pytest.mark.parametrize("density, shape", [(0.3, (64, 80)), (0.55, (64, 80)), (0.55, (1, 50)), (0.55, (50, 1))])
def test_spot_labels_are_ndimages(density: float, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random(shape) < density
    mask[:, -1] = mask[:, 0] = True  # each row's last pixel and the next row's first are apart
    labels, n = ndimage.label(mask)
    flat = np.flatnonzero(mask)
    ours = kernels.spot_labels(flat, shape[1])
    np.testing.assert_array_equal(ours, labels.ravel()[flat] - 1)
    assert ours.max() + 1 == n
    assert len(kernels.spot_labels(np.zeros(0, np.int64), 5)) == 0


def test_find_spots_gives_the_numpy_paths_spots(frame: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    valid = _valid(frame.shape, 0.01, 9)
    compiled = find_spots(frame, valid, min_spot_size=2)
    monkeypatch.setattr(dispersion, "_kernels", lambda: None)  # as without Numba
    reference = find_spots(frame, valid, min_spot_size=2)
    assert len(reference) >= 20
    for field in ("x", "y", "intensity", "pixels", "bbox", "strong_x", "strong_y", "strong_counts"):
        ours, theirs = getattr(compiled, field), getattr(reference, field)
        assert ours.dtype == theirs.dtype, field
        np.testing.assert_array_equal(ours, theirs, err_msg=field)


def test_bbox_covers_each_spots_pixels(frame: np.ndarray) -> None:
    spots = find_spots(frame, np.ones(frame.shape, bool), min_spot_size=1, max_separation=None)
    labels, n = ndimage.label(strong_pixels(frame, np.ones(frame.shape, bool)))
    boxes = [(s[1].start, s[1].stop, s[0].start, s[0].stop) for s in ndimage.find_objects(labels)]
    assert n == len(spots) >= 20
    np.testing.assert_array_equal(spots.bbox, boxes)


@pytest.mark.parametrize("image, valid, kernel, message", [
    (np.zeros((4, 5)), np.ones((5, 4), bool), (3, 3), "differs from the image's"),
    (np.zeros((2, 4, 5)), np.ones((2, 4, 5), bool), (3, 3), "one 2-D image"),
    (np.zeros((4, 5)), np.ones((4, 5), bool), (-1, 3), "0 or more"),
])
def test_images_and_masks_that_do_not_fit_are_refused(image: np.ndarray, valid: np.ndarray,
                                                      kernel: tuple[int, int], message: str) -> None:
    for find in (strong_pixels, strong_pixels_numpy, find_spots):
        with pytest.raises(ValueError, match=message):
            find(image, valid, kernel=kernel)
