"""Scan positions split into overlapping parts: k-means clusters, each extended by a margin.

The first step of a distributed reconstruction
(:mod:`lightpipe.techniques.ptychography.distributed`): the positions are
clustered with k-means (scikit-learn), and each part is extended by the
positions of the other parts that lie within a margin (about a probe radius)
of its own, so neighbouring parts share frames and their objects overlap.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightpipe.core.errors import LightpipeError
from lightpipe.core.xp import to_numpy

__all__ = ["check_positions", "extend_parts", "kmeans_labels", "split_positions"]


def kmeans_labels(positions_px: Any, parts: int, *, seed: int = 0) -> np.ndarray:
    """The part (0 to ``parts - 1``) of each scan position: k-means clusters of the positions.

    Parameters
    ----------
    positions_px
        (N, 2) scan positions, any unit.
    parts
        Number of parts, 1 to N.
    seed
        Seed of k-means' initial centres (10 restarts), so a split can be repeated.

    Returns
    -------
    numpy.ndarray
        (N,) int labels; parts are numbered by their first position in scan order.
    """
    pos = check_positions(positions_px)
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or not 1 <= parts <= len(pos):
        raise ValueError(f"parts must be an integer from 1 to the number of positions ({len(pos)}), got {parts!r}")
    if parts == 1:
        return np.zeros(len(pos), dtype=np.int64)
    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:
        raise LightpipeError("splitting scan positions uses scikit-learn's k-means; install it with: "
                             "pip install 'lightpipe[ptycho]'") from exc
    raw = KMeans(n_clusters=int(parts), n_init=10, random_state=seed).fit_predict(pos)
    # renumber in scan order: the labels then do not depend on k-means' own numbering
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(first)
    renumber = np.empty(len(order), dtype=np.int64)
    renumber[np.unique(raw)[order]] = np.arange(len(order))
    return renumber[raw]


def extend_parts(positions_px: Any, labels: Any, margin_px: float) -> list[np.ndarray]:
    """Each part's positions plus those of other parts within ``margin_px`` of any of its own.

    Parameters
    ----------
    positions_px
        (N, 2) positions, pixels.
    labels
        (N,) part of each position (:func:`kmeans_labels`).
    margin_px
        Largest distance from a part's own positions at which another part's
        position is shared with it; 0 shares none.

    Returns
    -------
    list of numpy.ndarray
        Sorted position indices of each part.
    """
    pos = check_positions(positions_px)
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (len(pos),):
        raise ValueError(f"labels has shape {lab.shape}; expected ({len(pos)},), one part per position")
    if not (math.isfinite(margin_px) and margin_px >= 0):
        raise ValueError(f"margin_px must be a finite number >= 0, got {margin_px!r}")
    if margin_px > 0:
        from sklearn.metrics import pairwise_distances_argmin_min  # chunked: no N x N matrix for big scans
    out = []
    for k in range(int(lab.max()) + 1):
        own = np.flatnonzero(lab == k)
        others = np.flatnonzero(lab != k)
        if margin_px == 0 or len(others) == 0:
            out.append(own)
            continue
        _, nearest = pairwise_distances_argmin_min(pos[others], pos[own])
        out.append(np.sort(np.concatenate([own, others[nearest <= margin_px]])))
    return out


def split_positions(positions_px: Any, parts: int, probe_shape: tuple[int, int], margin_px: float | None = None, *,
                    seed: int = 0) -> list[np.ndarray]:
    """Split scan positions into ``parts`` overlapping parts: k-means, then each part extended by a margin.

    Parameters
    ----------
    positions_px
        (N, 2) scan positions (y, x) in object pixels.
    parts
        Number of parts.
    probe_shape
        (ny, nx) of the probe window (the frame shape).
    margin_px
        Positions of other parts within this distance of a part's own are
        shared with it. Default a quarter of the window, the probe's radius
        when it fills half the window as sampling the diffraction twice
        over requires.
    seed
        Seed of k-means.

    Returns
    -------
    list of numpy.ndarray
        Sorted position indices of each part; together they cover every position,
        and a position belongs to one part's k-means cluster and to the margins
        of its neighbours.

    Examples
    --------
    >>> import numpy as np
    >>> grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1).reshape(-1, 2) * 10
    >>> [len(p) for p in split_positions(grid, 2, (32, 32), margin_px=12)]
    [40, 40]
    """
    if len(probe_shape) != 2 or min(probe_shape) < 1:
        raise ValueError(f"probe_shape must be the (ny, nx) of the probe window, got {probe_shape!r}")
    margin = min(probe_shape) / 4.0 if margin_px is None else float(margin_px)
    return extend_parts(positions_px, kmeans_labels(positions_px, parts, seed=seed), margin)


def check_positions(positions_px: Any) -> np.ndarray:
    """``positions_px`` as a float64 (N, 2) array, or a :class:`ValueError` saying what is wrong with them."""
    pos = np.asarray(to_numpy(positions_px), dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions_px must be an (N, 2) array of (y, x) positions, got shape {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions_px hold NaN or infinite values; every frame needs a position")
    return pos
