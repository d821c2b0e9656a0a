"""Pre-processing of ptychography diffraction frames, the steps of Nanosurveyor's section 4.1.

Each step is a stage of its own. With the generic stages they make the whole
chain (numbers are the paper's steps)::

    1 diffraction_centre   centre of mass of the summed frames (or the beam centre of the scan)
    2 dark_statistics      mean, noise and bad pixels of the darks; dark_correction subtracts them
    3 overscan_offset      per-row offset from overscan columns, smoothed by a polynomial in readout time
    4 background_filter    background pixels found by threshold ...
    5                      ... whose periodic readout noise is found in Fourier space and subtracted
    6 threshold            values below one photon set to 0
    7 beamstop_correction  pixels behind the beamstop divided by its transmission
    8 centred_crop         a window around the centre
    9 fft_downsample       Fourier cropping to the reconstruction's frame size

The centre used by steps 7 and 8 is, in order: the stage's ``centre_px``
parameter, the scan's beam centre (``beam_center_y_px``, ``beam_center_x_px``:
a detector header or NeXus file gives it), or the middle of the frame. Run
``diffraction_centre`` on a first scan to measure it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.bounds import MAX_FRAME_PX, FrameShape, PixelCoordinate, PixelRange, box_problem
from lightpipe.core.event import Scan
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param
from lightpipe.core.xp import array_namespace

_FRAME = Port(ndim=2, dtype="number", unit="counts", description="Diffraction frame")
_FRAME_OUT = Port(ndim=2, dtype="float32", unit="counts", description="Corrected frame")


def scan_centre(scan: Scan, shape: tuple[int, int], centre_px: tuple[float, float] | None) -> tuple[float, float]:
    """The diffraction centre ``(y, x)`` in pixels: the parameter, the scan's beam centre, or the frame's middle."""
    if centre_px is not None:
        return float(centre_px[0]), float(centre_px[1])
    y, x = scan.metadata.get("beam_center_y_px"), scan.metadata.get("beam_center_x_px")
    if y is not None and x is not None:
        return float(y), float(x)
    return shape[0] / 2.0, shape[1] / 2.0


class CentreParams(StageParams):
    """Parameters of :class:`DiffractionCentre`."""

    min_fraction: float = param(0.01, "Pixels below this fraction of the summed frame's maximum are ignored", ge=0, lt=1)


class DiffractionCentre(ReduceStage[Any]):
    """Centre of mass of the summed diffraction frames (Nanosurveyor step 1)."""

    name = "diffraction_centre"
    Params = CentreParams
    inputs = {"frame": _FRAME}
    outputs = {
        "centre": Port(ndim=1, dtype="float", unit="px", description="Centre (y, x) of the diffraction", scan=True),
    }

    def partial(self, frame: Any) -> Any:
        xp = array_namespace(frame)
        return xp.astype(frame, xp.float64)

    def merge(self, left: Any, right: Any) -> Any:
        return left + right

    def finish(self, total: Any) -> dict[str, Any]:
        if total is None:
            raise ValueError("no diffraction frame arrived to find the centre of")
        total = np.asarray(total)
        weights = np.where(total >= self.params.min_fraction * total.max(), total, 0.0)
        if weights.sum() <= 0:
            raise ValueError("the summed frames hold no signal; the centre cannot be found")
        y, x = np.indices(total.shape)
        return {"centre": np.array([(weights * y).sum(), (weights * x).sum()]) / weights.sum()}


class OverscanParams(StageParams):
    """Parameters of :class:`OverscanOffset`."""

    columns: PixelRange = param(description="First and one-past-last overscan column (no light reaches them)",
                                unit="px")
    order: int = param(2, "Order of the polynomial in readout time (row) fitted to the per-row offsets", ge=0, le=3)

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the overscan columns do not fit a frame of ``shape``, or ``None``."""
        return box_problem("columns", self.columns, shape[1])


class OverscanOffset(MapStage):
    """Subtract the readout offset measured in overscan columns, smoothed over the readout sequence (step 3)."""

    name = "overscan_offset"
    Params = OverscanParams
    inputs = {"frame": _FRAME}
    outputs = {"frame": _FRAME_OUT}

    def process(self, frame: Any) -> dict[str, Any]:
        a, b = self.params.columns
        if not 0 <= a < b <= frame.shape[1]:
            raise ValueError(f"overscan columns {a}:{b} are outside the {frame.shape[1]} columns of the frame")
        f = np.asarray(frame, dtype=np.float32)
        rows = np.arange(f.shape[0])
        offsets = f[:, a:b].mean(axis=1)
        fit = np.polynomial.Polynomial.fit(rows, offsets, self.params.order)(rows)
        return {"frame": (f - fit[:, None].astype(np.float32))}


