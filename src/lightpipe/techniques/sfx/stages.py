"""Serial crystallography stages: Bragg peak finding and hits, powder sums with the strongest hits, the live hit rate.

* ``peakfinder8`` (map): the peaks of each frame
  (:mod:`~lightpipe.techniques.sfx.peakfinder`), padded to ``max_peaks``
  entries so every event's lists have one shape, and the ``hit`` flag:
  ``n_peaks >= min_peaks``.
* ``hit_powder`` (reduce): the powder sum of the hits (the main result, a
  virtual powder pattern of the crystals) and of all frames, the hit count,
  and the ``keep`` strongest hits (most peaks, then most peak intensity, then
  earliest) with their indices.
* ``hit_rate`` (solver): hits over frames so far and over the last
  ``window`` frames, after every chunk: what a live view, a progress display
  and the results table show while the scan runs.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import field_validator

from lightpipe.core.bounds import MAX_COUNT, PathText
from lightpipe.core.errors import LightpipeError
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, SolverStage, StageParams, param
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.sfx.geometry import DetectorGeometry, from_metadata, read_geometry, read_mask
from lightpipe.techniques.sfx.peakfinder import PeakLayout, PeakSettings, find_peaks

__all__ = ["HitPowder", "HitRate", "PeakFinder8", "valid_range"]

#: Most layouts (radius rings, mask) a process keeps: an EIGER 16M's is about 300 MB.
KEEP_LAYOUTS = 4
_LAYOUTS: OrderedDict[str, PeakLayout] = OrderedDict()
_LAYOUT_LOCK = threading.Lock()


def valid_range(dtype: np.dtype, min_valid: float | None, max_valid: float | None) -> tuple[float | None, float | None]:
    """The values a pixel may hold: integer frames default to 0 (PILATUS writes -1 in gaps, -2 in bad pixels) and,
    unsigned, to the dtype's largest value minus one (DECTRIS detectors flag gaps and bad pixels with the largest)."""
    low = min_valid if min_valid is not None else (0.0 if dtype.kind in "iu" else None)
    high = max_valid if max_valid is not None else (float(np.iinfo(dtype).max - 1) if dtype.kind == "u" else None)
    return low, high


class PeakFinderParams(StageParams):
    """Parameters of :class:`PeakFinder8`."""

    geometry: PathText | None = param(None, "CrystFEL .geom or pyFAI .poni file; default the scan's metadata (the "
                                      "NeXus file's beam centre, a simulated detector's modules)")
    mask: PathText | None = param(None, "Bad-pixel mask, non-zero = left out: file.h5::/dataset (a NeXus "
                                  "pixel_mask) or a .npy file; added to the geometry's gaps")
    min_res_px: float = param(0.0, "Inner resolution limit: pixels nearer the beam are left out", unit="px", ge=0,
                              le=1e6)
    max_res_px: float | None = param(None, "Outer resolution limit: pixels further from the beam are left out; "
                                     "default none", unit="px", ge=0, le=1e6)
    pixel_snr: float = param(3.0, "A pixel is a candidate above its ring's mean + pixel_snr ring sigmas", gt=0, le=1e3)
    min_snr: float = param(4.0, "Least integrated signal-to-noise ratio of a peak (over its pixels and a 1-pixel "
                           "ring, against the local background's noise)", ge=0, le=1e6)
    adc_threshold: float = param(0.0, "Least height of a candidate pixel above its ring's mean", unit="counts", ge=0,
                                 le=1e12)
    min_pixels: int = param(2, "Fewest pixels of a peak", ge=1, le=MAX_COUNT)
    max_pixels: int = param(200, "Most pixels of a peak (larger: a streak or a powder ring)", ge=1, le=MAX_COUNT)
    local_bg_radius: int = param(3, "Half-width of the local background window", unit="px", ge=1, le=100)
    iterations: int = param(5, "Most rounds of the ring background's outlier rejection", ge=1, le=100)
    min_separation_px: float = param(3.0, "Local maxima of one blob this far apart are two peaks; 0: never split",
                                     unit="px", ge=0, le=1e3)
    max_peaks: int = param(2048, "Length of the per-event peak lists (CrystFEL's and Cheetah's 2048); the "
                           "strongest are kept", ge=1, le=100_000)
    min_peaks: int = param(10, "A frame with at least this many peaks is a hit", ge=0, le=100_000)
    min_valid: float | None = param(None, "Pixels below this are left out of their frame; default 0 for integer "
                                    "frames, none for float", unit="counts", ge=-1e12, le=1e12)
    max_valid: float | None = param(None, "Pixels above this are left out of their frame; default the largest value "
                                    "minus one for unsigned frames (DECTRIS flags)", unit="counts", ge=-1e12, le=1e12)
    max_bad_fraction: float = param(0.5, "A frame with more of its valid pixels NaN or out of range fails", ge=0,
                                    le=1)

    @field_validator("geometry")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None:
            try:  # an unknown keyword or a missing file is refused when the pipeline loads, naming file and line
                read_geometry(value)
            except LightpipeError as exc:
                raise ValueError(str(exc)) from None
        return value

    def settings(self) -> PeakSettings:
        """The peak finding settings these parameters give."""
        return PeakSettings(self.pixel_snr, self.min_snr, self.adc_threshold, self.min_pixels, self.max_pixels,
                            self.local_bg_radius, self.iterations, self.min_separation_px, self.max_peaks)


