"""The ptychography algorithms (DM, AP, ML, ePIE) on a small simulated scan: convergence, weights, mask, modes,
the ML line search, positions in any origin, errors.

The scan is made here with its own forward model (independent of the
simulator module): a smooth random complex object, a soft-edged disc probe
with a quadratic phase, 8 x 8 raster positions with random jitter at 65 %
overlap, 32 x 32 frames, Poisson noise at 1e7 photons per frame.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import minimize

from lightpipe.techniques.ptychography.algorithms import (
    EPIE,
    DivergenceError,
    MaximumLikelihood,
    ReconstructionState,
    iterate,
    parse_chain,
    reconstruct,
)

FRAME = 32
DIAMETER = 16


@dataclass
class Scan:
    intensities: np.ndarray
    positions_px: np.ndarray
    probe: np.ndarray
    obj: np.ndarray
    lit: np.ndarray  # object pixels lit at >= 10 % of the maximum total illumination


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    gaussian = np.exp(-2 * (np.pi * sigma) ** 2 * (ky**2 + kx**2))
    f = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * gaussian))
    return f / f.std()


def _disc_probe(diameter: float = DIAMETER) -> np.ndarray:
    y = np.arange(FRAME)[:, None] - FRAME / 2
    x = np.arange(FRAME)[None, :] - FRAME / 2
    r = np.hypot(y, x)
    return (np.exp(1j * 0.02 * r**2) / (1 + np.exp(r - diameter / 2))).astype(np.complex64)


def make_scan(seed: int = 0, photons: float = 1e7, probes: np.ndarray | None = None) -> Scan:
    """Simulate the scan; ``probes`` (M, ny, nx) are incoherent modes (default one disc probe)."""
    rng = np.random.default_rng(seed)
    grid = np.arange(8) * DIAMETER * (1 - 0.65)
    pos = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2) + rng.uniform(-1, 1, (64, 2))
    pos -= pos.min(axis=0)
    ipos = np.rint(pos).astype(int)
    shape = (ipos[:, 0].max() + FRAME, ipos[:, 1].max() + FRAME)
    obj = ((0.8 + 0.2 * np.tanh(_smooth_noise(rng, shape, 2.0))) * np.exp(1j * _smooth_noise(rng, shape, 3.0)))
    modes = _disc_probe()[None] if probes is None else probes
    patches = np.stack([obj[y:y + FRAME, x:x + FRAME] for y, x in ipos])
    far = (np.abs(np.fft.fft2(modes[None] * patches[:, None], norm="ortho")) ** 2).sum(axis=1)
    scale = photons / far.sum(axis=(1, 2)).mean()
    intensities = rng.poisson(np.fft.fftshift(far * scale, axes=(-2, -1))).astype(np.float32)
    illumination = np.zeros(shape)
    for y, x in ipos:
        illumination[y:y + FRAME, x:x + FRAME] += (np.abs(modes) ** 2).sum(axis=0)
    lit = illumination >= 0.1 * illumination.max()
    return Scan(intensities, pos, (modes * np.sqrt(scale)).astype(np.complex64), obj.astype(np.complex64), lit)


def _factor_and_ramp_error(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """``||a exp(i g.r) recon - truth|| / ||truth||`` on ``mask``, the complex factor ``a`` and ramp ``g`` fitted."""
    yy, xx = np.nonzero(mask)
    z = (truth * np.conj(recon))[mask]
    design = np.stack([np.ones(len(yy)), yy, xx], axis=1)
    plane = np.array([np.angle(z.sum()), 0.0, 0.0])
    for _ in range(3):  # fit the phase of truth / recon as a plane, on the wrapped residual
        residual = np.angle(z * np.exp(-1j * (design @ plane)))
        plane += np.linalg.lstsq(design * np.abs(z)[:, None], residual * np.abs(z), rcond=None)[0]
    aligned = recon[mask] * np.exp(1j * (design @ plane))
    a = np.vdot(aligned, truth[mask]) / np.vdot(aligned, aligned)
    return float(np.linalg.norm(a * aligned - truth[mask]) / np.linalg.norm(truth[mask]))


def object_error(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Relative RMS error on ``mask`` after removing what ptychography cannot determine.

    ``O, P`` and ``a O(r - s) exp(i g.r), P(r - s) exp(-i g.r) / a`` give the same
    data: the complex factor ``a`` (global phase and scale), a linear phase ramp
    ``g`` and a sub-pixel shift ``s`` are fitted and removed before comparing. The
    truth is the one shifted: it is smooth and periodic (made by FFT filtering), where
    a Fourier shift of the reconstruction would ring at its unlit edges.
    """
    ky = np.fft.fftfreq(truth.shape[0])[:, None]
    kx = np.fft.fftfreq(truth.shape[1])[None, :]
    spectrum = np.fft.fft2(truth)

    def error(shift: np.ndarray) -> float:
        moved = np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1])))
        return _factor_and_ramp_error(recon, moved, mask)

    return float(minimize(error, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-7}).fun)


