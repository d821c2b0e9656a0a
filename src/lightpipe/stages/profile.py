"""Radial (azimuthally averaged) profile around the beam centre."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.bounds import MAX_COUNT, MAX_FRAME_PX, PixelCoordinate
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param


class ProfileParams(StageParams):
    """Parameters of :class:`RadialProfile`."""

    bins: int = param(128, "Number of radial bins", ge=1, le=MAX_COUNT)
    max_radius_px: float | None = param(None, "Outer radius; default the farthest corner", unit="px", gt=0,
                                        le=10 * MAX_FRAME_PX)
    center_x_px: PixelCoordinate | None = param(None, "Beam centre x; default the scan's beam_center_x_px", unit="px")
    center_y_px: PixelCoordinate | None = param(None, "Beam centre y; default the scan's beam_center_y_px", unit="px")


class RadialProfile(MapStage):
    """Mean intensity in rings of equal width around the beam centre (masked pixels excluded)."""

    name = "radial_profile"
    Params = ProfileParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Corrected frame"),
        "mask": Port(ndim=2, dtype="bool", description="True where the pixel is bad"),
    }
    outputs = {
        "profile": Port(ndim=1, dtype="float", unit="counts", description="Mean counts per radial bin",
                        axes=("radius",)),
        "radius": Port(ndim=1, dtype="float", unit="px", description="Bin centres", constant=True),
    }

    def setup(self, scan: Scan) -> None:
        self._centre = (
            self.params.center_x_px if self.params.center_x_px is not None else scan.metadata.get("beam_center_x_px"),
            self.params.center_y_px if self.params.center_y_px is not None else scan.metadata.get("beam_center_y_px"),
        )
        self._geometry: tuple[Any, ...] | None = None

    def _bins(self, shape: tuple[int, int], mask: np.ndarray) -> tuple[Any, ...]:
        # the mask is usually the scan's dark mask, so comparing is far cheaper than rebuilding
        if self._geometry is None or self._geometry[0] != shape or not np.array_equal(self._geometry[4], mask):
            ny, nx = shape
            cx, cy = self._centre
            cx = (nx - 1) / 2 if cx is None else cx
            cy = (ny - 1) / 2 if cy is None else cy
            y, x = np.mgrid[0:ny, 0:nx]
            r = np.hypot(x - cx, y - cy)
            rmax = self.params.max_radius_px or float(r.max()) + 1e-9
            idx = np.floor(r / rmax * self.params.bins).astype(np.int64)
            idx[(idx >= self.params.bins) | mask] = self.params.bins  # overflow bin, dropped
            counts = np.bincount(idx.ravel(), minlength=self.params.bins + 1)[: self.params.bins]
            edges = np.linspace(0, rmax, self.params.bins + 1)
            self._geometry = (shape, idx.ravel(), counts, 0.5 * (edges[1:] + edges[:-1]), mask.copy())
        return self._geometry

    def process(self, frame: Any, mask: Any) -> dict[str, Any]:
        frame, mask = np.asarray(frame), np.asarray(mask, bool)
        _, idx, counts, centres, _ = self._bins(frame.shape, mask)
        sums = np.bincount(idx, weights=frame.ravel().astype(np.float64), minlength=self.params.bins + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = sums[: self.params.bins] / counts
        return {"profile": profile, "radius": centres}


#: A powder pattern's partial result: per-bin sums and counts of the finite profile values, and the bin centres.
PatternPartial = tuple[np.ndarray, np.ndarray, np.ndarray]


class PowderPattern(ReduceStage[PatternPartial]):
    """The scan's powder pattern: the mean of the frames' radial profiles, bin by bin, against the radius.

    A bin that is NaN in a frame (every pixel of its ring masked) is left out of
    that bin's mean, so a ring the mask hides in some frames still gets the mean
    of the others; a bin NaN in every frame stays NaN.
    """

    name = "powder_pattern"
    inputs = {
        "profile": Port(ndim=1, dtype="float", unit="counts", description="Radial profile of one frame"),
        "radius": Port(ndim=1, dtype="float", unit="px", description="Bin centres of the profile, the same for "
                       "every frame", constant=True),
    }
    outputs = {
        "intensity": Port(ndim=1, dtype="float", unit="counts", description="Mean counts per radial bin over the scan",
                          scan=True, axes=("radius",), main=True),
        "radius": Port(ndim=1, dtype="float", unit="px", description="Bin centres", scan=True),
    }

    def partial(self, profile: Any, radius: Any) -> PatternPartial:
        values = np.asarray(profile, np.float64)
        finite = np.isfinite(values)
        return np.where(finite, values, 0.0), finite.astype(np.int64), np.asarray(radius, np.float64)

    def merge(self, left: PatternPartial, right: PatternPartial) -> PatternPartial:
        if left[2].shape != right[2].shape or not np.array_equal(left[2], right[2]):
            raise ValueError("powder_pattern: the frames' radial bins differ; give radial_profile a fixed "
                             "max_radius_px and beam centre so every frame has the same bins")
        return left[0] + right[0], left[1] + right[1], left[2]

    def finish(self, total: PatternPartial | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no frame reached powder_pattern; check the stage's stream and inputs")
        sums, counts, radius = total
        intensity = np.full(sums.shape, np.nan)
        np.divide(sums, counts, out=intensity, where=counts > 0)
        return {"intensity": intensity, "radius": radius}
