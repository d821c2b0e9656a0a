"""A rotation series of a known crystal: spots from the Ewald construction, with the truth kept for tests.

The geometry is DIALS's laboratory frame (dxtbx, imgCIF): X-rays travel along
``-z`` (``s0 = (0, 0, -1/wavelength)``), the rotation axis is ``+x``, the
detector stands square to the beam at ``z = -distance`` with its fast axis
(columns) along ``+x`` and its slow axis (rows) along ``-y``. The beam centre
is given as file headers give it (a PILATUS ``Beam_xy``, NXmx
``beam_center_x``): in pixels from the detector's corner, so the beam meets
the pixel-centred coordinates of lightpipe at ``beam_center - 0.5``.

The crystal is a cell (lengths in angstrom, angles in degrees) in an
orientation ``U`` given as three rotations (about x, then y, then z). At
rotation angle ``phi`` a reciprocal-lattice point ``h`` sits at
``R(phi) U B h``; it diffracts when it crosses the Ewald sphere,
``|s0 + r| = |s0|``, which happens at two angles per turn, found in closed
form. Each crossing is one observation:

* its position on the detector is where ``s1 = s0 + r`` meets the detector;
* its intensity is ``mean_intensity`` times an exponential random number (a
  Wilson distribution) times ``exp(-B / (2 d^2))``;
* it spreads over the images around its angle as a Gaussian of standard
  deviation ``rocking_width_deg`` (mosaicity and beam divergence in one, the
  Lorentz factor left out), so a spot can be partial across images;
* on each image it is a Gaussian spot of ``spot_sigma_px``, integrated over the
  pixels.

A frame is the flat ``background`` plus its spots, with Poisson noise drawn
from ``(seed, image)``: any worker makes any image, the same on all.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from lightpipe.core.bounds import EventCount, Seed
from lightpipe.core.source import SourceParams

__all__ = ["Observations", "RotationSimParams", "RotationSimulation", "simulation"]

#: Pixels along one axis of a simulated detector: up to an EIGER2 16M's 4371 rows, with room.
DetectorPx = Annotated[int, Field(ge=16, le=5000)]
#: An angle in degrees.
Degrees = Annotated[float, Field(ge=-3600, le=3600, allow_inf_nan=False)]
#: Rocking widths beyond this many standard deviations add nothing to an image.
PROFILE_SIGMAS = 4.0
#: Observations with less than this fraction of their intensity on an image are not drawn on it.
SMALLEST_PART = 1e-4


class RotationSimParams(SourceParams):
    """Parameters of a simulated rotation series."""

    name: str = Field("rotation", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output file is <name>.nxs)")
    images: EventCount = Field(36, description="Images of the rotation")
    shape: tuple[DetectorPx, DetectorPx] = Field((512, 512), description="Detector shape (rows, columns), px")
    pixel_size_m: float = Field(75e-6, gt=1e-6, le=0.01, description="Pixel size, m (square pixels)")
    distance_m: float = Field(0.1, gt=0.001, le=10, description="Sample-detector distance, m")
    beam_center: tuple[float, float] | None = Field(
        None, description="Beam centre (x, y) in pixels from the detector's corner, as file headers give it; "
                          "default the middle")
    wavelength_a: float = Field(0.9763, gt=0.1, le=10, description="X-ray wavelength, angstrom")
    cell: tuple[float, float, float, float, float, float] = Field(
        (79.1, 79.1, 37.9, 90.0, 90.0, 90.0),
        description="Unit cell a, b, c (angstrom), alpha, beta, gamma (deg); default tetragonal lysozyme's")
    orientation_deg: tuple[Degrees, Degrees, Degrees] = Field(
        (10.0, 20.0, 30.0), description="Crystal orientation: rotations about x, y, z of the lab frame, deg")
    omega_start_deg: Degrees = Field(0.0, description="Rotation angle at the start of the first image, deg")
    omega_increment_deg: float = Field(0.5, gt=0, le=180, description="Rotation per image, deg")
    rocking_width_deg: float = Field(0.1, gt=0, le=10, description="Standard deviation of a spot across the "
                                     "rotation (mosaicity), deg")
    spot_sigma_px: float = Field(0.8, gt=0.1, le=50, description="Standard deviation of a spot on the detector, px")
    mean_intensity: float = Field(3000.0, gt=0, le=1e9, description="Mean counts of a reflection at low resolution")
    b_factor: float = Field(15.0, ge=0, le=500, description="Wilson B factor, angstrom^2")
    d_min_a: float = Field(1.5, gt=0.3, le=100, description="Resolution limit, angstrom")
    background: float = Field(5.0, ge=0, le=1e6, description="Flat background, counts per pixel")
    seed: Seed = Field(0, description="Random seed")

    def known_frame_shape(self) -> tuple[int, int]:
        """The simulated images' shape (rows, columns)."""
        return self.shape


