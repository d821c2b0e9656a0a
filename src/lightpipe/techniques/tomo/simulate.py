"""A tomography scan with known truth: a 3-D phantom of ellipsoids, its exact projections, flats, darks and noise.

The phantom is Shepp-Logan-like: ten ellipsoids (a shell, its interior, two
tilted cavities and small features at several heights), each of uniform
attenuation, rotated about the vertical axis. A parallel-beam projection of an
ellipsoid has a closed form (the chord of a ray through it), so the
projections are exact line integrals, with no discretisation of their own.
They are scaled so the thickest ray's line integral is ``max_absorption``.

A frame is what a detector records: ``Poisson(photons * gain * exp(-p))``
plus a dark offset with read noise, as uint16. The flats see the same gain;
``ring_pixels`` columns respond differently in the projections than in the
flats (by ``ring_strength``), which no flat field corrects: stripes in the
sinograms, rings in the slices. The rotation axis sits ``centre_offset_px``
from the detector's middle. Every frame is a pure function of ``(seed, index)``.

The truth: the phantom sampled on the reconstruction grid
(:meth:`TomoSimulation.volume`), the centre of rotation and the angles.

Examples
--------
>>> from lightpipe.techniques.tomo.simulate import TomoSimParams, TomoSimulation
>>> sim = TomoSimulation(TomoSimParams(shape=(16, 32), projections=10, darks=2, flats=2))
>>> sim.frame(5)[0], sim.frame(5)[1].shape
('data', (16, 32))
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from lightpipe.core.bounds import EventCount, Seed
from lightpipe.core.source import SourceParams
from lightpipe.techniques.tomo.geometry import coordinates

__all__ = ["PHANTOM", "TomoSimParams", "TomoSimulation", "disc_sinogram", "simulation"]

#: The phantom's ellipsoids: centre (x, y, z), semi-axes (a, b, c), rotation about z (deg), attenuation added.
#: x and y are in units of the phantom's radius, z of half the detector's height.
PHANTOM: tuple[tuple[float, ...], ...] = (
    (0.00, 0.00, 0.00, 0.70, 0.88, 0.80, 0.0, 1.00),
    (0.00, -0.02, 0.00, 0.64, 0.82, 0.74, 0.0, -0.80),
    (0.22, 0.00, 0.00, 0.12, 0.30, 0.25, -18.0, -0.20),
    (-0.22, 0.00, 0.00, 0.16, 0.40, 0.30, 18.0, -0.20),
    (0.00, 0.36, 0.00, 0.21, 0.25, 0.30, 0.0, 0.10),
    (0.00, 0.10, 0.00, 0.05, 0.05, 0.05, 0.0, 0.15),
    (0.00, -0.10, 0.00, 0.05, 0.05, 0.05, 0.0, 0.15),
    (-0.08, -0.60, 0.00, 0.05, 0.025, 0.05, 0.0, 0.10),
    (0.06, -0.60, 0.10, 0.025, 0.05, 0.05, 0.0, 0.10),
    (0.05, 0.30, -0.35, 0.08, 0.06, 0.15, 30.0, 0.20),
)

#: Pixels along one axis of a simulated detector.
SimulatedPx = Annotated[int, Field(ge=4, le=4096)]


class TomoSimParams(SourceParams):
    """Parameters of the tomography simulator (units in the names)."""

    name: str = Field("tomo_sim", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output file is <name>.nxs)")
    shape: tuple[SimulatedPx, SimulatedPx] = Field((64, 64), description="Detector (rows, columns) in pixels")
    projections: EventCount = Field(180, description="Projections (data frames)")
    range_deg: float = Field(180.0, gt=0, le=3600, description="Rotation range of the scan, deg")
    endpoint: bool = Field(True, description="Whether the last projection is at the end of the range (0 and 180 "
                           "both measured)")
    angles_deg: tuple[float, ...] | None = Field(None, max_length=1_000_000, description="The projections' angles, deg, "
                                           "one per projection, as a rotation stage's log gives them (NaN: missing "
                                           "from the log); none: evenly spread over range_deg")
    darks: EventCount = Field(10, description="Dark frames, acquired first")
    flats: EventCount = Field(10, description="Flat-field frames, acquired after the darks")
    photons: float = Field(5000.0, gt=0, le=60000, description="Counts per pixel in a flat (no sample)")
    dark_level: float = Field(100.0, ge=0, le=10000, description="Dark offset, counts per pixel")
    read_noise: float = Field(2.0, ge=0, le=1000, description="Gaussian read noise, counts")
    noise: bool = Field(True, description="Poisson noise on the photons; false: expected counts, rounded")
    max_absorption: float = Field(1.5, gt=0, le=20, description="Line integral of the thickest ray (its transmission "
                                  "is exp(-max_absorption))")
    centre_offset_px: float = Field(2.3, ge=-1000, le=1000, description="Rotation axis from the detector's middle "
                                    "column, px (positive: towards higher columns)")
    ring_pixels: int = Field(3, ge=0, le=4096, description="Detector columns whose response the flats do not "
                             "correct (they make rings)")
    ring_strength: float = Field(0.05, ge=0, le=1, description="Relative response error of those columns")
    pixel_size_m: float = Field(1e-6, gt=0, le=1, description="Detector pixel size at the sample, m")
    rate_hz: float = Field(0.0, ge=0, le=1e6, description="Stream the scan at this many frames per second, as a "
                           "detector delivers them; 0: all at once")
    seed: Seed = Field(0, description="Random seed")

    @model_validator(mode="after")
    def _check(self) -> TomoSimParams:
        if self.angles_deg is not None and len(self.angles_deg) != self.projections:
            raise ValueError(f"angles_deg has {len(self.angles_deg)} angles but the scan has {self.projections} "
                             "projections: give one angle per projection (or leave angles_deg out)")
        middle = (self.shape[1] - 1) / 2
        if abs(self.centre_offset_px) >= middle * 0.8:
            raise ValueError(f"centre_offset_px={self.centre_offset_px} puts the rotation axis at the detector's edge "
                             f"({self.shape[1]} columns): keep it within {middle * 0.8:g} px of the middle")
        return self

    def known_frame_shape(self) -> tuple[int, int]:
        """The frames' shape (rows, columns)."""
        return self.shape


