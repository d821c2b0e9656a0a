"""The array namespace: NumPy by default, CuPy or PyTorch arrays run through the same stage code."""
from __future__ import annotations

from typing import Any

import array_api_compat
import array_api_compat.numpy


def array_namespace(*arrays: Any) -> Any:
    """Return the array-API namespace of ``arrays`` (NumPy for plain Python values).

    Examples
    --------
    >>> import numpy as np
    >>> xp = array_namespace(np.zeros(3))
    >>> float(xp.sum(xp.ones(3)))
    3.0
    """
    arrays = tuple(a for a in arrays if hasattr(a, "shape"))
    return array_api_compat.array_namespace(*arrays) if arrays else array_api_compat.numpy


def to_numpy(array: Any) -> Any:
    """Return ``array`` as a NumPy array, copying from a GPU if needed."""
    import numpy as np

    if hasattr(array, "get"):  # CuPy
        return array.get()
    if hasattr(array, "detach"):  # PyTorch
        return array.detach().cpu().numpy()
    return np.asarray(array)
