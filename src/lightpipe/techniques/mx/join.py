"""Strong pixels of consecutive images joined into 3-D spots, as ``dials.find_spots`` does by default.

DIALS's rotation-scan spot finding (``spotfinder.force_2d=False``, its
default) labels the strong pixels of all images together: pixel
``(image, row, column)`` touches the six pixels one step away along one axis
(``PixelListLabeller::labels_3d`` in DIALS's ``pixel_list.h``: the next
column, the next row, the same pixel on the next image). Each connected set
is one spot, and the filters of 2-D spot finding then apply to the joined
spot as a whole:

* ``min_spot_size <= pixels <= max_spot_size``, its pixels counted over all
  its images (DIALS's ``PixelListShoeboxCreator``);
* its brightest pixel (the first in ``(image, row, column)`` order among
  equals) within ``max_separation`` of its centroid, the distance taken in
  3-D with one image as one unit (DIALS's ``PeakCentroidDistanceFilter`` on
  ``xyzobs.px``).

A spot's centroid is the count-weighted mean of its pixels' ``(x, y,
image)``; DIALS's ``xyzobs.px.value`` is ``(x + 0.5, y + 0.5, z - 0.5)``
(its ``z`` counts from the first image's start, lightpipe's image numbers
from 1 at the first image's middle). Spots come in the order of their first
pixel, as DIALS numbers its labels. Images whose numbers are not consecutive
(an image that failed) do not join: nothing is known between them.

The pixels are keys of one integer, ``(image * rows + y) * columns + x``,
with one spare row and column so that no step wraps to the next line; the
edges are found by binary search of the sorted keys and the sets by SciPy's
sparse connected components: no image stack is ever built.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Spots3D", "join_images"]


@dataclass(frozen=True)
class Spots3D:
    """Spots joined across images, one entry per spot, in the order of their first pixel.

    Attributes
    ----------
    x, y
        Centroid, in pixels (0 at the centre of the first pixel).
    z
        Centroid along the scan, in image numbers (image ``k`` has its middle at ``k``).
    intensity
        Sum of the spot's counts over all its images.
    pixels
        Strong pixels in the spot, all images together.
    first_image, last_image
        The first and last image the spot is on.
    bbox
        ``[n, 4]``: ``x0, x1, y0, y1``, half-open pixel ranges over all its images.
    pixel_spot
        For each input pixel, the index of its spot in this list, or -1 (filtered out).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    intensity: np.ndarray
    pixels: np.ndarray
    first_image: np.ndarray
    last_image: np.ndarray
    bbox: np.ndarray
    pixel_spot: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def _labels(keys: np.ndarray, steps: tuple[int, ...]) -> np.ndarray:
    """Connected sets of the sorted pixel ``keys`` whose keys differ by one of ``steps``, numbered in order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(keys)
    start, end = [], []
    for step in steps:
        where = np.searchsorted(keys, keys + step)
        hit = where < n
        hit[hit] = keys[where[hit]] == keys[hit] + step
        start.append(np.flatnonzero(hit))
        end.append(where[hit])
    a, b = np.concatenate(start), np.concatenate(end)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # number the sets by their first pixel, as DIALS's labels are
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def join_images(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    counts: np.ndarray,
    *,
    min_spot_size: int = 3,
    max_spot_size: int = 1000,
    max_separation: float | None = 2.0,
) -> Spots3D:
    """Join strong pixels that touch, on one image or on consecutive images, into 3-D spots (see the module's notes).

    Parameters
    ----------
    image
        Image number of each strong pixel (consecutive images are one apart).
    x, y
        Column and row of each strong pixel (non-negative).
    counts
        Counts of each strong pixel.
    min_spot_size, max_spot_size
        Spots with fewer or more pixels, over all their images, are dropped.
    max_separation
        Spots whose brightest pixel is farther than this from their centroid,
        in 3-D (pixels and images), are dropped; ``None``: keep them.

    Examples
    --------
    A 2 x 2 spot on images 4 and 5, shifted by one column, and a lone pixel:

    >>> import numpy as np
    >>> spots = join_images(np.array([4, 4, 4, 4, 5, 5, 5, 5, 9]), np.array([1, 2, 1, 2, 2, 3, 2, 3, 0]),
    ...                     np.array([0, 0, 1, 1, 0, 0, 1, 1, 0]), np.full(9, 10.0), max_separation=None)
    >>> len(spots), int(spots.pixels[0]), float(spots.z[0]), spots.first_image.tolist(), spots.last_image.tolist()
    (1, 8, 4.5, [4], [5])
    """
    if len(image) == 0:
        return _no_spots()
    image, x, y = (np.asarray(v, np.int64) for v in (image, x, y))
    columns, rows = int(x.max()) + 2, int(y.max()) + 2  # a spare one: the last column's x + 1 is nobody's
    keys = ((image - image.min()) * rows + y) * columns + x
    # from here on the pixels are in (image, row, column) order; ``order`` takes them back to the caller's
    order = np.argsort(keys, kind="stable")
    keys, image, x, y = keys[order], image[order], x[order], y[order]
    counts = np.asarray(counts, np.float64)[order]
    label = _labels(keys, (1, columns, rows * columns))
    n = int(label.max()) + 1
    pixels = np.bincount(label, minlength=n)
    intensity = np.bincount(label, counts, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):  # a spot of zero counts has no centroid
        cx = np.bincount(label, counts * x, minlength=n) / intensity
        cy = np.bincount(label, counts * y, minlength=n) / intensity
        cz = np.bincount(label, counts * image, minlength=n) / intensity
    by_spot = np.argsort(label, kind="stable")  # spot by spot, each in (image, row, column) order
    bounds = np.r_[0, np.cumsum(pixels)[:-1]]
    low = [np.minimum.reduceat(v[by_spot], bounds) for v in (x, y, image)]
    high = [np.maximum.reduceat(v[by_spot], bounds) for v in (x, y, image)]
    bbox = np.column_stack([low[0], high[0] + 1, low[1], high[1] + 1])
    keep = (pixels >= min_spot_size) & (pixels <= max_spot_size)
    if max_separation is not None:
        # each spot's brightest pixel, the first in (image, row, column) order among equals, as DIALS's
        # shoebox peak: the first pixel of the spot whose counts are the spot's largest
        spot_counts = counts[by_spot]
        brightest = spot_counts == np.repeat(np.maximum.reduceat(spot_counts, bounds), pixels)
        first = np.minimum.reduceat(np.where(brightest, np.arange(len(by_spot)), len(by_spot)), bounds)
        peak = by_spot[first]
        distance = np.sqrt((x[peak] - cx) ** 2 + (y[peak] - cy) ** 2 + (image[peak] - cz) ** 2)
        keep &= distance <= max_separation
    renumber = np.full(n, -1, np.int64)
    renumber[keep] = np.arange(int(keep.sum()))
    pixel_spot = np.empty(len(order), np.int64)
    pixel_spot[order] = renumber[label]
    return Spots3D(cx[keep], cy[keep], cz[keep], intensity[keep], pixels[keep].astype(np.int64), low[2][keep],
                   high[2][keep], bbox[keep], pixel_spot)


def _no_spots() -> Spots3D:
    none, whole = np.zeros(0), np.zeros(0, np.int64)
    return Spots3D(none, none, none, none, whole, whole, whole, np.zeros((0, 4), np.int64), whole)
