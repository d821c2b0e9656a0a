"""XRF spectra of a known composition map: the truth a fit must recover.

A sample of a few elements is scanned on a raster (row by row or snake). At
each point an element's fluorescence has a known peak area (counts, summed
over its lines), from a smooth pattern of its own (a disc, gradients,
stripes), so each elemental map is different and known. The spectrum at a
point is the sum of:

* every line of each element's fitted families (K, L or M), at the line
  energies of ``xraylib`` with relative intensities from its fluorescence
  production cross sections (Kissel, with cascade) at the incident energy;
* the elastic (Rayleigh) peak at the incident energy and the Compton peak
  at the energy scattered through 90 degrees, broader;
* a smooth continuum;
* optionally the Si K-alpha escape peaks (1.74 keV below each line) and
  pile-up (the spectrum convolved with itself);

each line a Gaussian of the detector's resolution, FWHM =
sqrt(noise^2 + 2.3548^2 * 0.00385 * fano * E) keV, as PyMca models it. The
beam's flux varies from point to point (``i0``, an ion chamber's counts), and
the detector's dead time grows with the count rate; the counts recorded are
Poisson draws of the expected spectrum times ``i0 / i0_reference`` times the
live fraction ``1 - dead_time``. Normalising the fitted areas by both gives
back the composition map (:meth:`XrfSimulation.truth`).

A detector of several elements shares the counts between them, equally or
as given (``element_shares``, their solid angles); each element may have a
calibration offset of its own (``zero_offsets_kev``) and
a dead time per count of its own (``element_dead_times_s``), its dead-time
fraction following its own count rate. Their areas, each divided by its own
live fraction, add up to the truth.

:meth:`XrfSimulation.write_config` writes the PyMca fit configuration of the
simulated detector (one element's calibration) and sample, to fit the
spectra as a user would.
Every spectrum is a pure function of ``(seed, index)``.
"""
from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lightpipe.core.bounds import Seed
from lightpipe.core.source import SourceParams

__all__ = ["XrfSimParams", "XrfSimulation", "simulation", "FWHM_PER_SIGMA"]

#: Full width at half maximum of a Gaussian, in standard deviations.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Energy to make one electron-hole pair in silicon, keV.
SILICON_PAIR_KEV = 0.00385
#: Si K-alpha energy, keV: an escape peak sits this far below its parent line.
SI_KA_KEV = 1.74
#: Electron rest energy, keV (Compton shift).
ELECTRON_KEV = 510.999

#: The default sample: element -> peak area (counts, all its lines) at full concentration, at i0_reference.
DEFAULT_ELEMENTS = {"Ca": 800.0, "Cr": 1500.0, "Fe": 4000.0, "Ni": 1200.0, "Zn": 2500.0}


