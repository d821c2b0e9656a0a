"""Ptychographic scan patterns and the overlap of neighbouring probe positions.

Overlap here is the fraction of the probe's support (a disc, see
:func:`~lightpipe.techniques.ptychography.optics.encircled_diameter_px`) shared
by two neighbouring positions: 1 for the same position, 0 when the discs just
touch. Every pattern is scaled so that the median distance from a position to
its nearest neighbour is the step, so the same overlap means the same thing for
a raster grid and for a spiral.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

ScanKind = Literal["raster", "spiral", "fermat"]

#: Golden angle in radians: successive points of a Fermat spiral turn by this much.
GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
#: Positions sampled when measuring the nearest-neighbour distance of a large pattern.
_NN_SAMPLE = 512


def disc_overlap(distance: float | np.ndarray, diameter: float) -> float | np.ndarray:
    """Fraction of a disc's area shared with an equal disc whose centre is ``distance`` away."""
    u = np.clip(np.asarray(distance, dtype=float) / diameter, 0.0, 1.0)
    return (2.0 / np.pi) * (np.arccos(u) - u * np.sqrt(1.0 - u**2))


def step_for_overlap(overlap: float, diameter: float) -> float:
    """Distance between neighbouring positions for which discs of ``diameter`` share ``overlap`` of their area."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    lo, hi = 0.0, 1.0  # disc_overlap falls monotonically from 1 to 0 on u in [0, 1]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if disc_overlap(mid, 1.0) > overlap else (lo, mid)
    return 0.5 * (lo + hi) * diameter


def nearest_neighbour_distance(points: np.ndarray) -> np.ndarray:
    """Distance from each of (a sample of at most 512 of) ``points`` (N, 2) to its nearest other point."""
    points = np.asarray(points, dtype=float)
    if len(points) < 2:
        return np.zeros(0)
    sample = points[:: max(1, len(points) // _NN_SAMPLE)]
    d = np.hypot(*(sample[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    d[d == 0] = np.inf  # the point itself
    return d.min(axis=1)


def _unit_pattern(kind: ScanKind, n: int) -> np.ndarray:
    k = np.arange(n, dtype=float)
    if kind == "raster":
        columns = int(np.ceil(np.sqrt(n)))
        return np.stack([k // columns, k % columns], axis=1)
    if kind == "fermat":
        radius, angle = np.sqrt(k), k * GOLDEN_ANGLE
    elif kind == "spiral":
        # Archimedean spiral with a pitch of one and about one unit of arc between points
        angle = np.sqrt(4.0 * np.pi * k)
        radius = angle / (2.0 * np.pi)
    else:
        raise ValueError(f"unknown scan pattern {kind!r}; use 'raster', 'spiral' or 'fermat'")
    return np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)


def scan_pattern(kind: ScanKind, n_positions: int, step: float) -> np.ndarray:
    """Positions (N, 2) as (y, x), centred on 0, in acquisition order, with median nearest-neighbour distance ``step``.

    Parameters
    ----------
    kind
        ``raster`` (rows of ``ceil(sqrt(N))`` positions, row after row; the last
        row may be partial), ``spiral`` (Archimedean, from the centre out) or
        ``fermat`` (Fermat spiral with the golden angle, the most uniform).
    n_positions
        Number of positions.
    step
        Median distance between a position and its nearest neighbour.

    Examples
    --------
    >>> scan_pattern("raster", 4, 2.0).tolist()
    [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    """
    if n_positions < 1:
        raise ValueError(f"a scan needs at least one position, got n_positions={n_positions}")
    points = _unit_pattern(kind, n_positions)
    if n_positions > 1:
        points *= step / float(np.median(nearest_neighbour_distance(points)))
    return points - (points.max(axis=0) + points.min(axis=0)) / 2.0