def _padded(values: np.ndarray, length: int, fill: float, dtype: str) -> np.ndarray:
    out = np.full(length, fill, dtype)
    out[: len(values)] = values[:length]
    return out


class PeakFinder8(MapStage):
    """Find the Bragg peaks of each frame (peakfinder8 class) and flag the hits."""

    name = "peakfinder8"
    Params = PeakFinderParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame")}
    outputs = {
        "n_peaks": Port(ndim=0, dtype="int32", description="Peaks found"),
        "hit": Port(ndim=0, dtype="bool", description="At least min_peaks peaks"),
        "peak_x_px": Port(ndim=1, dtype="float32", unit="px", description="Peak centroid along fs (x), slab pixels; NaN "
                          "past n_peaks"),
        "peak_y_px": Port(ndim=1, dtype="float32", unit="px", description="Peak centroid along ss (y), slab pixels; NaN "
                          "past n_peaks"),
        "peak_intensity": Port(ndim=1, dtype="float32", unit="counts", description="Integrated intensity above the "
                               "local background; NaN past n_peaks"),
        "peak_snr": Port(ndim=1, dtype="float32", description="Integrated signal-to-noise ratio; NaN past n_peaks"),
        "peak_pixels": Port(ndim=1, dtype="int32", description="Pixels of each peak; 0 past n_peaks"),
        "bad_pixels": Port(ndim=0, dtype="int64", description="Pixels left out of this frame for their value"),
        "event_index": Port(ndim=0, dtype="int64", description="Acquisition index of the event, for hit_powder to "
                            "name the strongest hits"),
    }
    frame_outputs: dict[str, str] = {}
    wants_index = True

    def __init__(self, params: StageParams | None = None) -> None:
        super().__init__(params)
        self.metadata: dict[str, Any] = {}

    def setup(self, scan: Scan) -> None:
        self.metadata = dict(scan.metadata)

    def _layout(self, shape: tuple[int, int]) -> PeakLayout:
        """The rings and mask of this geometry for frames of ``shape``, built once per process."""
        p = self.params
        meta = self.metadata
        geometry_keys = ("beam_center_x_px", "beam_center_y_px", "x_pixel_size_m", "module_shape_px", "module_gap_px")
        key = json.dumps([list(shape), p.geometry, p.mask, p.min_res_px, p.max_res_px,
                          None if p.geometry else [meta.get(k) for k in geometry_keys]], default=str)
        with _LAYOUT_LOCK:
            if key in _LAYOUTS:
                _LAYOUTS.move_to_end(key)
                return _LAYOUTS[key]
        geometry: DetectorGeometry = read_geometry(p.geometry) if p.geometry else from_metadata(meta, shape)
        geometry.check_shape(shape)
        masked = geometry.mask()
        if p.mask is not None:
            masked = masked | read_mask(p.mask, shape)
        layout = PeakLayout(geometry.radius_px(), masked, geometry.panel_index(), p.min_res_px,
                            np.inf if p.max_res_px is None else p.max_res_px)
        with _LAYOUT_LOCK:
            _LAYOUTS[key] = layout
            while len(_LAYOUTS) > KEEP_LAYOUTS:
                _LAYOUTS.popitem(last=False)
        return layout

    def process(self, frame: Any, index: int = 0) -> dict[str, Any]:
        p = self.params
        frame = np.asarray(to_numpy(frame))
        layout = self._layout(frame.shape)
        low, high = valid_range(frame.dtype, p.min_valid, p.max_valid)
        try:
            peaks = find_peaks(frame, layout, p.settings(), low=low, high=high, max_bad_fraction=p.max_bad_fraction)
        except ValueError as exc:
            where = self.metadata.get("source_file")
            raise ValueError(f"{exc}{f' (in {where})' if where else ''}") from None
        n, length = len(peaks), p.max_peaks
        return {
            "n_peaks": np.int32(n),
            "hit": np.bool_(n >= p.min_peaks),
            "peak_x_px": _padded(peaks.x, length, np.nan, "float32"),
            "peak_y_px": _padded(peaks.y, length, np.nan, "float32"),
            "peak_intensity": _padded(peaks.intensity, length, np.nan, "float32"),
            "peak_snr": _padded(peaks.snr, length, np.nan, "float32"),
            "peak_pixels": _padded(peaks.pixels, length, 0, "int32"),
            "bad_pixels": np.int64(peaks.bad_pixels),
            "event_index": np.int64(index),
        }


