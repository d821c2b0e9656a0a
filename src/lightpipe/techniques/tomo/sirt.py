"""SIRT: the simultaneous iterative reconstruction technique, with the projector as a sparse matrix.

The projector ``A`` spreads each pixel of the reconstruction circle over the
two detector columns beside its ray at every angle, with linear-interpolation
weights; its transpose is the back projection. SIRT (Gilbert, J. Theor. Biol.
36, 105, 1972; in the form of Gregor and Benson, IEEE TMI 27, 918, 2008)
updates ``x <- x + C A^T R (b - A x)`` with ``R`` and ``C`` the inverse row
and column sums of ``A``; it converges to a weighted least-squares solution and,
unlike FBP, copes with few or unevenly spread angles. Every slice of a block
shares the matrix, so an iteration is two sparse-times-dense products.

The matrix holds two entries per pixel and angle: a 512 x 512 slice from 720
projections needs about 3.5 GB, beyond :data:`MAX_ENTRIES`; use FBP there, or
fewer angles or binned projections.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from lightpipe.techniques.tomo.geometry import circle, coordinates

__all__ = ["MAX_ENTRIES", "Projector", "sirt"]

#: Most non-zero entries of a projector matrix (12 bytes each): 1.2 GB.
MAX_ENTRIES = 100_000_000


class Projector:
    """The parallel-beam projector of ``n x n`` slices onto ``nu`` detector columns at ``angles``, as a matrix.

    Parameters
    ----------
    angles
        Radians.
    centre
        Detector column of the rotation axis.
    n
        Slice width in pixels.
    nu
        Detector columns.
    """

    def __init__(self, angles: np.ndarray, centre: float, n: int, nu: int) -> None:
        angles = np.asarray(angles, np.float64)
        self.n, self.nu, self.n_angles = n, nu, angles.size
        self.inside = circle(n)
        pixels = int(self.inside.sum())
        entries = 2 * pixels * angles.size
        if entries > MAX_ENTRIES:
            raise ValueError(f"SIRT on {n} x {n} slices from {angles.size} projections needs a projector of "
                             f"{entries:.3g} entries (at most {MAX_ENTRIES:.0e}); use algorithm fbp, fewer "
                             "projections or binned frames")
        c = coordinates(n).astype(np.float64)
        ys, xs = np.broadcast_arrays(c[:, None], c[None, :])
        xs, ys = xs[self.inside], ys[self.inside]
        t = centre + np.cos(angles)[:, None] * xs[None, :] + np.sin(angles)[:, None] * ys[None, :]
        low = np.floor(t)
        frac = t - low
        low = low.astype(np.int64)
        rows_of_angle = (np.arange(angles.size) * nu)[:, None]
        pixel = np.broadcast_to(np.arange(pixels), t.shape)
        rows, cols, values = [], [], []
        for column, weight in ((low, 1.0 - frac), (low + 1, frac)):
            hit = (column >= 0) & (column < nu) & (weight > 0)
            rows.append((rows_of_angle + column)[hit])
            cols.append(pixel[hit])
            values.append(weight[hit].astype(np.float32))
        shape = (angles.size * nu, pixels)
        self.matrix = scipy.sparse.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
        self.transposed = self.matrix.T.tocsr()
        row_sums = np.asarray(self.matrix.sum(axis=1)).ravel()
        col_sums = np.asarray(self.matrix.sum(axis=0)).ravel()
        self.inverse_rows = np.where(row_sums > 0, 1.0 / np.maximum(row_sums, 1e-12), 0.0).astype(np.float32)[:, None]
        self.inverse_cols = np.where(col_sums > 0, 1.0 / np.maximum(col_sums, 1e-12), 0.0).astype(np.float32)[:, None]


def sirt(sinograms: np.ndarray, angles: np.ndarray, centre: float, iterations: int, n: int | None = None,
         start: np.ndarray | None = None, nonnegative: bool = True, projector: Projector | None = None) -> np.ndarray:
    """Reconstruct slices by SIRT.

    Parameters
    ----------
    sinograms
        ``(nz, n_angles, nu)`` line integrals.
    angles
        Radians.
    centre
        Detector column of the rotation axis.
    iterations
        SIRT iterations.
    n
        Slice width (default ``nu``).
    start
        ``(nz, n, n)`` slices to start from (a previous, coarser result); zeros by default.
    nonnegative
        Clip negative attenuation to 0 after every iteration (an object absorbs; it does not emit).
    projector
        A :class:`Projector` for these angles, centre and sizes, to reuse one.

    Returns
    -------
    numpy.ndarray
        float32 ``(nz, n, n)``.
    """
    nz, n_angles, nu = sinograms.shape
    n = n or nu
    if projector is None:
        projector = Projector(angles, centre, n, nu)
    a, at = projector.matrix, projector.transposed
    b = np.ascontiguousarray(sinograms.reshape(nz, -1).T, np.float32)
    x = (np.zeros((int(projector.inside.sum()), nz), np.float32) if start is None
         else np.ascontiguousarray(start[:, projector.inside].T, np.float32))
    for _ in range(iterations):
        residual = b - a @ x
        residual *= projector.inverse_rows
        x += projector.inverse_cols * (at @ residual)
        if nonnegative:
            np.maximum(x, 0, out=x)
    out = np.zeros((nz, n, n), np.float32)
    out[:, projector.inside] = x.T
    return out
