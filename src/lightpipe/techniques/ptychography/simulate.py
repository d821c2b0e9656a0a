"""A far-field ptychography scan with known ground truth: the sample, the probe, the scan and the detector.

The sample is a complex transmission function built from two real test
images that scikit-image ships in its wheel (no download): one gives the
amplitude, the other the phase. A Fresnel zone plate with a central stop,
slightly defocused, illuminates it (see
:mod:`~lightpipe.techniques.ptychography.optics`) at positions on a raster,
spiral or Fermat-spiral scan whose step gives the requested overlap, with
random departures from the pattern (known), and optionally an error in the
recorded positions (unknown to a reconstruction). Each diffraction pattern is

``I = fftshift(|fft2(probe_shifted * object_patch, norm="ortho")|**2)``

where the probe is moved by the sub-pixel part of the position (exact, as the
probe is band-limited) and the object patch starts at the integer part. The
detector then records Poisson photons of ``I`` times the beamstop transmission
plus a stray-photon background, on top of a per-pixel dark offset and Gaussian
read noise, rounded to integers and clipped at the dtype's maximum as a real
detector saturates. A scan starts with dark frames (shutter closed: dark offset
and read noise only), then one frame per position.

Every frame is a pure function of ``(seed, index)``, so any worker can make any
frame and two runs give the same data. The ``ptycho_sim`` source reads scans
from here (:mod:`~lightpipe.techniques.ptychography.sim_source`).

Examples
--------
>>> from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation
>>> sim = PtychoSimulation(PtychoSimParams(frame_shape=(64, 64), distance_m=1.0, defocus_m=2e-4, n_positions=16))
>>> truth = sim.truth()
>>> truth["probe"].shape, truth["positions_px"].shape
((64, 64), (16, 2))
>>> sim.frame(sim.streams["data"].start)[1].dtype
dtype('uint16')
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field, FiniteFloat, model_validator

from lightpipe.core.bounds import EventCount, Seed
from lightpipe.core.errors import LightpipeError
from lightpipe.core.source import SourceParams
from lightpipe.techniques.ptychography.optics import (
    bright_field_radius_px,
    encircled_diameter_px,
    object_pixel_size_m,
    shift_probe,
    wavelength_m,
    zone_plate_probe,
)
from lightpipe.techniques.ptychography.scan_patterns import ScanKind, scan_pattern, step_for_overlap

#: Test images of ``skimage.data`` that ship inside scikit-image's wheel.
TestImage = Literal["camera", "astronaut", "moon", "coins", "text", "brick", "grass", "gravel", "coffee", "chelsea"]
#: Free object pixels around the scanned area, so that sub-pixel and refined positions stay inside.
MARGIN_PX = 2
#: Fraction of the probe intensity inside its support disc (sets the overlap's disc).
SUPPORT_FRACTION = 0.9


#: Pixels along one axis of a simulated frame: the whole scan's frames are made in memory.
SimulatedPx = Annotated[int, Field(ge=1, le=4096)]

class PtychoSimParams(SourceParams):
    """Parameters of the ptychography simulator (units in the names)."""

    name: str = Field("ptycho_sim", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$", description="Scan name (the output file is <name>.nxs)")
    energy_ev: float = Field(10000.0, gt=0, le=1e7, description="Photon energy, eV")
    distance_m: float = Field(2.0, gt=0, le=1000, description="Sample-detector distance, m")
    pixel_size_m: float = Field(75e-6, gt=0, le=1, description="Detector pixel size (square pixels), m")
    frame_shape: tuple[SimulatedPx, SimulatedPx] = Field((128, 128), description="Diffraction pattern shape (ny, nx), square, pixels")
    photons_per_frame: float = Field(
        1e7, gt=0, le=1e15, description="Incident photons per scan position (sum of |probe|^2); the sample absorbs some"
    )
    scan: ScanKind = Field("raster", description="Scan pattern: raster, spiral (Archimedean) or fermat (Fermat spiral)")
    n_positions: int = Field(100, ge=1, le=1_000_000, description="Scan positions (raster: rows of ceil(sqrt(n)) positions)")
    overlap: float = Field(
        0.6, ge=0, lt=1, description="Fraction of the probe's support disc shared by nearest neighbours"
    )
    step_px: float | None = Field(
        None, gt=0, le=1e5, description="Distance to the nearest neighbour in object pixels; overrides overlap"
    )
    jitter_px: float = Field(
        0.5, ge=0, le=1e5, description="Random departure of the positions from the pattern (std per axis), object pixels"
    )
    position_error_px: float = Field(
        0.0, ge=0, le=1e5, description="Error of the recorded positions (std per axis; the truth keeps the real ones), px"
    )
    outer_zone_width_m: float = Field(
        50e-9, gt=0, le=1e-3, description="Outermost zone width of the zone plate (NA = wavelength / 2 / width), m"
    )
    zone_plate_diameter_m: float = Field(
        150e-6, gt=0, le=1, description="Zone-plate diameter, m; sets the focal length reported in the metadata"
    )
    central_stop_fraction: float = Field(
        0.35, ge=0, lt=1, description="Central-stop diameter as a fraction of the zone-plate diameter"
    )
    defocus_m: float = Field(4e-4, ge=-1, le=1, description="Distance from the focus to the sample, m (positive downstream)")
    amplitude_image: TestImage = Field("camera", description="scikit-image test image that gives the amplitude")
    phase_image: TestImage = Field("astronaut", description="scikit-image test image that gives the phase")
    amplitude_range: tuple[FiniteFloat, FiniteFloat] = Field((0.6, 1.0), description="Object amplitude from darkest to brightest")
    phase_range_rad: tuple[FiniteFloat, FiniteFloat] = Field((0.0, 1.5), description="Object phase from darkest to brightest, rad")
    dark_level: float = Field(100.0, ge=0, le=1e6, description="Mean dark offset, counts")
    dark_spread: float = Field(3.0, ge=0, le=1e6, description="Pixel-to-pixel spread (std) of the dark offset, counts")
    read_noise: float = Field(2.0, ge=0, le=1e6, description="Gaussian read noise (std) per pixel and frame, counts")
    background: float = Field(0.05, ge=0, le=1e6, description="Stray photons per pixel and frame (mean), counts")
    beamstop_radius_px: float = Field(4.0, ge=0, le=4096, description="Beamstop radius around the zero frequency, detector px")
    beamstop_transmission: float = Field(0.01, ge=0, le=1, description="Intensity transmission of the beamstop")
    darks: EventCount = Field(10, description="Dark frames, acquired before the scan")
    rate_hz: float = Field(
        0.0, ge=0, le=1e6, description="Acquisition rate: events become readable at this rate from the first read, as "
        "from a detector (darks first); 0 = all at once"
    )
    frame_dtype: Literal["uint16", "uint32"] = Field("uint16", description="Detector counts dtype")
    seed: Seed = Field(0, description="Random seed")

    @model_validator(mode="after")
    def _check_geometry(self) -> PtychoSimParams:
        ny, nx = self.frame_shape
        if ny != nx or ny < 8:
            raise ValueError(f"frame_shape must be square and at least 8 x 8 pixels, got {self.frame_shape}")
        bright = bright_field_radius_px(self.energy_ev, self.distance_m, self.pixel_size_m, self.outer_zone_width_m)
        if bright >= ny / 2 - 1:
            raise ValueError(
                f"the zone plate's bright-field disc (radius {bright:.1f} px) does not fit in a {ny} px frame: "
                "increase outer_zone_width_m, pixel_size_m or energy_ev, or decrease distance_m"
            )
        lam = wavelength_m(self.energy_ev)
        field_m = object_pixel_size_m(self.energy_ev, self.distance_m, self.pixel_size_m, self.frame_shape)[0] * ny
        probe_m = abs(self.defocus_m) * lam / self.outer_zone_width_m + 2.44 * self.outer_zone_width_m
        if probe_m > 0.8 * field_m:
            raise ValueError(
                f"the defocused probe (about {probe_m * 1e6:.2f} um across) does not fit in the "
                f"{field_m * 1e6:.2f} um field of view of a frame: reduce defocus_m or increase frame_shape"
            )
        lo, hi = self.amplitude_range
        if not 0 <= lo <= hi:
            raise ValueError(f"amplitude_range must be 0 <= low <= high, got {self.amplitude_range}")
        return self

    def known_frame_shape(self) -> tuple[int, int]:
        """The simulated frames' shape (ny, nx): boxes on them are checked when the pipeline loads."""
        return self.frame_shape


