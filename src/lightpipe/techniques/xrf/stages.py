"""XRF stages: fit each spectrum, normalise by flux and dead time, map each element, fit the scan's sum spectrum.

``xrf_fit`` gives, per scan point, the area of every peak group of the PyMca
configuration (``Fe K``, ``Pb L``, the scatter peaks), in PyMca's order
(:func:`~lightpipe.techniques.xrf.linear_fit.peak_groups`), NaN for a group
outside the fitted channels. ``xrf_normalise`` scales them to a reference
flux and no dead time, ``xrf_map`` puts one group's areas on the scan grid
(one NXdata per element in the result file), and ``xrf_sum_spectrum`` fits
the sum of all the scan's spectra, to check the fit as PyMca's GUI shows it.

The configuration is a PyMca ``.cfg`` file (``config``), or one per detector
element, read and checked when the pipeline loads; without one, the stages
take the configuration the scan carries in its metadata (``pymca_config``:
one, or a JSON list of one per element), as the ``xrf_sim`` source gives it.

Dead time: a detector gives one dead-time fraction, or one per element. The
fit's areas keep it, and ``xrf_normalise`` divides each element's areas by
its own live fraction: for a linear fit of Poisson counts the same as
correcting the spectrum first, with PyMca's weights and uncertainties. Where
the elements are summed before the fit with dead times of their own,
``xrf_fit`` corrects each element's spectrum before the sum, fits the sum at
the statistics of raw counts (:func:`variance_per_count`) and passes on a
dead time of 0 (its ``dead_time`` output, which feeds ``xrf_normalise``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import field_validator, model_validator

from lightpipe.core.bounds import PathText
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param
from lightpipe.stages.maps import MapParams, map_values
from lightpipe.techniques.xrf.config import XrfConfigError, from_dict, read_config
from lightpipe.techniques.xrf.linear_fit import LinearFit, XrfModel, common_groups, peak_groups

__all__ = ["XrfFit", "XrfNormalise", "XrfMap", "XrfSumSpectrum"]


def _files(config: str | list[str] | None) -> tuple[str, ...]:
    """The configuration files of a ``config`` parameter: none, one, or one per detector element."""
    if config is None:
        return ()
    return tuple(config) if isinstance(config, list) else (config,)


class ConfiguredParams(StageParams):
    """Parameters of a stage that reads a PyMca fit configuration."""

    config: PathText | list[PathText] | None = param(
        None, "PyMca fit configuration (.cfg), or a list of one per detector element (their calibrations of their "
        "own, the same peak groups); default the scan's (pymca_config)")

    @field_validator("config")
    @classmethod
    def _readable(cls, value: str | list[str] | None) -> str | list[str] | None:
        # reads and checks the files now, so a bad one is refused when the pipeline loads
        if isinstance(value, list):
            common_groups({path: peak_groups(path) for path in value})
        elif value is not None:
            peak_groups(value)
        return value


@lru_cache(maxsize=16)
def _metadata_model(text: str, channels: int) -> XrfModel:
    return XrfModel(from_dict(json.loads(text), "the scan's pymca_config"), channels)


class _Configured:
    """The configurations of a stage: its ``config`` file or files, or the scan's ``pymca_config``."""

    params: Any
    _scan_configs: tuple[str, ...] = ()

    def _read_scan(self, scan: Scan) -> None:
        if self.params.config is not None:
            return
        given = scan.metadata.get("pymca_config")
        if given is None:
            raise XrfConfigError(f"scan {scan.name} carries no PyMca configuration: set the stage's 'config' "
                                 "to a .cfg file saved by PyMca's fit GUI")
        entries = json.loads(given) if isinstance(given, str) else given
        entries = entries if isinstance(entries, list) else [entries]
        self._scan_configs = tuple(json.dumps(entry) for entry in entries)
        common_groups({f"the scan's pymca_config[{i}]": _metadata_groups(text)
                       for i, text in enumerate(self._scan_configs)})

    @property
    def per_element(self) -> bool:
        """Whether each detector element has a configuration of its own."""
        return len(_files(self.params.config) or self._scan_configs) > 1

    def models(self, channels: int) -> list[XrfModel]:
        """The fit model of each configuration for spectra of ``channels`` channels, built once per process."""
        files = _files(self.params.config)
        if files:
            return [_file_model(path, channels) for path in files]
        if not self._scan_configs:
            raise XrfConfigError("no PyMca configuration: set the stage's 'config'")
        return [_metadata_model(text, channels) for text in self._scan_configs]

    def groups(self) -> tuple[str, ...]:
        """Every peak group of the configuration (the same in each), in the order of the areas."""
        files = _files(self.params.config)
        if files:
            return peak_groups(files[0])
        if not self._scan_configs:
            raise XrfConfigError("no PyMca configuration: set the stage's 'config'")
        return _metadata_groups(self._scan_configs[0])

    def place(self, model: XrfModel, result: LinearFit) -> tuple[np.ndarray, np.ndarray]:
        """A fit's areas and sigmas, ``(spectra, groups)``, among all the configuration's groups (NaN: not fitted)."""
        groups = self.groups()
        index = [groups.index(name) for name in model.peaks]
        areas = np.full((len(result.areas), len(groups)), np.nan)
        sigmas = np.full((len(result.areas), len(groups)), np.nan)
        areas[:, index] = result.areas
        sigmas[:, index] = result.sigmas
        return areas, sigmas


