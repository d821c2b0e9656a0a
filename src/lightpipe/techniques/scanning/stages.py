"""Stages of scanning maps: per-frame signals, counter ratios, flux normalisation and the DPC phase.

Per point (map stages): ``diffraction_signals`` reduces a detector frame to
its total (STXM), bright- and dark-field counts and centre of mass;
``transmission_counters`` turns two ion chambers into a transmission and an
absorption; ``flux_normalise`` divides any counter (an XBIC current, a
photodiode, a fluorescence line) by the incident flux. ``scan_map`` (or
``scan_map_live``, which shows the map while the scan runs) puts each on the
scan grid. Per scan: ``dpc_phase`` maps the centre-of-mass shifts, turns them
into phase gradients and integrates them into the phase.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.bounds import PixelCoordinate
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param
from lightpipe.stages.maps import MapParams, map_values, projections

__all__ = ["DiffractionSignals", "TransmissionCounters", "FluxNormalise", "DpcPhase", "integrate_gradients"]

#: h c in eV m.
HC_EV_M = 1.239841984e-6


class SignalsParams(StageParams):
    """Parameters of :class:`DiffractionSignals`."""

    centre_px: tuple[PixelCoordinate, PixelCoordinate] | None = param(
        None, "Where the beam hits the detector without a sample (y, x); default the scan's beam centre, else "
        "the middle of the frame", unit="px")
    bright_field_radius_px: float | None = param(
        None, "Radius of the bright-field disc around centre_px; counts outside it are the dark field. Default "
        "a quarter of the frame's smaller side", unit="px", gt=0)


class DiffractionSignals(MapStage):
    """Total, bright-field and dark-field counts and the centre of mass of a detector frame."""

    name = "diffraction_signals"
    Params = SignalsParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame")}
    outputs = {
        "total": Port(ndim=0, dtype="float", unit="counts", description="All counts (STXM transmission)"),
        "bright_field": Port(ndim=0, dtype="float", unit="counts", description="Counts inside the bright-field disc"),
        "dark_field": Port(ndim=0, dtype="float", unit="counts", description="Counts outside the bright-field disc"),
        "com_y": Port(ndim=0, dtype="float", unit="px", description="Centre of mass minus centre_px, vertical (DPC)"),
        "com_x": Port(ndim=0, dtype="float", unit="px", description="Centre of mass minus centre_px, horizontal"),
    }

    def setup(self, scan: Scan) -> None:
        meta = scan.metadata
        if self.params.centre_px is None and "beam_center_y_px" in meta and "beam_center_x_px" in meta:
            self._centre: tuple[float, float] | None = (float(meta["beam_center_y_px"]), float(meta["beam_center_x_px"]))
        else:
            self._centre = None

    def _disc(self, shape: tuple[int, int]) -> tuple[tuple[float, float], tuple[slice, slice], np.ndarray]:
        """The reference centre, the bright-field disc's bounding box and its mask there (cached per shape)."""
        cached = getattr(self, "_discs", {})
        if shape not in cached:
            ny, nx = shape
            given = self.params.centre_px or getattr(self, "_centre", None)
            cy, cx = (float(given[0]), float(given[1])) if given is not None else (ny / 2.0, nx / 2.0)
            radius = self.params.bright_field_radius_px or min(shape) / 4.0
            y0, y1 = max(int(np.floor(cy - radius)), 0), min(int(np.ceil(cy + radius)) + 1, ny)
            x0, x1 = max(int(np.floor(cx - radius)), 0), min(int(np.ceil(cx + radius)) + 1, nx)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            cached[shape] = ((cy, cx), (slice(y0, y1), slice(x0, x1)), mask)
            self._discs = cached
        return cached[shape]

    def process(self, frame: Any) -> dict[str, Any]:
        f = np.asarray(frame)
        (cy, cx), box, mask = self._disc(f.shape)
        rows, columns, bright = projections(f, (*box, mask))
        total = rows.sum()
        if not total > 0:
            raise ValueError("the frame holds no counts; was the beam off or the shutter closed?")
        com_y = rows @ np.arange(len(rows), dtype=np.float64) / total
        com_x = columns @ np.arange(len(columns), dtype=np.float64) / total
        return {"total": np.float64(total), "bright_field": np.float64(bright), "dark_field": np.float64(total - bright),
                "com_y": np.float64(com_y - cy), "com_x": np.float64(com_x - cx)}


