"""Union-find over pixel indices, compiled by Numba: the connected components of sparse strong pixels.

Shared by the peak finders of serial crystallography
(:mod:`~lightpipe.techniques.sfx.kernels`) and rotation crystallography
(:mod:`~lightpipe.techniques.mx.kernels`), which differ only in which
neighbours join. A set's root is always its smallest index, so numbering the
roots in order numbers the sets in the order of their first pixel, as
``scipy.ndimage.label`` and SciPy's ``connected_components`` number them.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["join", "numbered", "root"]


@numba.njit(cache=True, nogil=True)
def root(parent: np.ndarray, k: int) -> int:
    """The root of ``k``'s set, halving the path on the way: later look-ups are short."""
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


@numba.njit(cache=True, nogil=True)
def join(parent: np.ndarray, a: int, b: int) -> None:
    """Join the sets of ``a`` and ``b``; the smaller root stays the root."""
    a, b = root(parent, a), root(parent, b)
    if a != b:
        parent[max(a, b)] = min(a, b)


@numba.njit(cache=True, nogil=True)
def numbered(parent: np.ndarray) -> np.ndarray:
    """The set of each index, numbered from 0 in the order of each set's first index."""
    n = parent.size
    labels = np.empty(n, np.int64)
    count = 0
    for k in range(n):
        r = root(parent, k)
        if r == k:
            labels[k] = count
            count += 1
        else:
            labels[k] = labels[r]
    return labels
