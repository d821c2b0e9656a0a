"""Per-event scalars from frames: region-of-interest sums and frame statistics."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.bounds import PixelRange, box_problem
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, StageParams, param
from lightpipe.core.xp import array_namespace


class RoiParams(StageParams):
    """Parameters of :class:`RoiSum`."""

    y: PixelRange = param(description="First and one-past-last row", unit="px")
    x: PixelRange = param(description="First and one-past-last column", unit="px")

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the region does not fit a frame of ``shape``, or ``None``."""
        return box_problem("y", self.y, shape[0]) or box_problem("x", self.x, shape[1])


class RoiSum(MapStage):
    """Sum, mean and maximum of the counts in a rectangular region of interest."""

    name = "roi_sum"
    Params = RoiParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Frame")}
    outputs = {
        "sum": Port(ndim=0, dtype="float", unit="counts", description="Sum in the ROI"),
        "mean": Port(ndim=0, dtype="float", unit="counts", description="Mean in the ROI"),
        "max": Port(ndim=0, dtype="float", unit="counts", description="Maximum in the ROI"),
    }

    def process(self, frame: Any) -> dict[str, Any]:
        xp = array_namespace(frame)
        (y0, y1), (x0, x1) = self.params.y, self.params.x
        roi = xp.astype(frame[y0:y1, x0:x1], xp.float64)
        if roi.size == 0:
            raise ValueError(f"ROI y={self.params.y} x={self.params.x} is empty for a {frame.shape} frame")
        return {"sum": np.float64(xp.sum(roi)), "mean": np.float64(xp.mean(roi)), "max": np.float64(xp.max(roi))}


class FrameScalars(MapStage):
    """Total counts, mean, maximum and centre of mass of a frame."""

    name = "frame_scalars"
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Frame")}
    outputs = {
        "total": Port(ndim=0, dtype="float", unit="counts", description="Sum of all pixels"),
        "max": Port(ndim=0, dtype="float", unit="counts", description="Brightest pixel"),
        "com_x": Port(ndim=0, dtype="float", unit="px", description="Centre of mass, x"),
        "com_y": Port(ndim=0, dtype="float", unit="px", description="Centre of mass, y"),
    }

    def process(self, frame: Any) -> dict[str, Any]:
        xp = array_namespace(frame)
        f = xp.astype(frame, xp.float64)
        total = xp.sum(f)
        ny, nx = f.shape
        if total != 0:
            com_y = xp.sum(xp.sum(f, axis=1) * xp.arange(ny, dtype=xp.float64)) / total
            com_x = xp.sum(xp.sum(f, axis=0) * xp.arange(nx, dtype=xp.float64)) / total
        else:
            com_x = com_y = xp.asarray(float("nan"))
        return {"total": np.float64(total), "max": np.float64(xp.max(f)),
                "com_x": np.float64(com_x), "com_y": np.float64(com_y)}