class CountersParams(StageParams):
    """Parameters of :class:`TransmissionCounters`."""

    it_per_i0: float = param(1.0, "It / I0 with no sample in the beam (the two chambers' relative gain)", gt=0)


class TransmissionCounters(MapStage):
    """Transmission It / I0 and absorption -ln(It / I0) from the ion chambers before and after the sample."""

    name = "transmission_counters"
    Params = CountersParams
    inputs = {
        "i0": Port(ndim=0, dtype="number", description="Upstream ion chamber (incident flux)"),
        "it": Port(ndim=0, dtype="number", description="Downstream ion chamber (transmitted flux)"),
    }
    outputs = {
        "transmission": Port(ndim=0, dtype="float", description="Transmitted fraction It / I0 / it_per_i0"),
        "absorption": Port(ndim=0, dtype="float", description="-ln(transmission) (optical density)"),
    }

    def process(self, i0: Any, it: Any) -> dict[str, Any]:
        incident, transmitted = float(i0), float(it)
        if not incident > 0:
            raise ValueError(f"I0 reads {incident:g}: no incident flux (beam off?); the point is kept aside")
        if not transmitted > 0:
            raise ValueError(f"It reads {transmitted:g}: nothing transmitted, the absorption is unbounded")
        t = transmitted / incident / self.params.it_per_i0
        return {"transmission": np.float64(t), "absorption": np.float64(-np.log(t))}


class FluxParams(StageParams):
    """Parameters of :class:`FluxNormalise`."""

    i0_reference: float | None = param(None, "Flux the value is scaled to; default the scan's (metadata "
                                       "'i0_reference'), else 1 (the value per flux count)", gt=0)


class FluxNormalise(MapStage):
    """A counter (XBIC current, photodiode, fluorescence) per incident flux, scaled to a reference flux."""

    name = "flux_normalise"
    Params = FluxParams
    inputs = {
        "value": Port(ndim=0, dtype="number", description="Counter reading of this point"),
        "i0": Port(ndim=0, dtype="number", description="Incident flux of this point"),
    }
    outputs = {"value": Port(ndim=0, dtype="float", description="value * i0_reference / i0")}

    def setup(self, scan: Scan) -> None:
        given = self.params.i0_reference or scan.metadata.get("i0_reference")
        self._reference = float(given) if isinstance(given, (int, float, np.number)) else 1.0

    def process(self, value: Any, i0: Any) -> dict[str, Any]:
        incident = float(i0)
        if not incident > 0:
            raise ValueError(f"I0 reads {incident:g}: no incident flux (beam off?); the point is kept aside")
        return {"value": np.float64(float(value) * getattr(self, "_reference", 1.0) / incident)}


