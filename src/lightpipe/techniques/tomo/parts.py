"""Slices reconstructed in blocks, spread over the engine's workers through the stage's part runner.

Slices of a parallel-beam scan are independent, so the stack of sinograms is
cut into contiguous blocks of rows, one per part; each part (a
:class:`SliceBlock`, on a thread of the driver's process with the ``local``
engine, a Dask actor on a worker of the run's cluster with ``dask``) removes
rings and reconstructs its block, and the blocks are stacked in order. The
result does not depend on the number of parts: every slice is computed by the
same code from the same sinogram.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lightpipe.core.parts import PartRunner

__all__ = ["Recipe", "SLICES_AT_ONCE", "SliceBlock", "reconstruct", "reconstruct_in_parts"]

#: Slices a part filters and back-projects together: they share each ray's lookup, and their
#: oversampled filtered sinograms (nu * 4 * angles floats each) stay within a few hundred MB.
SLICES_AT_ONCE = 8


@dataclass(frozen=True)
class Recipe:
    """How to reconstruct: everything but the data.

    Attributes
    ----------
    algorithm
        ``fbp`` or ``sirt``.
    window
        FBP filter window (:data:`~lightpipe.techniques.tomo.fbp.WINDOWS`).
    iterations
        SIRT iterations.
    centre
        Detector column of the rotation axis.
    width
        Slice width in pixels.
    ring_filter_px
        Median width of Vo's stripe filter; 0: no ring removal.
    nonnegative
        SIRT clips negative attenuation.
    """

    algorithm: Literal["fbp", "sirt"]
    window: str
    iterations: int
    centre: float
    width: int
    ring_filter_px: int
    nonnegative: bool = True


def reconstruct(sinograms: np.ndarray, angles: np.ndarray, recipe: Recipe, start: np.ndarray | None = None) -> np.ndarray:
    """Ring removal (when asked) and FBP or SIRT of ``(nz, n_angles, nu)`` sinograms; angles in radians.

    ``start`` (SIRT only) is the ``(nz, n, n)`` estimate to refine.
    """
    from lightpipe.techniques.tomo.fbp import fbp
    from lightpipe.techniques.tomo.rings import remove_stripes
    from lightpipe.techniques.tomo.sirt import Projector, sirt

    if recipe.ring_filter_px:
        sinograms = remove_stripes(sinograms, recipe.ring_filter_px)
    if recipe.algorithm == "sirt":
        projector = Projector(angles, recipe.centre, recipe.width, sinograms.shape[-1])
        return sirt(sinograms, angles, recipe.centre, recipe.iterations, recipe.width, start, recipe.nonnegative,
                    projector)
    out = np.empty((sinograms.shape[0], recipe.width, recipe.width), np.float32)
    for first in range(0, sinograms.shape[0], SLICES_AT_ONCE):
        block = slice(first, first + SLICES_AT_ONCE)
        out[block] = fbp(sinograms[block], angles, recipe.centre, recipe.width, recipe.window)
    return out


class SliceBlock:
    """One part: a contiguous block of sinograms and how to reconstruct them.

    Parameters
    ----------
    data
        ``{"sinograms": (nz, n_angles, nu), "angles": radians, "recipe": Recipe}``.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.sinograms = data["sinograms"]
        self.angles = data["angles"]
        self.recipe = data["recipe"]

    def reconstruct(self) -> np.ndarray:
        """The block's slices."""
        return reconstruct(self.sinograms, self.angles, self.recipe)


def reconstruct_in_parts(sinograms: np.ndarray, angles: np.ndarray, recipe: Recipe, runner: PartRunner,
                         parts: int) -> np.ndarray:
    """Reconstruct every slice, ``parts`` contiguous blocks of them at once on the runner's workers."""
    parts = max(1, min(parts, sinograms.shape[0]))
    bounds = np.linspace(0, sinograms.shape[0], parts + 1).round().astype(int)
    data = [{"sinograms": np.ascontiguousarray(sinograms[lo:hi]), "angles": angles, "recipe": recipe}
            for lo, hi in zip(bounds[:-1], bounds[1:])]
    with runner.start(SliceBlock, data) as group:
        blocks = group.call("reconstruct", [()] * len(data))
    return np.concatenate(blocks, axis=0)
