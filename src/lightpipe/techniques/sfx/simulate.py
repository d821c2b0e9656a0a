"""Serial crystallography frames with known truth: Bragg peaks of a lattice in random orientations on a modular detector.

The detector is a slab of modules (``modules`` rows and columns of
``module_shape_px`` pixels) with ``module_gap_px`` rows and columns of gap
between them, as an EIGER or PILATUS delivers its frames; gap pixels hold the
value a detector flags them with (the dtype's largest value for unsigned
frames, -1 for signed, NaN for float). A few hot pixels count high in every
frame. Both are in the pixel mask (NeXus ``pixel_mask`` bits: 1 gap, 8 hot).

A hit (an exact ``hit_fraction`` of the frames, drawn once per scan) holds a
crystal of the given unit cell in a random orientation. Its reciprocal
lattice points ``q = U B h`` within ``d_min_a`` diffract where the beam
(along +z, wave vector ``1/wavelength``) meets them closest to the Ewald
sphere: the ``peaks_per_hit`` points with the smallest excitation error whose
spot falls on a module, at least 2 pixels from its edge. A spot is a 2-D
Gaussian of ``spot_sigma_px`` integrated over each pixel, centred where the
diffracted ray ``k_in + q`` crosses the flat detector at ``distance_m``; its
photons are ``mean_photons`` times an exponential draw (Wilson statistics)
times ``exp(-b_factor / 2 * s**2)``. Under the spots lies a radial background
(``background_photons`` per pixel with a water ring at 3.7 A). Counts are
Poisson; non-hits hold the background only.

Truth per peak: position (slab pixels, the first pixel's centre at 0: fs is x,
ss is y), photons, Miller indices, and ``snr = I / sqrt(I + 4 pi sigma**2 b)``
(the Poisson noise of the spot and of the background ``b`` under its
effective area).

Every frame is a pure function of ``(seed, index)``.

Examples
--------
>>> from lightpipe.techniques.sfx.simulate import SfxSimParams, SfxSimulation
>>> sim = SfxSimulation(SfxSimParams(frames=10, hit_fraction=0.5))
>>> sim.frame_shape, int(sum(sim.is_hit(i) for i in range(10)))
((198, 262), 5)
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from lightpipe.core.bounds import EventCount, Seed
from lightpipe.core.source import SourceParams
from lightpipe.techniques.sfx.geometry import DetectorGeometry, Panel, gap_mask, write_crystfel_geom

__all__ = ["DETECTORS", "SfxSimParams", "SfxSimulation", "simulation", "write_sfx_nexus"]

#: Planck constant times the speed of light, eV Angstrom.
HC_EV_A = 12398.419843
#: The water ring's d-spacing, Angstrom, and its width in 1/d (1/Angstrom).
WATER_RING_A = 3.7
WATER_RING_WIDTH = 0.03
#: NeXus pixel_mask bits the simulator sets.
GAP_BIT, HOT_BIT = 1, 8
#: Detector layouts (module shape, modules, gaps, pixel size) of real detectors, for ``SfxSimParams(**DETECTORS[...])``.
DETECTORS: dict[str, dict[str, Any]] = {
    # PILATUS 1M: 5 x 2 modules of 195 x 487 pixels of 172 um, 17 rows and 7 columns between them: 1043 x 981
    "pilatus1m": {"module_shape_px": (195, 487), "modules": (5, 2), "module_gap_px": (17, 7), "pixel_size_m": 172e-6,
                  "distance_m": 0.2, "frame_dtype": "int32"},
    # EIGER 4M: 4 x 2 modules of 514 x 1030 pixels of 75 um, 37 rows and 10 columns between them: 2167 x 2070
    "eiger4m": {"module_shape_px": (514, 1030), "modules": (4, 2), "module_gap_px": (37, 10), "pixel_size_m": 75e-6,
                "distance_m": 0.15, "frame_dtype": "uint32"},
}

SimPx = Annotated[int, Field(ge=1, le=8192)]


class SfxSimParams(SourceParams):
    """Parameters of the serial crystallography simulator (units in the names)."""

    name: str = Field("sfx_sim", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output files are named after it)")
    frames: EventCount = Field(100, description="Frames in the scan")
    hit_fraction: float = Field(0.3, ge=0, le=1, description="Fraction of the frames that hold a crystal (exact)")
    module_shape_px: tuple[SimPx, SimPx] = Field((96, 128), description="Pixels of one module (rows, columns)")
    modules: tuple[Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=64)]] = Field(
        (2, 2), description="Modules of the detector (rows, columns)")
    module_gap_px: tuple[Annotated[int, Field(ge=0, le=512)], Annotated[int, Field(ge=0, le=512)]] = Field(
        (6, 6), description="Gap between modules (rows, columns), pixels")
    pixel_size_m: float = Field(75e-6, gt=0, le=0.01, description="Pixel size (square pixels), m")
    distance_m: float = Field(0.08, gt=0, le=100, description="Sample-detector distance, m")
    energy_ev: float = Field(12000.0, ge=100, le=1e6, description="Photon energy, eV")
    beam_center_px: tuple[float, float] | None = Field(
        None, description="Beam centre (row, column), pixels; default the frame's centre plus (0.3, -0.4)")
    cell_a: tuple[float, float, float] = Field((79.1, 79.1, 37.9), description="Unit cell lengths a, b, c, Angstrom")
    cell_angles_deg: tuple[float, float, float] = Field((90.0, 90.0, 90.0), description="Unit cell angles, deg")
    d_min_a: float = Field(1.5, gt=0.1, le=100, description="Highest resolution of the lattice, Angstrom")
    peaks_per_hit: int = Field(50, ge=0, le=100_000, description="Bragg peaks of a hit (nearest the Ewald sphere)")
    mean_photons: float = Field(300.0, ge=0, le=1e9, description="Mean photons of a peak before the B-factor falloff")
    b_factor_a2: float = Field(10.0, ge=0, le=1000, description="B factor of the intensity falloff, Angstrom^2")
    spot_sigma_px: float = Field(0.8, gt=0.1, le=20, description="Spot size (Gaussian sigma), pixels")
    background_photons: float = Field(4.0, ge=0, le=1e6, description="Mean background photons per pixel")
    water_ring: float = Field(1.0, ge=0, le=1e3, description="Water ring at 3.7 A, relative to the background")
    hot_pixels: int = Field(10, ge=0, le=1_000_000, description="Pixels counting hot_counts in every frame")
    hot_counts: int = Field(2000, ge=0, le=1_000_000, description="Counts of a hot pixel")
    frame_dtype: Literal["uint16", "uint32", "int32", "float32"] = Field("uint16", description="Frame dtype")
    seed: Seed = Field(0, description="Random seed")

    @model_validator(mode="after")
    def _check(self) -> SfxSimParams:
        rows, cols = self.frame_shape
        if rows * cols > 64e6:
            raise ValueError(f"the detector is {rows} x {cols} pixels; at most 64 million pixels are simulated")
        return self

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape (rows, columns) of the frames: modules and the gaps between them."""
        (my, mx), (ny, nx), (gy, gx) = self.module_shape_px, self.modules, self.module_gap_px
        return ny * my + (ny - 1) * gy, nx * mx + (nx - 1) * gx

    def known_frame_shape(self) -> tuple[int, int]:
        """The frames' shape: boxes on them are checked when the pipeline loads."""
        return self.frame_shape


