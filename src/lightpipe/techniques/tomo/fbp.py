"""Filtered back projection: a ramp filter with a window, and a back projection of the filtered sinograms.

The filter is the ramp of Kak and Slaney (*Principles of Computerized
Tomographic Imaging*, 1988, eq. 3.61): the discrete impulse response of
``|f|`` band-limited to the detector's Nyquist frequency, transformed, so the
zero frequency is not lost as it is with a sampled ``|f|``. A window
(Shepp-Logan, cosine, Hamming, Hann) rolls it off towards Nyquist to trade
resolution for noise.

The back projection looks each pixel's ray up in the filtered projection
resampled four times finer (by zero-padding its spectrum, an exact band-limited
interpolation) and takes the nearest sample: one lookup per pixel and angle,
shared by every slice of a block, with an error below a linear interpolation's
on the original samples. That is why it is NumPy and not a library: it
reconstructs a 512 x 512 slice from 720 projections faster than astra-toolbox's
CPU FBP and algotom's Numba one (``benchmarks/tomo.py`` measures all three).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.fft

from lightpipe.techniques.tomo.geometry import angular_weights, circle, coordinates

__all__ = ["OVERSAMPLING", "WINDOWS", "Window", "backproject", "fbp", "filter_sinograms", "ramp_filter"]

Window = Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"]
#: The windows :func:`ramp_filter` knows ("ramp": none, the bare Ram-Lak filter).
WINDOWS: tuple[str, ...] = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
#: Samples per detector pixel of the filtered projections the back projection looks up.
OVERSAMPLING = 4


def ramp_filter(size: int, window: str = "ramp") -> np.ndarray:
    """The frequency response (``rfft`` layout, ``size // 2 + 1`` values) of the windowed ramp filter.

    Parameters
    ----------
    size
        Length of the zero-padded projections (even).
    window
        One of :data:`WINDOWS`.
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown filter window {window!r}; choose one of {', '.join(WINDOWS)}")
    k = np.arange(size)
    offset = np.minimum(k, size - k)  # distance from sample 0, on the circle
    impulse = np.zeros(size)
    impulse[0] = 0.25
    odd = offset % 2 == 1
    impulse[odd] = -1.0 / (np.pi * offset[odd]) ** 2
    response = np.real(np.fft.rfft(impulse))
    nu = np.fft.rfftfreq(size) / 0.5  # 0 at the zero frequency, 1 at Nyquist
    if window == "shepp-logan":
        response *= np.sinc(nu / 2)
    elif window == "cosine":
        response *= np.cos(np.pi * nu / 2)
    elif window == "hamming":
        response *= 0.54 + 0.46 * np.cos(np.pi * nu)
    elif window == "hann":
        response *= 0.5 + 0.5 * np.cos(np.pi * nu)
    return response


def filter_sinograms(sinograms: np.ndarray, window: str = "ramp", oversampling: int = OVERSAMPLING) -> np.ndarray:
    """Ramp-filter each projection row and resample it ``oversampling`` times finer.

    Parameters
    ----------
    sinograms
        ``(nz, n_angles, nu)``.
    window
        One of :data:`WINDOWS`.
    oversampling
        Samples per detector pixel of the result.

    Returns
    -------
    numpy.ndarray
        float32 ``(nz, n_angles, nu * oversampling)``: sample ``k`` is at detector column ``k / oversampling``.
    """
    nu = sinograms.shape[-1]
    # padding to twice the width keeps the filter's circular convolution from wrapping one edge onto the other
    size = max(64, 1 << int(np.ceil(np.log2(2 * nu))))
    spectrum = scipy.fft.rfft(np.asarray(sinograms, np.float32), n=size, axis=-1)
    spectrum *= ramp_filter(size, window).astype(np.float32)
    fine = scipy.fft.irfft(spectrum, n=size * oversampling, axis=-1)[..., : nu * oversampling]
    return np.ascontiguousarray(fine * np.float32(oversampling), dtype=np.float32)


def backproject(filtered: np.ndarray, angles: np.ndarray, centre: float, n: int,
                weights: np.ndarray | None = None, oversampling: int = OVERSAMPLING) -> np.ndarray:
    """Back-project filtered projections onto ``n x n`` slices (zero outside the reconstruction circle).

    Parameters
    ----------
    filtered
        ``(nz, n_angles, L)`` from :func:`filter_sinograms`.
    angles
        Radians, one per projection.
    centre
        Detector column of the rotation axis.
    n
        Slice width in pixels.
    weights
        Radians each projection stands for (default :func:`angular_weights`).
    oversampling
        The one :func:`filter_sinograms` used.
    """
    nz, n_angles, length = filtered.shape
    weights = angular_weights(angles) if weights is None else np.asarray(weights, np.float64)
    inside = circle(n)
    c = coordinates(n)
    ys, xs = np.broadcast_arrays(c[:, None], c[None, :])
    xs, ys = xs[inside], ys[inside]
    # one column of zeros past the end: rays that miss the detector look it up (index -1 and index length)
    padded = np.zeros((nz, n_angles, length + 1), np.float32)
    padded[..., :length] = filtered
    total = np.zeros((nz, xs.size), np.float32)
    looked_up = np.empty_like(total)
    fine_centre = np.float32(centre * oversampling)
    for a in range(n_angles):
        theta = float(angles[a])
        t = xs * np.float32(np.cos(theta) * oversampling)
        t += ys * np.float32(np.sin(theta) * oversampling)
        t += fine_centre
        index = np.rint(t, out=t).astype(np.int32)
        np.clip(index, -1, length, out=index)
        np.take(padded[:, a, :], index, axis=1, out=looked_up)
        if weights[a] != 1.0:
            looked_up *= np.float32(weights[a])
        total += looked_up
    slices = np.zeros((nz, n, n), np.float32)
    slices[:, inside] = total
    return slices


def fbp(sinograms: np.ndarray, angles: np.ndarray, centre: float, n: int | None = None,
        window: str = "ramp") -> np.ndarray:
    """Filtered back projection of a stack of sinograms.

    Parameters
    ----------
    sinograms
        ``(nz, n_angles, nu)`` line integrals (the minus log of the transmission).
    angles
        Radians.
    centre
        Detector column of the rotation axis.
    n
        Slice width (default ``nu``).
    window
        One of :data:`WINDOWS`.

    Returns
    -------
    numpy.ndarray
        float32 ``(nz, n, n)``: attenuation per pixel.

    Examples
    --------
    >>> from lightpipe.techniques.tomo.simulate import disc_sinogram
    >>> angles = np.linspace(0, np.pi, 90, endpoint=False)
    >>> image = fbp(disc_sinogram(32, angles, radius=8.0, value=1.0)[None], angles, 15.5)[0]
    >>> round(float(image[16, 16]), 1)
    1.0
    """
    angles = np.asarray(angles, np.float64)
    if sinograms.ndim != 3 or sinograms.shape[1] != angles.size:
        raise ValueError(f"sinograms of shape {sinograms.shape} do not match {angles.size} angles; expected "
                         "(slices, angles, columns)")
    weights = angular_weights(angles)
    return backproject(filter_sinograms(sinograms, window), angles, centre, n or sinograms.shape[-1], weights)