def gaussian_guess(sigma: float = 6.0) -> np.ndarray:
    """A probe guess that is only roughly right: a flat-phase Gaussian of about the beam's size."""
    y = np.arange(FRAME)[:, None] - FRAME / 2
    x = np.arange(FRAME)[None, :] - FRAME / 2
    return np.exp(-(y**2 + x**2) / (2 * sigma**2)).astype(np.complex64)


@pytest.fixture(scope="module")
def scan() -> Scan:
    return make_scan()


# ---------------------------------------------------------------- chains
def test_parse_chain() -> None:
    assert parse_chain("DM:100, ML:50") == [("DM", 100), ("ML", 50)]
    assert parse_chain("dm:3,ap:2 , ML:1") == [("DM", 3), ("AP", 2), ("ML", 1)]
    assert parse_chain("DM*100 ML*200") == [("DM", 100), ("ML", 200)]  # the SSRF paper's notation
    assert parse_chain("epie:5, EPIE*2") == [("ePIE", 5), ("ePIE", 2)]


@pytest.mark.parametrize(("chain", "words"), [
    ("XX:10", ["unknown algorithm", "'XX'", "DM, AP, ML, ePIE"]),
    ("DM:0", ["positive integer", "DM"]),
    ("DM:-3", ["positive integer"]),
    ("DM:ten", ["positive integer", "'ten'"]),
    ("DM:1.5", ["positive integer"]),
    ("DM", ["NAME:COUNT"]),
    ("", ["'DM:100, ML:50'"]),
])
def test_parse_chain_errors(chain: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_chain(chain)
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------------------ convergence
@pytest.mark.parametrize(("chain", "factor"), [("DM:30", 300), ("AP:30", 30)])
def test_projection_algorithms_reduce_fourier_error(scan: Scan, chain: str, factor: float) -> None:
    result = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain)
    errors = result.fourier_errors
    assert len(errors) == 30 and result.algorithms == [chain[:2]] * 30
    assert all(s > 0 for s in result.seconds)
    assert errors[-1] < errors[0] / factor, errors
    assert all(v is None for v in result.neg_log_likelihoods)


def test_ml_reduces_error_and_likelihood(scan: Scan) -> None:
    state = ReconstructionState(scan.intensities, scan.positions_px, gaussian_guess())
    iterate(state, "DM", 8)
    # without the prior the objective is the likelihood the records report (with it, their sum falls)
    records = iterate(state, MaximumLikelihood(smoothness=0.0), 25)
    errors = [r.fourier_error for r in records]
    nll = [r.neg_log_likelihood for r in records]
    assert errors[-1] < errors[0] / 5, errors
    assert nll[-1] < nll[0] / 5, nll
    # the line search (with its backtracking) never lets the likelihood rise
    assert all(b <= a for a, b in zip(nll, nll[1:])), nll