@lru_cache(maxsize=16)
def _file_model(path: str, channels: int) -> XrfModel:
    return XrfModel(read_config(path), channels)


@lru_cache(maxsize=16)
def _metadata_groups(text: str) -> tuple[str, ...]:
    from PyMca5.PyMcaPhysics.xrf import ClassMcaTheory

    theory = ClassMcaTheory.McaTheory()
    theory.setConfiguration(from_dict(json.loads(text), "the scan's pymca_config").config)
    return tuple(theory.PARAMETERS[theory.NGLOBAL:])


def _expected_channels(params: Any, scan: Scan) -> int | None:
    if params.channels is not None:
        return int(params.channels)
    given = scan.metadata.get("channels")
    return int(given) if isinstance(given, (int, np.integer)) else None


def dead_fractions(dead_time: Any, elements: int | None) -> np.ndarray:
    """The dead-time fraction of the detector (a scalar) or of each of its ``elements``, checked.

    Parameters
    ----------
    dead_time
        One dead-time fraction, or one per detector element.
    elements
        Detector elements of the spectrum or areas; ``None``: one spectrum (or the elements' sum).

    Raises
    ------
    ValueError
        For a fraction outside [0, 1), or several where there is one element or another number of them.
    """
    dead = np.asarray(dead_time, dtype=np.float64)
    if dead.size == 1:
        dead = dead.reshape(())
    elif dead.ndim != 1 or elements is None or dead.size != elements:
        where = "one spectrum" if elements is None else f"{elements} detector elements"
        raise ValueError(f"dead-time fractions of shape {dead.shape} for {where}; give one fraction, or one per "
                         "detector element")
    bad = dead[~((dead >= 0) & (dead < 1))]
    if bad.size:
        raise ValueError(f"dead-time fraction {bad.flat[0]:g} is outside [0, 1); give the fraction, not seconds")
    return dead


class FitParams(ConfiguredParams):
    """Parameters of :class:`XrfFit`."""
    detectors: Literal["sum", "separate"] = param(
        "sum", "Several detector elements (a 2-D spectrum): fit their sum, or each apart (areas per element)")
    negative_areas: Literal["refit", "zero", "keep"] = param(
        "refit", "A negative peak area: fix the most negative at zero and refit the others (each spectrum on its "
        "own), set it to zero, or keep it (PyMca's fast fit with refit off)")
    channels: int | None = param(None, "Channels per spectrum; default the scan's (metadata 'channels'), else any "
                                 "length that covers the configuration's fitted channels", ge=1)

    @model_validator(mode="after")
    def _one_config_for_a_sum(self) -> FitParams:
        if isinstance(self.config, list) and len(self.config) > 1 and self.detectors == "sum":
            raise ValueError("a configuration per detector element needs 'detectors: separate': summed elements are "
                             "one spectrum, fitted with one configuration")
        return self


def variance_per_count(counts: np.ndarray, live: np.ndarray) -> float:
    """Variance of one count of the sum of spectra each divided by its live fraction.

    A channel of ``c / live`` corrected counts has variance ``c / live**2``:
    ``1 / live`` times its value. Over the elements, the factor is the mean of
    ``1 / live`` weighted by each element's corrected counts (``counts``: its
    raw counts in the fitted channels), exact when the live fractions are equal.
    """
    corrected = counts / live
    if corrected.sum() == 0:
        return float(np.mean(1.0 / live))
    return float(np.sum(corrected / live) / corrected.sum())


