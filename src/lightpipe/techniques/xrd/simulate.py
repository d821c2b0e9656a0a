"""Powder diffraction frames of pyFAI's calibrants at a known geometry, with their ring positions as the truth.

The geometry is pyFAI's: a detector (a named one such as a Pilatus 1M, or a
generic one of a given shape and pixel size), the sample-detector distance,
the point of normal incidence (PONI) on the detector, three rotations and the
wavelength. pyFAI renders each calibrant's powder rings on the detector
(``Calibrant.fake_calibration_image``: rings of a set width at the angles its
d-spacings give, the pixels' solid angle applied); a frame is Poisson counts of
those rings plus a flat background, and a dark offset where the scan has dark
frames.

A mapping scan (``map_shape``) moves the sample on a raster; at each position a
known fraction of the sample is the first calibrant and the rest the second,
so a ring of one phase maps the fraction. Every frame is a pure function of
``(seed, index)``, so any worker can make any frame.

The truth: where the rings are, in 2theta and q, from the d-spacings and the
wavelength (:meth:`PowderSimulation.ring_positions`); the phase fraction at each
position; the PONI file of the geometry (:meth:`PowderSimulation.write_poni`).

Examples
--------
>>> from lightpipe.techniques.xrd.simulate import PowderSimParams, PowderSimulation
>>> sim = PowderSimulation(PowderSimParams(detector=None, shape=(64, 64), frames=2))
>>> sim.frame(0)[1].shape
(64, 64)
>>> round(float(sim.ring_positions("2th_deg")[0]), 3)  # LaB6 (100) at 0.7 angstrom
9.659
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from lightpipe.core.bounds import EventCount, Seed
from lightpipe.core.source import SourceParams
from lightpipe.techniques.xrd.geometry import PoniGeometry, plain, pyfai

__all__ = ["PowderSimParams", "PowderSimulation", "simulation"]

#: Pixels along one axis of a generic simulated detector.
SimulatedPx = Annotated[int, Field(ge=8, le=4096)]


class PowderSimParams(SourceParams):
    """Parameters of the powder simulator (pyFAI's geometry names; units in the names)."""

    name: str = Field("powder_sim", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output file is <name>.nxs)")
    calibrant: str = Field("LaB6", description="pyFAI calibrant of the sample (LaB6, CeO2, Si, ...)")
    second_calibrant: str = Field("CeO2", description="Calibrant of the rest of the sample in a mapping scan")
    detector: str | None = Field("Pilatus1M", description="pyFAI detector name; none: a generic detector of "
                                 "'shape' and 'pixel_size_m'")
    shape: tuple[SimulatedPx, SimulatedPx] = Field((256, 256), description="Generic detector's shape (y, x), px")
    pixel_size_m: float = Field(172e-6, gt=0, le=0.01, description="Generic detector's pixel size, m")
    distance_m: float = Field(0.2, gt=0, le=100, description="Sample-detector distance, m")
    poni1_m: float | None = Field(None, ge=-10, le=10, description="PONI along y (slow axis) from the detector's "
                                  "corner, m; default the detector's middle")
    poni2_m: float | None = Field(None, ge=-10, le=10, description="PONI along x (fast axis), m; default the middle")
    rot1_rad: float = Field(0.005, ge=-1.6, le=1.6, description="Detector rotation 1 (about y), rad")
    rot2_rad: float = Field(-0.003, ge=-1.6, le=1.6, description="Detector rotation 2 (about x), rad")
    rot3_rad: float = Field(0.0, ge=-3.2, le=3.2, description="Detector rotation 3 (about the beam), rad")
    wavelength_a: float = Field(0.7, gt=0.01, le=100, description="X-ray wavelength, angstrom")
    ring_width_deg: float = Field(0.05, gt=0, le=10, description="Ring width (FWHM) in 2theta, deg")
    photons: float = Field(2000.0, gt=0, le=1e9, description="Counts per pixel at a ring's peak")
    background: float = Field(20.0, ge=0, le=1e9, description="Flat background, counts per pixel")
    frames: EventCount = Field(20, description="Data frames (a mapping scan has one per position instead)")
    darks: EventCount = Field(0, description="Dark frames, acquired first")
    dark_level: float = Field(0.0, ge=0, le=1e6, description="Dark offset in every frame, counts per pixel "
                              "(a photon-counting detector has none)")
    map_shape: tuple[Annotated[int, Field(ge=1, le=1000)], Annotated[int, Field(ge=1, le=1000)]] | None = Field(
        None, description="Raster (rows, columns) of a mapping scan; none: frames at one position")
    step_m: float = Field(1e-6, gt=0, le=1, description="Raster step of a mapping scan, m")
    seed: Seed = Field(0, description="Random seed")

    @field_validator("calibrant", "second_calibrant")
    @classmethod
    def _known_calibrant(cls, value: str) -> str:
        names = pyfai().calibrant.names()
        if value not in names:
            raise ValueError(f"pyFAI has no calibrant {value!r}; choose one of {', '.join(sorted(names))}")
        return value

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str | None) -> str | None:
        if value is not None:
            from pyFAI.detectors import ALL_DETECTORS

            if value.lower() not in ALL_DETECTORS:
                raise ValueError(f"pyFAI knows no detector {value!r}; give its name (Pilatus1M, Eiger4M, ...) or "
                                 "none for a generic one")
        return value

    @property
    def data_frames(self) -> int:
        """Data frames: one per raster position in a mapping scan, else ``frames``."""
        return self.map_shape[0] * self.map_shape[1] if self.map_shape is not None else self.frames

    def known_frame_shape(self) -> tuple[int, int]:
        """The frames' shape (ny, nx): the named detector's, or ``shape``."""
        return simulation(self).frame_shape