def test_ml_likelihood_and_its_derivatives_match_float64_finite_differences(scan: Scan) -> None:
    state = ReconstructionState(scan.intensities, scan.positions_px, gaussian_guess(), threads=1)
    iterate(state, "DM", 8)
    ml = MaximumLikelihood(smoothness=0.0)  # the data term alone, as computed below
    memory = ml._memory(state, True)
    gradient = ml._gradient(state, memory, True)
    rng = np.random.default_rng(3)
    obj, probe = state.object.astype(np.complex128), state.probe.astype(np.complex128)
    h_obj = 0.01 * (rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape))
    h_probe = 0.01 * np.abs(probe).max() * (rng.standard_normal(probe.shape) + 1j * rng.standard_normal(probe.shape))
    counts = np.fft.ifftshift(scan.intensities.astype(np.float64), axes=(-2, -1))
    corners = np.rint(scan.positions_px).astype(int)
    perfect = np.where(counts > 0, counts - counts * np.log(np.where(counts > 0, counts, 1)), 0).sum()
    pixels = counts.size

    def nll(step: float) -> float:  # the Poisson NLL per pixel, in float64, from scratch
        p, o = probe + step * h_probe, obj + step * h_obj
        model = np.stack([(np.abs(np.fft.fft2(p * o[y:y + FRAME, x:x + FRAME], norm="ortho")) ** 2).sum(axis=0)
                          for y, x in corners]) + 1e-6
        return float(((model - counts * np.log(model)).sum() - perfect) / pixels)

    assert gradient.nll == pytest.approx(nll(0.0), rel=1e-5)
    steps = np.array([0.5, 0.05, 0.005])
    sums = ml._line_pass(state, memory.far_field, h_obj.astype(np.complex64), h_probe.astype(np.complex64), steps)
    d1, d2 = sums.d1, sums.d2
    eps = 1e-4
    assert d1 / pixels == pytest.approx((nll(eps) - nll(-eps)) / (2 * eps), rel=1e-3)
    assert d2 / pixels == pytest.approx((nll(eps) - 2 * nll(0.0) + nll(-eps)) / eps**2, rel=1e-2)
    # the exact change of the likelihood at the tried steps, from the quartic of each pixel
    for step, change in zip(steps, sums.changes):
        assert change / pixels == pytest.approx(nll(step) - nll(0.0), rel=1e-3)
    # the line search's slope and the gradient used for the directions agree
    slope = 2 * (np.vdot(gradient.g_obj, h_obj).real + np.vdot(gradient.g_probe, h_probe).real)
    assert d1 == pytest.approx(slope, rel=1e-4)


def _hard_edged_probe(scan: Scan, radius: float = 6.0) -> np.ndarray:
    """A probe guess whose far field is the mean frame's amplitude inside a disc, and exactly 0 outside it."""
    y, x = np.indices((FRAME, FRAME)) - FRAME // 2
    far = np.where(np.hypot(y, x) <= radius, np.sqrt(scan.intensities.mean(axis=0)), 0.0)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far), norm="ortho")).astype(np.complex64)


@pytest.mark.parametrize("fft", ["numpy", "scipy", "pyfftw"])
def test_ml_makes_progress_where_the_likelihood_has_no_curvature(scan: Scan, fft: str) -> None:
    # From a flat object and a probe whose far field is 0 beyond a disc, the model has no
    # intensity where the frames have counts: there the likelihood is concave along any
    # direction, and the Newton step of the quadratic model does not exist. ML used to take
    # no step, restart from the same steepest descent and stall for ever, saying nothing.
    pytest.importorskip(fft)
    flat = np.ones(scan.obj.shape, np.complex64)
    state = ReconstructionState(scan.intensities, scan.positions_px, _hard_edged_probe(scan), flat, fft=fft)
    records = iterate(state, "ML", 4)
    nll = [r.neg_log_likelihood for r in records]
    assert all(b < a for a, b in zip(nll, nll[1:])) and nll[-1] < 0.7 * nll[0], nll
    assert not any(r.stalled for r in records) and state.stall_reason is None
    # the state was the one described: no positive curvature along steepest descent
    fresh = ReconstructionState(scan.intensities, scan.positions_px, _hard_edged_probe(scan), flat, fft=fft)
    ml = MaximumLikelihood()
    memory = ml._memory(fresh, False)
    gradient = ml._gradient(fresh, memory, False)
    sums = ml._line_pass(fresh, memory.far_field, -gradient.g_obj / np.maximum(gradient.d_obj, 1e-3 * gradient.d_obj.max()),
                         None)
    assert sums.d1 < 0 and sums.d2 < 0, (sums.d1, sums.d2)


