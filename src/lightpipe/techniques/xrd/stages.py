"""Azimuthal integration stages: pyFAI's 1-D curves and 2-D cakes, the scan's mean pattern, and peak intensities for maps.

pyFAI integrates; these stages decide what it is given. Each worker builds one
integrator per calibration and reuses it for every frame and scan
(:func:`~lightpipe.techniques.xrd.geometry.integrator`).

Pixels pyFAI must not use, in three layers:

* **static**: the detector's own mask from the PONI file (a Pilatus's module
  gaps), the ``mask`` file, and for the ``_dark`` stages the ``mask`` input (the
  bad pixels ``dark_statistics`` found). They are fixed for the scan and part of
  the integrator.
* **per frame**: a pixel below ``min_valid`` (default 0: a Pilatus writes -1 in
  gaps and -2 in bad pixels), above ``max_valid`` (default, for unsigned
  integer frames, the dtype's largest value minus one: DECTRIS detectors mark
  saturated and defective pixels with the largest value), NaN or infinite is left out of that
  frame's integration only. pyFAI leaves out NaN pixels, so such a frame is
  integrated as a float32 copy with NaN in them; a frame without any integrates
  as it is, with no copy.
* **bins**: a bin no valid pixel reaches is 0 (pyFAI's ``empty`` value).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
from pydantic import FiniteFloat, field_validator, model_validator

from lightpipe.core.bounds import MAX_COUNT, PathText
from lightpipe.core.errors import LightpipeError
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param
from lightpipe.core.images import read_image
from lightpipe.techniques.xrd.geometry import PoniGeometry, integrator, read_poni, shape_problem

__all__ = [
    "RADIAL_UNITS",
    "AzimuthalIntegration",
    "AzimuthalIntegrationDark",
    "CakeIntegration",
    "CakeIntegrationDark",
    "RoiIntensity",
    "XrdPattern",
]

#: pyFAI's radial units and the unit of their values (NeXus spelling).
RADIAL_UNITS = {"2th_deg": "deg", "q_nm^-1": "1/nm", "q_A^-1": "1/angstrom", "r_mm": "mm"}
RadialUnit = Literal["2th_deg", "q_nm^-1", "q_A^-1", "r_mm"]
#: The parts of a pyFAI method: pixel splitting, algorithm, implementation.
SPLITS = ("no", "bbox", "pseudo", "full")
ALGORITHMS = ("histogram", "lut", "csr", "csc")
IMPLEMENTATIONS = ("python", "cython", "opencl")
#: pyFAI's own default for integrate1d and integrate2d: bounding-box pixel splitting, a CSR sparse matrix, Cython.
DEFAULT_METHOD = ("bbox", "csr", "cython")
#: A range given as [low, high] in some unit.
Range = tuple[FiniteFloat, FiniteFloat]


def _ordered(value: Range | None, name: str) -> Range | None:
    if value is not None and not value[0] < value[1]:
        raise ValueError(f"{name} [{value[0]}, {value[1]}] is empty or reversed; give [low, high] with low < high")
    return value


class _Corrections(StageParams):
    """What every integration stage takes: the calibration, the unit, the corrections and the pixels to leave out."""

    poni: PathText | None = param(None, "PONI file from pyFAI-calib2 (detector, distance, beam centre, tilts, "
                                  "wavelength); default the calibration in the scan's metadata (poni), which "
                                  "powder_sim gives")
    unit: RadialUnit = param("2th_deg", "Radial unit: 2th_deg (scattering angle 2theta, deg), q_nm^-1, q_A^-1 "
                             "(momentum transfer) or r_mm (radius on the detector)")
    radial_range: Range | None = param(None, "Radial range [low, high] in the chosen unit; default all the frame")
    azimuth_range: Range | None = param(None, "Azimuthal (chi) range [low, high]; default the full circle",
                                        unit="deg")
    method: str | tuple[str, str, str] = param(
        DEFAULT_METHOD, "pyFAI method: [splitting, algorithm, implementation], e.g. [full, csr, cython], or one "
        "word (csr, histogram, ...); default pyFAI's own, [bbox, csr, cython]")
    mask: PathText | None = param(None, "Mask file (non-zero = excluded): .npy, EDF/TIFF, or file.h5::/dataset; "
                                  "added to the detector's own mask")
    flat: PathText | None = param(None, "Flat-field file (.npy, EDF/TIFF, file.h5::/dataset): frames are divided "
                                  "by it")
    polarization_factor: float | None = param(None, "Polarisation correction, -1 to 1 (0.99 for a horizontally "
                                              "polarised synchrotron beam); none by default", ge=-1, le=1)
    correct_solid_angle: bool = param(True, "Correct for each pixel's solid angle")
    error_model: Literal["poisson", "azimuthal"] | None = param(
        "poisson", "Uncertainties: poisson (variance = counts), azimuthal (spread within each ring) or none "
        "(intensity_errors is then NaN)")
    min_valid: float | None = param(0.0, "Pixels below this are left out of their frame (Pilatus gaps read -1); "
                                    "none: keep every value", unit="counts", ge=-1e12, le=1e12)
    max_valid: float | None = param(None, "Pixels above this are left out of their frame; default for unsigned "
                                    "integer frames the dtype's largest value minus one", unit="counts",
                                    ge=-1e12, le=1e12)

    @field_validator("poni")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None:
            try:  # a missing or unparsable file is refused when the pipeline loads, naming the file
                read_poni(value)
            except LightpipeError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in SPLITS + ALGORITHMS:
                raise ValueError(f"method {value!r} is not one of {', '.join(SPLITS + ALGORITHMS)}; or give "
                                 "[splitting, algorithm, implementation], e.g. [full, csr, cython]")
            return value
        parts = tuple(value) if isinstance(value, (list, tuple)) else ()
        choices = (SPLITS, ALGORITHMS, IMPLEMENTATIONS)
        if len(parts) != 3 or any(p not in c for p, c in zip(parts, choices)):
            raise ValueError(f"method {value!r} must be [splitting, algorithm, implementation] with splitting in "
                             f"{SPLITS}, algorithm in {ALGORITHMS}, implementation in {IMPLEMENTATIONS}")
        return parts

    @field_validator("radial_range", "azimuth_range")
    @classmethod
    def _range(cls, value: Range | None, info: Any) -> Range | None:
        return _ordered(value, info.field_name)

    @model_validator(mode="after")
    def _wavelength(self) -> _Corrections:
        if self.poni is not None:
            why = wavelength_problem(read_poni(self.poni), self.unit)
            if why:
                raise ValueError(why)
        if self.min_valid is not None and self.max_valid is not None and self.max_valid < self.min_valid:
            raise ValueError(f"max_valid {self.max_valid} is below min_valid {self.min_valid}")
        return self


def _dark_file() -> Any:
    """The ``dark`` parameter of the stages that read the dark from a file."""
    return param(None, "Dark file (.npy, EDF/TIFF, file.h5::/dataset): subtracted from frames")


class AzimuthalDarkParams(_Corrections):
    """Parameters of :class:`AzimuthalIntegrationDark`."""

    npt: int = param(1000, "Radial bins of the curve", ge=1, le=MAX_COUNT)


class AzimuthalParams(AzimuthalDarkParams):
    """Parameters of :class:`AzimuthalIntegration`."""

    dark: PathText | None = _dark_file()


class CakeDarkParams(_Corrections):
    """Parameters of :class:`CakeIntegrationDark`."""

    npt_rad: int = param(500, "Radial bins of the cake", ge=1, le=MAX_COUNT)
    npt_azim: int = param(360, "Azimuthal bins of the cake", ge=1, le=MAX_COUNT)


class CakeParams(CakeDarkParams):
    """Parameters of :class:`CakeIntegration`."""

    dark: PathText | None = _dark_file()


def wavelength_problem(geometry: PoniGeometry, unit: str) -> str | None:
    """Why ``unit`` cannot be computed from ``geometry`` (q needs a wavelength), or ``None``."""
    if unit.startswith("q_") and geometry.wavelength_m is None:
        return (f"unit {unit} needs the wavelength, and {geometry.origin!r} has none; add a 'Wavelength: <metres>' "
                "line to the PONI file, or choose 2th_deg or r_mm")
    return None


def _scan_geometry(scan: Scan) -> PoniGeometry:
    """The calibration a scan carries in its metadata (``poni``: pyFAI's configuration)."""
    config = scan.metadata.get("poni")
    if not isinstance(config, dict):
        raise LightpipeError(f"scan {scan.name!r} carries no calibration (no 'poni' in its metadata); give the stage "
                             "the PONI file of this detector: 'poni: calibration.poni' (saved by pyFAI-calib2)")
    return PoniGeometry(config, f"the metadata of scan {scan.name!r}")


_FRAME = Port(ndim=2, dtype="number", unit="counts", description="Detector frame (raw: pyFAI subtracts the dark)")
_DARK_PORTS = {
    "dark": Port(ndim=2, dtype="float", unit="counts", description="Mean dark frame (dark_statistics.mean)"),
    "mask": Port(ndim=2, dtype="bool", description="True where a pixel is bad (dark_statistics.mask)"),
}
_RADIAL = Port(ndim=1, dtype="float", constant=True,
               description="Bin centres in the chosen unit (2th_deg: deg, q_nm^-1: 1/nm, q_A^-1: 1/angstrom, r_mm: mm)")


class _Integration(MapStage):
    """Shared work of the integration stages: checks, corrections, the integrator, the valid pixels."""

    params: Any

    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        return _with_unit(dict(cls.outputs), RADIAL_UNITS.get(params.unit), "radial")

    def setup(self, scan: Scan) -> None:
        p = self.params
        self._poni: PoniGeometry = read_poni(p.poni) if p.poni is not None else _scan_geometry(scan)
        why = wavelength_problem(self._poni, p.unit)
        if why:
            raise LightpipeError(why)
        self._files = {what: read_image(getattr(p, what), what) for what in ("mask", "dark", "flat")
                       if getattr(p, what, None)}
        self._dark = self._files.get("dark")
        self._flat = self._files.get("flat")
        self._shape: tuple[int, int] | None = None
        self._port_mask: np.ndarray | None = None
        frame = self.input_geometry.get("frame")
        shape = frame.shape if frame is not None else scan.metadata.get("frame_shape")
        if isinstance(shape, (list, tuple)) and len(shape) == 2:
            shape = (int(shape[0]), int(shape[1]))
            self._check(shape)
            if "mask" not in self.inputs:  # otherwise the integrator waits for the first frame's mask input
                self._prepare(shape, None)

    def _settings(self) -> tuple[Any, ...]:
        """What the integrator's sparse matrix depends on besides geometry, shape and mask."""
        raise NotImplementedError

    def _integrate(self, ai: Any, data: Any, dark: Any, flat: Any) -> Any:
        """pyFAI's result for one frame."""
        raise NotImplementedError

    def _check(self, shape: tuple[int, int]) -> None:
        """Raise, saying what to change, when the calibration or a correction file does not fit frames of ``shape``."""
        why = shape_problem(self._poni, shape)
        if why:
            raise LightpipeError(why)
        for what, image in self._files.items():
            if image.shape != shape:
                raise LightpipeError(f"the {what} in {getattr(self.params, what)!r} is {image.shape[0]} x "
                                     f"{image.shape[1]} but the frames are {shape[0]} x {shape[1]}; give a {what} "
                                     "of the detector's shape")

    def _prepare(self, shape: tuple[int, int], port_mask: np.ndarray | None) -> None:
        """Check everything against ``shape`` and get the integrator for it and the static mask."""
        self._check(shape)
        if port_mask is not None and port_mask.shape != shape:
            raise LightpipeError(f"the mask input is {port_mask.shape[0]} x {port_mask.shape[1]} but the frames are "
                                 f"{shape[0]} x {shape[1]}; connect the mask of this detector's dark frames")
        mask = self._files["mask"] != 0 if "mask" in self._files else None
        if port_mask is not None:
            mask = port_mask if mask is None else mask | port_mask

        def warm(ai: Any) -> None:  # the sparse matrix is built here, once, not on the first frame
            self._integrate(ai, np.zeros(shape, np.float32), self._dark, self._flat)

        self._ai = integrator(self._poni, shape, mask, self._settings(), warm)
        own = self._ai.detector.mask
        self._static = own.astype(bool) if own is not None else np.zeros(shape, bool)
        self._shape = shape
        self._port_mask = port_mask

    def _ready(self, frame: Any, port_mask: Any) -> None:
        """Prepare for this frame's shape and mask input, unless they are the ones already prepared."""
        shape = tuple(frame.shape)
        if port_mask is not None:
            port_mask = np.asarray(port_mask, bool)
            same = port_mask is self._port_mask or (self._port_mask is not None
                                                   and np.array_equal(port_mask, self._port_mask))
            if shape == self._shape and same:
                return
            self._prepare(shape, port_mask)  # type: ignore[arg-type]
        elif shape != self._shape:
            self._prepare(shape, None)  # type: ignore[arg-type]

    def _valid(self, frame: np.ndarray) -> np.ndarray:
        """``frame``, or a float32 copy with NaN in the pixels this frame must leave out (see the module's notes)."""
        p = self.params
        low = p.min_valid
        high = p.max_valid
        kind = frame.dtype.kind
        if high is None and kind == "u":
            high = float(np.iinfo(frame.dtype).max) - 1
        if kind == "u" and low is not None and low <= 0:
            low = None  # an unsigned frame is never below it
        if kind == "f":
            # fmin and fmax skip NaN (pyFAI leaves NaN pixels out by itself); NaN only when every pixel is NaN
            lowest, highest = np.fmin.reduce(frame, axis=None), np.fmax.reduce(frame, axis=None)
            suspect = bool(np.isnan(lowest) or np.isinf(lowest) or np.isinf(highest))
            suspect |= bool(low is not None and lowest < low) or bool(high is not None and highest > high)
        else:
            suspect = bool(low is not None and frame.min() < low) or bool(high is not None and frame.max() > high)
        if not suspect:
            return frame
        good = np.isfinite(frame) if kind == "f" else np.ones(frame.shape, bool)
        if low is not None:
            good &= frame >= low
        if high is not None:
            good &= frame <= high
        if not (~good & ~self._static).any():  # only pixels the static mask leaves out already
            return frame
        if not (good & ~self._static).any():
            raise ValueError(f"every pixel of this frame is left out (NaN, infinite, below min_valid={low} or above "
                             f"max_valid={high}; values {frame.min()} to {frame.max()}): was the detector "
                             "saturated or not ready? Check the frame, or set min_valid and max_valid")
        data = frame.astype(np.float32)
        data[~good] = np.nan
        return data

    def _run(self, frame: Any, dark: Any = None, port_mask: Any = None) -> Any:
        frame = np.asarray(frame)
        self._ready(frame, port_mask)
        return self._integrate(self._ai, self._valid(frame), self._dark if dark is None else np.asarray(dark),
                               self._flat)

    def _common(self) -> dict[str, Any]:
        """pyFAI keyword arguments shared by integrate1d and integrate2d."""
        p = self.params
        return {"unit": p.unit, "method": p.method, "radial_range": p.radial_range, "azimuth_range": p.azimuth_range,
                "correctSolidAngle": p.correct_solid_angle, "polarization_factor": p.polarization_factor,
                "error_model": p.error_model}


def _errors(result: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(result.sigma, np.float64) if result.sigma is not None else np.full(shape, np.nan)


class AzimuthalIntegration(_Integration):
    """Integrate each frame over the azimuth into a 1-D curve against 2theta, q or r, with pyFAI.

    The calibration comes from a PONI file; mask, dark and flat from files. pyFAI
    applies the dark, flat, polarisation and solid-angle corrections and
    propagates the uncertainties (``error_model``). Pixels that are negative,
    saturated, NaN or infinite are left out of their frame (``min_valid``,
    ``max_valid``).
    """

    name = "azimuthal_integration"
    Params: ClassVar[type[StageParams]] = AzimuthalParams
    inputs = {"frame": _FRAME}
    outputs = {
        "intensity": Port(ndim=1, dtype="float", unit="counts", axes=("radial",),
                          description="Mean corrected counts per pixel in each radial bin"),
        "intensity_errors": Port(ndim=1, dtype="float", unit="counts",
                                 description="Standard deviation of intensity (NaN without an error model)"),
        "radial": _RADIAL,
    }

    def _settings(self) -> tuple[Any, ...]:
        p = self.params
        return ("1d", p.npt, p.unit, p.radial_range, p.azimuth_range, p.method)

    def _integrate(self, ai: Any, data: Any, dark: Any, flat: Any) -> Any:
        return ai.integrate1d(data, self.params.npt, dark=dark, flat=flat, **self._common())

    def _outputs(self, result: Any) -> dict[str, Any]:
        intensity = np.asarray(result.intensity, np.float64)
        return {"intensity": intensity, "intensity_errors": _errors(result, intensity.shape),
                "radial": np.asarray(result.radial, np.float64)}

    def process(self, frame: Any) -> dict[str, Any]:
        return self._outputs(self._run(frame))


class AzimuthalIntegrationDark(AzimuthalIntegration):
    """Integrate each frame into a 1-D curve with pyFAI, subtracting the scan's own dark and masking its bad pixels.

    As ``azimuthal_integration``, with the dark and the bad-pixel mask as inputs
    (``dark_statistics.mean`` and ``.mask`` of the scan's dark frames); the mask
    is added to the detector's and to the ``mask`` file's.
    """

    name = "azimuthal_integration_dark"
    Params = AzimuthalDarkParams
    inputs = {"frame": _FRAME, **_DARK_PORTS}

    def process(self, frame: Any, dark: Any, mask: Any) -> dict[str, Any]:  # type: ignore[override]
        return self._outputs(self._run(frame, dark, mask))


class CakeIntegration(_Integration):
    """Regroup each frame into a 2-D cake (azimuth x radial: 2theta, q or r) with pyFAI.

    The same calibration, corrections and left-out pixels as
    ``azimuthal_integration``; rows are azimuthal bins (chi, degrees), columns
    radial bins.
    """

    name = "cake_integration"
    Params: ClassVar[type[StageParams]] = CakeParams
    inputs = {"frame": _FRAME}
    outputs = {
        "cake": Port(ndim=2, dtype="float", unit="counts", axes=("azimuthal", "radial"),
                     description="Mean corrected counts per pixel in each (azimuthal, radial) bin"),
        "cake_errors": Port(ndim=2, dtype="float", unit="counts",
                            description="Standard deviation of cake (NaN without an error model)"),
        "radial": _RADIAL,
        "azimuthal": Port(ndim=1, dtype="float", unit="deg", constant=True,
                          description="Azimuthal bin centres (chi)"),
    }

    def _settings(self) -> tuple[Any, ...]:
        p = self.params
        return ("2d", p.npt_rad, p.npt_azim, p.unit, p.radial_range, p.azimuth_range, p.method)

    def _integrate(self, ai: Any, data: Any, dark: Any, flat: Any) -> Any:
        p = self.params
        return ai.integrate2d(data, p.npt_rad, p.npt_azim, dark=dark, flat=flat, **self._common())

    def _outputs(self, result: Any) -> dict[str, Any]:
        cake = np.asarray(result.intensity, np.float64)
        return {"cake": cake, "cake_errors": _errors(result, cake.shape),
                "radial": np.asarray(result.radial, np.float64), "azimuthal": np.asarray(result.azimuthal, np.float64)}

    def process(self, frame: Any) -> dict[str, Any]:
        return self._outputs(self._run(frame))


class CakeIntegrationDark(CakeIntegration):
    """Regroup each frame into a 2-D cake with pyFAI, subtracting the scan's own dark and masking its bad pixels.

    As ``cake_integration``, with the dark and the bad-pixel mask as inputs
    (``dark_statistics.mean`` and ``.mask``).
    """

    name = "cake_integration_dark"
    Params = CakeDarkParams
    inputs = {"frame": _FRAME, **_DARK_PORTS}

    def process(self, frame: Any, dark: Any, mask: Any) -> dict[str, Any]:  # type: ignore[override]
        return self._outputs(self._run(frame, dark, mask))


#: Partial result of a pattern: sums of intensities and of variances, frames counted, the bins.
PatternPartial = tuple[np.ndarray, np.ndarray, int, np.ndarray]


def _with_unit(ports: dict[str, Port], unit: str | None, *names: str) -> dict[str, Port]:
    """``ports`` with the outputs ``names`` in ``unit`` (unchanged where the unit is unknown)."""
    return {k: replace(port, unit=unit) if k in names and unit else port for k, port in ports.items()}


class XrdPattern(ReduceStage[PatternPartial]):
    """The scan's diffraction pattern: the mean of the frames' integrated curves against 2theta, q or r.

    Its uncertainty is that of a mean of independent frames, sqrt(sum of the
    frames' variances) / frames; NaN where the frames have none.
    """

    name = "xrd_pattern"
    inputs = {
        "intensity": Port(ndim=1, dtype="float", unit="counts", description="Integrated curve of one frame"),
        "intensity_errors": Port(ndim=1, dtype="float", unit="counts", description="Its standard deviation"),
        "radial": Port(ndim=1, dtype="float", constant=True, description="Bin centres, the same for every frame"),
    }
    outputs = {
        "intensity": Port(ndim=1, dtype="float", unit="counts", scan=True, axes=("radial",), main=True,
                          description="Mean of the frames' curves"),
        "intensity_errors": Port(ndim=1, dtype="float", unit="counts", scan=True,
                                 description="Standard deviation of the mean"),
        "radial": Port(ndim=1, dtype="float", scan=True, description="Bin centres in the integration's unit"),
        "frames": Port(ndim=0, dtype="int", scan=True, description="Frames averaged"),
    }

    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        return _with_unit(dict(cls.outputs), inputs["radial"].unit if "radial" in inputs else None, "radial")

    def partial(self, intensity: Any, intensity_errors: Any, radial: Any) -> PatternPartial:
        sigma = np.asarray(intensity_errors, np.float64)
        if not np.shape(intensity) == sigma.shape == np.shape(radial):
            raise ValueError(f"xrd_pattern: intensity {np.shape(intensity)}, intensity_errors {sigma.shape} and "
                             f"radial {np.shape(radial)} differ in length; connect all three to the same "
                             "integration stage (inputs: {intensity: curve.intensity, intensity_errors: "
                             "curve.intensity_errors, radial: curve.radial})")
        return np.asarray(intensity, np.float64), sigma * sigma, 1, np.asarray(radial, np.float64)

    def merge(self, left: PatternPartial, right: PatternPartial) -> PatternPartial:
        if left[3].shape != right[3].shape or not np.array_equal(left[3], right[3]):
            raise ValueError("xrd_pattern: the frames' radial bins differ; integrate every frame with the same "
                             "PONI file, unit, npt and radial_range")
        return left[0] + right[0], left[1] + right[1], left[2] + right[2], left[3]

    def finish(self, total: PatternPartial | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no frame reached xrd_pattern; check the stage's stream and that the integration "
                             "succeeded on some frames")
        sums, variances, frames, radial = total
        return {"intensity": sums / frames, "intensity_errors": np.sqrt(variances) / frames, "radial": radial,
                "frames": np.int64(frames)}


class RoiParams(StageParams):
    """Parameters of :class:`RoiIntensity`."""

    range: Range = param(description="Radial range [low, high] of the peak, in the curve's unit (deg for 2th_deg)")
    background: Literal["linear", "none"] = param(
        "linear", "Background under the peak: linear between the range's two end bins, or none")

    @field_validator("range")
    @classmethod
    def _range(cls, value: Range) -> Range:
        return _ordered(value, "range")  # type: ignore[return-value]


class RoiIntensity(MapStage):
    """Integrated intensity and centroid of a peak of each frame's curve, within a radial range, for maps.

    The integrated intensity (``area``) is the area under the curve over the
    range (trapezoids, in counts x the radial unit), less a linear background
    through the range's end bins; ``position`` is the background-subtracted
    centroid. Feed ``area`` to ``scan_map`` for a map of the phase, ``position``
    for a map of the lattice spacing (strain). One stage per peak: a map is of
    one value.
    """

    name = "roi_intensity"
    Params = RoiParams
    inputs = {
        "intensity": Port(ndim=1, dtype="float", unit="counts", description="Integrated curve"),
        "radial": Port(ndim=1, dtype="float", constant=True, description="Its bin centres"),
    }
    outputs = {
        "area": Port(ndim=0, dtype="float", description="Integrated intensity: area of the peak above the "
                     "background (counts x radial unit)"),
        "position": Port(ndim=0, dtype="float", description="Centroid of the peak, in the radial unit (NaN when the "
                         "peak has no area)"),
    }

    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        unit = inputs["radial"].unit if "radial" in inputs else None
        ports = _with_unit(dict(cls.outputs), unit, "position")
        return _with_unit(ports, f"counts*{unit}" if unit else None, "area")

    def process(self, intensity: Any, radial: Any) -> dict[str, Any]:
        x, y = np.asarray(radial, np.float64), np.asarray(intensity, np.float64)
        low, high = self.params.range
        inside = np.flatnonzero((x >= low) & (x <= high))
        if len(inside) < 2:
            raise ValueError(f"range [{low}, {high}] covers {len(inside)} bin(s) of a curve from {x.min():g} to "
                             f"{x.max():g}; widen it to at least two bins")
        order = inside[np.argsort(x[inside], kind="stable")]
        x, y = x[order], y[order]
        if self.params.background == "linear":
            y = y - (y[0] + (y[-1] - y[0]) * (x - x[0]) / (x[-1] - x[0]))
        widths = np.diff(x)
        area = float(np.sum(0.5 * (y[1:] + y[:-1]) * widths))
        moment = float(np.sum(0.5 * (x[1:] * y[1:] + x[:-1] * y[:-1]) * widths))
        position = moment / area if area > 0 else np.nan
        return {"area": np.float64(area), "position": np.float64(position)}
