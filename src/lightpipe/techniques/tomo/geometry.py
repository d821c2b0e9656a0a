"""The reconstruction grid and the weight of each projection angle in a back projection."""
from __future__ import annotations

import numpy as np

__all__ = ["angular_weights", "circle", "coordinates", "centre_problem"]


def coordinates(n: int) -> np.ndarray:
    """Pixel centres along one axis of an ``n``-pixel slice, relative to the rotation axis (float32)."""
    return np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)


def circle(n: int) -> np.ndarray:
    """Boolean ``(n, n)`` mask of the reconstruction circle: the pixels every projection sees."""
    c = coordinates(n)
    return (c[:, None] ** 2 + c[None, :] ** 2) <= (n / 2) ** 2


def angular_weights(angles: np.ndarray) -> np.ndarray:
    """Share of the half turn each projection stands for, in radians: the back projection's quadrature weights.

    Parallel rays at ``theta`` and ``theta + pi`` are the same line, so angles
    are folded into ``[0, pi)`` and each gets half the gap to its neighbours on
    that circle. A full 180 or 360 degree scan, evenly spaced or not, with or
    without its end point, sums to ``pi``; a gap wider than twice the typical
    step (a scan still running, a missing wedge) counts as twice the step, so
    the projections beside it are not given the missing angles' weight.

    Parameters
    ----------
    angles
        Projection angles in radians, any order, repeats allowed.

    Examples
    --------
    >>> w = angular_weights(np.linspace(0, np.pi, 4, endpoint=False))
    >>> bool(np.isclose(w.sum(), np.pi))
    True
    """
    theta = np.mod(np.asarray(angles, np.float64), np.pi)
    n = theta.size
    if n == 1:
        return np.array([np.pi])
    order = np.argsort(theta, kind="stable")
    sorted_theta = theta[order]
    gaps = np.diff(np.concatenate([sorted_theta, sorted_theta[:1] + np.pi]))  # gaps[k]: from k to the next
    positive = gaps[gaps > 1e-9]
    cap = 2 * float(np.median(positive)) if positive.size else np.pi
    gaps = np.minimum(gaps, cap)
    weights = np.empty(n)
    weights[order] = 0.5 * (gaps + np.roll(gaps, 1))
    return weights


def centre_problem(centre: float, width: int) -> str | None:
    """Why a rotation axis at detector column ``centre`` cannot be reconstructed, or ``None``."""
    if not np.isfinite(centre) or not 0 <= centre <= width - 1:
        return (f"the centre of rotation {centre:g} px is outside the detector's {width} columns (0 to {width - 1}); "
                "the rotation axis must be imaged: check centre_px (a column of the detector, the middle is "
                f"{(width - 1) / 2:g}), or that the projections are not cropped off the axis")
    return None
