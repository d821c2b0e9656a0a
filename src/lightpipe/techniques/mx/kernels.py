"""The per-pixel loops of DIALS's dispersion spot finder, compiled by Numba: strong pixels and their spots.

:func:`dispersion_strong` takes one pass down the image. It keeps the
box sums along rows (``m``, ``x``, ``y`` of :mod:`~lightpipe.techniques.mx.dispersion`)
of the last ``2 ky + 1`` rows in a ring of row buffers, and their sums down
the columns in three running rows: each new row's sums are added, the
leaving row's subtracted, and the dispersion tests are applied to the row in
the middle. Along a row the sums run the same way, a pixel entering the
window and one leaving it. Every step adds or subtracts integers when the
image holds integers, so the sums, hence the strong pixels, are those of
:func:`~lightpipe.techniques.mx.dispersion.strong_pixels_numpy` to the bit,
while the sums stay below ``2**53`` (counts below about 10^7 per pixel).
What this saves is NumPy's float64 copies of the image, its squares and
their padded shifts: the working set is a few rows.

:func:`spot_labels` joins strong pixels that share an edge, over the
strong pixels alone rather than the whole image.

The functions are compiled on first use for each image dtype and cached on
disk (``cache=True``), and release the GIL. Numba is an optional dependency
(``pip install 'lightpipe[mx]'``); without it
:mod:`~lightpipe.techniques.mx.dispersion` runs its NumPy path.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from lightpipe.techniques.unionfind import join, numbered

__all__ = ["dispersion_strong", "spot_labels"]

#: As :data:`lightpipe.techniques.mx.dispersion.BIG_COUNTS` (not imported: this module must not import that one).
_BIG_COUNTS = float(1 << 24)


@numba.njit(cache=True, nogil=True)
def _row_sums(image: np.ndarray, valid: np.ndarray, row: int, kx: int, counted: np.ndarray, values: np.ndarray,
              squares: np.ndarray, m: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Sums of the counted pixels of ``image[row]`` over windows of ``2 kx + 1`` columns, cut at the ends.

    ``counted``, ``values``, ``squares``: scratch rows. ``m``, ``x``, ``y``: filled with the number, sum and
    sum of squares of each window's counted pixels (valid, finite, below the big counts).
    """
    nx = image.shape[1]
    for j in range(nx):
        v = np.float64(image[row, j])
        use = valid[row, j] and v < _BIG_COUNTS and v > -np.inf
        counted[j] = 1.0 if use else 0.0
        values[j] = v if use else 0.0
        squares[j] = values[j] * values[j]
    sm = 0.0
    sx = 0.0
    sy = 0.0
    for j in range(min(kx, nx)):  # column 0's window less its last column, which the loop adds
        sm += counted[j]
        sx += values[j]
        sy += squares[j]
    for j in range(nx):
        enter = j + kx
        leave = j - kx - 1
        # the entering less the leaving pixel is taken apart from the sum, so each sum waits on one add only
        if enter < nx:
            if leave >= 0:
                sm += counted[enter] - counted[leave]
                sx += values[enter] - values[leave]
                sy += squares[enter] - squares[leave]
            else:
                sm += counted[enter]
                sx += values[enter]
                sy += squares[enter]
        elif leave >= 0:
            sm -= counted[leave]
            sx -= values[leave]
            sy -= squares[leave]
        m[j] = sm
        x[j] = sx
        y[j] = sy


