"""PONI calibrations, correction images from files, and the integrators each worker builds once.

A PONI file (what ``pyFAI-calib2`` saves) holds the detector and the geometry:
distance, point of normal incidence, three rotations, wavelength. pyFAI reads a
file without ``Distance`` as a default geometry 1 m away without complaint, so
:func:`read_poni` checks the keys first and says what is missing.

Building an integrator is the expensive part: pyFAI computes every pixel's
position and, on the first integration, the sparse matrix that spreads pixels
over bins (about a second for a Pilatus 1M). :func:`integrator` keeps the
integrators of this process, keyed by everything they depend on (the
geometry, the frame shape, the static mask, the bins), so a worker builds each
once and every frame, and every later scan with the same calibration, reuses
it. :data:`BUILT` counts the integrators built, for tests and benchmarks.
"""
from __future__ import annotations

import json
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightpipe.core.errors import LightpipeError

if TYPE_CHECKING:
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

__all__ = ["BUILT", "PoniGeometry", "integrator", "read_poni", "shape_problem"]

#: Keys a PONI file must have (pyFAI's spelling, lower case): without them pyFAI silently assumes defaults.
REQUIRED_KEYS = ("distance", "poni1", "poni2")
#: Most integrators a process keeps: a Pilatus 1M's sparse matrix is tens of MB, an Eiger 16M's about 1 GB.
KEEP = 4
#: Integrators built by this process since it started (see :func:`integrator`).
BUILT = {"count": 0}

_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[Any, ...], AzimuthalIntegrator] = OrderedDict()


def pyfai() -> Any:
    """The ``pyFAI`` module, or an error naming the extra that installs it."""
    try:
        import pyFAI
        import pyFAI.calibrant
        import pyFAI.detectors
    except ImportError as exc:
        raise LightpipeError("azimuthal integration needs pyFAI; install it with: pip install 'lightpipe[xrd]'") from exc
    return pyFAI


@dataclass(frozen=True)
class PoniGeometry:
    """A calibration as pyFAI's configuration dict, and where it came from (for messages).

    Attributes
    ----------
    config
        What ``AzimuthalIntegrator.get_config()`` returns: detector, its
        configuration, ``dist``, ``poni1``, ``poni2``, ``rot1..3`` (m, rad),
        ``wavelength`` (m, or ``None``).
    origin
        The PONI file's path, or a description of where the geometry came from.
    """

    config: dict[str, Any]
    origin: str

    @property
    def key(self) -> str:
        """The configuration as canonical JSON: equal geometries give equal keys."""
        return json.dumps(self.config, sort_keys=True, default=str)

    @cached_property
    def detector_shape(self) -> tuple[int, int] | None:
        """The detector's shape (ny, nx) if the calibration names one (a Pilatus 1M, a ``max_shape``)."""
        detector = pyfai().detectors.detector_factory(self.config["detector"], self.config.get("detector_config"))
        shape = detector.shape
        return (int(shape[0]), int(shape[1])) if shape is not None else None

    @property
    def wavelength_m(self) -> float | None:
        """The calibration's wavelength in metres, if it has one."""
        value = self.config.get("wavelength")
        return float(value) if value else None

    def make(self) -> AzimuthalIntegrator:
        """A new pyFAI integrator with this geometry."""
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        pyfai()
        ai = AzimuthalIntegrator()
        ai.set_config(dict(self.config))
        return ai


def _poni_keys(text: str) -> dict[str, str]:
    """``key: value`` lines of a PONI file, keys lower case, comments left out (as pyFAI reads them)."""
    keys = {}
    for line in text.splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            key, value = line.split(":", 1)
            keys[key.strip().lower()] = value.strip()
    return keys


