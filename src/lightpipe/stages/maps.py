"""Scanning maps: per-event values placed at their scan positions (STXM, DPC, ROI counts, XRF lines)."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.bounds import PixelCoordinate
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param


class MapParams(StageParams):
    """Parameters of :class:`ScanMap`."""

    step_m: float | None = param(None, "Grid step; default the median distance to the nearest scan position",
                                 unit="m", gt=0, le=1.0)


class ScanMap(ReduceStage[Any]):
    """A 2-D map of a per-event value on a regular grid of the scan positions (mean of the events in each cell)."""

    name = "scan_map"
    Params = MapParams
    inputs = {
        "value": Port(ndim=0, dtype="number", description="Value to map"),
        "y": Port(ndim=0, dtype="float", unit="m", description="Scan position, vertical"),
        "x": Port(ndim=0, dtype="float", unit="m", description="Scan position, horizontal"),
    }
    outputs = {
        "map": Port(ndim=2, dtype="float", description="Mean value per grid cell (NaN where no event fell)", scan=True),
        "origin": Port(ndim=1, dtype="float", unit="m", description="Position (y, x) of cell (0, 0)", scan=True),
        "step": Port(ndim=0, dtype="float", unit="m", description="Grid step", scan=True),
    }

    def partial(self, value: Any, y: Any, x: Any) -> Any:
        return np.array([[float(y), float(x), float(value)]])

    def merge(self, left: Any, right: Any) -> Any:
        return np.concatenate([left, right])

    def finish(self, total: Any) -> dict[str, Any]:
        if total is None:
            raise ValueError("no event arrived to map")
        yx, values = total[:, :2], total[:, 2]
        step = self.params.step_m
        if step is None:
            if len(yx) < 2:
                raise ValueError("one position does not make a map grid; set step_m")
            sample = yx if len(yx) <= 2000 else yx[np.random.default_rng(0).choice(len(yx), 2000, replace=False)]
            d = np.hypot(*(sample[:, None, :] - sample[None, :, :]).transpose(2, 0, 1))
            np.fill_diagonal(d, np.inf)
            step = float(np.median(d.min(axis=1)))
            if step <= 0:
                raise ValueError("scan positions coincide; set step_m")
        origin = yx.min(axis=0)
        cells = np.rint((yx - origin) / step).astype(int)
        shape = tuple(cells.max(axis=0) + 1)
        sums = np.zeros(shape)
        counts = np.zeros(shape)
        np.add.at(sums, (cells[:, 0], cells[:, 1]), values)
        np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            image = sums / counts
        return {"map": image, "origin": origin, "step": np.float64(step)}


class DpcParams(StageParams):
    """Parameters of :class:`TransmissionDpc`."""

    centre_px: tuple[PixelCoordinate, PixelCoordinate] | None = param(
        None, "Reference centre (y, x); default the middle of the frame", unit="px"
    )


class TransmissionDpc(MapStage):
    """Transmitted intensity and differential phase contrast (centre-of-mass shift) of a diffraction frame."""

    name = "transmission_dpc"
    Params = DpcParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Diffraction frame")}
    outputs = {
        "transmission": Port(ndim=0, dtype="float", unit="counts", description="Total counts (STXM)"),
        "dpc_y": Port(ndim=0, dtype="float", unit="px", description="Centre-of-mass shift, vertical"),
        "dpc_x": Port(ndim=0, dtype="float", unit="px", description="Centre-of-mass shift, horizontal"),
    }

    def process(self, frame: Any) -> dict[str, Any]:
        f = np.asarray(frame, dtype=np.float64)
        total = f.sum()
        if total <= 0:
            raise ValueError("the frame holds no counts")
        cy = (f.sum(axis=1) * np.arange(f.shape[0])).sum() / total
        cx = (f.sum(axis=0) * np.arange(f.shape[1])).sum() / total
        ry, rx = self.params.centre_px if self.params.centre_px is not None else (f.shape[0] / 2.0, f.shape[1] / 2.0)
        return {"transmission": np.float64(total), "dpc_y": np.float64(cy - ry), "dpc_x": np.float64(cx - rx)}
