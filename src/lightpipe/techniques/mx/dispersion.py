"""DIALS's dispersion spot finder on one image: strong pixels from local statistics, then 2-D spots.

The definition is DIALS's ``spotfinder.threshold.algorithm=dispersion``
(Winter et al. 2018, Acta Cryst. D74, 85-97, and DIALS's documentation).
Around every pixel, over a box of ``(2 ky + 1) x (2 kx + 1)`` pixels cut at the
image edges, take the ``m`` valid pixels, their sum ``x`` and their sum of
squares ``y``. With the detector gain ``g``, the pixel of value ``I`` is
*strong* when

* it is valid, ``m >= min_local``, ``x >= 0`` and ``I > global_threshold``;
* the index of dispersion (variance / mean) of its box exceeds what Poisson
  noise gives, by ``sigma_background`` standard errors:
  ``m y - x^2 > g x ((m - 1) + sigma_background sqrt(2 (m - 1)))``;
* it stands ``sigma_strong`` standard deviations above the box's mean:
  ``m I - x > sigma_strong sqrt(g x m)``.

The box sums are taken along rows, then along columns (a summed-area table
taken one axis at a time), in float64: exact for counts below about 10^7 per
pixel. As in DIALS, a pixel of ``2**24`` counts or more (or ``-inf``) is left
out of the box sums (it would swamp its neighbours' statistics) but may
itself be strong. With Numba installed (the ``mx`` extra) one compiled pass
down the image computes them and applies the tests
(:mod:`~lightpipe.techniques.mx.kernels`), and the strong pixels are joined
into spots over the strong pixels alone; without it NumPy does both
(:func:`strong_pixels_numpy`, strips of rows, and ``scipy.ndimage.label``),
to the same result, bit for bit, on images of integers.

Strong pixels that touch by an edge (4-connectivity, as DIALS labels them in
2-D) form one spot; spots of fewer than ``min_spot_size`` or more than
``max_spot_size`` pixels are dropped, and so are spots whose brightest pixel
is more than ``max_separation`` pixels from their centroid (DIALS's
peak-centroid filter). A spot's position is the centroid of its pixels
weighted by their counts, its intensity the sum of their counts, its box the
half-open pixel ranges it covers.

Coordinates are lightpipe's: pixel ``(row y, column x)`` has its centre at
``(y, x)``. DIALS puts a pixel's centre at ``+ 0.5``: its ``xyzobs.px.value``
is this module's ``(x + 0.5, y + 0.5)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np

__all__ = ["BIG_COUNTS", "SpotList", "box_sums", "find_spots", "strong_pixels", "strong_pixels_numpy"]

#: Pixels at or above this many counts stay out of the box sums (DIALS's limit, about 16 million).
BIG_COUNTS = float(1 << 24)
#: Rows the NumPy path takes at once: the arrays of a strip of an EIGER 16M frame (about 2 MB each) stay in the cache.
STRIP_ROWS = 64
#: Windows of up to this many pixels are summed by shifted adds, longer ones by cumulative sums.
SHIFTED_ADDS = 15
#: Image dtypes the compiled pass takes as they are; others (float16, big-endian, bool) become float64 first.
NATIVE_DTYPES = frozenset(np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                                 "uint64", "float32", "float64"))


@dataclass(frozen=True)
class SpotList:
    """The spots of one image, one entry per spot, in the order of their first pixel (row by row).

    Attributes
    ----------
    x, y
        Centroid, in pixels (0 at the centre of the first pixel).
    intensity
        Sum of the spot's counts.
    pixels
        Number of strong pixels in the spot.
    bbox
        ``[n, 4]``: ``x0, x1, y0, y1``, half-open pixel ranges (``x0 <= column < x1``).
    strong_x, strong_y, strong_counts
        Every strong pixel of the image, spots kept or not, row by row: its
        column, row (int32) and counts. Joining images into 3-D spots
        (:mod:`~lightpipe.techniques.mx.join`) starts from these, as DIALS's
        3-D labelling starts from the strong pixels, not from 2-D spots.
    """

    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray
    pixels: np.ndarray
    bbox: np.ndarray
    strong_x: np.ndarray
    strong_y: np.ndarray
    strong_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @property
    def strong(self) -> int:
        """Strong pixels on the image before spots were sized (the strong-pixel fraction's numerator)."""
        return len(self.strong_x)


def _running(a: np.ndarray, half: int, axis: int) -> np.ndarray:
    """Sums of ``a`` over windows of ``2 half + 1`` along ``axis``, cut at the ends (float64).

    Small windows add shifted copies (vectorised, and faster than a running
    sum for up to :data:`SHIFTED_ADDS` terms); larger ones difference a cumulative sum.
    """
    n = a.shape[axis]
    width = 2 * half + 1
    pad = [(0, 0), (0, 0)]
    if width <= SHIFTED_ADDS:
        pad[axis] = (half, half)
        c = np.pad(a, pad)
        window = [slice(None), slice(None)]
        window[axis] = slice(0, n)
        out = c[tuple(window)].copy()
        for k in range(1, width):
            window[axis] = slice(k, k + n)
            out += c[tuple(window)]
        return out
    pad[axis] = (half + 1, half)
    c = np.pad(a, pad)
    np.cumsum(c, axis=axis, out=c)
    hi = [slice(None), slice(None)]
    lo = [slice(None), slice(None)]
    hi[axis] = slice(width, width + n)
    lo[axis] = slice(0, n)
    return c[tuple(hi)] - c[tuple(lo)]


def _counts(n: int, half: int) -> np.ndarray:
    """How many of ``n`` positions each window of ``2 half + 1`` covers, cut at the ends."""
    i = np.arange(n)
    return (np.minimum(i + half, n - 1) - np.maximum(i - half, 0) + 1).astype(np.float64)


def box_sums(values: np.ndarray, valid: np.ndarray, kernel: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Per pixel: valid pixels ``m``, their sum ``x`` and sum of squares ``y`` in the box around it.

    Parameters
    ----------
    values
        The image, float64, 0 where not valid.
    valid
        Pixels that count.
    kernel
        Half sizes ``(ky, kx)`` of the box.
    """
    ky, kx = kernel
    if valid.all():  # no pixel left out (the usual case): the counts are the boxes' sizes
        m = np.outer(_counts(valid.shape[0], ky), _counts(valid.shape[1], kx))
    else:
        m = _running(_running(valid.astype(np.float64), kx, 1), ky, 0)
    x = _running(_running(values, kx, 1), ky, 0)
    y = _running(_running(values * values, kx, 1), ky, 0)
    return m, x, y


@cache
def _kernels() -> ModuleType | None:
    """The compiled loops, or ``None`` without Numba (the NumPy path runs then)."""
    try:
        from lightpipe.techniques.mx import kernels
    except ImportError:
        return None
    return kernels


def _check(image: np.ndarray, valid: np.ndarray, kernel: tuple[int, int]) -> None:
    """Raise when the image, its valid pixels or the box do not fit together."""
    if image.ndim != 2:
        raise ValueError(f"the image has {image.ndim} dimensions; spot finding takes one 2-D image at a time")
    if valid.shape != image.shape:
        raise ValueError(f"the valid pixels' shape {valid.shape} differs from the image's {image.shape}: "
                         "give one flag per pixel")
    if len(kernel) != 2 or min(kernel) < 0:
        raise ValueError(f"kernel {tuple(kernel)} must be two half sizes (ky, kx), 0 or more")


def _minimum(kernel: tuple[int, int], min_local: int) -> int:
    """Fewest valid pixels a box needs: ``min_local``, or the whole box when it is 0 or less."""
    return (2 * kernel[0] + 1) * (2 * kernel[1] + 1) if min_local <= 0 else min_local


def _strong_compiled(kernels: ModuleType, image: np.ndarray, valid: np.ndarray, kernel: tuple[int, int],
                     gain: float, sigma_background: float, sigma_strong: float, global_threshold: float,
                     min_local: int) -> tuple[np.ndarray, np.ndarray]:
    """The strong pixels by the compiled pass: the mask, and their flat indices (increasing)."""
    image = np.ascontiguousarray(image)
    if image.dtype not in NATIVE_DTYPES:
        image = image.astype(np.float64)
    strong = np.empty(image.shape, bool)
    flat = kernels.dispersion_strong(image, np.ascontiguousarray(valid, dtype=bool), int(kernel[0]), int(kernel[1]),
                                     float(gain), float(sigma_background), float(sigma_strong),
                                     float(global_threshold), _minimum(kernel, min_local), strong)
    return strong, flat


def strong_pixels(
    image: np.ndarray,
    valid: np.ndarray,
    *,
    kernel: tuple[int, int] = (3, 3),
    gain: float = 1.0,
    sigma_background: float = 6.0,
    sigma_strong: float = 3.0,
    global_threshold: float = 0.0,
    min_local: int = 2,
) -> np.ndarray:
    """The strong pixels of ``image`` by DIALS's dispersion criterion (see the module's notes).

    Compiled (:func:`lightpipe.techniques.mx.kernels.dispersion_strong`) when
    Numba is installed, :func:`strong_pixels_numpy` otherwise.

    Parameters
    ----------
    image
        One detector image (any real dtype).
    valid
        ``True`` where a pixel may be used: the detector mask and the pixels' own checks already applied.
    kernel
        Half sizes ``(ky, kx)`` of the local box.
    gain
        Detector gain (ADU per photon); 1 for photon-counting detectors.
    sigma_background, sigma_strong, global_threshold, min_local
        As DIALS's ``spotfinder.threshold.dispersion`` parameters; ``min_local <= 0`` asks for a full box.

    Returns
    -------
    ndarray of bool
        The strong pixels.
    """
    _check(image, valid, kernel)
    kernels = _kernels()
    if kernels is None:
        return strong_pixels_numpy(image, valid, kernel=kernel, gain=gain, sigma_background=sigma_background,
                                   sigma_strong=sigma_strong, global_threshold=global_threshold, min_local=min_local)
    strong, _ = _strong_compiled(kernels, image, valid, kernel, gain, sigma_background, sigma_strong,
                                 global_threshold, min_local)
    return strong


def strong_pixels_numpy(
    image: np.ndarray,
    valid: np.ndarray,
    *,
    kernel: tuple[int, int] = (3, 3),
    gain: float = 1.0,
    sigma_background: float = 6.0,
    sigma_strong: float = 3.0,
    global_threshold: float = 0.0,
    min_local: int = 2,
) -> np.ndarray:
    """:func:`strong_pixels` in NumPy alone, strip by strip: the path without Numba, and the reference of its tests.

    Parameters and result as :func:`strong_pixels`.
    """
    _check(image, valid, kernel)
    ny, _ = image.shape
    ky, _kx = kernel
    minimum = _minimum(kernel, min_local)
    strong = np.zeros(image.shape, bool)
    # strips of rows with a margin of ky above and below: the box sums of a strip need only those rows
    for top in range(0, ny, STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, ny)
        lo, hi = max(top - ky, 0), min(bottom + ky, ny)
        block = image[lo:hi].astype(np.float64)
        ok = valid[lo:hi]
        counted = ok & (block < BIG_COUNTS) & (block > -np.inf)
        m, x, y = box_sums(np.where(counted, block, 0.0), counted, kernel)
        rows = slice(top - lo, bottom - lo)
        m, x, y, value = m[rows], x[rows], y[rows], block[rows]
        candidate = ok[rows] & (m >= minimum) & (x >= 0) & (value > global_threshold)
        spread = m * y - x * x > gain * x * ((m - 1) + sigma_background * np.sqrt(np.maximum(2 * (m - 1), 0)))
        above = m * value - x > sigma_strong * np.sqrt(np.maximum(gain * x * m, 0))
        strong[top:bottom] = candidate & spread & above
    return strong


def find_spots(
    image: np.ndarray,
    valid: np.ndarray,
    *,
    kernel: tuple[int, int] = (3, 3),
    gain: float = 1.0,
    sigma_background: float = 6.0,
    sigma_strong: float = 3.0,
    global_threshold: float = 0.0,
    min_local: int = 2,
    min_spot_size: int = 3,
    max_spot_size: int = 1000,
    max_separation: float | None = 2.0,
) -> SpotList:
    """The spots of one image: strong pixels (:func:`strong_pixels`) joined by edges, sized, measured.

    Parameters
    ----------
    image, valid, kernel, gain, sigma_background, sigma_strong, global_threshold, min_local
        As :func:`strong_pixels`.
    min_spot_size, max_spot_size
        Spots with fewer or more pixels than these are dropped.
    max_separation
        Spots whose brightest pixel is farther than this from their centroid are dropped; ``None``: keep them.
    """
    _check(image, valid, kernel)
    kernels = _kernels()
    if kernels is None:
        from scipy import ndimage

        strong = strong_pixels_numpy(image, valid, kernel=kernel, gain=gain, sigma_background=sigma_background,
                                     sigma_strong=sigma_strong, global_threshold=global_threshold,
                                     min_local=min_local)
        labels, n = ndimage.label(strong)  # the default structure joins pixels that share an edge
        rows, cols = np.nonzero(labels)  # row by row, so a spot's first pixel orders the spots
        label = labels[rows, cols] - 1
    else:
        _, flat = _strong_compiled(kernels, image, valid, kernel, gain, sigma_background, sigma_strong,
                                   global_threshold, min_local)
        label = kernels.spot_labels(flat, image.shape[1])  # numbered as ndimage.label numbers them, less 1
        n = int(label.max()) + 1 if len(label) else 0
        rows, cols = np.divmod(flat, image.shape[1])
    counts = image[rows, cols].astype(np.float64)
    strong_at = (cols.astype(np.int32), rows.astype(np.int32), counts)
    if n == 0:
        none = np.zeros(0)
        return SpotList(none, none, none, np.zeros(0, np.int64), np.zeros((0, 4), np.int64), *strong_at)
    pixels = np.bincount(label, minlength=n)
    intensity = np.bincount(label, counts, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):  # a spot of zero counts has no centroid
        x = np.bincount(label, counts * cols, minlength=n) / intensity
        y = np.bincount(label, counts * rows, minlength=n) / intensity
    by_spot = np.argsort(label, kind="stable")
    first = np.r_[0, np.cumsum(pixels)[:-1]]  # every spot has a pixel: spot k's start among by_spot
    bbox = np.column_stack([np.minimum.reduceat(cols[by_spot], first), np.maximum.reduceat(cols[by_spot], first) + 1,
                            np.minimum.reduceat(rows[by_spot], first), np.maximum.reduceat(rows[by_spot], first) + 1]
                           ).astype(np.int64)
    keep = (pixels >= min_spot_size) & (pixels <= max_spot_size)
    if max_separation is not None:
        # each spot's brightest pixel, the first in raster order among equals (as DIALS takes a shoebox's
        # peak): sort the strong pixels by spot, then by falling counts, then by position, and take each
        # spot's first; over the strong pixels only, not the image
        order = np.lexsort((np.arange(len(label)), -counts, label))
        peak = order[np.r_[0, np.flatnonzero(np.diff(label[order])) + 1]]
        keep &= np.hypot(cols[peak] - x, rows[peak] - y) <= max_separation
    return SpotList(x[keep], y[keep], intensity[keep], pixels[keep].astype(np.int64), bbox[keep], *strong_at)
