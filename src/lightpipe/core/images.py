"""Detector-sized images that users give as files: masks, darks, flats.

One spelling for every stage that takes one: a ``.npy`` file, an HDF5 dataset
as ``file.h5::/path/to/dataset``, or any image fabio reads (EDF, TIFF, CBF).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lightpipe.core.errors import LightpipeError

__all__ = ["read_image"]


def read_image(spec: str, what: str) -> np.ndarray:
    """A 2-D image from a file: ``.npy``, HDF5 as ``file.h5::/path/to/dataset``, or any format fabio reads (EDF, TIFF, CBF).

    Parameters
    ----------
    spec
        The file, with ``::dataset`` for HDF5.
    what
        What the image is (``"mask"``, ``"dark"``), for messages.

    Raises
    ------
    LightpipeError
        Naming the file and what is wrong with it.
    """
    path, _, dataset = spec.partition("::")
    if not Path(path).is_file():
        raise LightpipeError(f"{what} file {path!r} does not exist; give an existing .npy, .edf, .tif or "
                             "file.h5::/dataset")
    try:
        if dataset:
            import h5py

            with h5py.File(path, "r", locking=False) as f:
                image = np.asarray(f[dataset][()])
        elif path.endswith(".npy"):
            image = np.load(path, allow_pickle=False)
        else:
            import fabio

            with fabio.open(path) as opened:
                image = np.asarray(opened.data)
    except (OSError, KeyError, ValueError) as exc:
        raise LightpipeError(f"cannot read the {what} from {spec!r}: {exc}; give a .npy, an image fabio reads "
                             "(EDF, TIFF, CBF) or file.h5::/dataset") from None
    if image.ndim != 2:
        raise LightpipeError(f"the {what} in {spec!r} has shape {image.shape}; it must be one 2-D image of the "
                             "detector's shape")
    return image
