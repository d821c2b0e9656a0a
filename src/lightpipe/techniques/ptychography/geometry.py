"""Object-plane geometry of diffraction frames: the object pixel size, the wavelength, the beamstop's pixels.

Positions arrive in metres and become object pixels through the object pixel
size ``wavelength * distance / (window * detector_pixel)``, where ``window`` is
the number of detector pixels the frames span. Cropping shrinks the window
(bigger object pixels); FFT downsampling and binning do not change it (they
shrink the field of view instead). A stage takes the window from the frame
geometry the pipeline follows through the stages before it
(``stage.input_geometry["frame"]``, :class:`~lightpipe.core.geometry.FrameGeometry`),
so a crop is never repeated by hand. The size comes from, in order: the
stage's ``object_pixel_size_m``; the scan's ``object_pixel_size_m`` scaled from
its ``frame_shape`` to the window; its ``wavelength_m`` (or ``energy_ev``),
``distance_m`` and ``y/x_pixel_size_m``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import field_validator

from lightpipe.core.bounds import MAX_FRAME_PX
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.stage import StageParams, param
from lightpipe.techniques.ptychography.optics import wavelength_m

__all__ = ["FitParams", "GeometryParams", "beamstop_mask", "object_axes", "object_pixel_size", "probe_axes",
           "scan_wavelength"]


def object_pixel_size(metadata: Mapping[str, Any], object_pixel_size_m: Sequence[float] | None = None,
                      frames: FrameGeometry | None = None) -> tuple[float, float]:
    """Object pixel size (y, x) in metres of frames whose geometry is ``frames``.

    Parameters
    ----------
    metadata
        Scan metadata: ``object_pixel_size_m`` with ``frame_shape``, or
        ``wavelength_m`` (or ``energy_ev``), ``distance_m``, ``y_pixel_size_m``
        and ``x_pixel_size_m``.
    object_pixel_size_m
        Returned as it is when given.
    frames
        Geometry of the frames (a stage's ``input_geometry["frame"]``): the
        detector window they span. Default: the scan's whole ``frame_shape``.

    Raises
    ------
    ValueError
        When neither the arguments nor the metadata tell the size.

    Examples
    --------
    >>> meta = {"object_pixel_size_m": [3e-8, 3e-8], "frame_shape": [128, 128]}
    >>> [round(size, 15) for size in object_pixel_size(meta, None, FrameGeometry((128, 128)).cropped((96, 96))
    ...                                                 .resampled((64, 64)))]
    [4e-08, 4e-08]
    """
    if object_pixel_size_m is not None:
        return float(object_pixel_size_m[0]), float(object_pixel_size_m[1])
    shape = metadata.get("frame_shape")
    window = frames.window_px if frames is not None else shape
    scanned = metadata.get("object_pixel_size_m")
    if window is not None and scanned is not None and shape is not None:
        return float(scanned[0]) * shape[0] / window[0], float(scanned[1]) * shape[1] / window[1]
    lam = scan_wavelength(metadata)
    distance, py, px = metadata.get("distance_m"), metadata.get("y_pixel_size_m"), metadata.get("x_pixel_size_m")
    if window is not None and None not in (lam, distance, py, px):
        return (float(lam) * float(distance) / (window[0] * float(py)),  # type: ignore[arg-type]
                float(lam) * float(distance) / (window[1] * float(px)))  # type: ignore[arg-type]
    raise ValueError("the scan does not tell the object pixel size (its metadata has neither object_pixel_size_m "
                     "with frame_shape, nor wavelength_m or energy_ev with distance_m and y/x_pixel_size_m): set "
                     "the stage's parameter object_pixel_size_m: [y, x] in metres")


def scan_wavelength(metadata: Mapping[str, Any]) -> float | None:
    """Photon wavelength in metres from the scan's ``wavelength_m`` or ``energy_ev``; ``None`` if it gives neither."""
    if metadata.get("wavelength_m"):
        return float(metadata["wavelength_m"])
    if metadata.get("energy_ev"):
        return wavelength_m(float(metadata["energy_ev"]))
    return None


def beamstop_mask(frame_shape: tuple[int, int], radius_px: float) -> np.ndarray | None:
    """Valid pixels of centred frames: all but the disc of ``radius_px`` around the centre; ``None`` for 0."""
    if not radius_px:
        return None
    ny, nx = frame_shape
    y, x = np.indices((ny, nx))
    return np.hypot(y - ny // 2, x - nx // 2) > radius_px


def object_axes(origin_px: Sequence[float], object_shape: Sequence[int], window: Sequence[int],
                pixel_size_m: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (y, x) in metres of the object's pixel centres, in the frame of the scan's positions.

    A frame's position places the top-left corner of its probe window on the
    object; the probe is centred at pixel ``window // 2`` of the window (the
    FFT's zero). Row ``j`` of the object gets the position at which the probe's
    centre fell on it, ``(origin + j - window // 2) * pixel``, so the object is
    labelled like the scan maps of the same positions (STXM, DPC): a probe
    position in metres lands on the pixel the probe lit.

    Parameters
    ----------
    origin_px
        Position (y, x), in object pixels, of the object array's pixel (0, 0) as
        a window corner: the reconstruction's ``positions_px`` are the positions
        in metres over the pixel size minus this.
    object_shape
        (Hy, Hx) of the object.
    window
        (ny, nx) of the frames (the probe window).
    pixel_size_m
        Object pixel size (y, x), m.

    Examples
    --------
    >>> y, x = object_axes((10.0, 0.0), (4, 3), (4, 4), (1e-8, 2e-8))
    >>> (y / 1e-8).round().tolist(), (x / 2e-8).round().tolist()
    ([8.0, 9.0, 10.0, 11.0], [-2.0, -1.0, 0.0])
    """
    return (
        (float(origin_px[0]) + np.arange(object_shape[0]) - window[0] // 2) * float(pixel_size_m[0]),
        (float(origin_px[1]) + np.arange(object_shape[1]) - window[1] // 2) * float(pixel_size_m[1]),
    )


def probe_axes(window: Sequence[int], pixel_size_m: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (y, x) in metres of the probe's pixels from its centre (pixel ``window // 2``)."""
    return ((np.arange(window[0]) - window[0] // 2) * float(pixel_size_m[0]),
            (np.arange(window[1]) - window[1] // 2) * float(pixel_size_m[1]))


#: Most iterations an algorithm chain may ask for in all: hours of computing on a large scan.
MAX_CHAIN_ITERATIONS = 100_000


def check_chain_length(steps: Sequence[tuple[str, int]]) -> None:
    """Refuse an algorithm chain of more than :data:`MAX_CHAIN_ITERATIONS` iterations in all."""
    total = sum(count for _, count in steps)
    if total > MAX_CHAIN_ITERATIONS:
        raise ValueError(f"the chain asks for {total} iterations, more than the {MAX_CHAIN_ITERATIONS} a "
                         "reconstruction may run; give fewer, e.g. 'DM:100, ML:50'")

class GeometryParams(StageParams):
    """Parameters that set the object-plane geometry of the frames (see the module description)."""

    object_pixel_size_m: tuple[float, float] | None = param(
        None, "Object pixel size (y, x); default from the scan and the detector window the frames span", unit="m")
    defocus_m: float = param(
        0.0, "Distance from the probe's focus to the sample, for the initial probe (positive downstream; 0: a flat "
        "phase, the probe at focus)", unit="m", ge=-1.0, le=1.0)

    @field_validator("object_pixel_size_m")
    @classmethod
    def _positive_size(cls, size: tuple[float, float] | None) -> tuple[float, float] | None:
        if size is not None and not all(math.isfinite(s) and s > 0 for s in size):
            raise ValueError(f"object_pixel_size_m must be two sizes > 0 in metres, e.g. [4e-8, 4e-8], got {list(size)}")
        return size


class FitParams(GeometryParams):
    """Geometry and the detector pixels a reconstruction leaves out of its fit."""

    beamstop_radius_px: float = param(
        0.0, "Pixels this close to the frame's centre (behind the beamstop) are left out of the fit; 0: none",
        unit="px", ge=0, le=MAX_FRAME_PX)
