"""A scanning-probe scan of a known object: detector frames and counters with the truth to compare maps with.

The object has a transmission ``T(y, x)`` (a disc that absorbs) and a phase
``phi(y, x)`` (a smooth bump): the beam through a point is attenuated by ``T``
and deflected by the phase gradient, by ``lambda / (2 pi) * grad(phi)``
radians, so its spot on the detector, ``distance_m`` downstream, moves by that
angle times the distance, in pixels. A scattering patch sends part of the
beam outside the bright-field disc (the dark field). Each frame is Poisson
counts of a Gaussian spot of ``photons * I0 / i0_reference * T`` counts at the
shifted centre, plus the scattered ring.

Counters, one value per point: ``i0`` (ion chamber upstream, drifting slowly
with the ring current), ``it`` (ion chamber downstream: ``i0 * T``),
``photodiode`` (``it`` on another gain), ``xbic`` (the beam-induced current of
a device: a responsivity map times ``i0``) and ``ring_current``, each with its
own noise.

Scan patterns: ``raster`` (row by row), ``snake`` (every other row
backwards) and ``fly`` (rows scanned while moving: each position is the
encoder's reading at the middle of the exposure, off the nominal grid by up
to 10 % of a step). Every frame is a pure function of ``(seed, index)``.
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from lightpipe.core.bounds import Seed
from lightpipe.core.source import SourceParams

__all__ = ["ScanningSimParams", "ScanningSimulation", "simulation"]

#: h c in eV m.
HC_EV_M = 1.239841984e-6


class ScanningSimParams(SourceParams):
    """Parameters of the scanning-probe simulator (units in the names)."""

    name: str = Field("scanning_sim", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output file is <name>.nxs)")
    map_shape: tuple[Annotated[int, Field(ge=2, le=2000)], Annotated[int, Field(ge=2, le=2000)]] = Field(
        (16, 20), description="Scan points (rows, columns)")
    pattern: Literal["raster", "snake", "fly"] = Field("snake", description="Scan pattern")
    step_m: float = Field(1e-7, gt=0, le=1, description="Scan step, m")
    frame_shape: tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]] = Field(
        (64, 64), description="Detector frame (y, x), px")
    pixel_size_m: float = Field(75e-6, gt=0, le=0.01, description="Detector pixel size, m")
    distance_m: float = Field(2.0, gt=0, le=100, description="Sample-detector distance, m")
    energy_ev: float = Field(10000.0, gt=100, le=1e6, description="Photon energy, eV")
    spot_px: float = Field(4.0, gt=0.5, le=500, description="Standard deviation of the beam's spot on the detector, px")
    photons: float = Field(1e5, gt=0, le=1e12, description="Counts in a frame through empty space, at i0_reference")
    min_transmission: float = Field(0.6, gt=0, le=1, description="Transmission at the middle of the absorbing disc")
    max_phase_rad: float = Field(2.0, ge=0, le=100, description="Height of the phase bump, rad")
    scatter: float = Field(0.02, ge=0, le=0.5, description="Fraction scattered into the dark field at the patch")
    i0_reference: float = Field(1e6, gt=0, le=1e15, description="Incident flux (ion chamber counts) of 'photons'")
    counter_noise: float = Field(1e-3, ge=0, le=0.1, description="Relative noise of each counter")
    seed: Seed = Field(0, description="Random seed")

    def known_frame_shape(self) -> tuple[int, int]:
        """The frames' shape (ny, nx)."""
        return self.frame_shape