def _chords(u: np.ndarray, z: np.ndarray, theta: float, centre: float, ellipsoids: np.ndarray) -> np.ndarray:
    """Line integrals through the ellipsoids (pixel units) of the rays at detector columns ``u``, rows ``z``."""
    u, z = np.broadcast_arrays(u, z)
    t = u - centre
    cos, sin = np.cos(theta), np.sin(theta)
    point = np.stack([t * cos, t * sin, z])  # a point of each ray; its direction is (-sin, cos, 0)
    total = np.zeros(u.shape)
    for x0, y0, z0, a, b, c, phi, value in ellipsoids:
        cp, sp = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        dx, dy, dz = point[0] - x0, point[1] - y0, point[2] - z0
        q0 = np.stack([(dx * cp + dy * sp) / a, (-dx * sp + dy * cp) / b, dz / c])
        qd = np.array([(-sin * cp + cos * sp) / a, (sin * sp + cos * cp) / b, 0.0])
        dd = float(qd @ qd)
        q0d = np.tensordot(qd, q0, axes=1)
        disc = q0d ** 2 - dd * ((q0 ** 2).sum(axis=0) - 1.0)
        total += value * 2.0 * np.sqrt(np.maximum(disc, 0.0)) / dd
    return total


class TomoSimulation:
    """The simulated sample, rotation stage and detector for one set of parameters."""

    def __init__(self, params: TomoSimParams) -> None:
        self.params = params

    @property
    def centre(self) -> float:
        """Detector column of the rotation axis (the truth)."""
        return (self.params.shape[1] - 1) / 2 + self.params.centre_offset_px

    @cached_property
    def angles_deg(self) -> np.ndarray:
        """Angle of each projection, deg."""
        p = self.params
        if p.angles_deg is not None:
            return np.asarray(p.angles_deg, np.float64)
        return np.linspace(0.0, p.range_deg, p.projections, endpoint=p.endpoint)

    @property
    def streams(self) -> dict[str, range]:
        """Acquisition-index range of the dark, flat and data streams."""
        p = self.params
        return {"dark": range(0, p.darks), "flat": range(p.darks, p.darks + p.flats),
                "data": range(p.darks + p.flats, p.darks + p.flats + p.projections)}

    @cached_property
    def _ellipsoids(self) -> np.ndarray:
        """The phantom in pixels about the rotation axis (x, y) and the detector's middle row (z), unscaled."""
        rows, columns = self.params.shape
        radius = 0.95 * min(self.centre, columns - 1 - self.centre) / 0.88  # the shell's long axis fits the detector
        half_height = rows / 2
        e = np.array(PHANTOM, np.float64)
        e[:, [0, 1, 3, 4]] *= radius
        e[:, [2, 5]] *= half_height
        return e

    @cached_property
    def _scale(self) -> float:
        """Attenuation per unit of phantom value and pixel, so the thickest ray's line integral is ``max_absorption``."""
        rows, columns = self.params.shape
        u, z = np.arange(columns, dtype=np.float64), np.arange(rows) - (rows - 1) / 2
        thickest = max(_chords(u[None, :], z[:, None], theta, self.centre, self._ellipsoids).max()
                       for theta in (0.0, np.pi / 2))
        return self.params.max_absorption / thickest

    def line_integrals(self, angle_deg: float) -> np.ndarray:
        """The exact projection at ``angle_deg``: line integrals of the attenuation, (rows, columns)."""
        rows, columns = self.params.shape
        u, z = np.arange(columns, dtype=np.float64), np.arange(rows) - (rows - 1) / 2
        return self._scale * _chords(u[None, :], z[:, None], np.radians(angle_deg), self.centre, self._ellipsoids)

    def volume(self) -> np.ndarray:
        """The phantom's attenuation per pixel on the reconstruction grid, ``(rows, columns, columns)`` (z, y, x)."""
        rows, columns = self.params.shape
        c = coordinates(columns).astype(np.float64)
        z = np.arange(rows) - (rows - 1) / 2
        zz, yy, xx = np.meshgrid(z, c, c, indexing="ij")
        out = np.zeros(zz.shape)
        for x0, y0, z0, a, b, cz, phi, value in self._ellipsoids:
            cp, sp = np.cos(np.radians(phi)), np.sin(np.radians(phi))
            dx, dy = xx - x0, yy - y0
            inside = ((dx * cp + dy * sp) / a) ** 2 + ((-dx * sp + dy * cp) / b) ** 2 + ((zz - z0) / cz) ** 2 <= 1
            out[inside] += value
        return (out * self._scale).astype(np.float32)

    @cached_property
    def _detector(self) -> dict[str, np.ndarray]:
        """The detector's dark offset, gain, and the projections' extra response of the ring columns."""
        p = self.params
        rng = np.random.default_rng([p.seed, 2**31])
        rows, columns = p.shape
        response = np.ones(columns)
        ring = rng.choice(columns // 4 + np.arange(columns // 2), size=min(p.ring_pixels, columns // 2), replace=False)
        response[ring] += p.ring_strength * rng.choice([-1.0, 1.0], size=ring.size)
        return {"dark": p.dark_level + rng.normal(0.0, 2.0, p.shape), "gain": 1.0 + rng.normal(0.0, 0.02, p.shape),
                "response": response}

    def frame(self, index: int) -> tuple[str, np.ndarray, float]:
        """Stream, frame (uint16) and angle (deg; NaN for darks and flats) of acquisition ``index``."""
        p = self.params
        d = self._detector
        rng = np.random.default_rng([p.seed, index])
        stream = next(s for s, r in self.streams.items() if index in r)
        angle = np.nan
        if stream == "dark":
            expected = np.zeros(p.shape)
        elif stream == "flat":
            expected = p.photons * d["gain"]
        else:
            position = index - self.streams["data"].start
            angle = float(self.angles_deg[position])
            # a missing angle in the log (NaN) is the log's fault: the stage turned as planned
            turned = angle if np.isfinite(angle) else float(np.linspace(0.0, p.range_deg, p.projections,
                                                                         endpoint=p.endpoint)[position])
            expected = p.photons * d["gain"] * d["response"] * np.exp(-self.line_integrals(turned))
        photons = rng.poisson(expected) if p.noise else np.rint(expected)
        counts = photons + d["dark"] + rng.normal(0.0, p.read_noise, p.shape)
        return stream, np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16), angle

    def metadata(self) -> dict[str, object]:
        """Scan metadata: frame shape and type, pixel size, the simulator and its seed."""
        p = self.params
        return {"frame_shape": list(p.shape), "frame_dtype": "uint16", "x_pixel_size_m": p.pixel_size_m,
                "y_pixel_size_m": p.pixel_size_m, "simulator": "tomo_sim", "seed": p.seed}


@lru_cache(maxsize=8)
def simulation(params: TomoSimParams) -> TomoSimulation:
    """The simulation of ``params``, shared by the readers of one process (its phantom is built once)."""
    return TomoSimulation(params)


def disc_sinogram(n: int, angles: np.ndarray, radius: float, value: float) -> np.ndarray:
    """Sinogram ``(n_angles, n)`` of a disc of ``radius`` pixels and attenuation ``value`` on the axis at ``(n - 1) / 2``."""
    t = np.arange(n) - (n - 1) / 2
    row = 2.0 * value * np.sqrt(np.maximum(radius ** 2 - t ** 2, 0.0))
    return np.repeat(row[None, :], np.asarray(angles).size, axis=0).astype(np.float32)