def test_ml_that_changes_nothing_says_so(scan: Scan, caplog: pytest.LogCaptureFixture) -> None:
    # A blank object (all 0) is a stationary point: no far field, so no gradient. ML cannot
    # move from it; after STALL_ITERATIONS idle iterations the records, the state and the log say so.
    caplog.set_level(logging.WARNING, logger="lightpipe.techniques.ptychography.algorithms")
    result = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), np.zeros(scan.obj.shape, np.complex64),
                         chain="ML:5", probe_update_start=0)
    assert [r.stalled for r in result.history] == [False, False, True, True, True]
    assert result.stalled
    reason = result.state.stall_reason
    assert reason is not None and "changed nothing in 5 iterations" in reason and "does not fall" in reason
    warned = [r for r in caplog.records if "changed nothing" in r.getMessage()]
    assert len(warned) == 1 and "iteration 2" in warned[0].getMessage()  # once, when the stall began
    np.testing.assert_array_equal(result.object, 0)


def test_dm_then_ml_reaches_the_object(scan: Scan) -> None:
    seen: list[int] = []
    result = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="DM:50, ML:20",
                         callback=lambda i, state: seen.append(i), callback_every=10)
    assert seen == [9, 19, 29, 39, 49, 59, 69]
    assert result.algorithms == ["DM"] * 50 + ["ML"] * 20
    assert result.object.dtype == np.complex64 and result.probe.shape == (1, FRAME, FRAME)
    error = object_error(result.object, scan.obj, scan.lit)
    assert error < 0.05, error
    # Poisson data explained to the noise: about 0.5 per pixel (half the deviance)
    assert 0.3 < result.neg_log_likelihoods[-1] < 1.0
    blank = object_error(np.ones_like(scan.obj), scan.obj, scan.lit)
    assert blank > 0.3  # the error measure does tell a wrong object apart
    # the refined probe is the beam, not the Gaussian guess
    probe_error = object_error(result.probe[0], scan.probe[0], np.abs(scan.probe[0]) > 0.3 * np.abs(scan.probe).max())
    assert probe_error < 0.1, probe_error


# ------------------------------------------------------------------ ePIE
def test_epie_converges_from_defaults(scan: Scan) -> None:
    result = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="ePIE:30")
    assert result.algorithms == ["ePIE"] * 30 and all(v is None for v in result.neg_log_likelihoods)
    errors = result.fourier_errors
    assert errors[-1] < errors[0] / 300, errors
    assert object_error(result.object, scan.obj, scan.lit) < 0.1
    probe_error = object_error(result.probe[0], scan.probe[0], np.abs(scan.probe[0]) > 0.3 * np.abs(scan.probe).max())
    assert probe_error < 0.05, probe_error
    # sequential: far ahead of the parallel AP after the same iterations
    ap = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="AP:30")
    assert object_error(result.object, scan.obj, scan.lit) < 0.5 * object_error(ap.object, scan.obj, scan.lit)


def test_epie_order_comes_from_its_seed(scan: Scan) -> None:
    def run(seed: int) -> object:
        return reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="ePIE:4, ML:1",
                           algorithm_params={"epie": {"seed": seed, "alpha": 0.9, "beta": 0.8}})

    first, again, other = run(7), run(7), run(8)
    np.testing.assert_array_equal(first.object, again.object)
    np.testing.assert_array_equal(first.probe, again.probe)
    assert first.fourier_errors == again.fourier_errors
    assert np.abs(first.object - other.object).max() > 1e-3  # another order, another path
    with pytest.raises(ValueError, match="ePIE seed must be an integer >= 0"):
        EPIE(seed=-1)
    with pytest.raises(ValueError, match="ePIE alpha"):
        reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="ePIE:1",
                    algorithm_params={"EPIE": {"alpha": 0}})


