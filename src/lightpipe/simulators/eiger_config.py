"""The SIMPLON configuration of the simulated EIGER: its values, what a client may change, and how.

The detector configuration (``/detector/api/<version>/config/<name>``) and the
stream configuration (``/stream/api/<version>/config/<name>``) are plain dicts;
the functions here read and change them as a DECTRIS DCU does: read-only names
are refused, values must have the type the detector reports, choices are
checked, and setting ``photon_energy`` or ``wavelength`` updates the values
that follow from it. Everything refused raises :class:`SimplonError`.

Examples
--------
>>> config = dict(DETECTOR_CONFIG)
>>> sorted(set_detector_config(config, "photon_energy", 8000.0))
['photon_energy', 'threshold_energy', 'wavelength']
>>> round(config["wavelength"], 4)
1.5498
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from lightpipe.core.errors import LightpipeError
from lightpipe.sources.dectris.compression import parse_encoding
from lightpipe.sources.dectris.errors import StreamError

StreamFormat = Literal["v1", "v2"]
#: Default ZeroMQ stream port of each stream version, as on a DECTRIS DCU.
STREAM_PORTS = {"v1": 9999, "v2": 31001}
#: Stream config ``format`` value of each stream version.
FORMAT_NAMES = {"v1": "legacy", "v2": "cbor"}
HC_EV_ANGSTROM = 12398.419843320026  # photon energy (eV) times wavelength (Å)

#: Detector configuration of a fresh simulator; the frame source fills in the size.
DETECTOR_CONFIG: dict[str, Any] = {
    "nimages": 1,
    "ntrigger": 1,
    "count_time": 0.01,
    "frame_time": 0.01,
    "photon_energy": HC_EV_ANGSTROM,
    "wavelength": 1.0,
    "threshold_energy": HC_EV_ANGSTROM / 2,
    "detector_distance": 0.2,
    "beam_center_x": 0.0,
    "beam_center_y": 0.0,
    "x_pixel_size": 75e-6,
    "y_pixel_size": 75e-6,
    "x_pixels_in_detector": 0,
    "y_pixels_in_detector": 0,
    "bit_depth_image": 16,
    "bit_depth_readout": 16,
    "compression": "bslz4",
    "sensor_material": "Si",
    "sensor_thickness": 450e-6,
    "description": "lightpipe simulated EIGER",
    "detector_number": "LP-SIM-0001",
    "omega_start": 0.0,
    "omega_increment": 0.1,
    "countrate_correction_applied": False,
    "flatfield_correction_applied": False,
    "pixel_mask_applied": False,
}
#: Configuration the detector reports but does not let a client change.
READ_ONLY = frozenset({"x_pixels_in_detector", "y_pixels_in_detector", "bit_depth_image", "bit_depth_readout",
                       "x_pixel_size", "y_pixel_size", "sensor_material", "sensor_thickness", "description",
                       "detector_number"})
#: Detector configuration values that must be above zero.
POSITIVE = frozenset({"nimages", "ntrigger", "count_time", "frame_time", "photon_energy", "wavelength"})
CHOICES = {"compression": ("bslz4", "lz4", "none")}
STREAM_CONFIG: dict[str, Any] = {"mode": "enabled", "format": "legacy", "header_detail": "basic",
                                 "header_appendix": "", "image_appendix": ""}
STREAM_CHOICES = {"mode": ("enabled", "disabled"), "format": ("legacy", "cbor"),
                  "header_detail": ("all", "basic", "none")}
COMMANDS = ("initialize", "arm", "trigger", "disarm", "cancel", "abort")


class SimplonError(LightpipeError):
    """A SIMPLON request the detector refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def initial_config(shape: tuple[int, int], dtype: np.dtype, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The detector configuration of frames of ``shape`` and ``dtype``, with the geometry their scan knows.

    Parameters
    ----------
    shape
        Frame shape ``(ny, nx)``: the detector size, and the beam centre unless ``metadata`` gives one.
    dtype
        Pixel type of the frames; sets the bit depths.
    metadata
        Scan metadata in lightpipe's names (``distance_m``, ``wavelength_a``, ``beam_center_x_px``, ...).
    """
    ny, nx = shape
    bits = 8 * np.dtype(dtype).itemsize
    config = dict(DETECTOR_CONFIG, x_pixels_in_detector=nx, y_pixels_in_detector=ny, bit_depth_image=bits,
                  bit_depth_readout=bits, beam_center_x=nx / 2, beam_center_y=ny / 2)
    for key, name in (("beam_center_x_px", "beam_center_x"), ("beam_center_y_px", "beam_center_y"),
                      ("distance_m", "detector_distance"), ("x_pixel_size_m", "x_pixel_size"),
                      ("y_pixel_size_m", "y_pixel_size"), ("count_time_s", "count_time")):
        if isinstance(metadata.get(key), (int, float)):
            config[name] = float(metadata[key])
    if isinstance(metadata.get("wavelength_a"), (int, float)) and metadata["wavelength_a"] > 0:
        config["wavelength"] = float(metadata["wavelength_a"])
        config["photon_energy"] = HC_EV_ANGSTROM / config["wavelength"]
        config["threshold_energy"] = config["photon_energy"] / 2
    return config


def compression_setting(encoding: str | None, dtype: np.dtype) -> str:
    """The detector ``compression`` value of an encoding name (a v1 name or a v2 name) for frames of ``dtype``.

    ``None`` gives the detector default, ``bslz4``. An encoding a detector does not
    send (big-endian, HDF5-framed LZ4, bitshuffle of the wrong element size) raises
    :class:`~lightpipe.sources.dectris.errors.StreamError` saying what to use instead.
    """
    if encoding is None or encoding in CHOICES["compression"]:
        return encoding or "bslz4"
    enc = parse_encoding(encoding)
    if enc.byteorder == ">" or enc.kind == "lz4-hdf5":
        raise StreamError(f"encoding {encoding!r} is not one a detector sends; use 'bs16-lz4<', 'lz4<' or '<'")
    if enc.kind == "bslz4" and enc.elem_size != dtype.itemsize:
        raise StreamError(f"encoding {encoding} bitshuffles {8 * enc.elem_size}-bit elements but the frames are "
                          f"{dtype}; use bs{8 * dtype.itemsize}-lz4<")
    return {"bslz4": "bslz4", "lz4": "lz4", "raw": "none"}[enc.kind]


def detector_config_answer(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A detector configuration value as SIMPLON answers a GET: ``value``, ``value_type``, ``access_mode``."""
    if name not in config:
        raise SimplonError(f"unknown detector config {name!r}; known: {', '.join(sorted(config))}", 404)
    value = config[name]
    value_type = {bool: "bool", int: "int", float: "float"}.get(type(value), "string")
    return {"value": value, "value_type": value_type, "access_mode": "r" if name in READ_ONLY else "rw"}


def set_detector_config(config: dict[str, Any], name: str, value: Any) -> list[str]:
    """Set detector configuration ``name`` in ``config``; returns the names it changed (SIMPLON's answer)."""
    if name not in config:
        raise SimplonError(f"unknown detector config {name!r}; known: {', '.join(sorted(config))}", 404)
    if name in READ_ONLY:
        raise SimplonError(f"detector config {name!r} is read-only")
    current = config[name]
    # bool is an int to Python, but not to the detector: true is no frame count
    if isinstance(current, (bool, str)):
        ok = isinstance(value, type(current))
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        kind = {bool: "true or false", str: "a string", int: "an integer"}.get(type(current), "a number")
        raise SimplonError(f"detector config {name!r} takes {kind}, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise SimplonError(f"detector config {name!r} is one of {', '.join(CHOICES[name])}, got {value!r}")
    if name in POSITIVE and value <= 0:
        raise SimplonError(f"detector config {name!r} must be positive, got {value!r}")
    config[name] = float(value) if isinstance(current, float) else value
    changed = [name]
    if name == "photon_energy":
        config["wavelength"] = HC_EV_ANGSTROM / value
        config["threshold_energy"] = value / 2
        changed += ["threshold_energy", "wavelength"]
    elif name == "wavelength":
        config["photon_energy"] = HC_EV_ANGSTROM / value
        config["threshold_energy"] = config["photon_energy"] / 2
        changed += ["photon_energy", "threshold_energy"]
    return changed


def stream_config_answer(stream_config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A stream configuration value as SIMPLON answers a GET: ``value`` and ``access_mode``."""
    if name not in stream_config:
        raise SimplonError(f"unknown stream config {name!r}; known: {', '.join(sorted(stream_config))}", 404)
    return {"value": stream_config[name], "access_mode": "rw"}


def set_stream_config(stream_config: dict[str, Any], name: str, value: Any) -> list[str]:
    """Set stream configuration ``name`` (``mode``, ``format``, ``header_detail``, appendices); returns ``[name]``."""
    if name not in stream_config:
        raise SimplonError(f"unknown stream config {name!r}; known: {', '.join(sorted(stream_config))}", 404)
    if name in STREAM_CHOICES and value not in STREAM_CHOICES[name]:
        raise SimplonError(f"stream config {name!r} is one of {', '.join(STREAM_CHOICES[name])}, got {value!r}")
    stream_config[name] = value
    return [name]
