"""PyMca fit configurations (``.cfg``): read with PyMca's own ``ConfigDict``, checked before PyMca sees them.

A configuration saved by PyMca's fit GUI names the elements and their line
families (``[peaks]``), the energy calibration and detector resolution
(``[detector]``: zero, gain, noise, Fano), the peak shape (``[peakshape]``,
hypermet tails), the fitted channel range, the background and the weighting
(``[fit]``), and the incident energies and scatter peaks. PyMca refuses a
wrong element or line deep inside its model with a bare ``KeyError('Xx')``;
:func:`read_config` checks every ``[peaks]`` entry first and names the file,
the element and what to write instead.

Concentrations (``[concentrations]``, fundamental parameters) are not
computed: the maps are fitted peak areas, as PyMca's fast linear fit gives
them by default. A configuration with a fit strategy is refused, as PyMca's
``FastXRFLinearFit`` refuses it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightpipe.core.errors import LightpipeError

__all__ = ["XrfConfigError", "FitConfig", "read_config", "check_peaks", "LINE_FAMILIES"]

#: Line families a ``[peaks]`` entry may name, as PyMca spells them.
LINE_FAMILIES = ("K", "Ka", "Kb", "L", "L1", "L2", "L3", "M", "M1", "M2", "M3", "M4", "M5")


class XrfConfigError(LightpipeError, ValueError):
    """A PyMca fit configuration that cannot be used: a missing file, an unknown element or line."""


def pymca_missing() -> XrfConfigError:
    """The error for a missing PyMca5, naming the extra that installs it."""
    return XrfConfigError("XRF fitting needs PyMca5; install it with: pip install 'lightpipe[xrf]'")


@dataclass(frozen=True)
class FitConfig:
    """A checked PyMca fit configuration.

    Attributes
    ----------
    path
        The ``.cfg`` file it was read from (``""`` when built in memory).
    config
        PyMca's ``ConfigDict`` of it, with the linear fit switched on.
    """

    path: str
    config: Any

    @property
    def background(self) -> Literal["snip", "strip", "none"]:
        """The continuum removed before the linear fit."""
        fit = self.config["fit"]
        if not fit.get("stripflag", 0):
            return "none"
        return "snip" if int(fit.get("stripalgorithm", 0)) == 1 else "strip"

    @property
    def weighted(self) -> bool:
        """Whether each spectrum is weighted by its Poisson uncertainty (``[fit] fitweight``)."""
        return bool(self.config["fit"].get("fitweight", 0))

    @property
    def calibration(self) -> tuple[float, float]:
        """Energy (keV) of channel 0 and keV per channel: ``energy = zero + gain * channel``."""
        detector = self.config["detector"]
        return float(detector["zero"]), float(detector["gain"])

    @property
    def channel_range(self) -> tuple[int, int]:
        """First and last channel fitted (``[fit] xmin``, ``xmax``), inclusive."""
        fit = self.config["fit"]
        return int(fit["xmin"]), int(fit["xmax"])

    def elements(self) -> dict[str, list[str]]:
        """Element -> line families fitted, as ``[peaks]`` gives them."""
        return {element: _families(value) for element, value in self.config["peaks"].items()}


def _families(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def check_peaks(peaks: dict[str, Any], where: str) -> None:
    """Refuse ``[peaks]`` entries naming an element or line family PyMca does not know.

    Parameters
    ----------
    peaks
        ``[peaks]`` of a configuration: element -> line family or families.
    where
        The file (or description) named in the message.

    Raises
    ------
    XrfConfigError
        Naming the element, the family and the choices.
    """
    from PyMca5.PyMcaPhysics.xrf import Elements

    if not peaks:
        raise XrfConfigError(f"{where}: [peaks] names no element; add lines such as 'Fe = K' in PyMca's fit GUI")
    for element, value in peaks.items():
        if element not in Elements.Element:
            raise XrfConfigError(f"{where}: [peaks] names {element!r}, which is not a chemical element; write its "
                                 "symbol with one capital letter (Fe, Cr, Pb)")
        for family in _families(value):
            if family not in LINE_FAMILIES:
                raise XrfConfigError(f"{where}: [peaks] {element} = {family!r} is not a line family; choose among "
                                     f"{', '.join(LINE_FAMILIES)}")
            if not Elements.Element[element].get(f"{family} xrays"):
                raise XrfConfigError(f"{where}: [peaks] {element} has no {family} lines in PyMca's tables; "
                                     f"remove {family} for {element} (lighter elements have no L or M lines)")


def read_config(path: str | Path) -> FitConfig:
    """Read and check a PyMca fit configuration file.

    Parameters
    ----------
    path
        A ``.cfg`` file saved by PyMca's fit GUI (PyMca ships ``Steel.cfg``).

    Raises
    ------
    XrfConfigError
        When the file is missing, has no ``[peaks]``, ``[fit]`` or ``[detector]``
        section, names an unknown element or line, or asks for a fit strategy.
    """
    try:
        from PyMca5.PyMcaIO import ConfigDict
    except ImportError as exc:
        raise pymca_missing() from exc
    path = Path(path)
    if not path.is_file():
        raise XrfConfigError(f"PyMca fit configuration not found: {path}; save one from PyMca's fit GUI (.cfg)")
    config = ConfigDict.ConfigDict()
    try:
        config.read(str(path))
    except Exception as exc:  # ConfigDict raises whatever configparser or its value parser raised
        raise XrfConfigError(f"{path} is not a PyMca fit configuration: {exc}") from exc
    return from_dict(config, str(path))


def from_dict(config: Any, where: str = "the configuration") -> FitConfig:
    """Check a configuration given as PyMca's ``ConfigDict`` (or a dict of its sections)."""
    try:
        from PyMca5.PyMcaIO import ConfigDict
    except ImportError as exc:
        raise pymca_missing() from exc
    for section in ("peaks", "fit", "detector"):
        if section not in config:
            raise XrfConfigError(f"{where} has no [{section}] section; save the configuration from PyMca's fit GUI")
    check_peaks(dict(config["peaks"]), where)
    if int(config["fit"].get("strategyflag", 0)):
        raise XrfConfigError(f"{where}: [fit] strategyflag = 1 asks for a fit strategy, which needs the "
                             "non-linear fit; set it to 0 for map fitting (PyMca's fast fit refuses it too)")
    checked = ConfigDict.ConfigDict()
    checked.update(copy.deepcopy(dict(config)))  # the caller's configuration stays as it was
    # the fit is linear in the peak areas: PyMca's FastXRFLinearFit switches this on the same way
    checked["fit"]["linearfitflag"] = 1
    return FitConfig(where, checked)