def test_epie_refines_positions_that_are_off(scan: Scan) -> None:
    rng = np.random.default_rng(4)
    true = np.rint(scan.positions_px)
    given = true.copy()
    off = rng.choice(len(true), 16, replace=False)
    given[off] += rng.choice([-2, -1, 1, 2], (16, 2))
    room = np.ones((scan.obj.shape[0] + 6, scan.obj.shape[1] + 6), np.complex64)  # room to move at the edges
    plain = ReconstructionState(scan.intensities, given + 3, gaussian_guess(), room)
    iterate(plain, "ePIE", 50)
    refined = ReconstructionState(scan.intensities, given + 3, gaussian_guess(), room)
    iterate(refined, EPIE(refine_positions_every=2), 50)
    np.testing.assert_array_equal(plain.positions_px, given + 3)  # refinement is off by default
    np.testing.assert_array_equal(refined.positions_px - 3, true)  # every view back where it was measured
    assert refined.history[-1].fourier_error < 0.2 * plain.history[-1].fourier_error
    assert tuple(refined.windows.iy) == tuple(true[:, 0].astype(int) + 3)


def test_ml_smoothness_prior_smooths_where_data_are_few(scan: Scan) -> None:
    def roughness(obj: np.ndarray, where: np.ndarray) -> float:
        return float((np.abs(np.diff(obj, axis=0))[where[1:]] ** 2).sum()
                     + (np.abs(np.diff(obj, axis=1))[where[:, 1:]] ** 2).sum())

    state = ReconstructionState(scan.intensities, scan.positions_px, gaussian_guess())
    iterate(state, "DM", 20)
    start = state.object.copy()
    iterate(state, MaximumLikelihood(smoothness=0.0), 5)
    plain = state.object
    state.set_object(start)
    iterate(state, MaximumLikelihood(smoothness=0.01), 5)
    smooth = state.object
    # the barely lit rim, which the data hardly constrain, is smoothed; the well-lit object is not changed much
    assert roughness(smooth, ~scan.lit) < 0.1 * roughness(plain, ~scan.lit)
    assert object_error(smooth, scan.obj, scan.lit) < 1.1 * object_error(plain, scan.obj, scan.lit)


def test_fixed_probe_is_not_refined(scan: Scan) -> None:
    guess = gaussian_guess()
    result = reconstruct(scan.intensities, scan.positions_px, guess, chain="DM:5", probe_update_start=10**6)
    ratio = result.probe[0] / guess
    assert np.allclose(ratio, ratio[0, 0], rtol=1e-5)  # only the initial power scaling


# --------------------------------------------------------- weights, mask
def test_frames_of_weight_zero_change_nothing(scan: Scan) -> None:
    rng = np.random.default_rng(5)
    n = len(scan.intensities)
    garbage = rng.uniform(0, 1e6, (16, FRAME, FRAME)).astype(np.float32)
    garbage[0, 3, 3] = np.nan  # not measured yet: may hold anything
    garbage_pos = rng.uniform(0, scan.positions_px.max(axis=0), (16, 2))
    # garbage frames interleaved with the real ones, which keep their order
    slots = np.sort(rng.choice(n + 16, 16, replace=False))
    real = np.setdiff1d(np.arange(n + 16), slots)
    intensities = np.empty((n + 16, FRAME, FRAME), np.float32)
    positions = np.empty((n + 16, 2))
    intensities[real], intensities[slots] = scan.intensities, garbage
    positions[real], positions[slots] = scan.positions_px, garbage_pos
    weights = np.zeros(n + 16)
    weights[real] = 1

    chain = "DM:10, AP:3, ML:5"
    clean = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain, chunk_frames=24)
    mixed = reconstruct(intensities, positions, gaussian_guess(), chain=chain, weights=weights, chunk_frames=24)
    np.testing.assert_array_equal(mixed.object, clean.object)
    np.testing.assert_array_equal(mixed.probe, clean.probe)
    assert mixed.fourier_errors == clean.fourier_errors

    weights[slots[1:]] = 1  # the same garbage, counted (but not the NaN frame)
    counted = reconstruct(intensities, positions, gaussian_guess(), chain=chain, weights=weights, chunk_frames=24)
    assert np.abs(counted.object - clean.object)[scan.lit].max() > 0.1


