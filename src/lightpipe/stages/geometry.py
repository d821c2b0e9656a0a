"""Frame geometry and thresholds: threshold, crop, bin."""
from __future__ import annotations

from typing import Any, Literal

from lightpipe.core.bounds import MAX_FRAME_PX, PixelRange, box_problem
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, StageParams, param
from lightpipe.core.xp import array_namespace

_FRAME_IN = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Frame")}


class ThresholdParams(StageParams):
    """Parameters of :class:`Threshold`."""

    threshold: float = param(0.5, "Values below this become 0 (e.g. half a photon)", unit="counts", ge=-1e12, le=1e12)
    photon_counts: float | None = param(
        None, "If set, divide by this and round to whole photons", unit="counts per photon", gt=0, le=1e12
    )


class Threshold(MapStage):
    """Zero values below a threshold; optionally convert counts to whole photons."""

    name = "threshold"
    Params = ThresholdParams
    inputs = _FRAME_IN
    outputs = {"frame": Port(ndim=2, dtype="float32", unit="counts", description="Thresholded frame")}

    def process(self, frame: Any) -> dict[str, Any]:
        xp = array_namespace(frame)
        out = xp.astype(frame, xp.float32)
        out = xp.where(out < self.params.threshold, xp.zeros_like(out), out)
        if self.params.photon_counts is not None:
            out = xp.round(out / self.params.photon_counts)
        return {"frame": out}


class CropParams(StageParams):
    """Parameters of :class:`Crop`."""

    y: PixelRange = param(description="First and one-past-last row", unit="px")
    x: PixelRange = param(description="First and one-past-last column", unit="px")

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the crop does not fit a frame of ``shape``, or ``None``."""
        return box_problem("y", self.y, shape[0]) or box_problem("x", self.x, shape[1])


class Crop(MapStage):
    """Keep a rectangular region of the frame."""

    name = "crop"
    Params = CropParams
    inputs = {"frame": Port(ndim=2, dtype="number", description="Frame")}
    outputs = {"frame": Port(ndim=2, dtype="number", description="Cropped frame")}

    @classmethod
    def frame_geometry(cls, params: CropParams, geometry: FrameGeometry) -> FrameGeometry:
        """The rows ``y`` and columns ``x``: the pixels keep their size."""
        (y0, y1), (x0, x1) = params.y, params.x
        return geometry.cropped((y1 - y0, x1 - x0))

    def process(self, frame: Any) -> dict[str, Any]:
        (y0, y1), (x0, x1) = self.params.y, self.params.x
        ny, nx = frame.shape
        if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise ValueError(f"crop y={self.params.y} x={self.params.x} does not fit a {ny}x{nx} frame")
        return {"frame": frame[y0:y1, x0:x1]}


class BinParams(StageParams):
    """Parameters of :class:`Bin`."""

    factor: int = param(2, "Pixels combined along each axis", ge=1, le=MAX_FRAME_PX)
    mode: Literal["sum", "mean"] = param("sum", "'sum' or 'mean' of each block")

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why binning by ``factor`` leaves nothing of a frame of ``shape``, or ``None``."""
        if self.factor > min(shape):
            return f"factor {self.factor} is larger than the {shape[0]} x {shape[1]} frame; bin by at most {min(shape)}"
        return None


class Bin(MapStage):
    """Downsample by summing or averaging square blocks of pixels (edges that do not fill a block are dropped)."""

    name = "bin"
    Params = BinParams
    inputs = {"frame": Port(ndim=2, dtype="number", description="Frame")}
    outputs = {"frame": Port(ndim=2, dtype="float", description="Binned frame")}

    @classmethod
    def frame_geometry(cls, params: BinParams, geometry: FrameGeometry) -> FrameGeometry:
        """``factor`` x ``factor`` pixels become one; rows and columns that do not fill a block are dropped."""
        return geometry.binned((params.factor, params.factor))

    def process(self, frame: Any) -> dict[str, Any]:
        xp = array_namespace(frame)
        k = self.params.factor
        ny, nx = (frame.shape[0] // k) * k, (frame.shape[1] // k) * k
        if ny == 0 or nx == 0:
            raise ValueError(f"bin factor {k} is larger than the {frame.shape} frame")
        blocks = xp.reshape(xp.astype(frame[:ny, :nx], xp.float64), (ny // k, k, nx // k, k))
        out = xp.sum(xp.sum(blocks, axis=3), axis=1)
        if self.params.mode == "mean":
            out = out / (k * k)
        elif self.params.mode != "sum":
            raise ValueError(f"bin mode {self.params.mode!r} is not 'sum' or 'mean'")
        return {"frame": out}
