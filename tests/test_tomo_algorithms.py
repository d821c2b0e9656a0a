"""Tomography algorithms against known truth: FBP, SIRT, the centre of rotation, ring removal, angular weights."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity
from skimage.transform import iradon

from lightpipe.techniques.tomo.centre import find_centre
from lightpipe.techniques.tomo.fbp import fbp, ramp_filter
from lightpipe.techniques.tomo.geometry import angular_weights, circle
from lightpipe.techniques.tomo.parts import Recipe, reconstruct, reconstruct_in_parts
from lightpipe.core.parts import ThreadPartRunner
from lightpipe.techniques.tomo.rings import remove_stripes
from lightpipe.techniques.tomo.simulate import TomoSimParams, TomoSimulation
from lightpipe.techniques.tomo.sirt import sirt


def sinograms(sim: TomoSimulation, rows: list[int] | None = None) -> np.ndarray:
    """Exact ``(rows, angles, columns)`` sinograms of the simulation's phantom."""
    stack = np.stack([sim.line_integrals(a) for a in sim.angles_deg], axis=1).astype(np.float32)
    return stack if rows is None else stack[rows]


def relative(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised error ||a - b|| / ||b|| over the mask's pixels."""
    return float(np.linalg.norm((a - b)[..., mask]) / np.linalg.norm(b[..., mask]))


def test_fbp_agrees_with_scikit_image_iradon_within_its_interpolation_error() -> None:
    # 65 columns: iradon's axis and grid centre are at column 32, ours at (65 - 1) / 2, the same
    sim = TomoSimulation(TomoSimParams(shape=(4, 65), centre_offset_px=0.0, projections=180, endpoint=False))
    sino = sinograms(sim, [2])
    ours = fbp(sino, np.radians(sim.angles_deg), sim.centre)[0]
    # scikit-image turns the other way: its theta is our -theta
    linear = iradon(sino[0].T, theta=-sim.angles_deg, filter_name="ramp", circle=True, interpolation="linear")
    cubic = iradon(sino[0].T, theta=-sim.angles_deg, filter_name="ramp", circle=True, interpolation="cubic")
    inner = circle(65) & (np.hypot(*np.meshgrid(np.arange(65) - 32, np.arange(65) - 32)) < 30)
    interpolation_error = relative(linear, cubic, inner)
    assert 0.01 < interpolation_error < 0.2
    assert relative(ours, cubic, inner) <= interpolation_error
    assert relative(ours, sim.volume()[2], inner) < 0.3


def test_fbp_and_sirt_recover_the_phantom() -> None:
    sim = TomoSimulation(TomoSimParams(shape=(8, 64), projections=180, centre_offset_px=2.3))
    truth = sim.volume()[4]
    sino = sinograms(sim, [4])
    angles = np.radians(sim.angles_deg)
    mask = circle(64)
    by_fbp = fbp(sino, angles, sim.centre)[0]
    by_sirt = sirt(sino, angles, sim.centre, 150)[0]
    rng = float(truth.max() - truth.min())
    for image, error, ssim in ((by_fbp, 0.35, 0.7), (by_sirt, 0.3, 0.85)):
        assert relative(image, truth, mask) < error
        assert structural_similarity(truth, image, data_range=rng) > ssim
    # a wrong centre is worse: the error measures the centre too
    assert relative(fbp(sino, angles, sim.centre + 2)[0], truth, mask) > 1.5 * relative(by_fbp, truth, mask)


def test_sirt_beats_fbp_on_few_angles_and_improves_with_iterations() -> None:
    sim = TomoSimulation(TomoSimParams(shape=(4, 64), projections=24, endpoint=False, centre_offset_px=0.0))
    truth = sim.volume()[2]
    sino = sinograms(sim, [2])
    angles = np.radians(sim.angles_deg)
    mask = circle(64)
    errors = [relative(sirt(sino, angles, sim.centre, k)[0], truth, mask) for k in (5, 50, 200)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < relative(fbp(sino, angles, sim.centre)[0], truth, mask)
    # refining a coarse estimate gets as far as starting over with all the iterations
    coarse = sirt(sino, angles, sim.centre, 50)
    refined = sirt(sino, angles, sim.centre, 150, start=coarse)[0]
    assert relative(refined, truth, mask) == pytest.approx(errors[2], rel=0.02)


@pytest.mark.parametrize("offset", [-7.4, -0.5, 0.0, 2.3, 6.8])
@pytest.mark.parametrize("endpoint", [True, False])
def test_centre_of_rotation_found_within_half_a_pixel(offset: float, endpoint: bool) -> None:
    sim = TomoSimulation(TomoSimParams(shape=(16, 64), projections=181 if endpoint else 180, endpoint=endpoint,
                                       centre_offset_px=offset))
    rng = np.random.default_rng(1)
    noisy = sinograms(sim, [3, 8, 12]) + rng.normal(0, 0.02, (3, sim.angles_deg.size, 64)).astype(np.float32)
    centre, pairs = find_centre(noisy, np.radians(sim.angles_deg), np.radians(1.0))
    assert pairs >= 1
    assert abs(centre - sim.centre) < 0.5


def test_centre_of_a_360_scan_uses_many_pairs() -> None:
    sim = TomoSimulation(TomoSimParams(shape=(8, 64), projections=120, range_deg=360, endpoint=False,
                                       centre_offset_px=-3.6))
    centre, pairs = find_centre(sinograms(sim, [4]), np.radians(sim.angles_deg), np.radians(0.5))
    assert pairs == 8
    assert abs(centre - sim.centre) < 0.2


def test_no_opposite_projections_is_a_clear_error() -> None:
    sim = TomoSimulation(TomoSimParams(shape=(4, 32), projections=30, range_deg=120, centre_offset_px=0.0))
    with pytest.raises(ValueError, match="no two of the 30 projections are 180 deg apart.*set centre_px"):
        find_centre(sinograms(sim), np.radians(sim.angles_deg), np.radians(1.0))


def test_ring_filter_removes_stripes() -> None:
    sim = TomoSimulation(TomoSimParams(shape=(4, 64), projections=180, endpoint=False, centre_offset_px=0.0))
    clean = sinograms(sim, [2])
    striped = clean.copy()
    columns = (20, 26, 40)  # rings of radius 11.5, 5.5 and 8.5 px about the axis at 31.5
    for column, offset in zip(columns, (0.08, -0.06, 0.1)):
        striped[..., column] += offset
    angles = np.radians(sim.angles_deg)
    reference = fbp(clean, angles, sim.centre)[0]
    radius = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5))

    def ring_strength(sino: np.ndarray) -> float:
        """Largest mean difference from the clean slice along the circles the stripes make."""
        difference = fbp(sino, angles, sim.centre)[0] - reference
        return max(abs(float(difference[np.abs(radius - abs(c - 31.5)) < 0.5].mean())) for c in columns)

    filtered = remove_stripes(striped, 5)
    stripe_error = np.abs(striped - clean)[..., list(columns)].mean()
    assert np.abs(filtered - clean)[..., list(columns)].mean() < 0.25 * stripe_error
    assert ring_strength(filtered) < 0.2 * ring_strength(striped)
    with pytest.raises(ValueError, match="at least 3 columns"):
        remove_stripes(clean, 1)