def test_mask_excludes_pixels(scan: Scan) -> None:
    rng = np.random.default_rng(7)
    mask = np.ones((FRAME, FRAME), bool)
    mask[FRAME // 2, FRAME // 2] = False  # a beamstop on the zero frequency
    mask[rng.integers(0, FRAME, 10), rng.integers(0, FRAME, 10)] = False  # bad pixels
    spoiled = scan.intensities.copy()
    spoiled[:, ~mask] = rng.uniform(0, 1e9, (len(spoiled), int((~mask).sum())))
    spoiled[3][~mask] = np.nan
    chain = "DM:30, ML:10"
    clean = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain, mask=mask)
    dirty = reconstruct(spoiled, scan.positions_px, gaussian_guess(), chain=chain, mask=mask)
    np.testing.assert_array_equal(dirty.object, clean.object)
    assert object_error(dirty.object, scan.obj, scan.lit) < 0.1
    unmasked = reconstruct(np.nan_to_num(spoiled), scan.positions_px, gaussian_guess(), chain="DM:30")
    assert object_error(unmasked.object, scan.obj, scan.lit) > 0.3  # the spoiled pixels do matter unmasked


# ------------------------------------------------------------ probe modes
def test_two_probe_modes() -> None:
    main = _disc_probe()
    y = (np.arange(FRAME)[:, None] - FRAME / 2) / (DIAMETER / 2)
    second = (main * y * 0.6).astype(np.complex64)  # an incoherent mode with a node across the beam
    truth = np.stack([main, second])
    scan = make_scan(seed=1, probes=truth)
    chain = "DM:40, ML:15"
    one = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain)
    two = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain, probe_modes=2)
    assert two.probe.shape == (2, FRAME, FRAME)
    flat = two.probe.reshape(2, -1)
    gram = flat.conj() @ flat.T
    assert abs(gram[0, 1]) < 1e-3 * abs(gram[0, 0])  # orthogonal modes
    assert abs(gram[0, 0]) >= abs(gram[1, 1])  # strongest first
    # the modes' intensities add up to the measured power
    far = (np.abs(np.fft.fft2(two.probe, norm="ortho")) ** 2).sum()
    transmitted = (np.abs(two.object) ** 2)[scan.lit].mean()
    assert far * transmitted == pytest.approx(scan.intensities.sum(axis=(1, 2)).mean(), rel=0.1)
    # the weaker mode carries the share of the power it has in the beam (7.7 %)
    true_share = (np.abs(truth[1]) ** 2).sum() / (np.abs(truth) ** 2).sum()
    share = abs(gram[1, 1]) / abs(gram[0, 0] + gram[1, 1])
    assert share == pytest.approx(true_share, rel=0.15)
    # two modes explain two-mode data to the noise, one mode cannot
    assert two.neg_log_likelihoods[-1] < 1.0 < one.neg_log_likelihoods[-1]
    assert object_error(two.object, scan.obj, scan.lit) < 0.5 * object_error(one.object, scan.obj, scan.lit)


def test_probe_modes_given_and_too_many() -> None:
    scan = make_scan(seed=2)
    modes = np.stack([gaussian_guess(), 0.1 * gaussian_guess(4.0)])
    result = reconstruct(scan.intensities, scan.positions_px, modes, chain="DM:3", probe_modes=3)
    assert result.probe.shape == (3, FRAME, FRAME)
    with pytest.raises(ValueError, match="probe has 2 modes but probe_modes=1"):
        reconstruct(scan.intensities, scan.positions_px, modes, chain="DM:1")


# ---------------------------------------------------------- bad input, divergence
def test_diverging_algorithm_raises(scan: Scan) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DivergenceError) as info:
            reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="AP:30",
                        algorithm_params={"AP": {"object_step": 1e6}})
    message = str(info.value)
    assert "AP diverged at iteration" in message and "step" in message
    assert any("AP is diverging" in str(w.message) for w in caught)


