"""Reconstruction quality metrics: each must pass a right answer and fail a wrong one."""
from __future__ import annotations

import numpy as np
import pytest

from lightpipe.techniques.ptychography.metrics import (
    align_object,
    fourier_error,
    frc,
    half_bit_threshold,
    object_error,
    probe_error,
    register_shift,
)
from lightpipe.techniques.ptychography.optics import shift_probe
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation, make_object

PARAMS = PtychoSimParams(frame_shape=(64, 64), distance_m=1.0, defocus_m=2e-4, n_positions=25, seed=4)


@pytest.fixture(scope="module")
def truth() -> dict:
    return PtychoSimulation(PARAMS).truth()


def _ambiguous_copy(
    x: np.ndarray, shift: tuple[float, float], ramp: tuple[float, float], factor: complex
) -> np.ndarray:
    """``factor * exp(i ramp.r) * x(r - shift)``: what a reconstruction may legitimately return."""
    rho = np.indices(x.shape) - np.array([s // 2 for s in x.shape])[:, None, None]
    return factor * np.exp(1j * (ramp[0] * rho[0] + ramp[1] * rho[1])) * shift_probe(x, shift)


def test_shifted_ramped_rescaled_copy_of_the_object_has_no_error(truth: dict) -> None:
    obj = truth["object"].astype(complex)
    copy = _ambiguous_copy(obj, (2.3, -1.7), (0.05, -0.08), 0.7 * np.exp(1.2j))
    result = align_object(copy, obj)
    assert result.error < 1e-6
    assert result.shift_px == pytest.approx((2.3, -1.7), abs=1e-6)
    assert result.ramp_rad_per_px == pytest.approx((0.05, -0.08), abs=1e-7)
    assert abs(1 / result.scale) == pytest.approx(0.7, rel=1e-6)
    np.testing.assert_allclose(result.aligned, obj, atol=1e-5)
    assert object_error(copy, obj) < 1e-6


def test_a_different_object_has_a_large_error(truth: dict) -> None:
    obj = truth["object"]
    other = make_object(obj.shape, "moon", "coins")
    copy = _ambiguous_copy(obj.astype(complex), (2.3, -1.7), (0.05, -0.08), 0.7 * np.exp(1.2j))
    assert object_error(other, obj) > 0.2
    assert object_error(other, obj) > 1e4 * object_error(copy, obj)
    # a 2 % perturbation of the phase gives an error of the same size
    noise = np.random.default_rng(0).normal(0, 0.02, obj.shape)
    assert object_error(obj * np.exp(1j * noise), obj) == pytest.approx(0.02, rel=0.1)


def test_mask_limits_the_comparison_to_the_illuminated_area(truth: dict) -> None:
    obj = truth["object"].astype(complex)
    lit = truth["illumination"] > 0.1 * truth["illumination"].max()
    assert 0.1 < lit.mean() < 0.9
    recon = _ambiguous_copy(obj, (0.6, 0.4), (0.0, 0.0), 1.0)
    garbage = np.random.default_rng(1).normal(size=obj.shape) * 3
    rim = ~np.pad(lit[2:-2, 2:-2], 2)  # beyond the lit area, with room for the shift
    recon[rim] = garbage[rim]
    assert object_error(recon, obj, lit) < 1e-3
    assert object_error(recon, obj) > 0.5


def test_probe_error_removes_the_same_ambiguities(truth: dict) -> None:
    probe = truth["probe"].astype(complex)
    copy = _ambiguous_copy(probe, (-1.4, 3.1), (0.02, 0.03), 1e-3j)
    assert probe_error(copy, probe) < 1e-6
    assert probe_error(np.conj(probe), probe) > 0.5  # the twin image is a different probe
    wider = PtychoSimulation(PARAMS.model_copy(update={"defocus_m": 3e-4})).probe
    assert probe_error(wider, probe) > 0.5


def test_register_shift_finds_sub_pixel_shifts() -> None:
    image = make_object((80, 96), "camera", "camera").real.astype(float)
    moved = shift_probe(image, (-3.35, 7.6)).real
    assert register_shift(image, moved, upsample=20) == pytest.approx([-3.35, 7.6], abs=0.051)


def test_inputs_that_do_not_fit_are_refused(truth: dict) -> None:
    obj = truth["object"]
    with pytest.raises(ValueError, match="same shape"):
        object_error(obj[:-1], obj)
    bad = obj.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        object_error(bad, obj)
    with pytest.raises(ValueError, match="mask selects no pixel"):
        object_error(obj, obj, np.zeros(obj.shape, bool))


def test_fourier_error_is_the_r_factor() -> None:
    rng = np.random.default_rng(2)
    model = rng.gamma(2.0, 50.0, (5, 32, 32))
    assert fourier_error(model, model) == 0.0
    assert fourier_error(model, 4 * model) == pytest.approx(1.0)  # |sqrt(I) - 2 sqrt(I)| / sqrt(I)
    measured = rng.poisson(model).astype(float)
    r = fourier_error(measured, model)
    assert 0.01 < r < 0.2
    corrupt = measured.copy()
    corrupt[:, 10:14, 10:14] = 1e6  # a hot region that a mask leaves out
    mask = np.ones((32, 32), bool)
    mask[10:14, 10:14] = False
    assert fourier_error(corrupt, model) > 0.5
    assert fourier_error(corrupt, model, mask) == pytest.approx(fourier_error(measured, model, mask))
    with pytest.raises(ValueError, match="differ in shape"):
        fourier_error(measured, model[:2])


def test_frc_is_one_for_identical_and_zero_for_independent_images(truth: dict) -> None:
    obj = truth["object"]
    same = frc(obj, obj)
    np.testing.assert_allclose(same.correlation, 1.0, atol=1e-9)
    assert same.resolution() is None
    assert same.frequencies[0] > 0 and same.frequencies[-1] < 0.5
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 128, 128)) + 1j * rng.normal(size=(2, 128, 128))
    noise = frc(a, b)
    assert np.all(np.abs(noise.correlation[2:]) < 5 / np.sqrt(noise.pixels[2:]))
    assert abs(noise.correlation[4:].mean()) < 0.02
    assert noise.resolution() is not None


def test_frc_resolution_falls_as_noise_rises(truth: dict) -> None:
    obj = truth["object"].astype(complex)
    rng = np.random.default_rng(5)

    def noisy(level: float) -> np.ndarray:
        return obj + level * (rng.normal(size=obj.shape) + 1j * rng.normal(size=obj.shape))

    low, high = frc(noisy(0.03), noisy(0.03), window="hann"), frc(noisy(0.3), noisy(0.3), window="hann")
    assert high.resolution() is not None
    assert low.resolution() is None or low.resolution() > high.resolution()


def test_half_bit_threshold_values() -> None:
    assert half_bit_threshold(np.array([1.0]))[0] == pytest.approx(1.0, abs=1e-3)
    assert half_bit_threshold(np.array([1e12]))[0] == pytest.approx(0.2071 / 1.2071, rel=1e-4)
    assert np.all(np.diff(half_bit_threshold(np.arange(1, 100))) < 0)