@dataclass(frozen=True)
class Observations:
    """Reflections crossing the Ewald sphere during the rotation, one row each.

    Attributes
    ----------
    hkl
        ``[n, 3]`` Miller indices.
    phi_deg
        Rotation angle of the crossing.
    x, y
        Where the spot's centre lands, in lightpipe's pixel coordinates (0 at the centre of the first pixel).
    intensity
        Counts of the whole reflection, over all images.
    d_a
        Resolution, angstrom.
    """

    hkl: np.ndarray
    phi_deg: np.ndarray
    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray
    d_a: np.ndarray

    def __len__(self) -> int:
        return len(self.phi_deg)

    def take(self, keep: np.ndarray) -> Observations:
        """The rows selected by ``keep`` (a mask or indices)."""
        return Observations(self.hkl[keep], self.phi_deg[keep], self.x[keep], self.y[keep], self.intensity[keep],
                            self.d_a[keep])


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def b_matrix(cell: tuple[float, ...]) -> np.ndarray:
    """The reciprocal basis (columns a*, b*, c* in 1/angstrom) of ``cell``, in the Busing-Levy frame."""
    a, b, c = cell[:3]
    alpha, beta, gamma = np.radians(cell[3:])
    # direct basis: a along x, b in the xy plane
    va = np.array([a, 0.0, 0.0])
    vb = np.array([b * np.cos(gamma), b * np.sin(gamma), 0.0])
    cx = c * np.cos(beta)
    cy = c * (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
    vc = np.array([cx, cy, np.sqrt(c * c - cx * cx - cy * cy)])
    direct = np.column_stack([va, vb, vc])
    return np.linalg.inv(direct).T


class RotationSimulation:
    """The crystal, beam and detector of one set of parameters, with every crossing computed once."""

    def __init__(self, params: RotationSimParams) -> None:
        self.params = params
        p = params
        ny, nx = p.shape
        self.beam_center = p.beam_center if p.beam_center is not None else (nx / 2, ny / 2)

    @property
    def s0(self) -> np.ndarray:
        """The incident beam's wave vector, 1/angstrom."""
        return np.array([0.0, 0.0, -1.0 / self.params.wavelength_a])

    @cached_property
    def ub(self) -> np.ndarray:
        """The crystal's setting matrix at rotation 0: ``U B``."""
        rx, ry, rz = self.params.orientation_deg
        u = _rotation(2, rz) @ _rotation(1, ry) @ _rotation(0, rx)
        return u @ b_matrix(self.params.cell)

    def _d_limit(self) -> float:
        """The finest resolution the detector's corners reach, or ``d_min_a`` if finer."""
        p = self.params
        ny, nx = p.shape
        bx, by = self.beam_center
        corner = max(np.hypot(cx - bx, cy - by) for cx in (0, nx) for cy in (0, ny)) * p.pixel_size_m
        two_theta = np.arctan2(corner, p.distance_m)
        return max(p.d_min_a, p.wavelength_a / (2 * np.sin(two_theta / 2)))

    @cached_property
    def observations(self) -> Observations:
        """Every crossing during the rotation (and a few rocking widths beyond) that lands on the detector."""
        p = self.params
        d_min = self._d_limit()
        a_star = np.linalg.norm(self.ub, axis=0)
        lim = [int(np.ceil(1 / (d_min * s))) + 1 for s in a_star]
        # every index within reach: the cell's reciprocal axes bound each index by 1 / (d_min |a*|) (and more for
        # oblique cells, hence the extra one); points beyond d_min are dropped below
        h = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in lim], indexing="ij"), -1).reshape(-1, 3)
        r0 = h @ self.ub.T
        q2 = np.einsum("ij,ij->i", r0, r0)
        keep = (q2 > 0) & (q2 <= 1 / d_min**2)
        h, r0, q2 = h[keep], r0[keep], q2[keep]
        rng = np.random.default_rng([p.seed, 1])
        wilson = rng.exponential(1.0, len(h)) * p.mean_intensity * np.exp(-p.b_factor * q2 / 2)
        # rotation about +x: a cos(phi) + b sin(phi) = c at the crossings (Rodrigues, s0 along -z)
        k = 1 / p.wavelength_a
        a, b, c = -r0[:, 2] * k, -r0[:, 1] * k, -q2 / 2
        rho = np.hypot(a, b)
        reach = np.abs(c) <= rho
        h, r0, q2, wilson, a, b, c, rho = (v[reach] for v in (h, r0, q2, wilson, a, b, c, rho))
        base, half = np.arctan2(b, a), np.arccos(np.clip(c / rho, -1, 1))
        first = p.omega_start_deg - PROFILE_SIGMAS * p.rocking_width_deg
        last = p.omega_start_deg + p.images * p.omega_increment_deg + PROFILE_SIGMAS * p.rocking_width_deg
        rows = []
        for sign in (1.0, -1.0):
            phi = np.degrees(base + sign * half)
            # every turn of the crossing angle that falls in the rotation (a rotation may exceed 360 deg)
            turn0 = np.ceil((first - phi) / 360.0)
            turn1 = np.floor((last - phi) / 360.0)
            for turn in range(int(turn0.min(initial=0)), int(turn1.max(initial=-1)) + 1):
                angle = phi + 360.0 * turn
                inside = (angle >= first) & (angle <= last)
                rows.append((h[inside], angle[inside], r0[inside], wilson[inside], q2[inside]))
        hkl = np.concatenate([r[0] for r in rows]) if rows else np.zeros((0, 3), int)
        phi = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
        r0 = np.concatenate([r[2] for r in rows]) if rows else np.zeros((0, 3))
        intensity = np.concatenate([r[3] for r in rows]) if rows else np.zeros(0)
        q2 = np.concatenate([r[4] for r in rows]) if rows else np.zeros(0)
        x, y = self._detector_xy(r0, phi)
        ny, nx = p.shape
        lands = np.isfinite(x) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        order = np.argsort(phi[lands], kind="stable")
        return Observations(hkl[lands][order], phi[lands][order], x[lands][order], y[lands][order],
                            intensity[lands][order], 1 / np.sqrt(q2[lands][order]))

    def _detector_xy(self, r0: np.ndarray, phi_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the diffracted rays of reciprocal-lattice points ``r0`` rotated by ``phi`` meet the detector."""
        p = self.params
        t = np.radians(phi_deg)
        cos, sin = np.cos(t), np.sin(t)
        r = np.column_stack([r0[:, 0], cos * r0[:, 1] - sin * r0[:, 2], sin * r0[:, 1] + cos * r0[:, 2]])
        s1 = self.s0 + r
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(s1[:, 2] < 0, -p.distance_m / s1[:, 2], np.nan)
        bx, by = self.beam_center
        # the detector's fast axis is +x and its slow axis -y; 0.5 turns corner-based into centred pixels
        x = s1[:, 0] * scale / p.pixel_size_m + bx - 0.5
        y = -s1[:, 1] * scale / p.pixel_size_m + by - 0.5
        return x, y

    def wedge(self, image: int) -> tuple[float, float]:
        """The rotation range ``[start, end)`` of ``image`` (0-based), deg."""
        p = self.params
        start = p.omega_start_deg + image * p.omega_increment_deg
        return start, start + p.omega_increment_deg

    def partials(self, image: int) -> tuple[Observations, np.ndarray]:
        """The observations with some intensity on ``image`` (0-based) and the fraction each has there."""
        from scipy.special import ndtr

        lo, hi = self.wedge(image)
        obs = self.observations
        sigma = self.params.rocking_width_deg
        fraction = ndtr((hi - obs.phi_deg) / sigma) - ndtr((lo - obs.phi_deg) / sigma)
        keep = fraction >= SMALLEST_PART
        return obs.take(keep), fraction[keep]

    def expected(self, image: int) -> np.ndarray:
        """The noise-free counts of ``image`` (0-based): background plus its spots, float64."""
        from scipy.special import ndtr

        p = self.params
        ny, nx = p.shape
        out = np.full((ny, nx), p.background, np.float64)
        obs, fraction = self.partials(image)
        sigma = p.spot_sigma_px
        reach = int(np.ceil(PROFILE_SIGMAS * sigma)) + 1
        for x, y, counts in zip(obs.x, obs.y, obs.intensity * fraction):
            x0, x1 = max(int(np.floor(x)) - reach, 0), min(int(np.floor(x)) + reach + 2, nx)
            y0, y1 = max(int(np.floor(y)) - reach, 0), min(int(np.floor(y)) + reach + 2, ny)
            # each pixel gets the Gaussian's integral over its own area
            ex = np.diff(ndtr((np.arange(x0, x1 + 1) - 0.5 - x) / sigma))
            ey = np.diff(ndtr((np.arange(y0, y1 + 1) - 0.5 - y) / sigma))
            out[y0:y1, x0:x1] += counts * np.outer(ey, ex)
        return out

    def frame(self, image: int) -> np.ndarray:
        """Image ``image`` (0-based) with Poisson noise, int32 counts (as a PILATUS writes them)."""
        rng = np.random.default_rng([self.params.seed, 2, image])
        return rng.poisson(self.expected(image)).astype(np.int32)

    def metadata(self) -> dict[str, Any]:
        """The scan metadata, in lightpipe's names."""
        p = self.params
        bx, by = self.beam_center
        return {"distance_m": p.distance_m, "x_pixel_size_m": p.pixel_size_m, "y_pixel_size_m": p.pixel_size_m,
                "beam_center_x_px": float(bx), "beam_center_y_px": float(by), "wavelength_a": p.wavelength_a,
                "energy_ev": 12398.419843 / p.wavelength_a, "omega_start_deg": p.omega_start_deg,
                "omega_increment_deg": p.omega_increment_deg, "frame_shape": list(p.shape), "frame_dtype": "int32",
                "cell": list(p.cell)}


@lru_cache(maxsize=4)
def simulation(params: RotationSimParams) -> RotationSimulation:
    """The simulation for ``params``, shared by the readers of one process (the crossings are found once)."""
    return RotationSimulation(params)