def _test_image(name: str) -> np.ndarray:
    """A scikit-image test image as float64 grey levels in [0, 1]."""
    try:
        import skimage.data
    except ImportError as exc:
        raise LightpipeError(
            "the ptychography simulator builds its sample from scikit-image's test images; "
            "install them with: pip install 'lightpipe[ptycho]'"
        ) from exc
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if image.ndim == 3:  # RGB(A): luminance
        image = image[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    span = image.max() - image.min()
    return (image - image.min()) / span if span > 0 else np.zeros_like(image)


def _resized(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` cropped about its centre to the aspect ratio of ``shape``, then resampled to ``shape``."""
    h, w = image.shape
    ny, nx = shape
    if h * nx > w * ny:
        keep = max(1, round(w * ny / nx))
        image = image[(h - keep) // 2 : (h - keep) // 2 + keep]
    else:
        keep = max(1, round(h * nx / ny))
        image = image[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    resampled = Image.fromarray(image.astype(np.float32)).resize((nx, ny), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resampled, dtype=np.float64), 0.0, 1.0)


def make_object(
    shape: tuple[int, int],
    amplitude_image: str = "camera",
    phase_image: str = "astronaut",
    amplitude_range: tuple[float, float] = (0.6, 1.0),
    phase_range_rad: tuple[float, float] = (0.0, 1.5),
) -> np.ndarray:
    """A complex64 test object: amplitude from one scikit-image test image, phase from another.

    Parameters
    ----------
    shape
        Object shape (Hy, Hx); each image is cropped to this aspect ratio and resampled.
    amplitude_image, phase_image
        Names of functions in ``skimage.data`` (``camera``, ``astronaut``, ...).
    amplitude_range, phase_range_rad
        Values that the darkest and the brightest grey levels map to.
    """
    amplitude = np.interp(_resized(_test_image(amplitude_image), shape), [0, 1], amplitude_range)
    phase = np.interp(_resized(_test_image(phase_image), shape), [0, 1], phase_range_rad)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


class PtychoSimulation:
    """The simulated instrument, sample and scan for one set of parameters.

    Parameters
    ----------
    params
        Simulator parameters.

    Raises
    ------
    LightpipeError
        When the brightest pixel would overflow ``frame_dtype``.
    """

    def __init__(self, params: PtychoSimParams) -> None:
        self.params = params
        peak = float(np.max(np.abs(np.fft.fft2(self.probe, norm="ortho")) ** 2))
        brightest = peak + params.background + params.dark_level + 6 * (params.dark_spread + params.read_noise)
        limit = np.iinfo(params.frame_dtype).max
        if brightest > limit:
            raise LightpipeError(
                f"photons_per_frame={params.photons_per_frame:g} puts about {brightest:.0f} counts in the brightest "
                f"pixel, more than {params.frame_dtype} holds ({limit}): use frame_dtype='uint32' or fewer photons"
            )

    @property
    def wavelength_m(self) -> float:
        """Photon wavelength, m."""
        return wavelength_m(self.params.energy_ev)

    @property
    def object_pixel_size_m(self) -> tuple[float, float]:
        """Object-plane pixel size (y, x), m."""
        p = self.params
        return object_pixel_size_m(p.energy_ev, p.distance_m, p.pixel_size_m, p.frame_shape)

    @property
    def focal_length_m(self) -> float:
        """Zone-plate focal length: diameter * outer zone width / wavelength."""
        return self.params.zone_plate_diameter_m * self.params.outer_zone_width_m / self.wavelength_m

    @cached_property
    def probe(self) -> np.ndarray:
        """Complex64 probe (ny, nx) with ``sum(|probe|**2) == photons_per_frame``."""
        p = self.params
        unit = zone_plate_probe(
            p.frame_shape, self.object_pixel_size_m, p.energy_ev, p.outer_zone_width_m,
            p.central_stop_fraction, p.defocus_m,
        )
        return (unit * np.sqrt(p.photons_per_frame)).astype(np.complex64)

    @cached_property
    def probe_diameter_px(self) -> float:
        """Diameter of the probe's support disc (90 % of its intensity), object pixels."""
        return encircled_diameter_px(self.probe, SUPPORT_FRACTION)

    @cached_property
    def step_px(self) -> float:
        """Median distance between nearest scan positions, object pixels."""
        p = self.params
        return p.step_px if p.step_px is not None else step_for_overlap(p.overlap, self.probe_diameter_px)

    @cached_property
    def positions_px(self) -> np.ndarray:
        """Top-left corners (N, 2) of the probe window in the object array, (y, x), object pixels."""
        p = self.params
        centres = scan_pattern(p.scan, p.n_positions, self.step_px)
        centres = centres + np.random.default_rng([p.seed, 2**31 + 1]).normal(0.0, p.jitter_px, centres.shape)
        return centres - centres.min(axis=0) + MARGIN_PX

    @cached_property
    def recorded_positions_px(self) -> np.ndarray:
        """Positions (N, 2) as the scan records them: the real ones plus the encoder's error (``position_error_px``)."""
        p = self.params
        error = np.random.default_rng([p.seed, 2**31 + 2]).normal(0.0, p.position_error_px, self.positions_px.shape)
        return self.positions_px + error

    @property
    def object_shape(self) -> tuple[int, int]:
        """Shape (Hy, Hx) of the object array: the scanned area, one frame and a margin on each side."""
        far = np.ceil(self.positions_px.max(axis=0)).astype(int)
        ny, nx = self.params.frame_shape
        return int(far[0]) + ny + MARGIN_PX, int(far[1]) + nx + MARGIN_PX

    @cached_property
    def object(self) -> np.ndarray:
        """Complex64 transmission function of the sample, ``object_shape``."""
        p = self.params
        return make_object(self.object_shape, p.amplitude_image, p.phase_image, p.amplitude_range, p.phase_range_rad)

    @cached_property
    def _detector(self) -> dict[str, np.ndarray]:
        p = self.params
        ny, nx = p.frame_shape
        rng = np.random.default_rng([p.seed, 2**31])
        y, x = np.indices((ny, nx))
        beamstop = np.where(np.hypot(y - ny // 2, x - nx // 2) <= p.beamstop_radius_px, p.beamstop_transmission, 1.0)
        return {"dark": p.dark_level + rng.normal(0.0, p.dark_spread, (ny, nx)), "beamstop": beamstop}

    @property
    def streams(self) -> dict[str, range]:
        """Acquisition-index range of the ``dark`` and ``data`` streams."""
        p = self.params
        return {"dark": range(0, p.darks), "data": range(p.darks, p.darks + p.n_positions)}

    def exit_wave(self, position: int) -> np.ndarray:
        """Complex exit wave behind the sample at scan position ``position`` (0-based), (ny, nx)."""
        corner = self.positions_px[position]
        start = np.floor(corner).astype(int)
        ny, nx = self.params.frame_shape
        patch = self.object[start[0] : start[0] + ny, start[1] : start[1] + nx]
        return shift_probe(self.probe, corner - start) * patch

    def diffraction(self, position: int) -> np.ndarray:
        """Noise-free intensity (ny, nx), float32, zero frequency at the centre: no beamstop, background or dark."""
        wave = np.fft.fft2(self.exit_wave(position), norm="ortho")
        return np.fft.fftshift(np.abs(wave) ** 2).astype(np.float32)

    def intensities(self) -> np.ndarray:
        """Noise-free intensities of every position, (N, ny, nx) float32: what a reconstruction fits."""
        return np.stack([self.diffraction(k) for k in range(self.params.n_positions)])

    def expected_counts(self, position: int) -> np.ndarray:
        """Mean detected photons per pixel at ``position``: intensity behind the beamstop plus background."""
        return self.diffraction(position) * self._detector["beamstop"] + self.params.background

    def illumination(self) -> np.ndarray:
        """Sum over positions of the probe intensity on the object grid: where the scan measured the object."""
        total = np.zeros(self.object_shape)
        ny, nx = self.params.frame_shape
        for corner in self.positions_px:
            start = np.floor(corner).astype(int)
            moved = shift_probe(self.probe, corner - start)
            total[start[0] : start[0] + ny, start[1] : start[1] + nx] += np.abs(moved) ** 2
        return total

    def position_m(self, position: int) -> tuple[float, float]:
        """Recorded position (y, x) of the probe window's top-left corner on the object, m.

        ``recorded_positions_px`` times the object pixel size.
        """
        py, px = self.object_pixel_size_m
        y, x = self.recorded_positions_px[position]
        return float(y * py), float(x * px)

    def truth(self) -> dict[str, Any]:
        """Ground truth.

        Returns
        -------
        dict
            ``object`` (complex64 (Hy, Hx)), ``probe`` (complex64 (ny, nx)),
            ``positions_px`` (N, 2, where the probe really was),
            ``recorded_positions_px`` (N, 2, what the events and the metadata
            say), ``object_pixel_size_m`` (y, x),
            ``wavelength_m``, ``probe_diameter_px``, ``step_px``,
            ``illumination`` (probe intensity summed over positions, (Hy, Hx)),
            ``dark`` (mean dark offset per pixel), ``beamstop`` (intensity
            transmission per pixel), ``background`` (photons per pixel).
        """
        p = self.params
        return {
            "object": self.object.copy(),
            "probe": self.probe.copy(),
            "positions_px": self.positions_px.copy(),
            "recorded_positions_px": self.recorded_positions_px.copy(),
            "object_pixel_size_m": self.object_pixel_size_m,
            "wavelength_m": self.wavelength_m,
            "probe_diameter_px": self.probe_diameter_px,
            "step_px": self.step_px,
            "illumination": self.illumination(),
            "dark": self._detector["dark"].copy(),
            "beamstop": self._detector["beamstop"].copy(),
            "background": p.background,
        }

    def frame(self, index: int) -> tuple[str, np.ndarray]:
        """Stream and detector counts of acquisition ``index`` (darks first, then one frame per position)."""
        p = self.params
        streams = self.streams
        if index not in range(streams["data"].stop):
            raise IndexError(f"acquisition {index} is outside the scan (0 to {streams['data'].stop - 1})")
        rng = np.random.default_rng([p.seed, index])
        if index in streams["dark"]:
            stream, photons = "dark", np.zeros(p.frame_shape)
        else:
            stream, photons = "data", rng.poisson(self.expected_counts(index - streams["data"].start))
        counts = photons + self._detector["dark"] + rng.normal(0.0, p.read_noise, p.frame_shape)
        info = np.iinfo(p.frame_dtype)
        return stream, np.clip(np.rint(counts), 0, info.max).astype(p.frame_dtype)

    def metadata(self) -> dict[str, Any]:
        """Scan metadata: geometry, detector, positions and the simulator's settings."""
        p = self.params
        ny, nx = p.frame_shape
        dy, dx = self.object_pixel_size_m
        return {
            "frame_shape": [ny, nx],
            "frame_dtype": p.frame_dtype,
            "energy_ev": p.energy_ev,
            "wavelength_m": self.wavelength_m,
            "distance_m": p.distance_m,
            "x_pixel_size_m": p.pixel_size_m,
            "y_pixel_size_m": p.pixel_size_m,
            "beam_center_x_px": float(nx // 2),
            "beam_center_y_px": float(ny // 2),
            "object_pixel_size_m": [dy, dx],
            "object_shape": list(self.object_shape),
            "positions_px": self.recorded_positions_px.tolist(),
            "beamstop_radius_px": p.beamstop_radius_px,
            "beamstop_transmission": p.beamstop_transmission,
            "photons_per_frame": p.photons_per_frame,
            "focal_length_m": self.focal_length_m,
            "scan_pattern": p.scan,
            "simulator": "ptycho_sim",
            "seed": p.seed,
        }


@lru_cache(maxsize=4)
def simulation(params: PtychoSimParams) -> PtychoSimulation:
    """The :class:`PtychoSimulation` of ``params``, made once per process (readers on workers share it)."""
    return PtychoSimulation(params)
