"""XRF stages: fit each spectrum, normalise by flux and dead time, map each element, fit the scan's sum spectrum.

``xrf_fit`` gives, per scan point, the area of every peak group of the PyMca
configuration (``Fe K``, ``Pb L``, the scatter peaks), in PyMca's order
(:func:`~lightpipe.techniques.xrf.linear_fit.peak_groups`), NaN for a group
outside the fitted channels. ``xrf_normalise`` scales them to a reference
flux and no dead time, ``xrf_map`` puts one group's areas on the scan grid
(one NXdata per element in the result file), and ``xrf_sum_spectrum`` fits
the sum of all the scan's spectra, to check the fit as PyMca's GUI shows it.

The configuration is a PyMca ``.cfg`` file (``config``), read and checked when
the pipeline loads; without one, the stages take the configuration the scan
carries in its metadata (``pymca_config``), as the ``xrf_sim`` source gives it.
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
from lightpipe.techniques.xrf.config import FitConfig, XrfConfigError, from_dict, read_config
from lightpipe.techniques.xrf.linear_fit import XrfModel, peak_groups

__all__ = ["XrfFit", "XrfNormalise", "XrfMap", "XrfSumSpectrum"]


class ConfiguredParams(StageParams):
    """Parameters of a stage that reads a PyMca fit configuration."""

    config: PathText | None = param(None, "PyMca fit configuration (.cfg); default the scan's (pymca_config)")

    @field_validator("config")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None:
            peak_groups(value)  # reads and checks the file now, so a bad one is refused when the pipeline loads
        return value


@lru_cache(maxsize=8)
def _metadata_model(text: str, channels: int) -> XrfModel:
    return XrfModel(from_dict(json.loads(text), "the scan's pymca_config"), channels)


class _Configured:
    """The configuration of a stage: its ``config`` file, or the scan's ``pymca_config``."""

    params: Any
    _scan_config: str | None = None

    def _read_scan(self, scan: Scan) -> None:
        if self.params.config is None:
            given = scan.metadata.get("pymca_config")
            if given is None:
                raise XrfConfigError(f"scan {scan.name} carries no PyMca configuration: set the stage's 'config' "
                                     "to a .cfg file saved by PyMca's fit GUI")
            self._scan_config = given if isinstance(given, str) else json.dumps(given)

    def model(self, channels: int) -> XrfModel:
        """The fit model for spectra of ``channels`` channels, built once per process."""
        if self.params.config is not None:
            return _file_model(self.params.config, channels)
        if self._scan_config is None:
            raise XrfConfigError("no PyMca configuration: set the stage's 'config'")
        return _metadata_model(self._scan_config, channels)

    def groups(self) -> tuple[str, ...]:
        """Every peak group of the configuration, in the order of the areas."""
        if self.params.config is not None:
            return peak_groups(self.params.config)
        if self._scan_config is None:
            raise XrfConfigError("no PyMca configuration: set the stage's 'config'")
        return _metadata_groups(self._scan_config)


@lru_cache(maxsize=8)
def _file_model(path: str, channels: int) -> XrfModel:
    return XrfModel(read_config(path), channels)


@lru_cache(maxsize=8)
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


class FitParams(ConfiguredParams):
    """Parameters of :class:`XrfFit`."""
    detectors: Literal["sum", "separate"] = param(
        "sum", "Several detector elements (a 2-D spectrum): fit their sum, or each apart (areas per element)")
    negative_areas: Literal["refit", "zero", "keep"] = param(
        "refit", "A negative peak area: fix the most negative at zero and refit the others (each spectrum on its "
        "own), set it to zero, or keep it (PyMca's fast fit with refit off)")
    channels: int | None = param(None, "Channels per spectrum; default the scan's (metadata 'channels'), else any "
                                 "length that covers the configuration's fitted channels", ge=1)


def _spectra(spectrum: Any, detectors: str) -> np.ndarray:
    """The spectra to fit: ``(1, channels)``, or ``(elements, channels)`` fitted apart."""
    s = np.asarray(spectrum)
    if s.ndim == 1:
        return s[None]
    if s.ndim == 2:
        return s if detectors == "separate" else s.sum(axis=0, dtype=np.float64)[None]
    raise ValueError(f"a spectrum has {s.ndim} dimensions; give (channels,) or (detector elements, channels)")


