"""Reduce stages over frames: dark and flat statistics with bad pixels, and frame sums.

Sums are kept in float64; for integer detector counts every partial sum is
exact, so the results are identical whatever the merge order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import model_validator

from lightpipe.core.ports import Port
from lightpipe.core.stage import ReduceStage, StageParams, param
from lightpipe.core.xp import array_namespace


@dataclass
class Moments:
    """Count, sum and sum of squares of frames, and the per-pixel extremes."""

    count: int
    total: Any
    squares: Any
    low: Any
    high: Any


class _FrameMoments(ReduceStage[Moments]):
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Frame to accumulate")}

    def partial(self, frame: Any) -> Moments:
        xp = array_namespace(frame)
        f = xp.astype(frame, xp.float64)
        return Moments(1, f, f * f, frame, frame)

    def merge(self, left: Moments, right: Moments) -> Moments:
        xp = array_namespace(left.total)
        return Moments(
            left.count + right.count,
            left.total + right.total,
            left.squares + right.squares,
            xp.minimum(left.low, right.low),
            xp.maximum(left.high, right.high),
        )

    @staticmethod
    def _mean_std(m: Moments) -> tuple[Any, Any]:
        xp = array_namespace(m.total)
        mean = m.total / m.count
        var = xp.clip(m.squares / m.count - mean * mean, 0, None) * (m.count / max(m.count - 1, 1))
        return mean, xp.sqrt(var)


class DarkParams(StageParams):
    """Parameters of :class:`DarkStatistics`."""

    max_std: float = param(50.0, "Pixels noisier than this are bad", unit="counts", gt=0, le=1e12)
    min_mean: float = param(1.0, "Pixels whose dark mean is below this are dead", unit="counts", ge=0, le=1e12)
    saturation: float = param(65535.0, "Pixels that reach this in any dark are hot", unit="counts", gt=0, le=1e12)


class DarkStatistics(_FrameMoments):
    """Mean and standard deviation of dark frames, and a bad-pixel mask (dead, hot, noisy)."""

    name = "dark_statistics"
    Params = DarkParams
    outputs = {
        "mean": Port(ndim=2, dtype="float", unit="counts", description="Mean dark frame", scan=True),
        "std": Port(ndim=2, dtype="float", unit="counts", description="Per-pixel standard deviation", scan=True),
        "mask": Port(ndim=2, dtype="bool", description="True where the pixel is bad", scan=True),
        "count": Port(ndim=0, dtype="int", description="Dark frames used", scan=True),
    }

    def finish(self, total: Moments | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no dark frame arrived; record darks or remove the dark stages")
        p = self.params
        mean, std = self._mean_std(total)
        mask = (std > p.max_std) | (mean < p.min_mean) | (total.high >= p.saturation)
        return {"mean": mean.astype(np.float32), "std": std.astype(np.float32), "mask": mask,
                "count": np.int64(total.count)}


class FlatParams(StageParams):
    """Parameters of :class:`FlatStatistics`."""

    low: float = param(0.5, "Pixels whose normalised flat is below this are bad", ge=0, le=1e6)
    high: float = param(1.5, "Pixels whose normalised flat is above this are bad", gt=0, le=1e6)

    @model_validator(mode="after")
    def _check_band(self) -> FlatParams:
        if self.low >= self.high:
            raise ValueError(f"low={self.low} is not below high={self.high}; the band of good pixels is "
                             "[low, high], e.g. low: 0.5, high: 1.5")
        return self


class FlatStatistics(_FrameMoments):
    """Mean flat field normalised to 1, and a mask of pixels outside the given band."""

    name = "flat_statistics"
    Params = FlatParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Dark-corrected flat frame")}
    outputs = {
        "flat": Port(ndim=2, dtype="float", description="Flat field normalised to a median of 1", scan=True),
        "mask": Port(ndim=2, dtype="bool", description="True where the flat is out of band", scan=True),
    }

    def finish(self, total: Moments | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no flat frame arrived; record flats or remove the flat stages")
        mean, _ = self._mean_std(total)
        positive = mean[mean > 0]
        norm = mean / (np.median(positive) if positive.size else 1.0)
        mask = (norm < self.params.low) | (norm > self.params.high)
        return {"flat": np.where(mask, 1.0, norm).astype(np.float32), "mask": mask}


class SumFrames(_FrameMoments):
    """Sum and mean of all frames of a scan (a powder sum)."""

    name = "sum_frames"
    inputs = {"frame": Port(ndim=2, dtype="number", description="Frame to add")}
    outputs = {
        "sum": Port(ndim=2, dtype="float", unit="counts", description="Sum of the frames", scan=True, main=True),
        "mean": Port(ndim=2, dtype="float", unit="counts", description="Mean of the frames", scan=True),
        "count": Port(ndim=0, dtype="int", description="Frames added", scan=True),
    }

    def partial(self, frame: Any) -> Moments:
        xp = array_namespace(frame)
        f = xp.astype(frame, xp.float64)
        return Moments(1, f, None, None, None)

    def merge(self, left: Moments, right: Moments) -> Moments:
        return Moments(left.count + right.count, left.total + right.total, None, None, None)

    def finish(self, total: Moments | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no frame arrived to sum")
        return {"sum": total.total, "mean": total.total / total.count, "count": np.int64(total.count)}