def integrate_gradients(gradient_y: np.ndarray, gradient_x: np.ndarray, step_y: float, step_x: float) -> np.ndarray:
    """The function whose gradients are given, by Fourier integration (Frankot-Chellappa), zero mean.

    The maps are mirrored into a periodic image four times their size (the
    function even, each gradient odd along its own axis), so a map whose edges
    do not match is integrated without the wrap-around error of a plain FFT.
    NaN cells (no scan point) count as zero gradient.

    Parameters
    ----------
    gradient_y, gradient_x
        d/dy and d/dx on a regular grid, ``(rows, columns)``.
    step_y, step_x
        Grid steps, in the unit the gradients are per.
    """
    gy, gx = np.nan_to_num(gradient_y), np.nan_to_num(gradient_x)
    ny, nx = gy.shape
    ey = np.block([[gy, gy[:, ::-1]], [-gy[::-1, :], -gy[::-1, ::-1]]])
    ex = np.block([[gx, -gx[:, ::-1]], [gx[::-1, :], -gx[::-1, ::-1]]])
    ky = 2 * np.pi * np.fft.fftfreq(2 * ny, step_y)[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(2 * nx, step_x)[None, :]
    k2 = ky**2 + kx**2
    k2[0, 0] = 1.0
    spectrum = -1j * (ky * np.fft.fft2(ey) + kx * np.fft.fft2(ex)) / k2
    spectrum[0, 0] = 0.0
    phase = np.real(np.fft.ifft2(spectrum))[:ny, :nx]
    return phase - phase.mean()


class DpcParams(MapParams):
    """Parameters of :class:`DpcPhase`."""

    distance_m: float | None = param(None, "Sample-detector distance; default the scan's", unit="m", gt=0)
    pixel_size_m: float | None = param(None, "Detector pixel size; default the scan's", unit="m", gt=0)
    energy_ev: float | None = param(None, "Photon energy; default the scan's", unit="eV", gt=0)


class DpcPhase(ReduceStage[Any]):
    """Differential phase contrast: phase gradients from the centre-of-mass shifts, integrated into the phase."""

    name = "dpc_phase"
    Params = DpcParams
    inputs = {
        "com_y": Port(ndim=0, dtype="float", unit="px", description="Centre-of-mass shift on the detector, vertical"),
        "com_x": Port(ndim=0, dtype="float", unit="px", description="Centre-of-mass shift, horizontal"),
        "y": Port(ndim=0, dtype="number", unit="m", description="Scan position, vertical"),
        "x": Port(ndim=0, dtype="number", unit="m", description="Scan position, horizontal"),
    }
    outputs = {
        "phase": Port(ndim=2, dtype="float", unit="rad", axes=("y", "x"), main=True, scan=True,
                      description="Phase shift of the sample, integrated from its gradients (zero mean)"),
        "gradient_y": Port(ndim=2, dtype="float", unit="rad/m", axes=("y", "x"), scan=True,
                           description="d phase / dy"),
        "gradient_x": Port(ndim=2, dtype="float", unit="rad/m", axes=("y", "x"), scan=True,
                           description="d phase / dx"),
        "y": Port(ndim=1, dtype="float", unit="m", description="Vertical position of each map row", scan=True),
        "x": Port(ndim=1, dtype="float", unit="m", description="Horizontal position of each map column", scan=True),
        "regridded": Port(ndim=0, dtype="bool", description="True when positions were moved onto the grid",
                          scan=True),
    }

    def setup(self, scan: Scan) -> None:
        meta, p = scan.metadata, self.params
        distance = p.distance_m or meta.get("distance_m")
        pixel = p.pixel_size_m or meta.get("x_pixel_size_m")
        energy = p.energy_ev or meta.get("energy_ev")
        if energy is None and meta.get("wavelength_a"):
            energy = HC_EV_M * 1e10 / float(meta["wavelength_a"])
        self._scale: float | None = None
        if distance and pixel and energy:  # rad/m of phase gradient per pixel of shift: 2 pi p / (lambda L)
            self._scale = 2 * np.pi * float(pixel) / (HC_EV_M / float(energy) * float(distance))

    def partial(self, com_y: Any, com_x: Any, y: Any, x: Any) -> Any:
        return np.array([[float(y), float(x), float(com_y), float(com_x)]])

    def merge(self, left: Any, right: Any) -> Any:
        return np.concatenate([left, right])

    def finish(self, total: Any) -> dict[str, Any]:
        scale = getattr(self, "_scale", None)
        if scale is None:
            raise ValueError("the phase needs the distance, pixel size and energy: set distance_m, pixel_size_m and "
                             "energy_ev, or read a scan whose metadata gives them")
        if total is None:
            raise ValueError("no point arrived; check that the events carry the centre of mass and the positions")
        shift_y, shift_x = map_values(total[:, :2], total[:, 2:], self.params)
        gy, gx = shift_y["map"] * scale, shift_x["map"] * scale
        step_y = float(np.median(np.diff(shift_y["y"]))) if len(shift_y["y"]) > 1 else 1.0
        step_x = float(np.median(np.diff(shift_y["x"]))) if len(shift_y["x"]) > 1 else 1.0
        phase = integrate_gradients(gy, gx, step_y, step_x)
        phase[np.isnan(gy)] = np.nan
        return {"phase": phase, "gradient_y": gy, "gradient_x": gx, "y": shift_y["y"], "x": shift_y["x"],
                "regridded": shift_y["regridded"]}
