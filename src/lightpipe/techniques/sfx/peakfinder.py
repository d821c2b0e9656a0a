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

The radial statistics are sums per ring (``numpy.bincount``) over the whole
frame once; each rejection round then touches only the pixels above a
lower bound of the thresholds (the lowest threshold over tiles of 32 x 32
pixels), so its cost follows the number of bright pixels rather than the
frame size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["PeakLayout", "PeakSettings", "Peaks", "find_peaks"]

#: Side of the tiles whose lowest ring threshold pre-selects the pixels each rejection round looks at.
TILE_PX = 32
#: Where between a ring's mean and its first threshold the bound lies below which no pixel is looked at again.
BOUND_FRACTION = 0.5
#: Fewest valid pixels a local background window needs; with fewer the ring's background is used.
MIN_BACKGROUND_PIXELS = 8


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
        ny, nx = self.shape
        ring = np.rint(radius_px).astype(np.intp).ravel()
        out = (radius_px.ravel() < min_res_px) | (radius_px.ravel() > max_res_px)
        if masked is not None:
            out |= masked.ravel()
        self.rings = int(ring[~out].max()) + 1 if not out.all() else 1
        ring[out] = self.rings  # one more ring collects every pixel left out: bincount needs no gather
        self.ring = ring
        self.count = np.bincount(ring, minlength=self.rings + 1).astype(np.float64)
        self.valid_pixels = int(self.count[: self.rings].sum())
        self.panel = None if panel is None or np.unique(panel).size < 2 else panel.ravel().astype(np.int32)
        # each tile's rings, as pairs for np.fmin.reduceat: [first, one past the last, first, ...]
        ty, tx = -(-ny // TILE_PX), -(-nx // TILE_PX)
        padded = np.full((ty * TILE_PX, tx * TILE_PX), -1, np.intp)
        padded[:ny, :nx] = np.where(out, -1, ring).reshape(ny, nx)
        blocks = padded.reshape(ty, TILE_PX, tx, TILE_PX).transpose(0, 2, 1, 3).reshape(ty * tx, -1)
        has = (blocks >= 0).any(axis=1)
        first = np.where(has, np.where(blocks >= 0, blocks, self.rings).min(axis=1), self.rings)
        last = np.where(has, blocks.max(axis=1) + 1, self.rings)  # an empty tile: the left-out ring, +inf
        self.tile_pairs = np.stack([first, last], axis=1).ravel()
        self.tiles = (ty, tx)

    def candidates(self, values: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """Flat indices, increasing, of the valid pixels above their ring's ``threshold`` (one entry per ring, +1)."""
        ny, nx = self.shape
        ty, tx = self.tiles
        # the lowest threshold of each tile's rings is a lower bound for its pixels: a cheap first cut
        lowest = np.fmin.reduceat(threshold, self.tile_pairs)[::2].reshape(ty, tx)
        lowest = np.where(np.isnan(lowest), np.inf, lowest)
        image = values.reshape(ny, nx)
        above = np.empty((ny, nx), bool)
        for t in range(ty):
            rows = slice(t * TILE_PX, min((t + 1) * TILE_PX, ny))
            np.greater(image[rows], np.repeat(lowest[t], TILE_PX)[:nx], out=above[rows])
        first = np.flatnonzero(above)
        return first[values[first] > threshold[self.ring[first]]]


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


def _bad_pixels(flat: np.ndarray, low: float | None, high: float | None) -> np.ndarray | None:
    """Flat indices of the pixels that are NaN, infinite, below ``low`` or above ``high``; ``None`` when there are none."""
    smallest, largest = flat.min(), flat.max()
    floating = flat.dtype.kind == "f"
    if floating and not (np.isfinite(smallest) and np.isfinite(largest)):
        bad = ~np.isfinite(flat)
    elif (low is None or smallest >= low) and (high is None or largest <= high):
        return None
    else:
        bad = np.zeros(flat.shape, bool)
    if low is not None and smallest < low:
        bad |= flat < low
    if high is not None and largest > high:
        bad |= flat > high
    return np.flatnonzero(bad)


def _components(pixels: np.ndarray, nx: int, panel: np.ndarray | None) -> np.ndarray:
    """Component label of each of ``pixels`` (flat indices, increasing): 8-neighbours on one panel join."""
    n = len(pixels)
    column = pixels % nx
    rows, cols = [], []
    for step, allowed in ((1, column < nx - 1), (nx - 1, column > 0), (nx, None), (nx + 1, column < nx - 1)):
        other = pixels + step
        at = np.minimum(np.searchsorted(pixels, other), n - 1)
        joined = pixels[at] == other
        if allowed is not None:
            joined &= allowed
        if panel is not None:
            joined &= panel[pixels] == panel[pixels[at]]
        rows.append(np.flatnonzero(joined))
        cols.append(at[joined])
    src, dst = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


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
    flat = np.ascontiguousarray(frame).ravel()
    ring, rings = layout.ring, layout.rings
    values = flat.astype(np.float32)
    count = layout.count
    bad = _bad_pixels(flat, low, high)
    n_bad = 0
    if bad is not None:
        bad = bad[ring[bad] != rings]  # pixels already left out do not count
        n_bad = len(bad)
        if n_bad > max_bad_fraction * layout.valid_pixels:
            raise ValueError(
                f"{n_bad} of the frame's {layout.valid_pixels} valid pixels are NaN, infinite, below {low} or above "
                f"{high} (more than max_bad_fraction={max_bad_fraction}); check the detector's data (a frame "
                "read during a readout error?), or widen min_valid/max_valid if these values are real")
        values[bad] = 0.0
        count = count - np.bincount(ring[bad], minlength=rings + 1)
    s1 = np.bincount(ring, weights=values, minlength=rings + 1)
    s2 = np.bincount(ring, weights=values * values, minlength=rings + 1)
    if bad is not None:
        values[bad] = -np.inf  # below every threshold from here on, and no background window takes it
    background = _ring_threshold(count, s1, s2, settings)
    # pixels above a bound well below the first thresholds: every later round looks at these only, as
    # rejecting outliers lowers the thresholds little; where one falls below the bound, the bound follows
    bound = background.mean + BOUND_FRACTION * (background.threshold - background.mean)
    pool = layout.candidates(values, bound)
    rejected = np.empty(0, np.intp)
    for round_ in range(max(settings.iterations, 1)):
        if round_:
            w = values[rejected].astype(np.float64)
            where = ring[rejected]
            background = _ring_threshold(count - np.bincount(where, minlength=rings + 1),
                                         s1 - np.bincount(where, weights=w, minlength=rings + 1),
                                         s2 - np.bincount(where, weights=w * w, minlength=rings + 1), settings)
            if np.any(background.threshold < bound):
                bound = np.minimum(bound, background.threshold)
                pool = layout.candidates(values, bound)
        above = pool[values[pool] > background.threshold[ring[pool]]]
        if np.array_equal(above, rejected):
            break
        rejected = above
    return _peaks(above, values, layout, settings, background, n_bad, nx)


def _peaks(pixels: np.ndarray, values: np.ndarray, layout: PeakLayout, settings: PeakSettings,
           background: _Rings, n_bad: int, nx: int) -> Peaks:
    """Measure the peaks among candidate ``pixels`` (flat indices, increasing)."""
    empty = Peaks(*(np.empty(0, np.float32) for _ in range(4)), np.empty(0, np.int32), np.empty(0, np.float32),
                  bad_pixels=n_bad)
    if len(pixels) == 0:
        return empty
    labels = _components(pixels, nx, layout.panel)
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
    where = np.where(inside, wy * nx + wx, -1)
    lab = np.broadcast_to(labels[:, None], where.shape)
    pairs = np.unique(np.stack([lab[inside], where[inside]], axis=1), axis=0)
    lab, where = pairs[:, 0], pairs[:, 1]
    # a pixel of another peak, or claimed by two peaks, or left out, counts for none
    at = np.minimum(np.searchsorted(pixels, where), len(pixels) - 1)
    own = (pixels[at] != where) | (labels[at] == lab)
    w = values[where]
    claimed = np.bincount(np.searchsorted(np.unique(where), where))
    shared = claimed[np.searchsorted(np.unique(where), where)] > 1
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
