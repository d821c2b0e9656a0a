"""The centre of rotation from projections 180 degrees apart.

A parallel beam at ``theta + 180`` sees the object's mirror image at
``theta``, mirrored about the rotation axis: ``p(theta + 180, u) =
p(theta, 2 c - u)``. Flipping the second projection leaves a shift
``d = 2 c - (nu - 1)`` between the two; the peak of their cross-correlation
(summed over the rows given, refined by a parabola through its three highest
points) measures it to a fraction of a pixel, and ``c = (nu - 1 + d) / 2``. A
180 degree scan has such a pair at its two ends, a 360 degree scan one for
every angle; the pairs closest to 180 degrees apart are used and their
centres' median kept.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["PAIRS", "find_centre", "opposite_pairs"]

#: Most pairs of opposite projections measured.
PAIRS = 8


def opposite_pairs(angles: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of projections within ``tolerance`` (radians) of 180 degrees apart, closest first."""
    theta = np.mod(np.asarray(angles, np.float64), 2 * np.pi)
    found: list[tuple[float, int, int]] = []
    order = np.argsort(theta, kind="stable")
    ordered = theta[order]
    for i in range(theta.size):
        target = np.mod(theta[i] + np.pi, 2 * np.pi)
        k = int(np.searchsorted(ordered, target))
        for candidate in (k - 1, k, k + 1, 0, theta.size - 1):  # neighbours, and both ends across 2 pi
            if 0 <= candidate < theta.size:
                j = int(order[candidate])
                miss = abs(np.angle(np.exp(1j * (theta[j] - target))))
                if j != i and miss <= tolerance:
                    found.append((miss, min(i, j), max(i, j)))
    unique = sorted(set(found))
    pairs: list[tuple[int, int]] = []
    for _, i, j in unique:
        if (i, j) not in pairs:
            pairs.append((i, j))
    return pairs[:PAIRS]


def _shift(first: np.ndarray, mirrored: np.ndarray) -> float:
    """Shift ``d`` (pixels, sub-pixel) with ``mirrored(u) ~ first(u + d)``, from the rows' summed cross-correlation."""
    nu = first.shape[-1]
    size = 2 * nu
    a = first - first.mean(axis=-1, keepdims=True)
    b = mirrored - mirrored.mean(axis=-1, keepdims=True)
    correlation = scipy.fft.irfft((scipy.fft.rfft(a, size) * np.conj(scipy.fft.rfft(b, size))).sum(axis=0), size)
    peak = int(np.argmax(correlation))
    left, mid, right = correlation[peak - 1], correlation[peak], correlation[(peak + 1) % size]
    curvature = left - 2 * mid + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    shift = peak + offset
    return shift - size if shift > nu else shift


def find_centre(sinograms: np.ndarray, angles: np.ndarray, tolerance: float) -> tuple[float, int]:
    """The detector column of the rotation axis, and how many pairs of opposite projections gave it.

    Parameters
    ----------
    sinograms
        ``(nz, n_angles, nu)``: a few rows suffice (rows with the object in them).
    angles
        Radians.
    tolerance
        How far from 180 degrees apart (radians) two projections may be to count as a pair.

    Raises
    ------
    ValueError
        No two projections are 180 degrees apart within ``tolerance``.
    """
    angles = np.asarray(angles, np.float64)
    pairs = opposite_pairs(angles, tolerance)
    if not pairs:
        span = np.degrees(angles.max() - angles.min()) if angles.size else 0.0
        raise ValueError(f"no two of the {angles.size} projections are 180 deg apart (within "
                         f"{np.degrees(tolerance):g} deg; the angles span {span:g} deg): the centre of rotation cannot "
                         "be found; scan 180 deg or more, or set centre_px")
    nu = sinograms.shape[-1]
    centres = [(nu - 1 + _shift(sinograms[:, i, :], sinograms[:, j, ::-1])) / 2 for i, j in pairs]
    return float(np.median(centres)), len(pairs)