class BackgroundParams(StageParams):
    """Parameters of :class:`BackgroundFilter`."""

    threshold: float = param(3.0, "Pixels below this are background (no photon)", unit="counts", ge=-1e12, le=1e12)
    channels: int = param(1, "Readout channels: vertical stripes of equal width read in parallel", ge=1,
                          le=MAX_FRAME_PX)
    spike_factor: float = param(
        5.0, "Fourier components of the background stronger than this many times their median are noise", gt=1,
        le=1e12,
    )

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the readout channels do not fit a frame of ``shape``, or ``None``."""
        if self.channels > shape[1]:
            return f"channels={self.channels} is more than the frame's {shape[1]} columns"
        return None


class BackgroundFilter(MapStage):
    """Remove periodic readout noise: find the background by threshold, its spikes in Fourier space (steps 4, 5).

    Rows are taken as the readout sequence of each channel. The background of a
    row is the mean of its pixels below ``threshold``; the Fourier components of
    that sequence that stand out (spikes: pickup at a fixed frequency) are kept,
    transformed back and subtracted from every pixel of the row. The zero
    frequency is left alone: a constant offset is the dark's or the overscan's job.
    """

    name = "background_filter"
    Params = BackgroundParams
    inputs = {"frame": _FRAME}
    outputs = {"frame": _FRAME_OUT}

    def process(self, frame: Any) -> dict[str, Any]:
        f = np.asarray(frame, dtype=np.float32).copy()
        ny, nx = f.shape
        width = nx // self.params.channels
        if width == 0:
            raise ValueError(f"{self.params.channels} readout channels do not fit {nx} columns")
        for c in range(self.params.channels):
            block = f[:, c * width : (c + 1) * width if c < self.params.channels - 1 else nx]
            background = np.where(block < self.params.threshold, block, np.nan)
            counts = np.isfinite(background).sum(axis=1)
            sequence = np.where(counts > 0, np.nansum(background, axis=1) / np.maximum(counts, 1), 0.0)
            spectrum = np.fft.rfft(sequence - sequence.mean())
            power = np.abs(spectrum)
            spikes = power > self.params.spike_factor * max(float(np.median(power[1:])) if power.size > 1 else 0.0, 1e-12)
            spikes[0] = False
            noise = np.fft.irfft(np.where(spikes, spectrum, 0), n=ny)
            block -= noise[:, None].astype(np.float32)
        return {"frame": f}


class BeamstopParams(StageParams):
    """Parameters of :class:`BeamstopCorrection`."""

    radius_px: float = param(4.0, "Beamstop radius around the centre", unit="px", ge=0, le=MAX_FRAME_PX)
    transmission: float = param(0.01, "Intensity transmission of the beamstop", gt=0, le=1)
    centre_px: tuple[PixelCoordinate, PixelCoordinate] | None = param(
        None, "Centre (y, x); default the scan's beam centre", unit="px")


class BeamstopCorrection(MapStage):
    """Divide the pixels behind a semi-transparent beamstop by its transmission (step 7)."""

    name = "beamstop_correction"
    Params = BeamstopParams
    inputs = {"frame": _FRAME}
    outputs = {"frame": _FRAME_OUT}

    def setup(self, scan: Scan) -> None:
        self._scan = scan
        self._gain: tuple[tuple[int, ...], Any] | None = None

    def process(self, frame: Any) -> dict[str, Any]:
        xp = array_namespace(frame)
        if self._gain is None or self._gain[0] != tuple(frame.shape):
            cy, cx = scan_centre(self._scan, frame.shape, self.params.centre_px)
            y, x = np.indices(frame.shape)
            inside = np.hypot(y - cy, x - cx) <= self.params.radius_px
            self._gain = (tuple(frame.shape), xp.asarray(np.where(inside, 1.0 / self.params.transmission, 1.0)
                                                         .astype(np.float32)))
        return {"frame": xp.astype(frame, xp.float32) * self._gain[1]}


class CropParams(StageParams):
    """Parameters of :class:`CentredCrop`."""

    shape: FrameShape = param(description="Window (ny, nx) kept around the centre", unit="px")
    centre_px: tuple[PixelCoordinate, PixelCoordinate] | None = param(
        None, "Centre (y, x); default the scan's beam centre", unit="px")

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the window does not fit a frame of ``shape``, or ``None`` (the centre is known only per scan)."""
        if self.shape[0] > shape[0] or self.shape[1] > shape[1]:
            return (f"shape={list(self.shape)} is larger than the {shape[0]} x {shape[1]} frame; give a window of "
                    f"at most [{shape[0]}, {shape[1]}]")
        return None


class CentredCrop(MapStage):
    """Keep a window around the diffraction centre, the centre landing on pixel (ny // 2, nx // 2) (step 8)."""

    name = "centred_crop"
    Params = CropParams
    inputs = {"frame": _FRAME}
    outputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Centred window")}

    @classmethod
    def frame_geometry(cls, params: CropParams, geometry: FrameGeometry) -> FrameGeometry:
        """A window of ``shape`` pixels: the pixels keep their size."""
        return geometry.cropped(params.shape)

    def setup(self, scan: Scan) -> None:
        self._scan = scan

    def process(self, frame: Any) -> dict[str, Any]:
        ny, nx = self.params.shape
        cy, cx = scan_centre(self._scan, frame.shape, self.params.centre_px)
        y0, x0 = int(round(cy)) - ny // 2, int(round(cx)) - nx // 2
        if y0 < 0 or x0 < 0 or y0 + ny > frame.shape[0] or x0 + nx > frame.shape[1]:
            raise ValueError(f"a {ny}x{nx} window around ({cy:.1f}, {cx:.1f}) leaves the {frame.shape} frame; "
                             "choose a smaller shape or check the centre")
        return {"frame": frame[y0 : y0 + ny, x0 : x0 + nx]}
