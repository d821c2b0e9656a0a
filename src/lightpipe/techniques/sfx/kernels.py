"""The per-pixel loops of peak finding, compiled by Numba: ring sums, thresholds, connected components.

Each loop visits the pixels in increasing flat index, as ``numpy.bincount``
does, so the ring sums are the same to the bit as NumPy's over the same
pixels; what Numba saves is the temporary arrays (a float64 copy of the
frame, its squares, index lists) that a NumPy expression of each step
writes and reads again. The functions are compiled on first use for each
frame dtype and cached on disk (``cache=True``), and release the GIL.

Numba is an optional dependency (``pip install 'lightpipe[sfx]'``);
:mod:`lightpipe.techniques.sfx.peakfinder` imports this module when it first
finds peaks.
"""
from __future__ import annotations

import numba
import numpy as np

from lightpipe.techniques.unionfind import join, numbered

__all__ = ["above", "components", "pool_above", "pool_with", "ring_pixels_between", "ring_sums", "sums_of"]


@numba.njit(cache=True, nogil=True)
def ring_sums(frame: np.ndarray, ring: np.ndarray, rings: int, low: float, high: float, values: np.ndarray,
              count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> int:
    """Sums per ring of one frame's valid pixels, and the frame as float32 with its bad pixels at -inf.

    Parameters
    ----------
    frame
        The frame, flat, any real dtype.
    ring
        Ring of each pixel; ``rings`` for the pixels left out of every frame.
    low, high
        A pixel outside ``[low, high]``, NaN or infinite is bad: left out of this frame.
    values
        Filled with the frame as float32; bad pixels of valid rings are -inf.
    count, s1, s2
        Zeroed, ``rings + 1`` entries: filled with the good pixels' number, sum and sum of squares per
        ring (the squares in float32, as the frame's values are); the last entry stays 0.

    Returns
    -------
    int
        Bad pixels on valid rings.
    """
    bad = 0
    for i in range(frame.size):
        x = frame[i]
        v = np.float32(x)
        r = ring[i]
        if r == rings:
            values[i] = v
        elif np.isfinite(x) and x >= low and x <= high:
            values[i] = v
            count[r] += 1.0
            s1[r] += v
            s2[r] += v * v
        else:
            values[i] = -np.inf
            bad += 1
    return bad


@numba.njit(cache=True, nogil=True)
def pool_above(values: np.ndarray, ring: np.ndarray,
               bound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels above their ring's ``bound``: flat indices (increasing), values and rings, side by side.

    The rejection rounds then read these short arrays rather than the frame.
    """
    where = np.empty(values.size + 1, np.int64)
    k = 0
    for i in range(values.size):  # written always, kept when above: no branch to mispredict on noise
        where[k] = i
        k += values[i] > bound[ring[i]]
    where = where[:k].copy()
    return where, values[where], ring[where]


@numba.njit(cache=True, nogil=True)
def ring_pixels_between(values: np.ndarray, ring_pixels: np.ndarray, ring_start: np.ndarray, lowered: np.ndarray,
                        low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Flat indices, increasing, of the pixels of the ``lowered`` rings above ``low`` and at most ``high`` (per ring).

    ``ring_pixels[ring_start[r]:ring_start[r + 1]]`` are ring ``r``'s pixels.
    """
    n = 0
    for r in lowered:
        n += ring_start[r + 1] - ring_start[r]
    out = np.empty(n, np.int64)
    k = 0
    for r in lowered:
        for j in range(ring_start[r], ring_start[r + 1]):
            i = ring_pixels[j]
            if values[i] > low[r] and values[i] <= high[r]:
                out[k] = i
                k += 1
    return np.sort(out[:k])


@numba.njit(cache=True, nogil=True)
def pool_with(where: np.ndarray, pool_values: np.ndarray, pool_ring: np.ndarray, more: np.ndarray,
              values: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pool (:func:`pool_above`) with the pixels ``more`` (flat indices, increasing, none in it) merged in."""
    n = where.size + more.size
    out_where = np.empty(n, np.int64)
    out_values = np.empty(n, np.float32)
    out_ring = np.empty(n, ring.dtype)
    a = 0
    b = 0
    for k in range(n):
        if b == more.size or (a < where.size and where[a] < more[b]):
            out_where[k], out_values[k], out_ring[k] = where[a], pool_values[a], pool_ring[a]
            a += 1
        else:
            i = more[b]
            out_where[k], out_values[k], out_ring[k] = i, values[i], ring[i]
            b += 1
    return out_where, out_values, out_ring


@numba.njit(cache=True, nogil=True)
def above(pool_values: np.ndarray, pool_ring: np.ndarray,
          threshold: np.ndarray) -> np.ndarray:
    """Positions, increasing, of the pool's pixels above their ring's threshold."""
    out = np.empty(pool_values.size, np.int64)
    k = 0
    for j in range(pool_values.size):
        if pool_values[j] > threshold[pool_ring[j]]:
            out[k] = j
            k += 1
    return out[:k].copy()


@numba.njit(cache=True, nogil=True)
def sums_of(positions: np.ndarray, pool_values: np.ndarray, pool_ring: np.ndarray,
            rings: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Number, sum and sum of squares (float64) per ring of the pool's pixels at ``positions``."""
    count = np.zeros(rings + 1)
    s1 = np.zeros(rings + 1)
    s2 = np.zeros(rings + 1)
    for j in positions:
        r = pool_ring[j]
        w = np.float64(pool_values[j])
        count[r] += 1.0
        s1[r] += w
        s2[r] += w * w
    return count, s1, s2


@numba.njit(cache=True, nogil=True)
def components(pixels: np.ndarray, nx: int, panel: np.ndarray) -> np.ndarray:
    """Component label of each of ``pixels`` (flat indices, increasing, of a frame ``nx`` pixels wide).

    8-neighbours join when they are on one panel (``panel``: every pixel's panel, or empty for one panel).
    Labels count up in the order of each component's first pixel, as SciPy's ``connected_components`` gives them.
    """
    n = pixels.size
    parent = np.arange(n)
    one_panel = panel.size == 0
    steps = np.array([1, nx - 1, nx, nx + 1])
    at = np.zeros(4, np.int64)  # where each neighbour of the pixel before was looked for: they only move on
    for k in range(n):
        p = pixels[k]
        column = p % nx
        for d in range(4):  # the neighbours after p in flat order: right, and the three below
            step = steps[d]
            if (d == 0 or d == 3) and column == nx - 1 or d == 1 and column == 0:
                continue
            q = p + step
            j = at[d]
            while j < n and pixels[j] < q:
                j += 1
            at[d] = j
            if j == n or pixels[j] != q or not (one_panel or panel[p] == panel[q]):
                continue
            join(parent, k, j)  # the smaller index stays the root: a component's root is its first pixel
    return numbered(parent)
