"""The ``ptycho_distributed`` stage: the scan split into parts reconstructed at once, merged every few iterations.

The reconstruction itself is :func:`~lightpipe.techniques.ptychography.distributed.reconstruct_distributed`;
its parts run where the engine's part runner puts them (``stage.part_runner``):
one Dask actor per part on the run's own cluster on the ``dask`` engine,
threads of the driver's process on ``local``, never on a Dask client that
merely happens to be open in the process.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pydantic import field_validator

from lightpipe.core.bounds import MAX_COUNT, MAX_FRAME_PX, Seed
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import SolverStage, param
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.algorithms import parse_chain
from lightpipe.techniques.ptychography.distributed import reconstruct_distributed
from lightpipe.techniques.ptychography.geometry import (
    FitParams,
    beamstop_mask,
    check_chain_length,
    object_axes,
    object_pixel_size,
    scan_wavelength,
)
from lightpipe.techniques.ptychography.probe import load_probe_guess, probe_from_intensity

__all__ = ["DistributedParams", "DistributedReconstruction"]

log = logging.getLogger(__name__)


class DistributedParams(FitParams):
    """Parameters of :class:`DistributedReconstruction`."""

    chain: str = param("DM:100, ML:50", "Algorithms and iterations, e.g. 'DM:100, ML:50' (DM, AP, ML, ePIE)")
    parts: int = param(2, "Parts the scan positions are split into with k-means; one worker each", ge=1, le=1024)
    merge_every: int = param(10, "Iterations between merges of the parts' objects and probes", ge=1, le=MAX_COUNT)
    probe_modes: int = param(1, "Incoherent probe modes to reconstruct", ge=1, le=64)
    overlap_px: float | None = param(
        None, "Positions of other parts within this distance of a part's own are shared with it; default a "
        "quarter of the frame", unit="px", ge=0, le=MAX_FRAME_PX)
    threads_per_part: int = param(1, "Threads each part computes with (the threads of one Dask worker)", ge=1, le=1024)
    seed: Seed = param(0, "Seed of the k-means split")

    @field_validator("chain")
    @classmethod
    def _chain(cls, chain: str) -> str:
        check_chain_length(parse_chain(chain))
        return chain


_SCAN_PORT = {"scan": True}
_OBJECT_AXES = ("object_y", "object_x")


class DistributedReconstruction(SolverStage):
    """Reconstruct the object and probe with the scan split into parts on workers, merged every few iterations.

    Frames and positions are collected as they come; at the end of the scan the
    positions are split with k-means into overlapping parts, each part is
    reconstructed on its own worker (the engine's: Dask workers on ``dask``,
    threads on ``local``), and the parts' objects are merged, weighted by
    illumination, every ``merge_every`` iterations (see
    :mod:`lightpipe.techniques.ptychography.distributed`). The probe starts from
    the probe of the scan's CXI file when it holds one (the scan's
    ``probe_file``, if it fits the frames), else from the mean diffraction
    amplitude, propagated by ``defocus_m``; ``probe_scale`` is the factor it was
    scaled by to hold the mean frame's photons. Positions in metres, in any
    origin, become object pixels through the object pixel size of the frames'
    geometry (:mod:`~lightpipe.techniques.ptychography.geometry`), shifted so
    the first window starts at pixel 0 (``object_origin_m``: where that is in
    the positions' frame). ``stalled`` says whether an algorithm of a part
    stopped changing it (the log says why). ``object_phase`` (``np.angle`` of the
    object, no phase offset removed) is the main result, plotted on
    ``object_y`` and ``object_x``: the probe positions in metres that put the
    probe's centre on each object row and column
    (:func:`~lightpipe.techniques.ptychography.geometry.object_axes`).
    ``fourier_error`` has one value per iteration, numbered by ``iteration``.
    """

    name = "ptycho_distributed"
    Params = DistributedParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Pre-processed diffraction frame, centred"),
        "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Probe position y on the sample"),
        "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Probe position x on the sample"),
    }
    outputs = {
        "object": Port(ndim=2, dtype="complex", description="Reconstructed object transmission", axes=_OBJECT_AXES,
                       **_SCAN_PORT),
        "object_phase": Port(ndim=2, dtype="float", unit="rad", description="Phase of the object, np.angle (the "
                             "main result)", axes=_OBJECT_AXES, main=True, **_SCAN_PORT),
        "object_y": Port(ndim=1, dtype="float", unit="m", description="Probe position y that centres the probe on "
                         "each object row", **_SCAN_PORT),
        "object_x": Port(ndim=1, dtype="float", unit="m", description="Probe position x that centres the probe on "
                         "each object column", **_SCAN_PORT),
        "object_pixel_size_m": Port(ndim=1, dtype="float", unit="m", description="Object pixel size (y, x)",
                                    **_SCAN_PORT),
        "probe": Port(ndim=3, dtype="complex", description="Reconstructed probe modes (M, ny, nx)", **_SCAN_PORT),
        "fourier_error": Port(ndim=1, dtype="float", description="Fourier error of each iteration",
                              axes=("iteration",), **_SCAN_PORT),
        "iteration": Port(ndim=1, dtype="int", description="Number of each iteration, 1 to n", **_SCAN_PORT),
        "parts": Port(ndim=1, dtype="int", description="k-means part of each scan position", **_SCAN_PORT),
        "part_seconds": Port(ndim=1, dtype="float", unit="s", description="Time each part spent iterating",
                             **_SCAN_PORT),
        "object_origin_m": Port(ndim=1, dtype="float", unit="m", description="Position (y, x) of the object's pixel "
                                "(0, 0) as a probe-window corner, in the frame of the scan's positions", **_SCAN_PORT),
        "probe_scale": Port(ndim=0, dtype="float", description="Factor the probe guess was multiplied by to match "
                            "the frames' power", **_SCAN_PORT),
        "stalled": Port(ndim=0, dtype="bool", description="Whether an algorithm of a part stopped changing the object "
                        "and probe (the log says why)", **_SCAN_PORT),
    }

    def setup(self, scan: Scan) -> None:
        self._scan = scan
        self._frames: list[np.ndarray] = []
        self._positions: list[tuple[float, float]] = []

    def feed(self, index: int, frame: Any, position_y_m: Any, position_x_m: Any) -> None:
        image = np.asarray(to_numpy(frame), dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"ptycho_distributed takes 2-D frames; event {index} has shape {image.shape}")
        if self._frames and image.shape != self._frames[0].shape:
            raise ValueError(f"event {index} has a {image.shape} frame, unlike the scan's earlier "
                             f"{self._frames[0].shape} frames")
        y, x = float(position_y_m), float(position_x_m)
        if not (math.isfinite(y) and math.isfinite(x)):
            raise ValueError(f"event {index} has no position (y={y}, x={x}); a frame without a position cannot "
                             "be placed on the object")
        self._frames.append(image)
        self._positions.append((y, x))

    def finish(self) -> dict[str, Any]:
        if not self._frames:
            raise ValueError("no frame reached ptycho_distributed; check the stage's stream and inputs")
        p = self.params
        meta = self._scan.metadata
        frames = np.stack(self._frames)
        pixel = object_pixel_size(meta, p.object_pixel_size_m, self.input_geometry.get("frame"))
        positions = np.asarray(self._positions) / np.asarray(pixel)
        origin = positions.min(axis=0)
        positions -= origin
        guess = self._probe_guess(frames, pixel)
        result = reconstruct_distributed(
            frames, positions, guess, chain=p.chain, parts=min(p.parts, len(frames)), merge_every=p.merge_every,
            runner=self.part_runner, mask=beamstop_mask(frames.shape[1:], p.beamstop_radius_px),
            margin_px=p.overlap_px, probe_modes=p.probe_modes, threads=p.threads_per_part, seed=p.seed,
        )
        origin = origin + result.origin_px
        object_y, object_x = object_axes(origin, result.object.shape, frames.shape[1:], pixel)
        return {
            "object": result.object,
            "object_phase": np.angle(result.object).astype(np.float32),
            "object_y": object_y,
            "object_x": object_x,
            "object_pixel_size_m": np.asarray(pixel, dtype=np.float64),
            "probe": result.probe,
            "fourier_error": np.asarray(result.fourier_errors, dtype=np.float64),
            "iteration": np.arange(1, len(result.fourier_errors) + 1, dtype=np.int64),
            "parts": result.labels,
            "part_seconds": result.part_seconds.sum(axis=0),
            "object_origin_m": origin * np.asarray(pixel),
            "probe_scale": np.float64(result.probe_scale),
            "stalled": np.bool_(result.stalled),
        }

    def _probe_guess(self, frames: np.ndarray, pixel: tuple[float, float]) -> np.ndarray:
        """The scan's own probe (its CXI file's) when it fits the frames, else the estimate from the mean frame."""
        p, meta = self.params, self._scan.metadata
        if meta.get("probe_file"):
            guess = load_probe_guess(meta["probe_file"])
            if guess.shape[-2:] == frames.shape[1:]:
                return guess[: p.probe_modes] if guess.ndim == 3 else guess
            log.warning("scan %s: the probe of %s is %s but the frames are %dx%d; the probe is estimated from the "
                        "mean frame instead", self._scan.name, meta["probe_file"], guess.shape, *frames.shape[1:])
        return probe_from_intensity(frames.mean(axis=0), p.defocus_m, scan_wavelength(meta) if p.defocus_m else None,
                                    pixel)
