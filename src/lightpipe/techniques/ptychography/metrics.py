"""Quality of a ptychographic reconstruction: errors against the truth, the Fourier R-factor and the FRC.

Ptychography cannot tell apart an object ``O`` and a probe ``P`` from
``a * O(r - s) * exp(i g.r)`` and ``P(r - s) * exp(-i g.r) / a``: the diffraction
patterns are the same for any complex factor ``a`` (global phase and scale),
shift ``s`` and linear phase ramp ``g``. Before a reconstruction is compared with
the truth these are estimated and removed (:func:`align_object`): the ramp
from the shift of the Fourier magnitude (which a real-space shift leaves
alone), the shift from an upsampled cross-correlation (global-phase
invariant), then both refined by Gauss-Newton on the masked least-squares
misfit, with the complex factor solved in closed form at each step.

Examples
--------
>>> import numpy as np
>>> from lightpipe.techniques.ptychography.metrics import frc, object_error
>>> rng = np.random.default_rng(0)
>>> truth = np.exp(1j * rng.random((64, 64)))
>>> round(object_error(2j * truth, truth), 6)
0.0
>>> curve = frc(truth, truth)
>>> bool(np.allclose(curve.correlation, 1.0))
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: Gauss-Newton refinement stops when no parameter moves more than this (px or rad/px * px).
_TOLERANCE = 1e-7
_MAX_ITERATIONS = 30


@dataclass(frozen=True)
class Alignment:
    """A reconstruction aligned to the truth, and the ambiguities that were removed.

    The reconstruction is modelled as ``scale * recon(r) = exp(i ramp.(r - c)) * truth(r - shift)``
    with ``c`` the array centre (``ny // 2, nx // 2``); ``aligned`` is ``scale``
    times the reconstruction with the ramp and the shift undone, so it is
    directly comparable with the truth (for display: pixels outside the mask
    spread into it through the sub-pixel shift, so use ``error`` for numbers).

    Attributes
    ----------
    aligned
        The aligned reconstruction, complex, shape of the input.
    shift_px
        (y, x) shift of the reconstruction relative to the truth, pixels.
    ramp_rad_per_px
        (y, x) linear phase ramp of the reconstruction relative to the truth, rad per pixel.
    scale
        The optimal complex factor applied to the reconstruction; its angle is
        the global phase removed.
    error
        Normalised RMS error ``||scale * recon - truth'|| / ||truth'||`` over the
        mask, ``truth'`` the truth shifted and ramped onto the reconstruction.
    """

    aligned: np.ndarray
    shift_px: tuple[float, float]
    ramp_rad_per_px: tuple[float, float]
    scale: complex
    error: float

    @property
    def phase_rad(self) -> float:
        """The global phase removed, rad."""
        return float(np.angle(self.scale))


class FRC(NamedTuple):
    """A Fourier ring correlation curve.

    Attributes
    ----------
    frequencies
        Ring centres, cycles per pixel (0 to 0.5).
    correlation
        Normalised correlation of the two images' Fourier coefficients in each ring.
    half_bit
        The half-bit information threshold for the number of pixels in each ring.
    pixels
        Number of Fourier pixels in each ring.
    """

    frequencies: np.ndarray
    correlation: np.ndarray
    half_bit: np.ndarray
    pixels: np.ndarray

    def resolution(self) -> float | None:
        """The first frequency (cycles per pixel) where the FRC drops below the half-bit threshold, or ``None``."""
        below = np.nonzero(self.correlation[1:] < self.half_bit[1:])[0]
        return float(self.frequencies[1 + below[0]]) if below.size else None


def _check_pair(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, what: str) -> np.ndarray:
    """The mask as booleans, after checking that ``a``, ``b`` and ``mask`` fit together."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{what}: both arrays must be 2-D of the same shape, got {a.shape} and {b.shape}")
    for name, x in (("reconstruction", a), ("truth", b)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what}: the {name} has NaN or infinite values; fix or mask them first")
    if mask is None:
        return np.ones(a.shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != a.shape:
        raise ValueError(f"{what}: mask has shape {mask.shape}, the arrays {a.shape}")
    if not mask.any():
        raise ValueError(f"{what}: the mask selects no pixel")
    return mask


def register_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 20) -> np.ndarray:
    """The (y, x) shift ``s`` for which ``moving(r)`` best matches ``reference(r - s)``, to ``1 / upsample`` px.

    The peak of the magnitude of the circular cross-correlation, refined by an
    upsampled DFT around the integer peak; insensitive to a global phase.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(1).random((32, 32))
    >>> np.round(register_shift(ref, np.roll(ref, (3, -5), axis=(0, 1))), 6).tolist()
    [3.0, -5.0]
    """
    spectrum = np.fft.fft2(moving) * np.conj(np.fft.fft2(reference))
    ny, nx = spectrum.shape
    coarse = np.unravel_index(np.argmax(np.abs(np.fft.ifft2(spectrum))), spectrum.shape)
    peak = np.array([(c + n // 2) % n - n // 2 for c, n in zip(coarse, (ny, nx))], dtype=float)
    if upsample <= 1:
        return peak
    offsets = np.arange(-1.5, 1.5 + 1e-9, 1.0 / upsample)
    ky, kx = np.fft.fftfreq(ny) * ny, np.fft.fftfreq(nx) * nx
    rows = np.exp(2j * np.pi * np.outer(peak[0] + offsets, ky) / ny)
    cols = np.exp(2j * np.pi * np.outer(kx, peak[1] + offsets) / nx)
    fine = np.abs(rows @ spectrum @ cols)
    iy, ix = np.unravel_index(np.argmax(fine), fine.shape)
    return peak + np.array([offsets[iy], offsets[ix]])


class _MovedTruth:
    """``exp(i g.rho) * truth(r - s)`` and its derivatives in ``s`` and ``g``.

    The truth is moved rather than the reconstruction: the truth is clean
    everywhere, while a reconstruction is arbitrary outside the illuminated
    area and a sub-pixel (Fourier) shift would spread that into the mask.
    """

    def __init__(self, truth: np.ndarray) -> None:
        ny, nx = truth.shape
        self.spectrum = np.fft.fft2(truth)
        self.rho = np.indices(truth.shape, dtype=float) - np.array([ny // 2, nx // 2], dtype=float)[:, None, None]
        self.k = np.stack(np.meshgrid(np.fft.fftfreq(ny), np.fft.fftfreq(nx), indexing="ij"))

    def _moved(self, theta: np.ndarray, derivative: int | None = None) -> np.ndarray:
        spectrum = self.spectrum * np.exp(-2j * np.pi * (self.k[0] * theta[0] + self.k[1] * theta[1]))
        if derivative is not None:
            spectrum = spectrum * (-2j * np.pi * self.k[derivative])
        return np.fft.ifft2(spectrum) * self.ramp(theta[2:])

    def ramp(self, g: np.ndarray) -> np.ndarray:
        return np.exp(1j * (g[0] * self.rho[0] + g[1] * self.rho[1]))

    def value(self, theta: np.ndarray) -> np.ndarray:
        return self._moved(theta)

    def jacobian(self, theta: np.ndarray, value: np.ndarray) -> list[np.ndarray]:
        return [self._moved(theta, 0), self._moved(theta, 1), 1j * self.rho[0] * value, 1j * self.rho[1] * value]

    def undo(self, recon: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """``recon`` with the ramp removed and moved back by ``-s``: in the frame of the truth."""
        spectrum = np.fft.fft2(recon * self.ramp(-theta[2:]))
        return np.fft.ifft2(spectrum * np.exp(2j * np.pi * (self.k[0] * theta[0] + self.k[1] * theta[1])))


def _fit(moved: np.ndarray, recon: np.ndarray) -> tuple[float, complex]:
    """Least-squares misfit of ``recon ~ b * moved`` and the best ``b``."""
    norm = np.vdot(moved, moved).real
    b = complex(np.vdot(moved, recon) / norm) if norm > 0 else 0j
    return float(np.sum(np.abs(recon - b * moved) ** 2)), b


def _initial_guess(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray, upsample: int) -> np.ndarray:
    ny, nx = recon.shape
    magnitude = [np.abs(np.fft.fftshift(np.fft.fft2(x * mask))) for x in (truth, recon)]
    ramp = 2 * np.pi * register_shift(magnitude[0], magnitude[1], upsample) / np.array([ny, nx])
    unramped = recon * _MovedTruth(truth).ramp(-ramp)
    shift = register_shift(truth * mask, unramped * mask, upsample)
    return np.array([*shift, *ramp])


def align_object(
    recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *, upsample: int = 20
) -> Alignment:
    """Align a reconstruction to the truth: remove the global phase and scale, a phase ramp and a sub-pixel shift.

    The shift, ramp and factor are those for which the truth, moved and
    ramped, best matches the reconstruction on the mask (Gauss-Newton from
    the registration estimates); the error is then
    ``||a * recon - truth'|| / ||truth'||`` over the mask, with ``truth'`` the
    moved truth and ``a`` the optimal complex factor.

    Parameters
    ----------
    recon
        Reconstructed object (or probe), 2-D complex.
    truth
        The true object, same shape.
    mask
        Pixels to compare (``True``): the region the scan illuminated. Default all.
        Shifts wrap around the array edges, so keep the mask away from them by
        more than the expected shift.
    upsample
        Sub-pixel precision of the first estimate (the refinement then converges).

    Returns
    -------
    Alignment
        The aligned array and the shift, ramp, complex factor and error.
    """
    recon = np.asarray(recon, dtype=np.complex128)
    truth = np.asarray(truth, dtype=np.complex128)
    mask = _check_pair(recon, truth, mask, "align_object")
    if not np.any(truth[mask]):
        raise ValueError("align_object: the truth is zero everywhere in the mask")
    if not np.any(recon[mask]):
        raise ValueError("align_object: the reconstruction is zero everywhere in the mask")
    model = _MovedTruth(truth)
    target = recon[mask]
    theta = _initial_guess(recon, truth, mask, upsample)
    current = model.value(theta)
    cost, b = _fit(current[mask], target)
    for _ in range(_MAX_ITERATIONS):
        residual = target - b * current[mask]
        columns = [b * d[mask] for d in model.jacobian(theta, current)]
        design = np.concatenate([np.stack([c.real for c in columns], 1), np.stack([c.imag for c in columns], 1)])
        step = np.linalg.lstsq(design, np.concatenate([residual.real, residual.imag]), rcond=None)[0]
        for _ in range(8):  # halve a step that makes the fit worse
            trial = model.value(theta + step)
            trial_cost, trial_b = _fit(trial[mask], target)
            if trial_cost <= cost:
                break
            step = step / 2
        else:
            break
        theta, current, cost, b = theta + step, trial, trial_cost, trial_b
        if np.max(np.abs(step * np.array([1, 1, *recon.shape]))) < _TOLERANCE:
            break
    moved = current[mask]
    scale = complex(np.vdot(target, moved) / np.vdot(target, target).real)
    error = float(np.linalg.norm(scale * target - moved) / np.linalg.norm(moved))
    return Alignment(
        aligned=model.undo(scale * recon, theta),
        shift_px=(float(theta[0]), float(theta[1])),
        ramp_rad_per_px=(float(theta[2]), float(theta[3])),
        scale=scale,
        error=error,
    )


def object_error(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised RMS error ``||a * recon' - truth|| / ||truth||`` after :func:`align_object` (``a`` optimal).

    0 for a perfect reconstruction up to the ptychographic ambiguities; at most
    1 (``a = 0``). An unrelated image scores well below 1 when both have a large
    mean (a transmission near 1): compare against the error of a blank object.
    """
    return align_object(recon, truth, mask).error


def probe_error(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised RMS error of a reconstructed probe, after removing the same ambiguities as for the object."""
    return align_object(recon, truth, mask).error


def fourier_error(
    intensities_measured: np.ndarray, intensities_model: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """The Fourier R-factor ``sum |sqrt(I_meas) - sqrt(I_model)| / sum sqrt(I_meas)``.

    Parameters
    ----------
    intensities_measured, intensities_model
        Diffraction intensities, same shape ((N, ny, nx) or (ny, nx)); negative
        measured values (noise after dark subtraction) count as 0.
    mask
        Valid detector pixels (``True``), broadcast against the intensities
        (e.g. (ny, nx) to leave out the beamstop and bad pixels). Default all.
    """
    measured = np.sqrt(np.clip(np.asarray(intensities_measured, dtype=np.float64), 0, None))
    model = np.asarray(intensities_model, dtype=np.float64)
    if measured.shape != model.shape:
        raise ValueError(
            f"fourier_error: measured {measured.shape} and model {model.shape} intensities differ in shape"
        )
    if np.any(model < 0):
        raise ValueError("fourier_error: model intensities must not be negative")
    valid = np.broadcast_to(np.ones((), bool) if mask is None else np.asarray(mask, bool), measured.shape)
    total = measured[valid].sum()
    if total <= 0:
        raise ValueError("fourier_error: the measured intensities are zero in every valid pixel")
    return float(np.abs(measured - np.sqrt(model))[valid].sum() / total)


def half_bit_threshold(pixels: np.ndarray) -> np.ndarray:
    """The half-bit FRC threshold (van Heel and Schatz, 2005) for rings of ``pixels`` Fourier pixels."""
    root = np.sqrt(np.maximum(np.asarray(pixels, dtype=float), 1.0))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def frc(a: np.ndarray, b: np.ndarray, rings: int | None = None, *, window: str | None = None) -> FRC:
    """Fourier ring correlation of two images (real or complex), with the half-bit threshold.

    ``FRC(ring) = Re sum F_a conj(F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)`` over
    the Fourier pixels of each ring: 1 for identical images, about 0 (within
    ``1 / sqrt(pixels)``) for independent noise. Align and crop the images
    first (:func:`align_object`).

    Parameters
    ----------
    a, b
        Images of the same 2-D shape.
    rings
        Number of rings from 0 to 0.5 cycles per pixel; default half the smaller side.
    window
        ``"hann"`` tapers both images to 0 at the edges first, which keeps the
        edge discontinuity out of the high frequencies; default none.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"frc: both images must be 2-D of the same shape, got {a.shape} and {b.shape}")
    ny, nx = a.shape
    if window == "hann":
        taper = np.outer(np.hanning(ny), np.hanning(nx))
        a, b = a * taper, b * taper
    elif window is not None:
        raise ValueError(f"frc: unknown window {window!r}; use 'hann' or None")
    rings = rings or min(ny, nx) // 2
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(ny), np.fft.fftfreq(nx), indexing="ij"))
    ring = np.minimum((radius / 0.5 * rings).astype(int), rings)  # the corners beyond 0.5 go to an extra bin
    cross = np.bincount(ring.ravel(), (fa * np.conj(fb)).real.ravel(), rings + 1)[:rings]
    power_a = np.bincount(ring.ravel(), (np.abs(fa) ** 2).ravel(), rings + 1)[:rings]
    power_b = np.bincount(ring.ravel(), (np.abs(fb) ** 2).ravel(), rings + 1)[:rings]
    pixels = np.bincount(ring.ravel(), minlength=rings + 1)[:rings]
    denominator = np.sqrt(power_a * power_b)
    correlation = np.divide(cross, denominator, out=np.zeros(rings), where=denominator > 0)
    frequencies = (np.arange(rings) + 0.5) * 0.5 / rings
    return FRC(frequencies, correlation, half_bit_threshold(pixels), pixels)