def test_converging_run_warns_nothing(scan: Scan) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="DM:20, AP:5, ML:5")


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["intensities"].__setitem__((5, 10, 10), np.nan), ["measured frames [5]", "mask", "weight 0"]),
    (lambda d: d.__setitem__("probe", np.full((FRAME, FRAME), np.nan, np.complex64)), ["probe guess", "NaN"]),
    (lambda d: d.__setitem__("probe", gaussian_guess()[:20, :20]), ["(1, 20, 20)", "32x32", "frame shape"]),
    (lambda d: d.__setitem__("probe", np.zeros((FRAME, FRAME), np.complex64)), ["zero everywhere"]),
    (lambda d: d.__setitem__("positions_px", d["positions_px"][:10]), ["(10, 2)", "(64, 2)"]),
    (lambda d: d.update(positions_px=d["positions_px"] - 5, obj=np.ones((70, 70), np.complex64)),
     ["before the object guess's first pixel", "origin_px"]),
    (lambda d: d.__setitem__("origin_px", (0, np.nan)), ["origin_px must be two finite numbers"]),
    (lambda d: d.__setitem__("mask", np.ones((4, 4), bool)), ["mask has shape (4, 4)"]),
    (lambda d: d.__setitem__("weights", -np.ones(64)), [">= 0"]),
    (lambda d: d.__setitem__("obj", np.ones((40, 40), np.complex64)), ["too small", "at least"]),
    (lambda d: d.__setitem__("chain", "DM:5,QQ:3"), ["unknown algorithm 'QQ'"]),
    (lambda d: d.__setitem__("algorithm_params", {"DM": {"beta": 2}}), ["beta", "alpha"]),
    (lambda d: d.__setitem__("algorithm_params", {"AP": {"object_step": -1}}), ["object_step", "> 0"]),
])
def test_bad_input_is_a_clear_error(scan: Scan, change, words: list[str]) -> None:
    args = {"intensities": scan.intensities.copy(), "positions_px": scan.positions_px.copy(),
            "probe": gaussian_guess(), "chain": "DM:2"}
    change(args)
    with pytest.raises(ValueError) as info:
        reconstruct(**args)
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------- positions, probe power
@pytest.mark.parametrize("offset", [(-40.0, -20.0), (-5000.0, 0.0), (2000.0, 1000.0)])
def test_positions_in_any_origin(scan: Scan, offset: tuple[float, float]) -> None:
    # centred translations (negative), far-off motor positions: the object starts at the
    # smallest window corner, and the reconstruction is the same as from positions at 0
    chain = "DM:3, ML:2"
    reference = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain)
    moved = reconstruct(scan.intensities, scan.positions_px + offset, gaussian_guess(), chain=chain)
    assert tuple(reference.state.origin_px) == (0, 0)
    assert tuple(moved.state.origin_px) == tuple(np.rint(scan.positions_px + offset).min(axis=0).astype(int))
    np.testing.assert_array_equal(moved.object, reference.object)
    np.testing.assert_array_equal(moved.state.positions_px, scan.positions_px + offset)  # as given
    # an explicit origin places the object anywhere that holds every window
    origin = np.rint(scan.positions_px + offset).min(axis=0) - 2
    padded = reconstruct(scan.intensities, scan.positions_px + offset, gaussian_guess(), chain="DM:1",
                         origin_px=origin)
    assert padded.object.shape == (reference.object.shape[0] + 2, reference.object.shape[1] + 2)


def test_streamed_positions_must_stay_on_the_object(scan: Scan) -> None:
    state = ReconstructionState(scan.intensities, scan.positions_px - 30, gaussian_guess())
    state.set_frames([0], scan.intensities[:1], positions_px=[[-29.0, -28.0]])
    assert (state.windows.iy[0], state.windows.ix[0]) == (1, 2)
    with pytest.raises(ValueError, match="outside the"):
        state.set_frames([1], scan.intensities[1:2], positions_px=[[-31.0, 0.0]])
    with pytest.raises(ValueError, match="outside the"):
        state.move_frames([1], [[-31.0, 0.0]])