@pytest.mark.parametrize("angles_deg", [
    np.linspace(0, 180, 90, endpoint=False), np.linspace(0, 180, 91), np.linspace(0, 360, 120, endpoint=False),
    np.linspace(0, 360, 121), np.random.default_rng(0).permutation(np.linspace(0, 180, 50, endpoint=False)),
    np.mod(np.arange(100) * 111.246, 360),  # golden-angle order
])
def test_angular_weights_of_a_full_scan_sum_to_pi(angles_deg: np.ndarray) -> None:
    weights = angular_weights(np.radians(angles_deg))
    assert weights.shape == angles_deg.shape and (weights >= 0).all()
    assert weights.sum() == pytest.approx(np.pi, rel=1e-9)


def test_angular_weights_of_a_scan_still_running_cover_its_angles_only() -> None:
    weights = angular_weights(np.radians(np.linspace(0, 60, 61)))  # 0 to 60 deg of a 0-180 scan, 1 deg apart
    assert weights.sum() == pytest.approx(np.radians(62), rel=1e-9)  # 60 deg and one step of margin on each side


def test_windows_roll_the_ramp_off_towards_nyquist() -> None:
    ramp = ramp_filter(128, "ramp")
    assert ramp[0] > 0  # Kak and Slaney's ramp keeps a little of the zero frequency
    for window in ("shepp-logan", "cosine", "hamming", "hann"):
        windowed = ramp_filter(128, window)
        assert windowed[-1] < ramp[-1]
        assert windowed[1] == pytest.approx(ramp[1], rel=0.01)
    with pytest.raises(ValueError, match="unknown filter window 'gauss'"):
        ramp_filter(128, "gauss")


@pytest.mark.parametrize("algorithm", ["fbp", "sirt"])
def test_slices_in_parts_are_the_slices_in_one(algorithm: str) -> None:
    sim = TomoSimulation(TomoSimParams(shape=(10, 32), projections=60, centre_offset_px=1.2))
    sino = sinograms(sim)
    angles = np.radians(sim.angles_deg)
    recipe = Recipe(algorithm, "hann", 20, sim.centre, 32, 5)  # type: ignore[arg-type]
    whole = reconstruct(sino, angles, recipe)
    for parts in (1, 3, 10):
        np.testing.assert_array_equal(reconstruct_in_parts(sino, angles, recipe, ThreadPartRunner(), parts), whole)
