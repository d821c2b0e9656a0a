"""Distributed ptychography: scan positions split into parts, each reconstructed on its own worker, merged often.

The SSRF hard X-ray nanoprobe's scheme (Zhang et al., J. Synchrotron Rad. 31,
2024, after PyNX, Favre-Nicolin et al. 2020), step by step:

1. the scan positions are split into parts with k-means, and each part is
   extended by the positions of the other parts within a margin of its own,
   so neighbouring parts share frames and their objects overlap
   (:mod:`~lightpipe.techniques.ptychography.partition`);
2. each part's frames go to one worker, **once**, and stay there: the part
   runner the caller passes (the engine's, :mod:`lightpipe.core.parts`)
   starts one :class:`~lightpipe.techniques.ptychography.parts.PartReconstruction`
   per part, which holds a reconstruction state of the part's frames on the
   part's own crop of the object grid;
3. object and probe start on the driver;
4. every part runs the algorithm chain (``"DM:100, ML:50"``) for
   ``merge_every`` iterations, independently;
5. the driver merges the parts' objects weighted by their illumination, each
   phase-aligned first, and their probes
   (:mod:`~lightpipe.techniques.ptychography.merge`), sends the merged object
   and probe back, and step 4 goes on; the last merge is the result.

What travels per merge period is one object crop, its illumination and the
probe each way (a few MB for a 1024-position scan of 128 x 128 frames), never
the frames. One probe for the whole scan uses every frame to refine it and
keeps the parts from drifting apart (a probe per part could take a different
shift or scale in each part).

Same results everywhere
    Each part computes with a fixed number of threads (``threads``), the
    same whether it runs on a Dask worker or on a thread of this process,
    and the driver merges in a fixed order, so both give the same object,
    bit for bit with the same libraries.

Failures
    A part whose worker dies is lost with it (Dask does not move actors):
    the reconstruction then fails with Dask's error, and the parts left on
    the other workers are removed.

Examples
--------
In a pipeline the ``ptycho_distributed`` stage passes its engine's part runner;
a script passes one itself, here one actor per part on a Dask cluster:

>>> from lightpipe.engines.dask import ActorPartRunner  # doctest: +SKIP
>>> result = reconstruct_distributed(intensities, positions_px, probe, chain="DM:100, ML:50",
...                                  parts=4, merge_every=10, runner=ActorPartRunner(client))  # doctest: +SKIP
>>> result.object, result.probe, result.fourier_errors[-1]  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightpipe.core.parts import PartRunner, ThreadPartRunner
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.algorithms import (
    ALGORITHMS,
    PROBE_UPDATE_START,
    algorithm_parameters,
    make_algorithm,
    parse_chain,
)
from lightpipe.techniques.ptychography.algorithms.state import object_origin
from lightpipe.techniques.ptychography.merge import Box, merge_objects, merge_probes
from lightpipe.techniques.ptychography.partition import check_positions, extend_parts, kmeans_labels
from lightpipe.techniques.ptychography.parts import PartData, PartReconstruction

__all__ = ["DistributedResult", "merge_periods", "reconstruct_distributed"]

log = logging.getLogger(__name__)


@dataclass
class DistributedResult:
    """Result of :func:`reconstruct_distributed`.

    Attributes
    ----------
    object
        Merged object (Hy, Hx) complex64.
    probe
        Merged probe modes (M, ny, nx) complex64.
    fourier_errors
        Fourier error of each iteration over all parts (photon-weighted; frames
        shared by two parts count twice).
    algorithms
        Algorithm of each iteration.
    labels
        (N,) k-means part of each position.
    parts
        Position indices of each part, margins included.
    boxes
        Each part's crop of the object grid.
    part_seconds
        (periods, parts) seconds each part spent on each merge period, on its worker.
    period_seconds
        Wall-clock seconds of each merge period on the driver: the slowest part,
        the transfers and the merge.
    merge_seconds
        Driver seconds spent merging.
    setup_seconds
        Seconds to split the positions, ship each part's data and build its state.
    wall_seconds
        Seconds of the whole reconstruction.
    workers
        Where each part ran, as the part runner names it: a Dask worker's address, ``"local"``
        for a thread of this process.
    origin_px
        (2,) position, in the frame of the positions, of the object's pixel (0, 0) as a
        window corner (the rule of :class:`~.algorithms.ReconstructionState`).
    probe_scale
        Factor the probe guess was multiplied by to match the frames' power.
    stalled
        Whether an algorithm of any part stopped changing its object and probe (see
        :func:`~lightpipe.techniques.ptychography.algorithms.iterate`).
    """

    object: np.ndarray
    probe: np.ndarray
    fourier_errors: list[float]
    algorithms: list[str]
    labels: np.ndarray
    parts: list[np.ndarray]
    boxes: list[Box]
    part_seconds: np.ndarray
    period_seconds: list[float]
    merge_seconds: float
    setup_seconds: float
    wall_seconds: float
    workers: list[str] = field(default_factory=list)
    origin_px: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    probe_scale: float = 1.0
    stalled: bool = False


def merge_periods(steps: Sequence[tuple[str, int]], merge_every: int) -> list[list[tuple[str, int]]]:
    """Cut an algorithm chain into periods of ``merge_every`` iterations (the last may be shorter).

    Examples
    --------
    >>> merge_periods([("DM", 5), ("ML", 4)], 3)
    [[('DM', 3)], [('DM', 2), ('ML', 1)], [('ML', 3)]]
    """
    if isinstance(merge_every, bool) or not isinstance(merge_every, (int, np.integer)) or merge_every < 1:
        raise ValueError(f"merge_every must be a positive integer (iterations between merges), got {merge_every!r}")
    periods: list[list[tuple[str, int]]] = [[]]
    room = merge_every
    for name, count in steps:
        while count > 0:
            if room == 0:
                periods.append([])
                room = merge_every
            take = min(count, room)
            periods[-1].append((name, take))
            count -= take
            room -= take
    return periods


def _probe_scale(probe: np.ndarray, intensities: np.ndarray, mask: np.ndarray | None) -> float:
    """The factor that gives ``probe`` the far-field power of the mean frame on valid pixels, as the state scales it."""
    modes = probe if probe.ndim == 3 else probe[None]
    far = np.fft.fftshift(np.abs(np.fft.fft2(modes, norm="ortho")) ** 2, axes=(-2, -1)).sum(axis=0)
    valid = np.ones(far.shape, dtype=bool) if mask is None else mask
    photons = np.mean([float(np.sum(np.maximum(frame, 0)[valid], dtype=np.float64)) for frame in intensities])
    model = float(far[valid].sum())
    return math.sqrt(photons / model) if photons > 0 and model > 0 else 1.0


def reconstruct_distributed(intensities: Any, positions_px: Any, probe: Any, *, chain: str = "DM:100, ML:50",
                            parts: int = 2, merge_every: int = 10, runner: PartRunner | None = None,
                            mask: Any = None, margin_px: float | None = None, probe_modes: int = 1, threads: int = 1,
                            probe_update_start: int = PROBE_UPDATE_START,
                            algorithm_params: Mapping[str, Mapping[str, Any]] | None = None, fft: str = "auto",
                            seed: int = 0) -> DistributedResult:
    """Reconstruct a ptychographic scan split into parts, each on its own worker, merging them often.

    Parameters
    ----------
    intensities
        (N, ny, nx) measured intensities, zero frequency at the centre (as for
        :func:`~lightpipe.techniques.ptychography.algorithms.reconstruct`).
    positions_px
        (N, 2) top-left corners (y, x) of the probe window, object pixels, in any origin
        (``origin_px`` of the result places the object).
    probe
        Probe guess (ny, nx) or modes (K, ny, nx); scaled to the frames' power (``probe_scale``
        of the result, and logged).
    chain
        Algorithms and iterations, ``"DM:100, ML:50"``.
    parts
        Number of parts (k-means clusters of the positions); 1 runs the whole
        scan as one part, through the same code.
    merge_every
        Iterations between merges of the parts' objects and probes.
    runner
        Where the parts run (:mod:`lightpipe.core.parts`): a stage passes its
        engine's, ``part_runner``, so on the ``dask`` engine each part is an
        actor on a worker of that run's cluster. ``None``: threads of this process.
    mask
        Valid detector pixels (ny, nx), zero frequency at the centre.
    margin_px
        Positions of neighbouring parts within this distance of a part's own are
        shared with it (:func:`~lightpipe.techniques.ptychography.partition.split_positions`;
        default a quarter of the window).
    probe_modes
        Incoherent probe modes.
    threads
        Threads each part computes with (the threads of one Dask worker). The
        result does not depend on where the parts run, only on this.
    probe_update_start
        First iteration at which the probe is refined.
    algorithm_params
        Parameters per algorithm, e.g. ``{"DM": {"alpha": 0.9}}``.
    fft
        FFT library for NumPy (see :class:`~lightpipe.techniques.ptychography.algorithms.ReconstructionState`).
    seed
        Seed of the k-means split.

    Returns
    -------
    DistributedResult
        The merged object and probe, the error curve, the split and the timings.

    Raises
    ------
    ValueError
        On inputs that do not fit together, a bad chain or algorithm parameter.
    LightpipeError
        When the runner has nowhere to start the parts (a Dask cluster without workers).
    """
    t_start = time.perf_counter()
    frames = np.asarray(to_numpy(intensities))
    if frames.ndim != 3:
        raise ValueError(f"intensities must be a stack of frames (N, ny, nx), got shape {frames.shape}")
    pos = check_positions(positions_px)
    if len(pos) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(pos)} positions: give one (y, x) position per frame")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer (threads per part), got {threads!r}")
    steps = parse_chain(chain)
    periods = merge_periods(steps, merge_every)
    params = algorithm_parameters(algorithm_params)
    for name in ALGORITHMS:  # bad parameters fail here, before any frame is shipped
        make_algorithm(name, params.get(name))
    host_mask = None if mask is None else np.asarray(to_numpy(mask), dtype=bool)
    ny, nx = frames.shape[1:]
    guess = np.asarray(to_numpy(probe)).astype(np.complex64)
    if guess.shape[-2:] != (ny, nx):
        raise ValueError(f"probe has shape {guess.shape} but the frames are {ny}x{nx}: give a probe of the frame shape")
    scale = _probe_scale(guess, frames, host_mask)
    guess = (guess * scale).astype(np.complex64)
    log.info("the probe guess was scaled by %.4g so that its far field holds the mean frame's photons", scale)

    origin = object_origin(np.rint(pos), (ny, nx))
    pos = pos - origin
    labels = kmeans_labels(pos, parts, seed=seed)
    margin = min(ny, nx) / 4.0 if margin_px is None else float(margin_px)
    members = extend_parts(pos, labels, margin)
    corners = np.rint(pos).astype(np.int64)
    shape = (int(corners[:, 0].max()) + ny, int(corners[:, 1].max()) + nx)
    merged = np.ones(shape, dtype=np.complex64)
    boxes: list[Box] = []
    data = []
    for idx in members:
        y0, x0 = corners[idx].min(axis=0)
        y1, x1 = corners[idx].max(axis=0) + (ny, nx)
        boxes.append((slice(int(y0), int(y1)), slice(int(x0), int(x1))))
        data.append(PartData(frames[idx], pos[idx] - (y0, x0), guess, merged[boxes[-1]].copy(), host_mask, probe_modes,
                             int(threads), fft, params, probe_update_start))
    group = (runner or ThreadPartRunner()).start(PartReconstruction, data, threads_per_part=int(threads))
    del data
    setup_seconds = time.perf_counter() - t_start
    errors: list[float] = []
    algorithms: list[str] = []
    part_seconds, period_seconds = [], []
    merge_seconds = 0.0
    stalled = False
    probe_now: np.ndarray | None = None
    objects: list[np.ndarray | None] = [None] * len(members)
    with group:
        for period in periods:
            t0 = time.perf_counter()
            results = group.call("run", [(obj, probe_now, period) for obj in objects])
            t1 = time.perf_counter()
            merged, factors = merge_objects([r.object for r in results], [r.illumination for r in results], boxes,
                                            merged)
            photons = [r.photons for r in results]
            probe_now = merge_probes([r.probe for r in results], factors, photons)
            objects = [merged[b] for b in boxes]
            merge_seconds += time.perf_counter() - t1
            total = float(np.sum(photons))
            errors += [float(np.dot(photons, e)) / total for e in zip(*(r.fourier_errors for r in results))]
            algorithms += results[0].algorithms
            stalled = stalled or any(r.stalled for r in results)
            part_seconds.append([r.seconds for r in results])
            period_seconds.append(time.perf_counter() - t0)
    assert probe_now is not None  # parse_chain gives at least one iteration
    return DistributedResult(
        object=merged, probe=probe_now, fourier_errors=errors, algorithms=algorithms, labels=labels, parts=members,
        boxes=boxes, part_seconds=np.asarray(part_seconds), period_seconds=period_seconds,
        merge_seconds=merge_seconds, setup_seconds=setup_seconds, wall_seconds=time.perf_counter() - t_start,
        workers=list(group.workers), origin_px=origin, probe_scale=scale, stalled=stalled,
    )