class HitPowderParams(StageParams):
    """Parameters of :class:`HitPowder`."""

    keep: int = param(10, "Strongest hits kept as frames", ge=0, le=10_000)
    min_valid: float | None = param(None, "Pixels below this add 0; default 0 for integer frames", unit="counts",
                                    ge=-1e12, le=1e12)
    max_valid: float | None = param(None, "Pixels above this add 0; default the largest value minus one for "
                                    "unsigned frames (DECTRIS flags)", unit="counts", ge=-1e12, le=1e12)


@dataclass
class Powder:
    """Partial result: sums of the hits and of all frames, counts, and the strongest hits so far."""

    hits_sum: np.ndarray | None
    all_sum: np.ndarray
    frames: int
    hits: int
    strongest: list[tuple[tuple[int, float, int], np.ndarray]]  # ((n_peaks, intensity, -index), frame)


class HitPowder(ReduceStage[Powder]):
    """Powder sums of the hits and of all frames, the hit count and the strongest hits."""

    name = "hit_powder"
    Params = HitPowderParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame"),
        "hit": Port(ndim=0, dtype="bool", description="The frame is a hit"),
        "n_peaks": Port(ndim=0, dtype="int", description="Peaks of the frame"),
        "peak_intensity": Port(ndim=1, dtype="float", unit="counts", description="Intensity of each peak (NaN: none)"),
        "event_index": Port(ndim=0, dtype="int", description="Acquisition index of the event"),
    }
    outputs = {
        "powder_hits": Port(ndim=2, dtype="float64", unit="counts", description="Sum of the hits", scan=True,
                            main=True),
        "powder_all": Port(ndim=2, dtype="float64", unit="counts", description="Sum of all frames", scan=True),
        "hits": Port(ndim=0, dtype="int64", description="Hits", scan=True),
        "frames": Port(ndim=0, dtype="int64", description="Frames", scan=True),
        "strongest": Port(ndim=3, dtype="number", unit="counts", description="The strongest hits' frames", scan=True),
        "strongest_index": Port(ndim=1, dtype="int64", description="Acquisition index of each strongest hit",
                                scan=True),
        "strongest_n_peaks": Port(ndim=1, dtype="int64", description="Peaks of each strongest hit", scan=True),
    }
    frame_outputs: dict[str, str] = {}

    def partial(self, frame: Any, hit: Any, n_peaks: Any, peak_intensity: Any, event_index: Any) -> Powder:
        frame = np.asarray(to_numpy(frame))
        low, high = valid_range(frame.dtype, self.params.min_valid, self.params.max_valid)
        values = frame.astype(np.float64)
        bad = ~np.isfinite(values)
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high
        values[bad] = 0.0
        is_hit = bool(hit)
        strongest = []
        if is_hit and self.params.keep > 0:
            intensity = float(np.nansum(np.asarray(to_numpy(peak_intensity), np.float64)))
            strongest = [((int(n_peaks), intensity, -int(event_index)), frame.copy())]
        return Powder(values.copy() if is_hit else None, values, 1, int(is_hit), strongest)

    def merge(self, left: Powder, right: Powder) -> Powder:
        if left.hits_sum is None:
            hits_sum = right.hits_sum
        elif right.hits_sum is None:
            hits_sum = left.hits_sum
        else:
            hits_sum = left.hits_sum + right.hits_sum
        # ranked by a key that ties only for the same event: the same hits whatever the merge order
        strongest = sorted(left.strongest + right.strongest, key=lambda item: item[0], reverse=True)[: self.params.keep]
        return Powder(hits_sum, left.all_sum + right.all_sum, left.frames + right.frames, left.hits + right.hits,
                      strongest)

    def finish(self, total: Powder | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no frame reached hit_powder; check its stream and that peakfinder8 ran")
        shape = total.all_sum.shape
        frames = [frame for _, frame in total.strongest]
        dtype = frames[0].dtype if frames else np.float32
        return {
            "powder_hits": total.hits_sum if total.hits_sum is not None else np.zeros(shape),
            "powder_all": total.all_sum,
            "hits": np.int64(total.hits),
            "frames": np.int64(total.frames),
            "strongest": np.stack(frames) if frames else np.zeros((0, *shape), dtype),
            "strongest_index": np.array([-key[2] for key, _ in total.strongest], np.int64),
            "strongest_n_peaks": np.array([key[0] for key, _ in total.strongest], np.int64),
        }


class HitRateParams(StageParams):
    """Parameters of :class:`HitRate`."""

    window: int = param(100, "Frames of the recent hit rate (the last ones fed)", ge=1, le=MAX_COUNT)


class HitRate(SolverStage):
    """The hit rate while the scan runs: over all frames so far and over the last frames."""

    name = "hit_rate"
    Params = HitRateParams
    inputs = {"hit": Port(ndim=0, dtype="bool", description="The frame is a hit")}
    outputs = {
        "hit_rate": Port(ndim=0, dtype="float64", description="Hits over frames", scan=True),
        "recent_hit_rate": Port(ndim=0, dtype="float64", description="Hits over the last `window` frames", scan=True),
        "hits": Port(ndim=0, dtype="int64", description="Hits", scan=True),
        "frames": Port(ndim=0, dtype="int64", description="Frames", scan=True),
    }

    def __init__(self, params: StageParams | None = None) -> None:
        super().__init__(params)
        self.flags: list[bool] = []

    def setup(self, scan: Scan) -> None:
        self.flags = []

    def feed(self, index: int, hit: Any) -> None:
        self.flags.append(bool(hit))

    def update(self) -> dict[str, Any] | None:
        return self.finish() if self.flags else None

    def finish(self) -> dict[str, Any]:
        flags = self.flags
        hits, frames = sum(flags), len(flags)
        recent = flags[-self.params.window :]
        return {
            "hit_rate": np.float64(hits / frames if frames else 0.0),
            "recent_hit_rate": np.float64(sum(recent) / len(recent) if recent else 0.0),
            "hits": np.int64(hits),
            "frames": np.int64(frames),
        }
