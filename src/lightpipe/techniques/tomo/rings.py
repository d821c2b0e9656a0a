"""Ring removal: Vo's sorting-based stripe filter on sinograms.

A detector pixel whose response the flat field does not correct adds the same
error to every projection: a vertical stripe in the sinogram, a ring in the
slice. Vo, Atwood and Drakopoulos (Opt. Express 26, 28396, 2018, algorithm 3)
sort each detector column of a sinogram along the angles, so that the object's
own variation becomes a smooth ramp and a stripe a column offset from its
neighbours; a median filter across the columns of the sorted sinogram removes
the offset, and the values go back to their angles. Unlike a filter on the
mean projection, it also removes stripes whose strength changes with the
signal, and it leaves the object's edges alone.

It needs every angle of a sinogram, so it runs where the sinograms are: in the
reconstruction stages (``ring_filter_px``), not on single projections.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["remove_stripes"]


def remove_stripes(sinograms: np.ndarray, size: int) -> np.ndarray:
    """Vo's sorting-based stripe removal on each sinogram of a stack.

    Parameters
    ----------
    sinograms
        ``(nz, n_angles, nu)``.
    size
        Width in detector columns of the median filter: wider than the widest
        stripe, narrower than the object's features (odd; 21 to 31 for a 2k
        detector in Vo's paper).

    Returns
    -------
    numpy.ndarray
        float32, the same shape.
    """
    if size < 3:
        raise ValueError(f"the ring filter needs a median of at least 3 columns, not {size}")
    data = np.asarray(sinograms, np.float32)
    order = np.argsort(data, axis=1, kind="stable")
    ordered = np.take_along_axis(data, order, axis=1)
    smoothed = ndimage.median_filter(ordered, size=(1, 1, size), mode="reflect")
    out = np.empty_like(data)
    np.put_along_axis(out, order, smoothed, axis=1)
    return out