class XrfSimParams(SourceParams):
    """Parameters of the XRF simulator (units in the names)."""

    name: str = Field("xrf_sim", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output file is <name>.nxs)")
    elements: dict[str, Annotated[float, Field(ge=0, le=1e9)]] = Field(
        default_factory=lambda: dict(DEFAULT_ELEMENTS),
        description="Element -> peak area (counts over all its lines) where its concentration is highest")
    families: dict[str, Literal["K", "L", "M"]] = Field(
        default_factory=dict, description="Element -> line family fitted; default K up to Z = 45, L above")
    map_shape: tuple[Annotated[int, Field(ge=1, le=2000)], Annotated[int, Field(ge=1, le=2000)]] = Field(
        (10, 12), description="Raster (rows, columns)")
    snake: bool = Field(False, description="Every other row scanned backwards")
    step_m: float = Field(1e-6, gt=0, le=1, description="Raster step, m")
    channels: Annotated[int, Field(ge=32, le=65536)] = Field(2048, description="Channels per spectrum")
    zero_kev: float = Field(0.0, ge=-1, le=1, description="Energy of channel 0, keV")
    gain_kev: float = Field(0.01, gt=0, le=1, description="Energy per channel, keV")
    noise_kev: float = Field(0.1, gt=0, le=1, description="Electronic noise (FWHM), keV")
    fano: float = Field(0.114, gt=0, le=1, description="Fano factor of the sensor")
    energy_kev: float = Field(17.0, gt=1, le=100, description="Incident energy, keV")
    elastic: float = Field(3000.0, ge=0, le=1e9, description="Elastic scatter peak area, counts")
    compton: float = Field(6000.0, ge=0, le=1e9, description="Compton scatter peak area, counts")
    continuum: float = Field(0.5, ge=0, le=1e6, description="Continuum at 1 keV, counts per channel")
    escape: float = Field(0.0, ge=0, le=0.5, description="Si escape peak, as a fraction of each line (0: none)")
    pileup: float = Field(0.0, ge=0, le=1e-3, description="Pile-up: fraction of count pairs summed, per count")
    detectors: Annotated[int, Field(ge=1, le=16)] = Field(1, description="Detector elements (each its own "
                                                          "spectrum, the counts shared between them)")
    element_shares: list[Annotated[float, Field(gt=0, le=1e6)]] = Field(
        default_factory=list, description="Relative share of the counts of each detector element (its solid "
        "angle; one per element; none: equal shares)")
    zero_offsets_kev: list[Annotated[float, Field(ge=-0.5, le=0.5)]] = Field(
        default_factory=list, description="Calibration offset of each detector element, keV, added to zero_kev "
        "(one per element; none: all at zero_kev)")
    i0_reference: float = Field(1e5, gt=0, le=1e15, description="Incident flux (ion chamber counts) at which "
                                "the areas are given")
    flux_drift: float = Field(0.2, ge=0, lt=1, description="Relative flux variation across the scan")
    dead_time_s: float = Field(5e-8, ge=0, le=1e-3, description="Detector dead time per count, s")
    element_dead_times_s: list[Annotated[float, Field(ge=0, le=1e-3)]] = Field(
        default_factory=list, description="Dead time per count of each detector element, s (one per element; "
        "none: dead_time_s for each)")
    dwell_s: float = Field(0.01, gt=0, le=100, description="Time per point, s")
    seed: Seed = Field(0, description="Random seed")

    @field_validator("elements")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        import xraylib

        for element in value:
            try:
                xraylib.SymbolToAtomicNumber(element)
            except ValueError:
                raise ValueError(f"{element!r} is not a chemical element; write its symbol (Fe, Zn)") from None
        if not value:
            raise ValueError("give at least one element")
        return value

    @model_validator(mode="after")
    def _one_per_detector_element(self) -> XrfSimParams:
        for name in ("element_shares", "zero_offsets_kev", "element_dead_times_s"):
            given = getattr(self, name)
            if given and len(given) != self.detectors:
                raise ValueError(f"{name} gives {len(given)} values for {self.detectors} detector elements; give one "
                                 "per element (detectors), or none")
        return self


def element_lines(element: str, family: str, energy_kev: float) -> tuple[np.ndarray, np.ndarray]:
    """Energies (keV) and relative intensities (summing to 1) of an element's lines of one family.

    From xraylib: line energies and fluorescence production cross sections
    (Kissel, with cascade) at the incident energy.

    Raises
    ------
    ValueError
        When the family has no line excited at ``energy_kev``.
    """
    import xraylib

    z = xraylib.SymbolToAtomicNumber(element)
    energies, weights = [], []
    for macro in _iupac(family):
        line = getattr(xraylib, macro)
        try:
            e = xraylib.LineEnergy(z, line)
            w = xraylib.CS_FluorLine_Kissel_Cascade(z, line, energy_kev)
        except ValueError:  # xraylib has no such line for this element
            continue
        if e > 0 and w > 0:
            energies.append(e)
            weights.append(w)
    if not weights:
        raise ValueError(f"{element} has no {family} line excited at {energy_kev} keV")
    w = np.asarray(weights)
    return np.asarray(energies), w / w.sum()