class XrfFit(_Configured, MapStage):
    """Fit an XRF spectrum with a PyMca configuration: the area of each peak group and its uncertainty."""

    name = "xrf_fit"
    Params = FitParams
    inputs = {
        "spectrum": Port(ndim=None, dtype="number", unit="counts",
                         description="MCA spectrum (channels,) or one per detector element (elements, channels)"),
        "dead_time": Port(ndim=None, dtype="number", optional=True,
                          description="Dead-time fraction (0 to 1) of the detector, or of each element (elements,); "
                          "none connected: 0"),
    }
    outputs = {
        "areas": Port(ndim=None, dtype="float", unit="counts",
                      description="Area of each peak group, in the configuration's order (NaN: not fitted); "
                      "(elements, groups) with detectors: separate"),
        "sigmas": Port(ndim=None, dtype="float", unit="counts",
                       description="Uncertainty of each area, as PyMca's fast fit gives it"),
        "dead_time": Port(ndim=None, dtype="float",
                          description="Dead-time fraction the areas still carry, for xrf_normalise: the input's, "
                          "or 0 where the elements were corrected before their sum"),
    }

    def setup(self, scan: Scan) -> None:
        self._read_scan(scan)
        self._channels = _expected_channels(self.params, scan)
        if self.per_element and self.params.detectors == "sum":
            raise XrfConfigError(f"scan {scan.name} carries a configuration per detector element: set the fit's "
                                 "'detectors: separate', or its 'config' to one .cfg file for the summed spectrum")

    def process(self, spectrum: Any, dead_time: Any = 0.0) -> dict[str, Any]:
        s = np.asarray(spectrum)
        if s.ndim not in (1, 2):
            raise ValueError(f"a spectrum has {s.ndim} dimensions; give (channels,) or (detector elements, channels)")
        dead = dead_fractions(dead_time, s.shape[0] if s.ndim == 2 else None)
        expected = getattr(self, "_channels", None)
        if expected is not None and s.shape[-1] != expected:
            raise ValueError(f"a spectrum of {s.shape[-1]} channels where the scan's have {expected}; the "
                             "detector's channel count changed or the spectrum was cut")
        models = self.models(s.shape[-1])
        for model in models:
            if s.shape[-1] < model.stop:  # PyMca would silently fit fewer channels
                raise ValueError(f"a spectrum of {s.shape[-1]} channels, but the configuration fits up to channel "
                                 f"{model.stop - 1}")
        if self.params.detectors == "separate":
            areas, sigmas = self._separate(s.reshape(-1, s.shape[-1]), models)
            if s.ndim == 1:
                areas, sigmas = areas[0], sigmas[0]
            return {"areas": areas, "sigmas": sigmas, "dead_time": dead}
        model = models[0]
        if dead.ndim == 0:  # one dead time: the areas of the raw counts keep it, for xrf_normalise
            summed = s.reshape(-1, s.shape[-1]).sum(axis=0, dtype=np.float64)
            areas, sigmas = self.place(model, model.fit(summed[None], self.params.negative_areas))
            return {"areas": areas[0], "sigmas": sigmas[0], "dead_time": dead}
        # a dead time per element: each element corrected before the sum, the areas then carry none; the sum is
        # fitted at the statistics of raw counts (variance = value), so that Poisson weights stay PyMca's
        live = 1.0 - dead
        corrected = (s / live[:, None]).sum(axis=0)
        factor = variance_per_count(s[:, model.fitted].sum(axis=1, dtype=np.float64), live)
        areas, sigmas = self.place(model, model.fit(corrected[None] / factor, self.params.negative_areas))
        return {"areas": areas[0] * factor, "sigmas": sigmas[0] * factor, "dead_time": np.float64(0.0)}

    def _separate(self, spectra: np.ndarray, models: list[XrfModel]) -> tuple[np.ndarray, np.ndarray]:
        """Each detector element fitted apart: with the one configuration in one block, or with its own."""
        if len(models) == 1:
            return self.place(models[0], models[0].fit(spectra, self.params.negative_areas))
        if len(models) != len(spectra):
            raise ValueError(f"a spectrum of {len(spectra)} detector elements, but {len(models)} configurations, "
                             "one per element: give as many configurations as the detector has elements")
        fits = [self.place(model, model.fit(row[None], self.params.negative_areas))
                for model, row in zip(models, spectra)]
        return np.concatenate([a for a, _ in fits]), np.concatenate([s for _, s in fits])


class NormaliseParams(StageParams):
    """Parameters of :class:`XrfNormalise`."""

    i0_reference: float | None = param(None, "Flux the areas are scaled to; default the scan's (metadata "
                                       "'i0_reference'), else 1 (areas per flux count)", gt=0)
    min_i0: float = param(0.0, "A flux reading at or below this fails the point (beam off)", ge=0)