@numba.njit(cache=True, nogil=True)
def dispersion_strong(image: np.ndarray, valid: np.ndarray, ky: int, kx: int, gain: float, sigma_background: float,
                      sigma_strong: float, global_threshold: float, minimum: int, strong: np.ndarray) -> np.ndarray:
    """Strong pixels of ``image`` by the dispersion criterion, as a mask and as a list.

    Parameters
    ----------
    image
        One image, 2-D, any real dtype.
    valid
        Bool, the image's shape: the pixels that may be used.
    ky, kx
        Half sizes of the box (0 or more).
    gain, sigma_background, sigma_strong, global_threshold
        As :func:`lightpipe.techniques.mx.dispersion.strong_pixels`.
    minimum
        Fewest counted pixels a box needs (``min_local``, or the whole box).
    strong
        Bool, the image's shape: every pixel is written, ``True`` where strong.

    Returns
    -------
    ndarray of int64
        Flat indices of the strong pixels, increasing.
    """
    ny, nx = image.shape
    depth = 2 * ky + 1
    # the ring of row sums: row r's sums sit in slot r % depth while r is in some box
    ring_m = np.zeros((depth, nx))
    ring_x = np.zeros((depth, nx))
    ring_y = np.zeros((depth, nx))
    box_m = np.zeros(nx)
    box_x = np.zeros(nx)
    box_y = np.zeros(nx)
    counted = np.empty(nx)
    values = np.empty(nx)
    squares = np.empty(nx)
    found = np.empty(max(4 * nx, 1024), np.int64)
    n_found = 0
    zero = np.zeros(nx)
    for r in range(min(ky, ny)):  # the rows above the first box's middle
        _row_sums(image, valid, r, kx, counted, values, squares, ring_m[r], ring_x[r], ring_y[r])
        for j in range(nx):
            box_m[j] += ring_m[r, j]
            box_x[j] += ring_x[r, j]
            box_y[j] += ring_y[r, j]
    for r in range(ny):
        enter = r + ky
        if enter < ny:
            s = enter % depth
            _row_sums(image, valid, enter, kx, counted, values, squares, ring_m[s], ring_x[s], ring_y[s])
            add_m, add_x, add_y = ring_m[s], ring_x[s], ring_y[s]
        else:
            add_m, add_x, add_y = zero, zero, zero
        leave = r - ky
        if leave >= 0:
            s = leave % depth
            sub_m, sub_x, sub_y = ring_m[s], ring_x[s], ring_y[s]
        else:
            sub_m, sub_x, sub_y = zero, zero, zero
        if n_found + nx > found.size:
            grown = np.empty(2 * found.size + nx, np.int64)
            grown[:n_found] = found[:n_found]
            found = grown
        # every test is evaluated, without early exits: the loop has no branches and runs on SIMD lanes
        for j in range(nx):
            m = box_m[j] + add_m[j]
            x = box_x[j] + add_x[j]
            y = box_y[j] + add_y[j]
            box_m[j] = m - sub_m[j]
            box_x[j] = x - sub_x[j]
            box_y[j] = y - sub_y[j]
            value = np.float64(image[r, j])
            candidate = valid[r, j] & (m >= minimum) & (x >= 0.0) & (value > global_threshold)
            # the tests as NumPy evaluates them, operation for operation, so they round alike
            spread = m * y - x * x > gain * x * ((m - 1.0) + sigma_background * math.sqrt(max(2.0 * (m - 1.0), 0.0)))
            t = gain * x * m
            above = m * value - x > sigma_strong * math.sqrt(t if t > 0.0 else 0.0)
            strong[r, j] = candidate & spread & above
        for j in range(nx):  # written always, kept when strong: no branch to mispredict
            found[n_found] = r * nx + j
            n_found += strong[r, j]
    return found[:n_found].copy()


@numba.njit(cache=True, nogil=True)
def spot_labels(pixels: np.ndarray, nx: int) -> np.ndarray:
    """Spot of each of ``pixels`` (flat indices, increasing, on an image ``nx`` pixels wide).

    Pixels that share an edge are in one spot. Spots are numbered from 0 in
    the order of their first pixel, as ``scipy.ndimage.label`` numbers them
    (from 1) in a row-by-row scan.
    """
    n = pixels.size
    parent = np.arange(n)
    below = 0  # where the pixel under the one before was looked for: it only moves on
    for k in range(n):
        p = pixels[k]
        if k + 1 < n and pixels[k + 1] == p + 1 and (p + 1) % nx != 0:  # the right neighbour, on the same row
            join(parent, k, k + 1)
        q = p + nx
        while below < n and pixels[below] < q:
            below += 1
        if below < n and pixels[below] == q:
            join(parent, k, below)  # the smaller index stays the root: a spot's root is its first pixel
    return numbered(parent)
