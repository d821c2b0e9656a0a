"""Which pixels of an MX image spot finding may use: the detector mask file and each image's own bad values.

Two layers, as DIALS has them:

* **static**: a mask file of the detector's shape, non-zero where a pixel is
  bad (module gaps, dead or hot pixels, a beamstop shadow): the convention of
  pyFAI and of an EIGER's ``pixel_mask``. DIALS's own ``mask.pickle`` is the
  other way round; convert it with ``dials.export`` or invert it.
* **per image**: NaN or infinite values, values below ``min_valid`` (a PILATUS
  writes -1 in its gaps and -2 in bad pixels) and above ``max_valid``
  (saturated; an unsigned frame's largest value marks saturated and defective
  pixels on DECTRIS detectors, which DIALS's trusted range leaves out too).
"""
from __future__ import annotations


import numpy as np

from lightpipe.core.images import read_image

__all__ = ["read_mask", "valid_pixels"]


def read_mask(spec: str) -> np.ndarray:
    """A detector mask (``True`` = bad pixel, non-zero in the file) from ``.npy``, ``file.h5::/dataset`` or an image
    fabio reads (:func:`lightpipe.core.images.read_image`).

    Raises
    ------
    LightpipeError
        Naming the file and what to give instead.
    """
    return read_image(spec, "mask") != 0


def mask_shape_problem(mask: np.ndarray, spec: str, shape: tuple[int, ...]) -> str | None:
    """Why the mask read from ``spec`` does not fit frames of ``shape``, or ``None``."""
    if tuple(mask.shape) == tuple(shape):
        return None
    return (f"the mask in {spec!r} is {mask.shape[0]} x {mask.shape[1]} but the frames are {shape[0]} x {shape[1]}; "
            "give the mask of this detector (same rows and columns as its frames), or remove the mask parameter")


def valid_pixels(frame: np.ndarray, bad: np.ndarray | None, min_valid: float | None,
                 max_valid: float | None) -> np.ndarray:
    """Pixels of ``frame`` that spot finding may use (see the module's notes).

    ``max_valid`` ``None`` means, for an unsigned integer frame, its dtype's
    largest value minus one; no upper limit otherwise.
    """
    kind = frame.dtype.kind
    good = np.isfinite(frame) if kind == "f" else np.ones(frame.shape, bool)
    if bad is not None:
        good &= ~bad
    if max_valid is None and kind == "u":
        max_valid = float(np.iinfo(frame.dtype).max) - 1
    with np.errstate(invalid="ignore"):  # NaN compares False, and is already out
        if min_valid is not None and not (kind == "u" and min_valid <= 0):
            good &= frame >= min_valid
        if max_valid is not None:
            good &= frame <= max_valid
    return good
