"""The parts of a distributed reconstruction merged: objects weighted by illumination, each phase-aligned; probes.

Each part's object is determined only up to a complex factor (global phase
and scale), and the parts choose theirs independently. Before it is added,
each part's object is multiplied by the factor ``c_k`` that best matches it to
the parts merged so far on their overlap (least squares, weighted by the
product of the illuminations), the parts taken in order of their overlap with
what is merged (:func:`merge_objects`). The probes are merged too: the mean
of the parts' probes divided by their factors ``c_k`` (so that ``c_k O_k`` and
``P_k / c_k`` stay a pair), weighted by the photons each part measured, each
mode phase-aligned to the first part's (:func:`merge_probes`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MERGE_INERTIA", "Box", "merge_objects", "merge_probes"]

#: Regularisation of the object merge, relative to the largest illumination: pixels that
#: no part lights keep the previous object instead of dividing by almost nothing.
MERGE_INERTIA = 1e-4

#: A part's crop of the object grid, ``(slice(y0, y1), slice(x0, x1))``.
Box = tuple[slice, slice]


def merge_objects(objects: Sequence[np.ndarray], illuminations: Sequence[np.ndarray], boxes: Sequence[Box],
                  previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the parts' objects, weighted by illumination, each aligned by a complex factor first.

    ``O = (sum_k I_k c_k O_k + r O_prev) / (sum_k I_k + r)`` on the full grid, with
    ``r`` = :data:`MERGE_INERTIA` times the largest summed illumination. The first
    part keeps its factor 1; every other part, taken in order of its overlap with
    the parts merged so far, gets the ``c_k`` minimising
    ``sum w |c_k O_k - O_merged|^2`` with ``w = I_k * sum_merged I``: the global
    phase and scale that the part chose on its own.

    Parameters
    ----------
    objects
        Each part's object on its crop of the grid (complex).
    illuminations
        Each part's illumination on its crop (``ReconstructionState.illumination``).
    boxes
        Each part's crop of the full grid, ``(slice(y0, y1), slice(x0, x1))``.
    previous
        The object before this merge, full grid: kept where no part has light.

    Returns
    -------
    merged : numpy.ndarray
        complex64, the shape of ``previous``.
    factors : numpy.ndarray
        complex128 (parts,), the factor ``c_k`` each part's object was multiplied by.
    """
    n = len(objects)
    if not (len(illuminations) == len(boxes) == n) or n == 0:
        raise ValueError(f"need one object, illumination and box per part; got {len(objects)}, "
                         f"{len(illuminations)} and {len(boxes)}")
    num = np.zeros(previous.shape, dtype=np.complex128)
    den = np.zeros(previous.shape, dtype=np.float64)
    factors = np.ones(n, dtype=np.complex128)
    remaining = list(range(n))
    while remaining:
        if len(remaining) == n:
            k = remaining[0]
        else:
            overlap = [float(np.sum(den[boxes[j]] * illuminations[j])) for j in remaining]
            k = remaining[int(np.argmax(overlap))]  # ties: the lowest part number
            w = den[boxes[k]] * illuminations[k]
            part = np.asarray(objects[k], dtype=np.complex128)
            norm = float(np.sum(w * (part.real**2 + part.imag**2)))
            if norm > 0:
                reference = num[boxes[k]] / np.where(den[boxes[k]] > 0, den[boxes[k]], 1.0)
                factors[k] = np.sum(w * np.conj(part) * reference) / norm
        remaining.remove(k)
        num[boxes[k]] += illuminations[k] * (factors[k] * np.asarray(objects[k], dtype=np.complex128))
        den[boxes[k]] += illuminations[k]
    r = MERGE_INERTIA * float(den.max()) if den.max() > 0 else 1.0
    merged = (num + r * previous) / (den + r)
    return merged.astype(np.complex64), factors


def merge_probes(probes: Sequence[np.ndarray], factors: Sequence[complex], weights: Sequence[float]) -> np.ndarray:
    """Mean of the parts' probes ``P_k / c_k`` weighted by ``weights``, each mode phase-aligned to the first part's.

    Parameters
    ----------
    probes
        Each part's probe modes (M, ny, nx).
    factors
        The factor each part's object was multiplied by in :func:`merge_objects`.
    weights
        Weight of each part (the photons it measured).

    Returns
    -------
    numpy.ndarray
        complex64 (M, ny, nx).
    """
    aligned = [np.asarray(p, dtype=np.complex128) / complex(c) for p, c in zip(probes, factors)]
    reference = aligned[0]
    total = np.zeros_like(reference)
    for p, w in zip(aligned, weights):
        # incoherent modes each carry a phase of their own, which no data fixes
        overlap = np.sum(np.conj(p) * reference, axis=(1, 2))
        phase = np.where(np.abs(overlap) > 0, overlap / np.maximum(np.abs(overlap), 1e-300), 1.0)
        total += float(w) * p * phase[:, None, None]
    return (total / float(np.sum(weights))).astype(np.complex64)