class PowderSimulation:
    """The simulated diffractometer, sample and scan for one set of parameters."""

    def __init__(self, params: PowderSimParams) -> None:
        self.params = params

    @cached_property
    def geometry(self) -> PoniGeometry:
        """The calibration the frames are made at, as a PONI file would give it."""
        import pyFAI.detectors
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        p = self.params
        if p.detector is not None:
            detector = pyFAI.detectors.detector_factory(p.detector)
        else:
            detector = pyFAI.detectors.detector_factory(
                "Detector", {"pixel1": p.pixel_size_m, "pixel2": p.pixel_size_m, "max_shape": list(p.shape)})
        ny, nx = detector.shape
        ai = AzimuthalIntegrator(
            dist=p.distance_m,
            poni1=p.poni1_m if p.poni1_m is not None else ny * detector.pixel1 / 2,
            poni2=p.poni2_m if p.poni2_m is not None else nx * detector.pixel2 / 2,
            rot1=p.rot1_rad, rot2=p.rot2_rad, rot3=p.rot3_rad, detector=detector, wavelength=p.wavelength_a * 1e-10,
        )
        return PoniGeometry(plain(ai.get_config()), f"the {p.name} simulation")

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape (ny, nx) of the frames."""
        shape = self.geometry.detector_shape
        assert shape is not None  # the simulator's detectors always have one
        return shape

    @property
    def streams(self) -> dict[str, range]:
        """Acquisition-index range of the dark and data streams."""
        p = self.params
        return {"dark": range(0, p.darks), "data": range(p.darks, p.darks + p.data_frames)}

    def _calibrant(self, name: str) -> Any:
        calibrant = pyfai().calibrant.get_calibrant(name)
        calibrant.wavelength = self.params.wavelength_a * 1e-10
        return calibrant

    @cached_property
    def rings(self) -> dict[str, np.ndarray]:
        """Noise-free rings of each phase, peak ``photons`` counts per pixel, no background (float64)."""
        p = self.params
        ai = self.geometry.make()
        names = [p.calibrant] + ([p.second_calibrant] if p.map_shape is not None else [])
        return {name: np.asarray(self._calibrant(name).fake_calibration_image(
            ai, Imax=p.photons, Imin=0.0, resolution=p.ring_width_deg), np.float64) for name in dict.fromkeys(names)}

    def ring_positions(self, unit: str = "2th_deg", calibrant: str | None = None) -> np.ndarray:
        """Where the calibrant's rings are, from its d-spacings and the wavelength, ascending.

        Parameters
        ----------
        unit
            ``2th_deg`` (scattering angle, degrees), ``q_nm^-1`` or ``q_A^-1``.
        calibrant
            Which calibrant; default the sample's.
        """
        d_a = np.asarray(self._calibrant(calibrant or self.params.calibrant).dspacing, np.float64)
        ratio = self.params.wavelength_a / (2 * d_a)
        theta = np.arcsin(ratio[ratio < 1])
        if unit == "2th_deg":
            values = np.degrees(2 * theta)
        elif unit == "q_A^-1":
            values = 4 * np.pi * np.sin(theta) / self.params.wavelength_a
        elif unit == "q_nm^-1":
            values = 40 * np.pi * np.sin(theta) / self.params.wavelength_a
        else:
            raise ValueError(f"ring positions are given in 2th_deg, q_nm^-1 or q_A^-1, not {unit!r}")
        return np.sort(values)

    def fraction(self, position: int) -> float:
        """Fraction of the sample that is the first calibrant at data position ``position`` (1 without a map).

        A disc of the first phase in the middle of the raster, with a smooth edge.
        """
        if self.params.map_shape is None:
            return 1.0
        rows, columns = self.params.map_shape
        row, column = divmod(position, columns)
        radius = np.hypot((row - (rows - 1) / 2) / max(rows / 2, 1), (column - (columns - 1) / 2) / max(columns / 2, 1))
        return float(1.0 / (1.0 + np.exp((radius - 0.6) / 0.1)))

    def position_m(self, position: int) -> tuple[float, float]:
        """Sample position (y, x) of data position ``position`` on the raster, m."""
        if self.params.map_shape is None:
            return 0.0, 0.0
        row, column = divmod(position, self.params.map_shape[1])
        return row * self.params.step_m, column * self.params.step_m

    def expected(self, position: int) -> np.ndarray:
        """Mean counts per pixel of a data frame at ``position`` (before Poisson noise)."""
        p = self.params
        share = self.fraction(position)
        counts = share * self.rings[p.calibrant] + p.background + p.dark_level
        if p.map_shape is not None:
            counts = counts + (1.0 - share) * self.rings[p.second_calibrant]
        return counts

    def frame(self, index: int) -> tuple[str, np.ndarray]:
        """Stream and frame (uint32 counts) of acquisition ``index``."""
        rng = np.random.default_rng([self.params.seed, index])
        data = self.streams["data"]
        if index in data:
            return "data", rng.poisson(self.expected(index - data.start)).astype(np.uint32)
        if index in self.streams["dark"]:
            return "dark", rng.poisson(np.full(self.frame_shape, self.params.dark_level)).astype(np.uint32)
        raise IndexError(f"event {index} is outside the simulated scan of {self.streams['data'].stop} events")

    def truth(self) -> dict[str, Any]:
        """Ring positions in 2theta (deg) and q (1/nm), the phase fraction per data position, the geometry."""
        return {
            "rings_2th_deg": self.ring_positions("2th_deg"),
            "rings_q_nm^-1": self.ring_positions("q_nm^-1"),
            "fraction": np.array([self.fraction(k) for k in range(self.params.data_frames)]),
            "poni": self.geometry.config,
        }

    def metadata(self) -> dict[str, Any]:
        """Scan metadata in lightpipe's names, the geometry among them."""
        config = self.geometry.config
        detector = self.geometry.make().detector
        ny, nx = self.frame_shape
        return {
            "frame_shape": [ny, nx],
            "frame_dtype": "uint32",
            "distance_m": float(config["dist"]),
            "y_pixel_size_m": float(detector.pixel1),
            "x_pixel_size_m": float(detector.pixel2),
            "wavelength_a": self.params.wavelength_a,
            "detector": str(config["detector"]),
            "calibrant": self.params.calibrant,
            "poni": config,
            "simulator": "powder_sim",
            "seed": self.params.seed,
        }

    def write_poni(self, path: str | Path) -> Path:
        """Write the geometry as a PONI file (pyFAI's writer), as pyFAI-calib2 would save it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # pyFAI appends to an existing file
        self.geometry.make().write(str(path))
        return path


@lru_cache(maxsize=4)
def simulation(params: PowderSimParams) -> PowderSimulation:
    """The simulation for ``params``, shared by the readers of one process (its rings are made once)."""
    return PowderSimulation(params)
