"""Radial (azimuthally averaged) profile around the beam centre."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.bounds import MAX_COUNT, MAX_FRAME_PX, PixelCoordinate
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, StageParams, param


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
        "profile": Port(ndim=1, dtype="float", unit="counts", description="Mean counts per radial bin"),
        "radius": Port(ndim=1, dtype="float", unit="px", description="Bin centres"),
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