class XrfNormalise(MapStage):
    """Scale fitted areas to a reference incident flux and no detector dead time."""

    name = "xrf_normalise"
    Params = NormaliseParams
    inputs = {
        "areas": Port(ndim=None, dtype="float", unit="counts", description="Fitted areas (and their sigmas)"),
        "sigmas": Port(ndim=None, dtype="float", unit="counts", description="Their uncertainties"),
        "i0": Port(ndim=0, dtype="number", unit="counts", description="Incident flux at this point (ion chamber)"),
        "dead_time": Port(ndim=None, dtype="number",
                          description="Dead-time fraction (0 to 1) the areas carry: one, or one per detector element "
                          "of (elements, groups) areas"),
    }
    outputs = {
        "areas": Port(ndim=None, dtype="float", unit="counts", description="Areas at the reference flux, no dead time"),
        "sigmas": Port(ndim=None, dtype="float", unit="counts", description="Their uncertainties"),
    }

    def setup(self, scan: Scan) -> None:
        given = self.params.i0_reference or scan.metadata.get("i0_reference")
        self._reference = float(given) if isinstance(given, (int, float, np.number)) else 1.0

    def process(self, areas: Any, sigmas: Any, i0: Any, dead_time: Any) -> dict[str, Any]:
        flux = float(i0)
        if not flux > self.params.min_i0:
            raise ValueError(f"incident flux {flux:g} is at or below min_i0 {self.params.min_i0:g}; beam off?")
        a = np.asarray(areas, dtype=np.float64)
        if a.ndim < 2 and np.size(dead_time) > 1:
            raise ValueError(f"{np.size(dead_time)} dead-time fractions, one per detector element, for the areas of "
                             "their summed spectrum: each element must be corrected before the sum; connect this "
                             "input to the fit's dead_time (fit.dead_time), as xrf_fit corrects them then")
        dead = dead_fractions(dead_time, a.shape[0] if a.ndim == 2 else None)
        live = 1.0 - dead if dead.ndim == 0 else (1.0 - dead)[:, None]  # one per row of (elements, groups) areas
        factor = getattr(self, "_reference", 1.0) / flux / live
        return {"areas": a * factor, "sigmas": np.asarray(sigmas, dtype=np.float64) * factor}


class XrfMapParams(ConfiguredParams, MapParams):
    """Parameters of :class:`XrfMap`."""

    peak: str | int = param(..., "Peak group to map: its PyMca name (Fe K, Pb L, Scatter Compton000) or its "
                            "position among the configuration's groups")

    @model_validator(mode="after")
    def _known_peak(self) -> XrfMapParams:
        files = _files(self.config)
        if isinstance(self.peak, str) and files:
            groups = peak_groups(files[0])
            if self.peak not in groups:
                raise ValueError(f"{files[0]} has no peak group {self.peak!r}; its groups are {', '.join(groups)}")
        return self


class XrfMap(_Configured, ReduceStage[Any]):
    """A map of one peak group's fitted area on the scan grid (detector elements summed), axes in metres."""

    name = "xrf_map"
    Params = XrfMapParams
    inputs = {
        "areas": Port(ndim=None, dtype="float", unit="counts", description="Fitted areas of each point"),
        "y": Port(ndim=0, dtype="number", unit="m", description="Scan position, vertical"),
        "x": Port(ndim=0, dtype="number", unit="m", description="Scan position, horizontal"),
    }
    outputs = {
        "map": Port(ndim=2, dtype="float", unit="counts", axes=("y", "x"), main=True, scan=True,
                    description="Area of the peak group per grid cell (NaN where no point is)"),
        "y": Port(ndim=1, dtype="float", unit="m", description="Vertical position of each map row", scan=True),
        "x": Port(ndim=1, dtype="float", unit="m", description="Horizontal position of each map column", scan=True),
        "origin": Port(ndim=1, dtype="float", unit="m", description="Position (y, x) of cell (0, 0)", scan=True),
        "step": Port(ndim=0, dtype="float", unit="m", description="Grid step (NaN for one position)", scan=True),
        "regridded": Port(ndim=0, dtype="bool", description="True when positions were moved onto the grid",
                          scan=True),
    }

    def setup(self, scan: Scan) -> None:
        self._read_scan(scan)
        peak = self.params.peak
        if isinstance(peak, str):
            groups = self.groups()
            if peak not in groups:
                raise XrfConfigError(f"the configuration has no peak group {peak!r}; its groups are "
                                     f"{', '.join(groups)}")
            self._index = groups.index(peak)
        else:
            self._index = int(peak)

    def partial(self, areas: Any, y: Any, x: Any) -> Any:
        a = np.asarray(areas, dtype=np.float64)
        index = getattr(self, "_index", self.params.peak if isinstance(self.params.peak, int) else 0)
        if not -a.shape[-1] <= index < a.shape[-1]:
            raise ValueError(f"peak group {index} is beyond the {a.shape[-1]} areas of this point")
        value = a[..., index].sum()  # detector elements fitted apart: their areas add up
        return np.array([[float(y), float(x), float(value)]])

    def merge(self, left: Any, right: Any) -> Any:
        return np.concatenate([left, right])

    def finish(self, total: Any) -> dict[str, Any]:
        if total is None:
            raise ValueError("no point arrived to map; check that the events carry areas and y and x positions")
        return map_values(total[:, :2], total[:, 2:], self.params)[0]