class XrfFit(_Configured, MapStage):
    """Fit an XRF spectrum with a PyMca configuration: the area of each peak group and its uncertainty."""

    name = "xrf_fit"
    Params = FitParams
    inputs = {"spectrum": Port(ndim=None, dtype="number", unit="counts",
                               description="MCA spectrum (channels,) or one per detector element (elements, channels)")}
    outputs = {
        "areas": Port(ndim=None, dtype="float", unit="counts",
                      description="Area of each peak group, in the configuration's order (NaN: not fitted); "
                      "(elements, groups) with detectors: separate"),
        "sigmas": Port(ndim=None, dtype="float", unit="counts",
                       description="Uncertainty of each area, as PyMca's fast fit gives it"),
    }

    def setup(self, scan: Scan) -> None:
        self._read_scan(scan)
        self._channels = _expected_channels(self.params, scan)

    def process(self, spectrum: Any) -> dict[str, Any]:
        spectra = _spectra(spectrum, self.params.detectors)
        expected = getattr(self, "_channels", None)
        if expected is not None and spectra.shape[1] != expected:
            raise ValueError(f"a spectrum of {spectra.shape[1]} channels where the scan's have {expected}; the "
                             "detector's channel count changed or the spectrum was cut")
        model = self.model(spectra.shape[1])
        if spectra.shape[1] < model.stop:  # PyMca would silently fit fewer channels
            raise ValueError(f"a spectrum of {spectra.shape[1]} channels, but the configuration fits up to channel "
                             f"{model.stop - 1}")
        result = model.fit(spectra, self.params.negative_areas)
        groups = len(self.groups())
        areas = np.full((len(spectra), groups), np.nan)
        sigmas = np.full((len(spectra), groups), np.nan)
        areas[:, model.group_index] = result.areas
        sigmas[:, model.group_index] = result.sigmas
        if self.params.detectors == "sum" or np.ndim(spectrum) == 1:
            areas, sigmas = areas[0], sigmas[0]
        return {"areas": areas, "sigmas": sigmas}


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
        "dead_time": Port(ndim=0, dtype="number", description="Dead-time fraction of the detector (0 to 1)"),
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
        dead = float(dead_time)
        if not 0 <= dead < 1:
            raise ValueError(f"dead-time fraction {dead:g} is outside [0, 1); give the fraction, not seconds")
        factor = getattr(self, "_reference", 1.0) / flux / (1.0 - dead)
        return {"areas": np.asarray(areas, dtype=np.float64) * factor,
                "sigmas": np.asarray(sigmas, dtype=np.float64) * factor}


class XrfMapParams(ConfiguredParams, MapParams):
    """Parameters of :class:`XrfMap`."""

    peak: str | int = param(..., "Peak group to map: its PyMca name (Fe K, Pb L, Scatter Compton000) or its "
                            "position among the configuration's groups")

    @model_validator(mode="after")
    def _known_peak(self) -> XrfMapParams:
        if isinstance(self.peak, str) and self.config is not None:
            groups = peak_groups(self.config)
            if self.peak not in groups:
                raise ValueError(f"{self.config} has no peak group {self.peak!r}; its groups are {', '.join(groups)}")
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
    """Partial result: points seen and their summed spectrum."""

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
        "energy": Port(ndim=1, dtype="float", unit="keV", scan=True, description="Energy of each channel"),
        "areas": Port(ndim=1, dtype="float", unit="counts", scan=True,
                      description="Area of each peak group in the sum spectrum (NaN: not fitted)"),
        "points": Port(ndim=0, dtype="int", scan=True, description="Points summed"),
    }

    def setup(self, scan: Scan) -> None:
        self._read_scan(scan)

    def partial(self, spectrum: Any) -> _Sum:
        s = np.asarray(spectrum, dtype=np.float64)
        return _Sum(1, s.reshape(-1, s.shape[-1]).sum(axis=0))

    def merge(self, left: _Sum, right: _Sum) -> _Sum:
        if left.spectrum.shape != right.spectrum.shape:
            raise ValueError(f"spectra of {left.spectrum.shape[0]} and {right.spectrum.shape[0]} channels in one scan")
        return _Sum(left.count + right.count, left.spectrum + right.spectrum)

    def finish(self, total: _Sum | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no spectrum arrived to sum; check the stage's input")
        model = self.model(len(total.spectrum))
        result = model.fit(total.spectrum[None])
        fit = np.full(model.channels, np.nan)
        background = np.full(model.channels, np.nan)
        fit[model.fitted] = model.model(result)[0]
        background[model.fitted] = result.background[0]
        areas = np.full(len(self.groups()), np.nan)
        areas[model.group_index] = result.areas[0]
        return {"spectrum": total.spectrum, "fit": fit, "background": background, "energy": model.energy_kev,
                "areas": areas, "points": np.int64(total.count)}
