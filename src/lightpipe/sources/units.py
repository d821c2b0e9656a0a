"""Physical units as HDF5 and image files spell them, converted to the units lightpipe's scan metadata uses.

lightpipe's metadata names carry their unit (``distance_m``, ``wavelength_a``,
``omega_start_deg``); files carry theirs in ``@units`` attributes (NeXus) or in
header lines (miniCBF). :func:`convert` turns one into the other and refuses a
unit it does not know or of the wrong quantity, so a source never takes
millimetres for metres.
"""
from __future__ import annotations

import numpy as np

#: Unit spellings found in files (lower case, a trailing dot dropped) -> (quantity, size in lightpipe's unit
#: of that quantity: metre, degree, second, electronvolt, pixel).
UNITS: dict[str, tuple[str, float]] = {
    **dict.fromkeys(("m", "meter", "metre", "meters", "metres"), ("length", 1.0)),
    "cm": ("length", 1e-2),
    **dict.fromkeys(("mm", "millimeter", "millimetre", "millimeters", "millimetres"), ("length", 1e-3)),
    **dict.fromkeys(("um", "\u00b5m", "\u03bcm", "micron", "microns", "micrometer", "micrometre"), ("length", 1e-6)),
    **dict.fromkeys(("nm", "nanometer", "nanometre"), ("length", 1e-9)),
    **dict.fromkeys(("a", "\u00e5", "angstrom", "angstroms", "ang"), ("length", 1e-10)),
    **dict.fromkeys(("deg", "degree", "degrees", "\u00b0"), ("angle", 1.0)),
    **dict.fromkeys(("rad", "radian", "radians"), ("angle", 180.0 / np.pi)),
    "mrad": ("angle", 0.18 / np.pi),
    **dict.fromkeys(("s", "sec", "second", "seconds"), ("time", 1.0)),
    "ms": ("time", 1e-3),
    **dict.fromkeys(("us", "\u00b5s", "\u03bcs"), ("time", 1e-6)),
    "ns": ("time", 1e-9),
    "ev": ("energy", 1.0),
    "kev": ("energy", 1e3),
    **dict.fromkeys(("pixel", "pixels", "px"), ("pixel", 1.0)),
}


def convert(value: float, unit: str | None, quantity: str, scale: float = 1.0,
            pixel_size_m: float | None = None) -> float:
    """``value``, given in ``unit``, in units of ``scale`` times lightpipe's unit of ``quantity``.

    lightpipe's units are metre (``length``), degree (``angle``), second
    (``time``), electronvolt (``energy``) and pixel (``pixel``). A value without
    a unit is taken to be in the unit asked for already. A pixel position given
    as a length is divided by ``pixel_size_m``.

    Raises
    ------
    ValueError
        When the unit is unknown, of another quantity, or a length with no pixel size to divide by.

    Examples
    --------
    >>> convert(150.0, "mm", "length")
    0.15
    >>> convert(9.7630, "nm", "length", scale=1e-10)  # in angstrom
    97.63
    """
    if unit is None or not unit.strip():
        return float(value)
    known = UNITS.get(unit.strip().rstrip(".").lower())
    if known is None:
        raise ValueError(f"unknown unit {unit!r}")
    kind, size = known
    if quantity == "pixel" and kind == "length":
        if not pixel_size_m:
            raise ValueError(f"a position in {unit!r} needs the pixel size to be known")
        return float(value) * size / pixel_size_m
    if kind != quantity:
        raise ValueError(f"{unit!r} is a unit of {kind}, not of {quantity}")
    # round away the binary noise of the conversion: 150 mm is 0.15 m, not 0.15000000000000002
    return float(f"{float(value) * size / scale:.15g}")