def _reciprocal_basis(cell: tuple[float, float, float], angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Columns a*, b*, c* (1/Angstrom) of the reciprocal lattice of a cell, in the cell's Cartesian frame."""
    a, b, c = cell
    al, be, ga = np.radians(angles_deg)
    # direct basis: a along x, b in the xy plane
    cx = c * np.cos(be)
    cy = c * (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
    cz = np.sqrt(max(c * c - cx * cx - cy * cy, 1e-12))
    direct = np.array([[a, b * np.cos(ga), cx], [0.0, b * np.sin(ga), cy], [0.0, 0.0, cz]])
    return np.linalg.inv(direct).T


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly (a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


class SfxSimulation:
    """The detector, the crystal and the frames of one set of parameters (see the module description)."""

    def __init__(self, params: SfxSimParams) -> None:
        self.params = params

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.params.frame_shape

    @property
    def wavelength_a(self) -> float:
        return HC_EV_A / self.params.energy_ev

    @property
    def beam_center_px(self) -> tuple[float, float]:
        """Beam centre (row, column), pixels."""
        if self.params.beam_center_px is not None:
            return self.params.beam_center_px
        ny, nx = self.frame_shape
        return (ny - 1) / 2 + 0.3, (nx - 1) / 2 - 0.4

    @cached_property
    def gaps(self) -> np.ndarray:
        """``True`` on the pixels between modules."""
        p = self.params
        return gap_mask(self.frame_shape, p.module_shape_px, p.module_gap_px)

    @cached_property
    def hot(self) -> np.ndarray:
        """Flat indices of the hot pixels (on modules)."""
        rng = np.random.default_rng([self.params.seed, 2**31 + 3])
        on = np.flatnonzero(~self.gaps.ravel())
        return np.sort(rng.choice(on, size=min(self.params.hot_pixels, len(on)), replace=False))

    @cached_property
    def pixel_mask(self) -> np.ndarray:
        """NeXus pixel_mask (uint32): 1 on gaps, 8 on hot pixels."""
        mask = np.where(self.gaps, GAP_BIT, 0).astype(np.uint32)
        mask.ravel()[self.hot] |= HOT_BIT
        return mask

    @cached_property
    def hits(self) -> frozenset[int]:
        """Acquisition indices of the hits: an exact ``hit_fraction`` of the frames."""
        p = self.params
        n = int(round(p.frames * p.hit_fraction))
        return frozenset(int(i) for i in np.random.default_rng([p.seed, 2**31 + 4]).permutation(p.frames)[:n])

    def is_hit(self, index: int) -> bool:
        return index in self.hits

    @cached_property
    def _resolution(self) -> np.ndarray:
        """1/d (1/Angstrom) at every pixel."""
        p = self.params
        ny, nx = self.frame_shape
        cy, cx = self.beam_center_px
        y, x = np.indices((ny, nx), dtype=np.float64)
        two_theta = np.arctan(np.hypot(y - cy, x - cx) * p.pixel_size_m / p.distance_m)
        return 2 * np.sin(two_theta / 2) / self.wavelength_a

    @cached_property
    def background(self) -> np.ndarray:
        """Expected background photons per pixel (float64)."""
        p = self.params
        ring = np.exp(-0.5 * ((self._resolution - 1 / WATER_RING_A) / WATER_RING_WIDTH) ** 2)
        return p.background_photons * (1 + p.water_ring * ring)

    @cached_property
    def _reflections(self) -> tuple[np.ndarray, np.ndarray]:
        """Miller indices (n, 3) and reciprocal vectors (n, 3) of the lattice points within ``d_min_a``, 000 left out."""
        p = self.params
        basis = _reciprocal_basis(p.cell_a, p.cell_angles_deg)
        limit = 1 / p.d_min_a
        reach = [int(np.ceil(limit / np.linalg.norm(basis[:, k]))) + 1 for k in range(3)]
        h = np.stack(np.meshgrid(*(np.arange(-n, n + 1) for n in reach), indexing="ij"), axis=-1).reshape(-1, 3)
        q = h @ basis.T
        keep = (np.linalg.norm(q, axis=1) <= limit) & np.any(h != 0, axis=1)
        return h[keep], q[keep]

    def truth(self, index: int) -> dict[str, np.ndarray]:
        """The peaks of frame ``index``: ``x``, ``y`` (slab pixels), ``photons``, ``snr``, ``hkl``; empty for a non-hit."""
        p = self.params
        empty = {"x": np.empty(0), "y": np.empty(0), "photons": np.empty(0), "snr": np.empty(0),
                 "hkl": np.empty((0, 3), int)}
        if not self.is_hit(index) or p.peaks_per_hit == 0:
            return empty
        rng = np.random.default_rng([p.seed, index, 1])
        hkl, q = self._reflections
        q = q @ _random_rotation(rng).T
        k = 1 / self.wavelength_a
        out = q + np.array([0.0, 0.0, k])
        excitation = np.abs(np.linalg.norm(out, axis=1) - k)
        forward = out[:, 2] > 0
        cy, cx = self.beam_center_px
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = p.distance_m / p.pixel_size_m / out[:, 2]
            x = cx + out[:, 0] * scale
            y = cy + out[:, 1] * scale
        ny, nx = self.frame_shape
        inside = forward & (x >= 2) & (x <= nx - 3) & (y >= 2) & (y <= ny - 3)
        (my, mx), (gy, gx) = p.module_shape_px, p.module_gap_px
        xi, yi = np.where(inside, x, 0), np.where(inside, y, 0)
        # at least 2 pixels inside a module: a spot cut by a gap is not a fair target
        inside &= (np.floor(xi + 0.5) % (mx + gx) >= 2) & (np.floor(xi + 0.5) % (mx + gx) <= mx - 3)
        inside &= (np.floor(yi + 0.5) % (my + gy) >= 2) & (np.floor(yi + 0.5) % (my + gy) <= my - 3)
        chosen = np.flatnonzero(inside)
        chosen = chosen[np.argsort(excitation[chosen], kind="stable")[: p.peaks_per_hit]]
        chosen = np.sort(chosen)
        s2 = np.sum(q[chosen] ** 2, axis=1)
        photons = p.mean_photons * rng.exponential(1.0, len(chosen)) * np.exp(-p.b_factor_a2 / 2 * s2)
        b = self.background[np.rint(y[chosen]).astype(int), np.rint(x[chosen]).astype(int)]
        snr = photons / np.sqrt(photons + 4 * np.pi * p.spot_sigma_px**2 * b)
        return {"x": x[chosen], "y": y[chosen], "photons": photons, "snr": snr, "hkl": hkl[chosen]}

    def expected(self, index: int) -> np.ndarray:
        """Expected photons per pixel of frame ``index``: background and spots (float64), before gaps and hot pixels."""
        from scipy.special import erf

        image = self.background.copy()
        truth = self.truth(index)
        sigma = self.params.spot_sigma_px
        half = int(np.ceil(4 * sigma)) + 1
        ny, nx = self.frame_shape
        offsets = np.arange(-half, half + 1)
        for x, y, photons in zip(truth["x"], truth["y"], truth["photons"]):
            rows = np.clip(int(round(y)) + offsets, 0, ny - 1)
            cols = np.clip(int(round(x)) + offsets, 0, nx - 1)
            # the Gaussian integrated over each pixel: the pixels' centroid is the spot's centre exactly
            fy = 0.5 * (erf((rows + 0.5 - y) / (np.sqrt(2) * sigma)) - erf((rows - 0.5 - y) / (np.sqrt(2) * sigma)))
            fx = 0.5 * (erf((cols + 0.5 - x) / (np.sqrt(2) * sigma)) - erf((cols - 0.5 - x) / (np.sqrt(2) * sigma)))
            image[np.ix_(rows, cols)] += photons * np.outer(fy, fx)
        return image

    def frame(self, index: int) -> np.ndarray:
        """Detector counts of frame ``index``: Poisson counts, hot pixels, gaps flagged as the detector flags them."""
        p = self.params
        if not 0 <= index < p.frames:
            raise IndexError(f"frame {index} is outside the scan (0 to {p.frames - 1})")
        rng = np.random.default_rng([p.seed, index])
        counts = rng.poisson(self.expected(index)).astype(np.float64)
        counts.ravel()[self.hot] = p.hot_counts
        dtype = np.dtype(p.frame_dtype)
        if dtype.kind == "f":
            counts[self.gaps] = np.nan
            return counts.astype(dtype)
        info = np.iinfo(dtype)
        counts = np.clip(counts, 0, info.max - 1)  # the largest value is the detector's flag, never a count
        counts[self.gaps] = info.max if dtype.kind == "u" else -1
        return counts.astype(dtype)

    def geometry(self) -> DetectorGeometry:
        """The detector as CrystFEL sees it: one panel per module, the gaps in no panel, hot pixels bad."""
        p = self.params
        (my, mx), (rows, cols), (gy, gx) = p.module_shape_px, p.modules, p.module_gap_px
        cy, cx = self.beam_center_px
        panels = []
        for r in range(rows):
            for c in range(cols):
                y0, x0 = r * (my + gy), c * (mx + gx)
                panels.append(Panel(f"m{r}{c}" if rows * cols <= 100 else f"m{r}_{c}", x0, x0 + mx - 1, y0, y0 + my - 1,
                                    x0 - cx - 0.5, y0 - cy - 0.5, res=1 / p.pixel_size_m, clen_m=p.distance_m))
        bad = np.zeros(self.frame_shape, bool)
        bad.ravel()[self.hot] = True
        return DetectorGeometry(self.frame_shape, panels, "sfx_sim", bad=bad)

    def metadata(self) -> dict[str, Any]:
        """Scan metadata: the detector (beam centre, pixel size, distance, module layout), the beam and the settings."""
        p = self.params
        ny, nx = self.frame_shape
        cy, cx = self.beam_center_px
        return {
            "frame_shape": [ny, nx],
            "frame_dtype": p.frame_dtype,
            "energy_ev": p.energy_ev,
            "wavelength_a": self.wavelength_a,
            "wavelength_m": self.wavelength_a * 1e-10,
            "distance_m": p.distance_m,
            "x_pixel_size_m": p.pixel_size_m,
            "y_pixel_size_m": p.pixel_size_m,
            "beam_center_x_px": cx,
            "beam_center_y_px": cy,
            "module_shape_px": list(p.module_shape_px),
            "module_gap_px": list(p.module_gap_px),
            "hit_fraction": p.hit_fraction,
            "cell_a": list(p.cell_a),
            "simulator": "sfx_sim",
            "seed": p.seed,
        }


@lru_cache(maxsize=4)
def simulation(params: SfxSimParams) -> SfxSimulation:
    """The :class:`SfxSimulation` of ``params``, made once per process (readers on workers share it)."""
    return SfxSimulation(params)


def write_sfx_nexus(path: str | Path, params: SfxSimParams, *, max_truth_peaks: int | None = None) -> Path:
    """Write a simulated run as a NeXus/NXmx file, its truth inside, and a CrystFEL ``.geom`` file beside it.

    ``/entry/data/data`` holds the frames; ``/entry/instrument/detector`` the
    beam centre, pixel size, distance and ``pixel_mask``;
    ``/entry/instrument/beam/incident_wavelength`` the wavelength; and
    ``/entry/sfx_truth`` (NXcollection) per frame ``hit``, ``n_peaks`` and
    ``peak_x``, ``peak_y``, ``peak_photons``, ``peak_snr`` padded with NaN.
    ``<stem>.geom`` (one panel per module, the frames and mask of this file)
    is written beside it. The ``hdf5`` source reads the file.

    Returns
    -------
    Path
        The NeXus file.
    """
    import h5py

    sim = simulation(params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ny, nx = sim.frame_shape
    truths = [sim.truth(i) for i in range(params.frames)]
    width = max_truth_peaks or max([len(t["x"]) for t in truths] + [1])
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXmx"
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        det = instrument.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        cy, cx = sim.beam_center_px
        for name, value, unit in (("beam_center_x", cx, "pixel"), ("beam_center_y", cy, "pixel"),
                                  ("distance", params.distance_m, "m"), ("x_pixel_size", params.pixel_size_m, "m"),
                                  ("y_pixel_size", params.pixel_size_m, "m")):
            det[name] = value
            det[name].attrs["units"] = unit
        det["pixel_mask"] = sim.pixel_mask
        beam = instrument.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam["incident_wavelength"] = sim.wavelength_a
        beam["incident_wavelength"].attrs["units"] = "angstrom"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        frames = data.create_dataset("data", (params.frames, ny, nx), np.dtype(params.frame_dtype),
                                     chunks=(1, ny, nx) if params.frames else None)
        for i in range(params.frames):
            frames[i] = sim.frame(i)
        truth = entry.create_group("sfx_truth")
        truth.attrs["NX_class"] = "NXcollection"
        truth["hit"] = np.array([sim.is_hit(i) for i in range(params.frames)], bool)
        truth["n_peaks"] = np.array([len(t["x"]) for t in truths], np.int32)
        for key, name in (("x", "peak_x"), ("y", "peak_y"), ("photons", "peak_photons"), ("snr", "peak_snr")):
            table = np.full((params.frames, width), np.nan, np.float32)
            for i, t in enumerate(truths):
                table[i, : min(len(t[key]), width)] = t[key][:width]
            truth[name] = table
    write_crystfel_geom(path.with_suffix(".geom"), sim.geometry(), photon_energy_ev=params.energy_ev,
                        mask="/entry/instrument/detector/pixel_mask")
    return path