@lru_cache(maxsize=4)
def _iupac(family: str) -> tuple[str, ...]:
    """IUPAC line names of a family: a shell of the family, then a deeper shell (``KL3``, ``L3M5``, ``M5N7``)."""
    import xraylib

    shells = "KLMNOPQ"
    out = []
    for n in dir(xraylib):
        if not n.endswith("_LINE"):
            continue
        code = n[: -len("_LINE")]
        if not code.startswith(family):
            continue
        first = code[:1] if family == "K" else code[:2]
        rest = code[len(first):]
        ok_first = first == "K" if family == "K" else (len(first) == 2 and first[1].isdigit())
        if ok_first and len(rest) >= 2 and rest[0] in shells and rest[1:].isdigit() and shells.index(rest[0]) > shells.index(family):
            out.append(n)
    return tuple(sorted(out))


class XrfSimulation:
    """The simulated XRF scan of one set of parameters."""

    def __init__(self, params: XrfSimParams) -> None:
        self.params = params

    @property
    def points(self) -> int:
        """Scan points (one spectrum each)."""
        rows, columns = self.params.map_shape
        return rows * columns

    def family(self, element: str) -> str:
        """The line family fitted for ``element``: given, or K up to Z = 45 and L above."""
        import xraylib

        given = self.params.families.get(element)
        if given is not None:
            return given
        return "K" if xraylib.SymbolToAtomicNumber(element) <= 45 else "L"

    def energy_kev(self, detector: int = 0) -> np.ndarray:
        """Energy of each channel of detector element ``detector`` (its calibration offset included), keV."""
        p = self.params
        zero = p.zero_kev + (p.zero_offsets_kev[detector] if p.zero_offsets_kev else 0.0)
        return zero + p.gain_kev * np.arange(p.channels)

    def fwhm_kev(self, energy: np.ndarray | float) -> np.ndarray:
        """Detector resolution (FWHM, keV) at ``energy``, as PyMca models it."""
        p = self.params
        return np.sqrt(p.noise_kev**2 + FWHM_PER_SIGMA**2 * SILICON_PAIR_KEV * p.fano * np.asarray(energy))

    def _gaussians(self, axis: np.ndarray, energies: np.ndarray, weights: np.ndarray,
                   broadening: float = 1.0) -> np.ndarray:
        """Counts per channel of ``axis`` (keV) of unit-area Gaussians at ``energies`` weighted by ``weights``."""
        sigma = self.fwhm_kev(energies) * broadening / FWHM_PER_SIGMA
        e = axis[:, None]
        shapes = np.exp(-0.5 * ((e - energies) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma) * self.params.gain_kev
        return shapes @ weights

    @cached_property
    def shapes(self) -> list[dict[str, np.ndarray]]:
        """Per detector element: the unit-area spectrum of each element's fitted family and of the two scatter
        peaks (escape included), on that detector element's channels."""
        p = self.params
        lines = {element: element_lines(element, self.family(element), p.energy_kev) for element in p.elements}
        out = []
        for detector in range(p.detectors):
            axis = self.energy_kev(detector)
            shapes = {}
            for element, (energies, weights) in lines.items():
                shape = self._gaussians(axis, energies, weights)
                if p.escape > 0:
                    above = energies > SI_KA_KEV + 0.1
                    shape = shape + p.escape * self._gaussians(axis, energies[above] - SI_KA_KEV, weights[above])
                shapes[element] = shape
            shapes["elastic"] = self._gaussians(axis, np.array([p.energy_kev]), np.ones(1))
            shapes["compton"] = self._gaussians(axis, np.array([self.compton_kev]), np.ones(1), broadening=3.0)
            out.append(shapes)
        return out

    @property
    def compton_kev(self) -> float:
        """Energy of the Compton peak at 90 degrees scattering, keV."""
        e = self.params.energy_kev
        return e / (1.0 + e / ELECTRON_KEV)

    def continuum(self, detector: int = 0) -> np.ndarray:
        """The smooth continuum, counts per channel, falling linearly to zero at the incident energy."""
        p = self.params
        return p.continuum * np.clip(1.0 - self.energy_kev(detector) / p.energy_kev, 0, None)

    def concentration(self, element: str) -> np.ndarray:
        """Relative concentration (0 to 1) of ``element`` on the raster, ``(rows, columns)``."""
        rows, columns = self.params.map_shape
        v, u = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(columns) + 0.5) / columns, indexing="ij")
        k = list(self.params.elements).index(element) % 5
        if k == 0:
            pattern = 1.0 / (1.0 + np.exp((np.hypot(u - 0.5, v - 0.5) - 0.3) / 0.06))  # a disc
        elif k == 1:
            pattern = u  # a gradient left to right
        elif k == 2:
            pattern = v  # top to bottom
        elif k == 3:
            pattern = 0.5 + 0.5 * np.cos(2 * np.pi * 2 * u)  # stripes
        else:
            pattern = 0.5 + 0.5 * np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v)
        return 0.1 + 0.9 * pattern

    def truth(self) -> dict[str, np.ndarray]:
        """Peak area of each element at each point at the reference flux and no dead time, ``(rows, columns)``."""
        return {e: area * self.concentration(e) for e, area in self.params.elements.items()}

    def position_m(self, point: int) -> tuple[float, float]:
        """Sample position (y, x) of scan point ``point``, m."""
        row, column = self.cell(point)
        return row * self.params.step_m, column * self.params.step_m

    def cell(self, point: int) -> tuple[int, int]:
        """Raster row and column of scan point ``point`` (a snake runs odd rows backwards)."""
        columns = self.params.map_shape[1]
        row, column = divmod(point, columns)
        if self.params.snake and row % 2:
            column = columns - 1 - column
        return row, column

    def i0(self, point: int) -> float:
        """Incident flux at scan point ``point`` (ion chamber counts): a slow drift with the scan's progress."""
        p = self.params
        return p.i0_reference * (1.0 - p.flux_drift * point / max(self.points - 1, 1))

    def expected(self, point: int, detector: int = 0) -> np.ndarray:
        """Expected counts per channel at ``point`` at the reference flux, no dead time, all detector elements
        together, on the channels of element ``detector``."""
        p = self.params
        row, column = self.cell(point)
        shapes = self.shapes[detector]
        spectrum = self.continuum(detector)
        for element, area in self.truth().items():
            spectrum += area[row, column] * shapes[element]
        spectrum += p.elastic * shapes["elastic"] + p.compton * shapes["compton"]
        if p.pileup > 0:
            total = spectrum.sum()
            pairs = np.convolve(spectrum, spectrum)[: p.channels] / max(total, 1.0)
            spectrum = spectrum + p.pileup * total * pairs
        return spectrum

    @cached_property
    def shares(self) -> np.ndarray:
        """Share of the counts of each detector element (summing to 1)."""
        p = self.params
        given = np.asarray(p.element_shares or [1.0] * p.detectors, dtype=np.float64)
        return given / given.sum()

    def dead_time(self, point: int) -> float | np.ndarray:
        """Dead-time fraction at ``point``: a float, or one per detector element with several.

        Each element is a non-paralysable detector at its own count rate (its
        share of the counts) with its own dead time per count.
        """
        p = self.params
        per_count = p.element_dead_times_s or [p.dead_time_s] * p.detectors
        rate = np.array([self.expected(point, d).sum() * self.i0(point) / p.i0_reference / p.dwell_s * self.shares[d]
                         for d in range(p.detectors)])
        dead = rate * per_count / (1.0 + rate * per_count)
        return float(dead[0]) if p.detectors == 1 else dead

    def mean_counts(self, point: int) -> np.ndarray:
        """Expected counts recorded at ``point`` by each detector element, ``(detectors, channels)``."""
        p = self.params
        live = 1.0 - np.atleast_1d(self.dead_time(point))
        return np.stack([self.expected(point, d) * (self.i0(point) / p.i0_reference * live[d]) * self.shares[d]
                         for d in range(p.detectors)])

    def spectrum(self, point: int) -> np.ndarray:
        """Counts recorded at ``point``: ``(channels,)`` uint32, or ``(detectors, channels)`` with several."""
        rng = np.random.default_rng([self.params.seed, point])
        counts = rng.poisson(self.mean_counts(point)).astype(np.uint32)
        return counts[0] if self.params.detectors == 1 else counts

    def metadata(self) -> dict[str, Any]:
        """Scan metadata in lightpipe's names; ``pymca_config`` a JSON list of one per element where their
        calibrations differ."""
        p = self.params
        configs = [self.fit_config(d) for d in range(p.detectors)] if len(set(p.zero_offsets_kev)) > 1 else []
        return {"energy_ev": p.energy_kev * 1e3, "map_shape": list(p.map_shape), "step_m": p.step_m,
                "channels": p.channels, "detectors": p.detectors, "i0_reference": p.i0_reference,
                "simulator": "xrf_sim", "seed": p.seed,
                "pymca_config": json.dumps(configs) if configs else self.fit_config()}

    def fit_config(self, detector: int = 0) -> dict[str, Any]:
        """The PyMca fit configuration of detector element ``detector`` and the sample, as plain sections (what a
        ``.cfg`` holds)."""
        from PyMca5.PyMcaPhysics.xrf import ClassMcaTheory

        p = self.params
        zero = float(self.energy_kev(detector)[0])
        config = ClassMcaTheory.McaTheory().getConfiguration()
        config["peaks"] = {element: self.family(element) for element in p.elements}
        energies = np.concatenate([element_lines(e, self.family(e), p.energy_kev)[0] for e in p.elements])
        low = max(int((energies.min() - 1.0 - zero) / p.gain_kev), 1)
        high = min(int((p.energy_kev + 1.0 - zero) / p.gain_kev), p.channels - 1)
        # SNIP on a smoothed spectrum: unsmoothed, SNIP follows the noise's lower envelope and leaves
        # part of the continuum under the peaks
        config["fit"].update({
            "energy": [p.energy_kev], "energyweight": [1.0], "energyflag": [1], "energyscatter": [1],
            "scatterflag": 1, "stripflag": 1, "stripalgorithm": 1, "snipwidth": max(int(0.3 / p.gain_kev), 3),
            "stripfilterwidth": 9, "fitweight": 0, "hypermetflag": 1, "escapeflag": int(p.escape > 0),
            "sumflag": 0, "use_limit": 1, "xmin": low, "xmax": high, "linearfitflag": 1, "continuum": 0,
        })
        config["detector"].update({"zero": zero, "gain": p.gain_kev, "noise": p.noise_kev, "fano": p.fano,
                                   "detele": "Si"})
        return {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}

    def write_config(self, path: str | Path, detector: int = 0) -> Path:
        """Write :meth:`fit_config` of detector element ``detector`` as a PyMca ``.cfg`` file, as PyMca's GUI saves
        one."""
        from PyMca5.PyMcaIO import ConfigDict

        config = ConfigDict.ConfigDict()
        config.update(self.fit_config(detector))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config.write(str(path))
        return path


def simulation(params: XrfSimParams) -> XrfSimulation:
    """The simulation for ``params``, shared by the readers of one process (its line shapes are made once)."""
    return _simulation(params.model_dump_json())


@lru_cache(maxsize=4)
def _simulation(params: str) -> XrfSimulation:
    # keyed by the parameters' JSON: the element mapping makes the model itself unhashable
    return XrfSimulation(XrfSimParams.model_validate_json(params))