def test_scaled_probe_guess_is_reported(scan: Scan, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightpipe.techniques.ptychography.algorithms.state")
    guess = gaussian_guess()
    state = ReconstructionState(scan.intensities, scan.positions_px, guess)
    far_power = float((np.abs(np.fft.fft2(guess, norm="ortho")) ** 2).sum())
    assert state.probe_scale == pytest.approx(np.sqrt(scan.intensities.sum(axis=(1, 2)).mean() / far_power), rel=1e-5)
    np.testing.assert_allclose(state.probe[0], guess * state.probe_scale, rtol=1e-5)
    assert any(f"scaled by {state.probe_scale:.4g}" in r.getMessage() for r in caplog.records)
    kept = ReconstructionState(scan.intensities, scan.positions_px, guess, np.ones(scan.obj.shape, np.complex64))
    assert kept.probe_scale == 1.0  # with an object guess the probe is taken as it is


# ---------------------------------------------------- streaming, distributed
def test_streaming_frames_arrive_between_iterations(scan: Scan) -> None:
    n = len(scan.intensities)
    state = ReconstructionState(np.zeros_like(scan.intensities), scan.positions_px, gaussian_guess(),
                        weights=np.zeros(n))
    with pytest.raises(ValueError, match="no frame is measured yet"):
        iterate(state, "DM", 1)
    for start in range(0, n, 16):  # four batches of 16 frames, 10 DM iterations after each
        rows = np.arange(start, start + 16)
        state.set_frames(rows, scan.intensities[rows])
        records = iterate(state, "DM", 10)
        assert records[0].iteration == start // 16 * 10
    assert state.iteration == 40 and np.all(state.weights == 1)
    iterate(state, "ML", 10)
    assert object_error(state.object, scan.obj, scan.lit) < 0.06
    with pytest.raises(ValueError, match="NaN"):
        state.set_frames([0], np.full((1, FRAME, FRAME), np.nan, np.float32))


def test_distributed_parts_merge_by_illumination(scan: Scan) -> None:
    left = scan.positions_px[:, 1] < np.median(scan.positions_px[:, 1])
    obj = np.ones(scan.obj.shape, np.complex64)
    probe = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="DM:1").probe
    parts = [ReconstructionState(scan.intensities[sel], scan.positions_px[sel], probe, obj) for sel in (left, ~left)]
    for _ in range(4):  # 4 rounds of 10 DM iterations per part, objects merged after each
        for part in parts:
            iterate(part, "DM", 10)
        lights = [p.illumination() for p in parts]
        floor = 1e-6 * max(w.max() for w in lights)
        merged = sum(p.object * w for p, w in zip(parts, lights)) / np.maximum(sum(lights), floor)
        for part in parts:
            part.set_object(merged)
    assert lights[0][:, -5:].max() == 0 and lights[1][:, :5].max() == 0  # each part lights its own side
    assert object_error(merged, scan.obj, scan.lit) < 0.1
    with pytest.raises(ValueError, match="shape"):
        parts[0].set_object(np.ones((10, 10), np.complex64))


# ---------------------------------------------------------------- backends
@pytest.mark.parametrize("fft", ["numpy", "scipy", "pyfftw"])
def test_fft_libraries_agree(scan: Scan, fft: str) -> None:
    pytest.importorskip(fft)
    chain = "DM:2, ML:1"
    reference = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain, fft="numpy")
    other = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain, fft=fft)
    assert other.state.fft.name == fft
    np.testing.assert_allclose(other.object[scan.lit], reference.object[scan.lit], atol=1e-3)
    assert other.fourier_errors == pytest.approx(reference.fourier_errors, rel=1e-5)


def test_unknown_fft_library(scan: Scan) -> None:
    with pytest.raises(ValueError, match="unknown FFT library 'fftx'"):
        reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain="DM:1", fft="fftx")


def test_torch_arrays_run_the_same_code(scan: Scan) -> None:
    torch = pytest.importorskip("torch")
    frames, guess = torch.from_numpy(scan.intensities), torch.from_numpy(gaussian_guess())
    mask = torch.ones((FRAME, FRAME), dtype=torch.bool)
    mask[0, 0] = False
    chain = "DM:2, AP:1, ML:2"
    reference = reconstruct(scan.intensities, scan.positions_px, gaussian_guess(), chain=chain, mask=mask.numpy(),
                            probe_modes=2)
    result = reconstruct(frames, scan.positions_px, guess, chain=chain, mask=mask, probe_modes=2)
    assert isinstance(result.object, torch.Tensor) and isinstance(result.probe, torch.Tensor)
    np.testing.assert_allclose(result.object.numpy()[scan.lit], reference.object[scan.lit], atol=1e-2)
    assert result.fourier_errors == pytest.approx(reference.fourier_errors, rel=1e-3)
    longer = reconstruct(frames, scan.positions_px, guess, chain="DM:30, ML:10")
    assert object_error(longer.object.numpy(), scan.obj, scan.lit) < 0.06