@dataclass
class _Sum:
    """Partial result: points seen and their summed spectrum, ``(channels,)`` or one per detector element."""

    count: int
    spectrum: np.ndarray


class SumParams(ConfiguredParams):
    """Parameters of :class:`XrfSumSpectrum`."""


class XrfSumSpectrum(_Configured, ReduceStage[_Sum]):
    """The scan's sum spectrum (all points and detector elements) with its fit, on an energy axis."""

    name = "xrf_sum_spectrum"
    Params = SumParams
    inputs = {"spectrum": Port(ndim=None, dtype="number", unit="counts", description="MCA spectrum of a point")}
    outputs = {
        "spectrum": Port(ndim=1, dtype="float", unit="counts", axes=("energy",), main=True, scan=True,
                         description="Sum of every spectrum of the scan"),
        "fit": Port(ndim=1, dtype="float", unit="counts", scan=True,
                    description="The fitted sum spectrum: continuum plus peaks (NaN outside the fitted channels)"),
        "background": Port(ndim=1, dtype="float", unit="counts", scan=True,
                           description="The continuum under the peaks (NaN outside the fitted channels)"),
        "energy": Port(ndim=1, dtype="float", unit="keV", scan=True,
                       description="Energy of each channel (of the first detector element's calibration)"),
        "areas": Port(ndim=1, dtype="float", unit="counts", scan=True,
                      description="Area of each peak group in the sum spectrum (NaN: not fitted)"),
        "points": Port(ndim=0, dtype="int", scan=True, description="Points summed"),
    }

    def setup(self, scan: Scan) -> None:
        self._read_scan(scan)

    def partial(self, spectrum: Any) -> _Sum:
        s = np.asarray(spectrum, dtype=np.float64).reshape(-1, np.shape(spectrum)[-1])
        # elements of calibrations of their own are summed each apart, to be fitted each with its own
        return _Sum(1, s if self.per_element else s.sum(axis=0))

    def merge(self, left: _Sum, right: _Sum) -> _Sum:
        if left.spectrum.shape != right.spectrum.shape:
            raise ValueError(f"spectra of shapes {left.spectrum.shape} and {right.spectrum.shape} in one scan")
        return _Sum(left.count + right.count, left.spectrum + right.spectrum)

    def finish(self, total: _Sum | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no spectrum arrived to sum; check the stage's input")
        spectra = total.spectrum.reshape(-1, total.spectrum.shape[-1])
        models = self.models(spectra.shape[1])
        if len(models) != len(spectra):
            raise ValueError(f"spectra of {len(spectra)} detector elements, but {len(models)} configurations, one "
                             "per element: give as many configurations as the detector has elements")
        channels = spectra.shape[1]
        fit, background, covered = np.zeros(channels), np.zeros(channels), np.zeros(channels, dtype=np.intp)
        areas = np.zeros(len(self.groups()))
        for model, spectrum in zip(models, spectra):
            result = model.fit(spectrum[None])
            fit[model.fitted] += model.model(result)[0]
            background[model.fitted] += result.background[0]
            covered[model.fitted] += 1
            areas += self.place(model, result)[0][0]
        outside = covered < len(models)  # channels some element does not fit
        fit[outside] = np.nan
        background[outside] = np.nan
        return {"spectrum": spectra.sum(axis=0), "fit": fit, "background": background,
                "energy": models[0].energy_kev, "areas": areas, "points": np.int64(total.count)}
