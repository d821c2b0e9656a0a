"""Dark and flat-field correction of frames."""
from __future__ import annotations

from typing import Any

from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, StageParams, param
from lightpipe.core.xp import array_namespace


class DarkParams(StageParams):
    """Parameters of :class:`DarkCorrection`."""

    clip_negative: bool = param(True, "Set negative corrected values to 0")
    masked_value: float = param(0.0, "Value written into bad pixels", unit="counts", ge=-1e12, le=1e12)


class DarkCorrection(MapStage):
    """Subtract the mean dark frame and blank bad pixels."""

    name = "dark_correction"
    Params = DarkParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Raw frame"),
        "dark": Port(ndim=2, dtype="float", unit="counts", description="Mean dark frame"),
        "mask": Port(ndim=2, dtype="bool", description="Bad-pixel mask"),
    }
    outputs = {"frame": Port(ndim=2, dtype="float32", unit="counts", description="Dark-corrected frame")}

    def process(self, frame: Any, dark: Any, mask: Any) -> dict[str, Any]:
        xp = array_namespace(frame, dark)
        if frame.shape != dark.shape:
            raise ValueError(f"frame shape {frame.shape} differs from the dark's {dark.shape}")
        out = xp.astype(frame, xp.float32) - xp.astype(dark, xp.float32)
        if self.params.clip_negative:
            out = xp.clip(out, 0, None)
        out = xp.where(mask, xp.asarray(self.params.masked_value, dtype=xp.float32), out)
        return {"frame": out}


class FlatParams(StageParams):
    """Parameters of :class:`FlatCorrection`."""

    min_flat: float = param(0.05, "Flat values below this are treated as this", gt=0, le=1e6)


class FlatCorrection(MapStage):
    """Divide a (dark-corrected) frame by the normalised flat field."""

    name = "flat_correction"
    Params = FlatParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Dark-corrected frame"),
        "flat": Port(ndim=2, dtype="float", description="Flat field normalised to 1"),
    }
    outputs = {"frame": Port(ndim=2, dtype="float32", unit="counts", description="Flat-corrected frame")}

    def process(self, frame: Any, flat: Any) -> dict[str, Any]:
        xp = array_namespace(frame, flat)
        safe = xp.maximum(xp.astype(flat, xp.float32), xp.asarray(self.params.min_flat, dtype=xp.float32))
        return {"frame": xp.astype(frame, xp.float32) / safe}
