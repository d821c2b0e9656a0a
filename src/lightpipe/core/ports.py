"""Declared inputs and outputs of stages and sources, checked when a pipeline loads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: dtype families a port may name instead of one exact dtype.
_FAMILIES = {
    "number": "biuf",
    "int": "iu",
    "uint": "u",
    "float": "f",
    "complex": "c",
    "bool": "b",
}


@dataclass(frozen=True)
class Port:
    """One named input or output of a stage or source.

    Parameters
    ----------
    ndim
        Number of array dimensions (0 for a scalar); ``None`` accepts any.
    dtype
        An exact NumPy dtype name (``"uint16"``) or a family (``"number"``: any
        real number, ``"int"``, ``"uint"``, ``"float"``, ``"complex"``,
        ``"bool"``); ``None`` accepts any.
    unit
        Physical unit of the values, if any (``"counts"``, ``"m"``, ``"eV"``).
    description
        One line shown by ``lightpipe stages``.
    scan
        ``True`` for a per-scan value (a reduce or solver result), ``False`` for a
        per-event value.
    axes
        Names of outputs of the same stage that label this output's dimensions,
        one per dimension after the event index (``("radius",)`` for a radial
        profile, ``("y", "x")`` for a map); result files plot the output
        against them. Empty: plotted against the index and bin numbers.
    constant
        The value is the same for every event of a scan (bin centres, a
        frame's pixel coordinates); result files store it once, as an axis.
        On an input: the stage expects the same value in every event.
    main
        The stage's main result, which a result file's default plot shows
        (the last stage in the pipeline with a main result written wins).
    optional
        On an input: the stage works without it. When the pipeline does not
        connect it and no field of its name exists, it is left out and the
        stage's ``process`` (or ``partial``) uses its parameter's default.
    """

    ndim: int | None = None
    dtype: str | None = "number"
    unit: str | None = None
    description: str = ""
    scan: bool = False
    axes: tuple[str, ...] = ()
    constant: bool = False
    main: bool = False
    optional: bool = False

    def kinds(self) -> str | None:
        """Return the NumPy dtype kind characters this port accepts, or ``None`` for any."""
        if self.dtype is None:
            return None
        if self.dtype in _FAMILIES:
            return _FAMILIES[self.dtype]
        return np.dtype(self.dtype).kind

    def accepts(self, other: Port) -> str | None:
        """Explain why ``other`` (a producer) cannot feed this port, or return ``None``."""
        if self.ndim is not None and other.ndim is not None and self.ndim != other.ndim:
            return f"expects {self.ndim}-D values but gets {other.ndim}-D"
        mine, theirs = self.kinds(), other.kinds()
        if mine is not None and theirs is not None and not set(theirs) <= set(mine):
            return f"expects dtype {self.dtype} but gets {other.dtype}"
        return None

    def check_value(self, value: Any) -> str | None:
        """Explain why a run-time ``value`` does not fit this port, or return ``None``."""
        arr = np.asarray(value) if not hasattr(value, "ndim") else value
        if self.ndim is not None and arr.ndim != self.ndim:
            return f"has {arr.ndim} dimensions, expected {self.ndim}"
        kinds = self.kinds()
        if kinds is not None and np.dtype(arr.dtype).kind not in kinds:
            return f"has dtype {arr.dtype}, expected {self.dtype}"
        return None

    def describe(self) -> str:
        """Short human form, e.g. ``2-D float [counts]``."""
        shape = "any-D" if self.ndim is None else ("scalar" if self.ndim == 0 else f"{self.ndim}-D")
        text = f"{shape} {self.dtype or 'any'}"
        if self.unit:
            text += f" [{self.unit}]"
        if self.scan:
            text += " (per scan)"
        if self.optional:
            text += " (optional)"
        return text
