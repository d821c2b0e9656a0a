"""Where each image of a rotation scan lies on the rotation: even steps, or each image's own angle.

Sources give the rotation in the scan's metadata, in degrees:
``omega_start_deg`` and ``omega_increment_deg`` when the images are evenly
spaced, and ``omega_deg``, the angle at the start of every image, when they
are not (an NXmx file whose goniometer stopped and jumped: the ``hdf5``
source keeps the file's angles then, and no increment). Each image's angle
is the middle of its rotation: its start plus half its width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lightpipe.core.errors import LightpipeError

__all__ = ["Rotation", "rotation_of"]


@dataclass(frozen=True)
class Rotation:
    """The rotation of a scan's images, in degrees.

    Attributes
    ----------
    start
        Where image 1 starts.
    width
        How far each image turns (negative where the angles fall).
    starts
        Where each image starts, image ``k`` (from 1) at ``starts[k - 1]``;
        ``None``: evenly, at ``start + (k - 1) * width``.
    """

    start: float
    width: float
    starts: np.ndarray | None = None

    def middle(self, images: np.ndarray) -> np.ndarray:
        """The angle at the middle of each image in ``images`` (numbers from 1)."""
        images = np.asarray(images, np.int64)
        if self.starts is None:
            return self.start + (images - 0.5) * self.width
        return self.starts[images - 1] + 0.5 * self.width


def _per_image(angles: Any, images: int | None, width: float | None) -> Rotation:
    """The :class:`Rotation` of the angles each image starts at, checked."""
    starts = np.asarray(angles, dtype=np.float64) if isinstance(angles, (list, tuple, np.ndarray)) else np.zeros(0)
    what = ("check the rotation axis in the file (e.g. /entry/sample/transformations/omega), or set spot_table's "
            "omega_start_deg and omega_increment_deg to give the rotation yourself")
    if starts.ndim != 1 or starts.size == 0 or not np.isfinite(starts).all():
        raise LightpipeError(f"the scan's rotation angles per image (omega_deg) are not a list of finite numbers "
                             f"({angles!r:.80}); {what}")
    if images is not None and starts.size != images:
        raise LightpipeError(f"the scan gives {starts.size} rotation angles (omega_deg), one per image, but has "
                             f"{images} images; {what}")
    steps = np.diff(starts)
    if steps.size and not ((steps > 0).all() or (steps < 0).all()):
        k = int(np.flatnonzero(np.sign(steps) != np.sign(steps[0]))[0]) if steps[0] else 0
        raise LightpipeError(f"the scan's rotation angles (omega_deg) do not turn one way: image {k + 1} starts at "
                             f"{starts[k]:g} deg and image {k + 2} at {starts[k + 1]:g} deg; {what}")
    if width is None:
        if steps.size == 0:
            raise LightpipeError(f"the scan has one image at {starts[0]:g} deg and does not say how far it turns; "
                                 "set spot_table's omega_increment_deg")
        # the usual step is an image's width; the uneven steps are the goniometer's jumps between images
        width = float(np.median(steps))
    elif steps.size and steps[0] < 0:
        width = -width
    return Rotation(float(starts[0]), width, starts)


def rotation_of(metadata: dict[str, Any], start: float | None = None, width: float | None = None,
                images: int | None = None) -> Rotation | None:
    """The scan's :class:`Rotation`, or ``None`` when neither the parameters nor the metadata say.

    Parameters
    ----------
    metadata
        The scan's metadata: ``omega_start_deg`` and ``omega_increment_deg``,
        or ``omega_deg`` (each image's start).
    start, width
        ``omega_start_deg`` and ``omega_increment_deg`` given as parameters:
        both together win over the metadata; ``width`` alone is each image's
        width where the metadata gives each image's start.
    images
        How many images the scan has, where known: ``omega_deg`` must have as many angles.

    Raises
    ------
    LightpipeError
        Per-image angles that are not finite, not one per image or that do not
        turn one way; or a ``start`` that would have to replace them without a ``width``.

    Examples
    --------
    >>> rotation_of({"omega_deg": [10.0, 10.5, 11.0, 13.0]}).middle(np.arange(1, 5)).tolist()
    [10.25, 10.75, 11.25, 13.25]
    """
    if start is not None and width is not None:
        return Rotation(float(start), float(width))
    if metadata.get("omega_deg") is not None:
        if start is not None:
            raise LightpipeError("spot_table's omega_start_deg is set but the scan gives each image's own angle "
                                 "(omega_deg); set omega_increment_deg too, to replace them by even steps, or "
                                 "remove omega_start_deg")
        return _per_image(metadata["omega_deg"], images, width)
    start = metadata.get("omega_start_deg") if start is None else start
    width = metadata.get("omega_increment_deg") if width is None else width
    if isinstance(start, (int, float)) and isinstance(width, (int, float)) and np.isfinite([start, width]).all():
        return Rotation(float(start), float(width))
    return None