class ScanningSimulation:
    """The simulated object, beam and scan of one set of parameters."""

    def __init__(self, params: ScanningSimParams) -> None:
        self.params = params

    @property
    def points(self) -> int:
        """Scan points, one frame each."""
        return self.params.map_shape[0] * self.params.map_shape[1]

    @property
    def wavelength_m(self) -> float:
        """X-ray wavelength, m."""
        return HC_EV_M / self.params.energy_ev

    def cell(self, point: int) -> tuple[int, int]:
        """Row and column of scan point ``point`` on the nominal grid."""
        columns = self.params.map_shape[1]
        row, column = divmod(point, columns)
        if self.params.pattern == "snake" and row % 2:
            column = columns - 1 - column
        return row, column

    def position_m(self, point: int) -> tuple[float, float]:
        """Recorded position (y, x) of ``point``, m: the grid's, or the fly scan's encoder reading."""
        p = self.params
        row, column = self.cell(point)
        y, x = row * p.step_m, column * p.step_m
        if p.pattern == "fly":
            x += p.step_m * 0.1 * (2 * np.random.default_rng([p.seed, point, 1]).random() - 1)
        return y, x

    def _normalised(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, columns = self.params.map_shape
        step = self.params.step_m
        return y / (step * max(rows - 1, 1)), x / (step * max(columns - 1, 1))

    def transmission(self, y: Any, x: Any) -> np.ndarray:
        """Transmission of the object at (y, x), m: an absorbing disc with a smooth edge."""
        v, u = self._normalised(np.asarray(y), np.asarray(x))
        disc = 1.0 / (1.0 + np.exp((np.hypot(u - 0.35, v - 0.5) - 0.2) / 0.04))
        return 1.0 - (1.0 - self.params.min_transmission) * disc

    def phase(self, y: Any, x: Any) -> np.ndarray:
        """Phase shift of the object at (y, x), rad: a Gaussian bump."""
        v, u = self._normalised(np.asarray(y), np.asarray(x))
        return self.params.max_phase_rad * np.exp(-((u - 0.6) ** 2 + (v - 0.45) ** 2) / (2 * 0.15**2))

    def phase_gradient(self, y: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(d phi / dy, d phi / dx) at (y, x), rad/m."""
        rows, columns = self.params.map_shape
        step = self.params.step_m
        v, u = self._normalised(np.asarray(y), np.asarray(x))
        phi = self.phase(y, x)
        sy, sx = step * max(rows - 1, 1), step * max(columns - 1, 1)
        return -phi * (v - 0.45) / 0.15**2 / sy, -phi * (u - 0.6) / 0.15**2 / sx

    def scattering(self, y: Any, x: Any) -> np.ndarray:
        """Fraction of the beam scattered into the dark field at (y, x): a square patch."""
        v, u = self._normalised(np.asarray(y), np.asarray(x))
        inside = (np.abs(u - 0.75) < 0.15) & (np.abs(v - 0.3) < 0.15)
        return self.params.scatter * inside.astype(np.float64)

    def responsivity(self, y: Any, x: Any) -> np.ndarray:
        """XBIC collected per incident flux count at (y, x): a junction stripe with a defect."""
        v, u = self._normalised(np.asarray(y), np.asarray(x))
        stripe = np.exp(-((v - 0.6) ** 2) / (2 * 0.12**2))
        defect = 1.0 - 0.7 * np.exp(-((u - 0.3) ** 2 + (v - 0.6) ** 2) / (2 * 0.05**2))
        return 1e-3 * (0.05 + stripe * defect)

    def shift_px(self, y: float, x: float) -> tuple[float, float]:
        """Spot shift (y, x) on the detector from the phase gradient at (y, x), px."""
        p = self.params
        gy, gx = self.phase_gradient(y, x)
        scale = self.wavelength_m / (2 * np.pi) * p.distance_m / p.pixel_size_m
        return float(gy * scale), float(gx * scale)

    @cached_property
    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.params.frame_shape
        return np.arange(ny, dtype=np.float64)[:, None], np.arange(nx, dtype=np.float64)[None, :]

    @property
    def centre_px(self) -> tuple[float, float]:
        """The spot's centre on the detector without a sample, px."""
        ny, nx = self.params.frame_shape
        return ny / 2.0, nx / 2.0

    def i0(self, point: int) -> float:
        """Incident flux at ``point``: the ring current's slow decay."""
        p = self.params
        return p.i0_reference * (1.0 - 0.1 * point / max(self.points - 1, 1))

    def expected_frame(self, point: int) -> np.ndarray:
        """Mean counts per pixel of the frame at ``point``."""
        p = self.params
        y, x = self.position_m(point)
        dy, dx = self.shift_px(y, x)
        cy, cx = self.centre_px
        gy, gx = self._grid
        flux = p.photons * self.i0(point) / p.i0_reference * float(self.transmission(y, x))
        scattered = float(self.scattering(y, x))
        spot = np.exp(-(((gy - cy - dy) ** 2) + (gx - cx - dx) ** 2) / (2 * p.spot_px**2))
        spot *= (1.0 - scattered) * flux / spot.sum()
        ring_radius = min(p.frame_shape) * 0.35
        ring = np.exp(-((np.hypot(gy - cy, gx - cx) - ring_radius) ** 2) / (2 * 2.0**2))
        return spot + ring * (scattered * flux / ring.sum())

    def frame(self, point: int) -> np.ndarray:
        """The detector frame at ``point``, uint32 counts."""
        rng = np.random.default_rng([self.params.seed, point])
        return rng.poisson(self.expected_frame(point)).astype(np.uint32)

    def counters(self, point: int) -> dict[str, float]:
        """Counter readings at ``point``: i0, it, photodiode, xbic, ring_current."""
        p = self.params
        y, x = self.position_m(point)
        i0 = self.i0(point)
        noise = 1.0 + p.counter_noise * np.random.default_rng([p.seed, point, 2]).standard_normal(5)
        it = i0 * float(self.transmission(y, x))
        return {"i0": i0 * noise[0], "it": it * noise[1], "photodiode": 0.5 * it * noise[2],
                "xbic": i0 * float(self.responsivity(y, x)) * noise[3],
                "ring_current": 0.1 * i0 / p.i0_reference * noise[4] * 1e3}

    def truth(self) -> dict[str, np.ndarray]:
        """The object on the nominal grid: transmission, phase (rad), its gradients (rad/m), dark field, XBIC."""
        rows, columns = self.params.map_shape
        y, x = np.meshgrid(np.arange(rows) * self.params.step_m, np.arange(columns) * self.params.step_m,
                           indexing="ij")
        gy, gx = self.phase_gradient(y, x)
        return {"transmission": self.transmission(y, x), "phase": self.phase(y, x), "gradient_y": gy,
                "gradient_x": gx, "scattering": self.scattering(y, x), "responsivity": self.responsivity(y, x),
                "y": y[:, 0], "x": x[0]}

    def metadata(self) -> dict[str, Any]:
        """Scan metadata in lightpipe's names."""
        p = self.params
        ny, nx = p.frame_shape
        return {"frame_shape": [ny, nx], "frame_dtype": "uint32", "distance_m": p.distance_m,
                "x_pixel_size_m": p.pixel_size_m, "y_pixel_size_m": p.pixel_size_m, "energy_ev": p.energy_ev,
                "beam_center_y_px": self.centre_px[0], "beam_center_x_px": self.centre_px[1],
                "map_shape": list(p.map_shape), "step_m": p.step_m, "scan_pattern": p.pattern,
                "i0_reference": p.i0_reference, "simulator": "scanning_sim", "seed": p.seed}


@lru_cache(maxsize=4)
def simulation(params: ScanningSimParams) -> ScanningSimulation:
    """The simulation for ``params``, shared by the readers of one process."""
    return ScanningSimulation(params)
