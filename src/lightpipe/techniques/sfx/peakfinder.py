"""Bragg peak finding of the peakfinder8 class (Barty et al., J. Appl. Cryst. 47, 1118, 2014), on NumPy and SciPy.

For one frame:

1. **Rings.** Every pixel that is not masked (panel gaps, bad pixels, outside
   the ``min_res_px``/``max_res_px`` resolution limits) belongs to the ring of
   its distance from the beam rounded to a whole pixel. Pixels of this frame
   that are NaN, infinite, below ``low`` or above ``high`` (a DECTRIS
   detector's flagged pixels) are left out of this frame only.
2. **Background per ring, with iterative rejection.** The mean and standard
   deviation of each ring are computed, then again over the ring's pixels
   below its threshold ``mean + max(pixel_snr * sigma, adc_threshold)``, up
   to ``iterations`` times or until the pixels above the thresholds no longer
   change. Bragg peaks, hot pixels and streaks are so kept out of the
   background they are measured against.
3. **Candidates.** Pixels above their ring's final threshold, joined into
   connected components (8-neighbour, never across panels); a component of
   ``min_pixels`` to ``max_pixels`` pixels is a candidate peak.
4. **Local maxima.** A component with several local maxima further apart than
   ``min_separation_px`` is split between them (each pixel to the nearest),
   so two neighbouring reflections are two peaks.
5. **Local background.** Around each peak's brightest pixel, the pixels of a
   ``(2 * local_bg_radius + 1)`` square window that are valid, on the same
   panel and not candidates give the local mean and sigma.
6. **Peak.** Integrated intensity ``I = sum(value - local mean)`` over the
   peak's pixels, position the centroid of ``value - local mean`` (slab
   pixels, the first pixel's centre at 0), and ``snr = I / (local sigma *
   sqrt(pixels))``. A peak is kept when ``snr >= min_snr``; the ``max_peaks``
   strongest are returned, in the order of their brightest pixel on the slab.

The per-pixel loops (ring sums, thresholds, connected components) are
compiled by Numba (:mod:`lightpipe.techniques.sfx.kernels`, the ``sfx``
extra): the ring sums take one pass over the frame; the rejection rounds then
look only at the pixels above a lower bound of the thresholds, so their cost
follows the number of bright pixels rather than the frame size. The peaks'
measurement works on the candidates alone, with NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from lightpipe.core.errors import LightpipeError

__all__ = ["PeakLayout", "PeakSettings", "Peaks", "find_peaks"]

#: Where between a ring's mean and its first threshold the bound lies below which no pixel is looked at again.
BOUND_FRACTION = 0.5
#: Fewest valid pixels a local background window needs; with fewer the ring's background is used.
MIN_BACKGROUND_PIXELS = 8
#: The frame dtypes the compiled loops take as they are; others (float16, big-endian) are converted first.
NATIVE_DTYPES = frozenset(np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                                 "uint64", "float32", "float64"))
#: One panel, for :func:`lightpipe.techniques.sfx.kernels.components`.
_ONE_PANEL = np.empty(0, np.int32)


def _kernels() -> ModuleType:
    """The compiled loops, or an error naming the extra that installs Numba."""
    try:
        from lightpipe.techniques.sfx import kernels
    except ImportError as exc:
        raise LightpipeError("peak finding needs Numba; install it with: pip install 'lightpipe[sfx]'") from exc
    return kernels


@dataclass(frozen=True)
class PeakSettings:
    """What makes a peak (see the module description).

    Attributes
    ----------
    pixel_snr
        A pixel is a peak candidate above ``ring mean + pixel_snr * ring sigma``.
    min_snr
        Least integrated signal-to-noise ratio of a peak.
    adc_threshold
        Least height of a candidate pixel above its ring's mean, ADU.
    min_pixels, max_pixels
        Fewest and most pixels of a peak.
    local_bg_radius
        Half-width of the local background window, pixels.
    iterations
        Most rounds of the ring statistics' rejection.
    min_separation_px
        Local maxima of one component closer than this are one peak.
    max_peaks
        Most peaks returned (the strongest by integrated intensity).
    """

    pixel_snr: float = 3.0
    min_snr: float = 4.0
    adc_threshold: float = 0.0
    min_pixels: int = 2
    max_pixels: int = 200
    local_bg_radius: int = 3
    iterations: int = 5
    min_separation_px: float = 3.0
    max_peaks: int = 2048
    ring_px: int = 1


@dataclass
class Peaks:
    """The peaks of one frame, one entry each, in the order of their brightest pixel on the slab.

    Attributes
    ----------
    x, y
        Centroid along fs (columns) and ss (rows), slab pixels, the first pixel's centre at 0.
    intensity
        Integrated intensity above the local background, ADU.
    snr
        Integrated signal-to-noise ratio.
    pixels
        Pixels of the peak.
    maximum
        Brightest pixel's value, ADU.
    bad_pixels
        Pixels of the frame left out for their value (NaN, infinite, below ``low``, above ``high``).
    """

    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray
    snr: np.ndarray
    pixels: np.ndarray
    maximum: np.ndarray
    bad_pixels: int = 0

    def __len__(self) -> int:
        return len(self.x)


class PeakLayout:
    """What peak finding precomputes for one detector geometry and resolution range; shared by every frame.

    Parameters
    ----------
    radius_px
        Distance of every pixel from the beam, pixels (the frames' shape).
    masked
        Pixels left out (``True``), or ``None``.
    panel
        Panel number of every pixel (peaks never join across panels), or ``None`` for one panel.
    min_res_px, max_res_px
        Pixels nearer the beam than ``min_res_px`` or further than ``max_res_px`` are left out.
    """

    def __init__(self, radius_px: np.ndarray, masked: np.ndarray | None = None, panel: np.ndarray | None = None,
                 min_res_px: float = 0.0, max_res_px: float = np.inf) -> None:
        self.shape = radius_px.shape
        ring = np.rint(radius_px).astype(np.intp).ravel()
        out = (radius_px.ravel() < min_res_px) | (radius_px.ravel() > max_res_px)
        if masked is not None:
            out |= masked.ravel()
        self.rings = int(ring[~out].max()) + 1 if not out.all() else 1
        ring[out] = self.rings  # one more ring collects every pixel left out: the loops need no mask
        # int32 halves what every pass over the frame reads (a ring is a pixel wide: 2**31 rings is no limit)
        self.ring = ring.astype(np.int32)
        self.valid_pixels = int(np.count_nonzero(~out))
        # the pixels of each ring, for the few rings whose threshold a rejection round lowers much
        self.ring_pixels = np.argsort(ring, kind="stable")[: self.valid_pixels].astype(np.int32)
        self.ring_start = np.concatenate([[0], np.cumsum(np.bincount(ring, minlength=self.rings)[: self.rings])])
        self.panel = None if panel is None or np.unique(panel).size < 2 else panel.ravel().astype(np.int32)


@dataclass
class _Rings:
    """Background of every ring (one more entry: the pixels left out) and the candidates' threshold."""

    mean: np.ndarray
    sigma: np.ndarray
    threshold: np.ndarray


def _ring_threshold(count: np.ndarray, s1: np.ndarray, s2: np.ndarray, settings: PeakSettings) -> _Rings:
    """``mean + max(pixel_snr * sigma, adc_threshold)`` per ring; +inf where a ring has fewer than 2 pixels."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count
        sigma = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
        threshold = mean + np.maximum(settings.pixel_snr * sigma, settings.adc_threshold)
    threshold = np.where(count > 1, threshold, np.inf)
    threshold[-1] = np.inf  # the ring of pixels left out never has a candidate
    return _Rings(mean, sigma, threshold)


def _split_at_maxima(pixels: np.ndarray, values: np.ndarray, labels: np.ndarray, nx: int,
                     separation: float) -> np.ndarray:
    """Labels with each component cut between its local maxima that are ``separation`` or more apart."""
    y, x = np.divmod(pixels, nx)
    # a local maximum: no 8-neighbour of the same component is brighter (ties go to the lower index)
    n = len(pixels)
    is_max = np.ones(n, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            other = pixels + dy * nx + dx
            at = np.minimum(np.searchsorted(pixels, other), n - 1)
            same = (pixels[at] == other) & (labels[at] == labels) & (np.abs(x[at] - x) <= 1)
            brighter = (values[at] > values) | ((values[at] == values) & (at < np.arange(n)))
            is_max &= ~(same & brighter)
    counts = np.bincount(labels[is_max], minlength=labels.max() + 1)
    if counts.max() < 2:
        return labels
    out = labels.copy()
    next_label = labels.max() + 1
    for label in np.flatnonzero(counts > 1):
        members = np.flatnonzero(labels == label)
        peaks = members[is_max[members]]
        peaks = peaks[np.argsort(-values[peaks], kind="stable")]
        kept: list[int] = []
        for p in peaks:  # brightest first: a maximum near a brighter kept one is noise on its flank
            if all(np.hypot(y[p] - y[q], x[p] - x[q]) >= separation for q in kept):
                kept.append(int(p))
        if len(kept) < 2:
            continue
        centres = np.array(kept)
        distance = np.hypot(y[members, None] - y[centres], x[members, None] - x[centres])
        nearest = np.argmin(distance, axis=1)
        for k in range(1, len(kept)):
            out[members[nearest == k]] = next_label
            next_label += 1
    return out


def find_peaks(frame: np.ndarray, layout: PeakLayout, settings: PeakSettings, *, low: float | None = None,
               high: float | None = None, max_bad_fraction: float = 0.5) -> Peaks:
    """The peaks of one frame (see the module description).

    Parameters
    ----------
    frame
        Detector frame (the layout's shape), any real dtype.
    layout
        Rings, mask and panels of the detector.
    settings
        Thresholds and sizes.
    low, high
        Pixels below ``low`` or above ``high`` are left out of this frame (``None``: no limit).
    max_bad_fraction
        Most of the valid pixels that may be left out for their value.

    Raises
    ------
    ValueError
        When the frame is not the layout's shape, or more than
        ``max_bad_fraction`` of its valid pixels are NaN, infinite or out of
        ``[low, high]``, saying how many and what to change.
    """
    if frame.shape != layout.shape:
        raise ValueError(f"the frame is {frame.shape[0]} x {frame.shape[1]} but the geometry is "
                         f"{layout.shape[0]} x {layout.shape[1]}")
    ny, nx = layout.shape
    kernels = _kernels()
    flat = np.ascontiguousarray(frame).ravel()
    if flat.dtype not in NATIVE_DTYPES:
        flat = flat.astype(np.float64 if flat.dtype.kind == "f" and flat.dtype.itemsize > 4 else np.float32)
    ring, rings = layout.ring, layout.rings
    values = np.empty(flat.size, np.float32)
    count, s1, s2 = np.zeros(rings + 1), np.zeros(rings + 1), np.zeros(rings + 1)
    n_bad = kernels.ring_sums(flat, ring, rings, -np.inf if low is None else float(low),
                              np.inf if high is None else float(high), values, count, s1, s2)
    if n_bad > max_bad_fraction * layout.valid_pixels:
        raise ValueError(
            f"{n_bad} of the frame's {layout.valid_pixels} valid pixels are NaN, infinite, below {low} or above "
            f"{high} (more than max_bad_fraction={max_bad_fraction}); check the detector's data (a frame "
            "read during a readout error?), or widen min_valid/max_valid if these values are real")
    background = _ring_threshold(count, s1, s2, settings)
    # pixels above a bound well below the first thresholds: every later round looks at these only, as
    # rejecting outliers lowers the thresholds little; where one falls below the bound, the bound follows
    bound = background.mean + BOUND_FRACTION * (background.threshold - background.mean)
    where, pool_values, pool_ring = kernels.pool_above(values, ring, bound)
    rejected = np.empty(0, np.int64)  # positions in the pool
    rejected_pixels = rejected
    for round_ in range(max(settings.iterations, 1)):
        if round_:
            less, less1, less2 = kernels.sums_of(rejected, pool_values, pool_ring, rings)
            background = _ring_threshold(count - less, s1 - less1, s2 - less2, settings)
            lowered = np.flatnonzero(background.threshold < bound)
            if len(lowered):  # a few rings, whose pixels between the two bounds join the pool
                more = kernels.ring_pixels_between(values, layout.ring_pixels, layout.ring_start, lowered,
                                                   background.threshold, bound)
                where, pool_values, pool_ring = kernels.pool_with(where, pool_values, pool_ring, more, values, ring)
                bound = np.minimum(bound, background.threshold)
        positions = kernels.above(pool_values, pool_ring, background.threshold)
        pixels = where[positions]
        if np.array_equal(pixels, rejected_pixels):
            break
        rejected, rejected_pixels = positions, pixels
    return _peaks(pixels, values, layout, settings, background, n_bad, nx)


def _peaks(pixels: np.ndarray, values: np.ndarray, layout: PeakLayout, settings: PeakSettings,
           background: _Rings, n_bad: int, nx: int) -> Peaks:
    """Measure the peaks among candidate ``pixels`` (flat indices, increasing)."""
    empty = Peaks(*(np.empty(0, np.float32) for _ in range(4)), np.empty(0, np.int32), np.empty(0, np.float32),
                  bad_pixels=n_bad)
    if len(pixels) == 0:
        return empty
    labels = _kernels().components(pixels, nx, _ONE_PANEL if layout.panel is None else layout.panel)
    big = np.bincount(labels)[labels] >= settings.min_pixels  # noise: mostly lone pixels, dropped before the work
    pixels, labels = pixels[big], labels[big]
    if len(pixels) == 0:
        return empty
    v = values[pixels]
    if settings.min_separation_px > 0:
        labels = _split_at_maxima(pixels, v, labels, nx, settings.min_separation_px)
    sizes = np.bincount(labels)
    good = (sizes >= settings.min_pixels) & (sizes <= settings.max_pixels)
    keep = good[labels]
    if not keep.any():
        return empty
    pixels, v, labels = pixels[keep], v[keep], labels[keep]
    _, labels = np.unique(labels, return_inverse=True)
    n_peaks = labels.max() + 1
    # brightest pixel of each peak: the first of its label when sorted by label, then by value descending
    order = np.lexsort((-v, labels))
    first = order[np.r_[0, np.flatnonzero(np.diff(labels[order])) + 1]]
    top = pixels[first]
    mean, sigma = _local_background(top, pixels, values, layout, settings, background)
    sizes = np.bincount(labels, minlength=n_peaks)
    above = v - mean[labels]
    intensity = np.bincount(labels, weights=above, minlength=n_peaks)
    y, x = np.divmod(pixels, nx)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(labels, weights=above * x, minlength=n_peaks) / intensity
        cy = np.bincount(labels, weights=above * y, minlength=n_peaks) / intensity
    if settings.ring_px > 0:
        intensity, n_sum = _with_ring(pixels, labels, values, layout, mean, settings.ring_px, n_peaks, nx)
    else:
        n_sum = sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = intensity / (sigma * np.sqrt(n_sum))
    ok = (snr >= settings.min_snr) & (intensity > 0) & np.isfinite(snr)
    chosen = np.flatnonzero(ok)
    if len(chosen) > settings.max_peaks:
        strongest = chosen[np.argsort(-intensity[chosen], kind="stable")[: settings.max_peaks]]
        chosen = np.sort(strongest)
    chosen = chosen[np.argsort(top[chosen], kind="stable")]
    return Peaks(cx[chosen].astype(np.float32), cy[chosen].astype(np.float32), intensity[chosen].astype(np.float32),
                 snr[chosen].astype(np.float32), sizes[chosen].astype(np.int32), values[top[chosen]].astype(np.float32),
                 bad_pixels=n_bad)


def _with_ring(pixels: np.ndarray, labels: np.ndarray, values: np.ndarray, layout: PeakLayout, mean: np.ndarray,
               ring_px: int, n_peaks: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Intensity and pixel count of each peak's pixels and their neighbours within ``ring_px`` that no other peak has."""
    ny = layout.shape[0]
    r = ring_px
    dy, dx = (a.ravel() for a in np.mgrid[-r : r + 1, -r : r + 1])
    y, x = np.divmod(pixels, nx)
    wy, wx = y[:, None] + dy, x[:, None] + dx
    inside = (wy >= 0) & (wy < ny) & (wx >= 0) & (wx < nx)
    # each (peak, pixel) pair once, as one number: sorted by peak, then pixel
    size = ny * nx
    key = np.unique((labels[:, None] * size + wy * nx + wx)[inside])
    lab, where = np.divmod(key, size)
    # a pixel of another peak, or claimed by two peaks, or left out, counts for none
    at = np.minimum(np.searchsorted(pixels, where), len(pixels) - 1)
    own = (pixels[at] != where) | (labels[at] == lab)
    w = values[where]
    claimed = np.unique(where, return_inverse=True)[1]
    shared = np.bincount(claimed)[claimed] > 1
    use = own & ~shared & np.isfinite(w) & (layout.ring[where] != layout.rings)
    use |= (pixels[at] == where) & (labels[at] == lab)
    lab, w = lab[use], w[use]
    intensity = np.bincount(lab, weights=w - mean[lab], minlength=n_peaks)
    return intensity, np.bincount(lab, minlength=n_peaks)


def _local_background(top: np.ndarray, candidates: np.ndarray, values: np.ndarray, layout: PeakLayout,
                      settings: PeakSettings, background: _Rings) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sigma of the valid, non-candidate pixels in a window around each of ``top`` (flat indices)."""
    ny, nx = layout.shape
    r = settings.local_bg_radius
    dy, dx = (a.ravel() for a in np.mgrid[-r : r + 1, -r : r + 1])
    y0, x0 = np.divmod(top, nx)
    wy, wx = y0[:, None] + dy, x0[:, None] + dx
    inside = (wy >= 0) & (wy < ny) & (wx >= 0) & (wx < nx)
    where = np.where(inside, wy * nx + wx, 0)
    w = values[where]
    use = inside & (layout.ring[where] != layout.rings) & np.isfinite(w)
    at = np.minimum(np.searchsorted(candidates, where), len(candidates) - 1)
    use &= candidates[at] != where
    if layout.panel is not None:
        use &= layout.panel[where] == layout.panel[top][:, None]
    n = use.sum(axis=1)
    w = np.where(use, w, 0.0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = w.sum(axis=1) / n
        sigma = np.sqrt(np.maximum((w * w).sum(axis=1) / n - mean * mean, 0.0))
    # too few pixels around (a corner, a crowded patch): the ring's background stands in
    few = n < MIN_BACKGROUND_PIXELS
    ring = layout.ring[top[few]]
    mean[few], sigma[few] = background.mean[ring], background.sigma[ring]
    return mean, sigma