def read_poni(path: str | Path) -> PoniGeometry:
    """Read and check a PONI file.

    Raises
    ------
    LightpipeError
        The file is missing, unreadable, lacks a geometry key or names a
        detector pyFAI does not know; the message names the file and says what
        to do.
    """
    path = Path(path)
    remedy = "make one with pyFAI-calib2 from a calibrant image (File > Save as PONI), or fix the path"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise LightpipeError(f"PONI file {str(path)!r} does not exist; {remedy}") from None
    except OSError as exc:
        raise LightpipeError(f"cannot read PONI file {str(path)!r}: {exc.strerror or exc}; {remedy}") from None
    keys = _poni_keys(text)
    missing = [k.capitalize() for k in REQUIRED_KEYS if k not in keys]
    if "detector" not in keys and "pixelsize1" not in keys:
        missing.append("Detector (or PixelSize1 and PixelSize2)")
    if missing:
        raise LightpipeError(f"{str(path)!r} is not a PONI file: it has no {', '.join(missing)}; {remedy}")
    pyfai()
    from pyFAI.io.ponifile import PoniFile

    try:  # PoniFile reads without building an integrator (pyFAI.load's costs a garbage collection, 50 ms)
        config = PoniFile(str(path)).as_dict()
    except Exception as exc:  # pyFAI raises whatever its parsers raise: a bad number, an unknown detector
        raise LightpipeError(f"pyFAI cannot read PONI file {str(path)!r}: {type(exc).__name__}: {exc}; "
                             f"{remedy}") from None
    return PoniGeometry(plain(config), str(path))


def plain(config: dict[str, Any]) -> dict[str, Any]:
    """pyFAI's configuration with plain JSON values (its detector orientation is an enum), as stored in metadata."""
    return json.loads(json.dumps(config, default=lambda value: int(value) if isinstance(value, int) else str(value)))


def shape_problem(geometry: PoniGeometry, shape: tuple[int, ...]) -> str | None:
    """Why frames of ``shape`` do not fit the calibration's detector, or ``None`` when they do.

    A calibration of a generic detector (pixel sizes only, no shape) fits any frame.
    """
    expected = geometry.detector_shape
    if expected is None or tuple(shape) == expected:
        return None
    name = geometry.config.get("detector", "detector")
    return (f"PONI file {geometry.origin!r} describes a {name} of {expected[0]} x {expected[1]} pixels but the frames "
            f"are {shape[0]} x {shape[1]}; calibrate this detector (pyFAI-calib2 on a frame of this scan) and give "
            "that PONI file, or integrate the frames before they are cropped or binned")


def mask_checksum(mask: np.ndarray | None) -> int | None:
    """CRC32 of a boolean mask's bytes (``None`` for no mask): part of an integrator's key."""
    return None if mask is None else zlib.crc32(np.ascontiguousarray(mask, dtype=bool).tobytes())


def integrator(geometry: PoniGeometry, shape: tuple[int, int], mask: np.ndarray | None,
               settings: tuple[Any, ...], warm: Any = None) -> AzimuthalIntegrator:
    """This process's integrator for a geometry, frame shape, static mask and integration settings.

    Built once (counted in :data:`BUILT`) and kept; the least recently used of
    more than :data:`KEEP` is dropped.

    Parameters
    ----------
    geometry
        The calibration.
    shape
        Frame shape (ny, nx).
    mask
        Static mask of the frames' shape, true where a pixel is excluded (added
        to the detector's own, such as a Pilatus's module gaps), or ``None``.
    settings
        Everything else the integrator's sparse matrix depends on (kind, bins,
        unit, ranges, method); part of the key.
    warm
        Called once with a new integrator, to build its sparse matrix now
        rather than on the first frame.
    """
    key = (geometry.key, tuple(shape), mask_checksum(mask), settings)
    with _LOCK:
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
            return found
        ai = geometry.make()
        if mask is not None:
            own = ai.detector.mask
            ai.detector.mask = (mask | own.astype(bool)) if own is not None else mask
        if warm is not None:
            warm(ai)
        BUILT["count"] += 1
        _CACHE[key] = ai
        while len(_CACHE) > KEEP:
            _CACHE.popitem(last=False)
        return ai
