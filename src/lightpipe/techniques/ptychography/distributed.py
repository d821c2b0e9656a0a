"""Distributed ptychography: scan positions split among workers, each part reconstructed on its own, the object merged.

The SSRF hard X-ray nanoprobe's scheme (Zhang et al., J. Synchrotron Rad. 31,
2024, after PyNX, Favre-Nicolin et al. 2020), step by step:

1. the scan positions are split into parts with k-means (scikit-learn), and
   each part is extended by the positions of the other parts that lie within
   a margin (about a probe radius) of its own, so neighbouring parts share
   frames and their objects overlap (:func:`split_positions`);
2. each part's frames go to one worker, **once**, and stay there: a Dask
   actor per part holds an :class:`~.engines.EngineState` of the part's
   frames on the part's own crop of the object grid;
3. object and probe start on the driver;
4. every part runs the engine chain (``"DM:100, ML:50"``) for ``merge_every``
   iterations, independently;
5. the driver merges the parts' objects weighted by their illumination,
   ``O = sum_k I_k c_k O_k / sum_k I_k``, sends the merged object back, and
   step 4 goes on; the last merge is the result.

What travels per merge period is one object crop, its illumination and the
probe each way (a few MB for a 1024-position scan of 128 x 128 frames), never
the frames.

Global phase between parts
    Each part's object is determined only up to a complex factor (global
    phase and scale), and the parts choose theirs independently. Before it is
    added, each part's object is multiplied by the factor ``c_k`` that best
    matches it to the parts merged so far on their overlap (least squares,
    weighted by the product of the illuminations), the parts taken in order of
    their overlap with what is merged (:func:`merge_objects`).

Probe
    Merged too: the mean of the parts' probes divided by their factors
    ``c_k`` (so that ``c_k O_k`` and ``P_k / c_k`` stay a pair), weighted by
    the photons each part measured, each mode phase-aligned to the first
    part's. One probe for the whole scan uses every frame to refine it and
    keeps the parts from drifting apart (a probe per part could take a
    different shift or scale in each part).

Same results everywhere
    Each part computes with a fixed number of threads (``threads``), the
    same whether it runs on a Dask worker or, without a client, in this
    process (the parts then run side by side on threads), and the driver
    merges in a fixed order, so both give the same object, bit for bit with
    the same libraries.

Failures
    A part whose worker dies is lost with its actor (Dask does not move
    actors): the reconstruction then fails with Dask's error, and the actors
    left on the other workers are removed.

Examples
--------
>>> result = reconstruct_distributed(intensities, positions_px, probe, chain="DM:100, ML:50",
...                                  parts=4, merge_every=10, client=client)  # doctest: +SKIP
>>> result.object, result.probe, result.fourier_errors[-1]  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import field_validator

from lightpipe.core.allocator import tune_allocator
from lightpipe.core.errors import LightpipeError
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import SolverStage, param
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.engines import (
    ENGINES,
    PROBE_UPDATE_START,
    EngineState,
    iterate,
    make_engine,
    parse_chain,
)
from lightpipe.techniques.ptychography.engines.backend import default_threads
from lightpipe.techniques.ptychography.stages import (
    FitParams,
    beamstop_mask,
    object_pixel_size,
    probe_from_intensity,
    scan_wavelength,
)

__all__ = [
    "DistributedReconstruction",
    "DistributedResult",
    "PartData",
    "PartReconstruction",
    "PartResult",
    "default_client",
    "extend_parts",
    "kmeans_labels",
    "merge_objects",
    "merge_periods",
    "merge_probes",
    "reconstruct_distributed",
    "split_positions",
]

#: Regularisation of the object merge, relative to the largest illumination: pixels that
#: no part lights keep the previous object instead of dividing by almost nothing.
MERGE_INERTIA = 1e-4

Box = tuple[slice, slice]


# ------------------------------------------------------------------ splitting
def kmeans_labels(positions_px: Any, parts: int, *, seed: int = 0) -> np.ndarray:
    """The part (0 to ``parts - 1``) of each scan position: k-means clusters of the positions.

    Parameters
    ----------
    positions_px
        (N, 2) scan positions, any unit.
    parts
        Number of parts, 1 to N.
    seed
        Seed of k-means' initial centres (10 restarts), so a split can be repeated.

    Returns
    -------
    numpy.ndarray
        (N,) int labels; parts are numbered by their first position in scan order.
    """
    pos = _check_positions(positions_px)
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or not 1 <= parts <= len(pos):
        raise ValueError(f"parts must be an integer from 1 to the number of positions ({len(pos)}), got {parts!r}")
    if parts == 1:
        return np.zeros(len(pos), dtype=np.int64)
    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:
        raise LightpipeError("splitting scan positions uses scikit-learn's k-means; install it with: "
                             "pip install 'lightpipe[ptycho]'") from exc
    raw = KMeans(n_clusters=int(parts), n_init=10, random_state=seed).fit_predict(pos)
    # renumber in scan order: the labels then do not depend on k-means' own numbering
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(first)
    renumber = np.empty(len(order), dtype=np.int64)
    renumber[np.unique(raw)[order]] = np.arange(len(order))
    return renumber[raw]


def extend_parts(positions_px: Any, labels: Any, margin_px: float) -> list[np.ndarray]:
    """Each part's positions plus those of other parts within ``margin_px`` of any of its own.

    Parameters
    ----------
    positions_px
        (N, 2) positions, pixels.
    labels
        (N,) part of each position (:func:`kmeans_labels`).
    margin_px
        Largest distance from a part's own positions at which another part's
        position is shared with it; 0 shares none.

    Returns
    -------
    list of numpy.ndarray
        Sorted position indices of each part.
    """
    pos = _check_positions(positions_px)
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (len(pos),):
        raise ValueError(f"labels has shape {lab.shape}; expected ({len(pos)},), one part per position")
    if not (math.isfinite(margin_px) and margin_px >= 0):
        raise ValueError(f"margin_px must be a finite number >= 0, got {margin_px!r}")
    if margin_px > 0:
        from sklearn.metrics import pairwise_distances_argmin_min  # chunked: no N x N matrix for big scans
    out = []
    for k in range(int(lab.max()) + 1):
        own = np.flatnonzero(lab == k)
        others = np.flatnonzero(lab != k)
        if margin_px == 0 or len(others) == 0:
            out.append(own)
            continue
        _, nearest = pairwise_distances_argmin_min(pos[others], pos[own])
        out.append(np.sort(np.concatenate([own, others[nearest <= margin_px]])))
    return out


def split_positions(positions_px: Any, parts: int, probe_shape: tuple[int, int], margin_px: float | None = None, *,
                    seed: int = 0) -> list[np.ndarray]:
    """Split scan positions into ``parts`` overlapping parts: k-means, then each part extended by a margin.

    Parameters
    ----------
    positions_px
        (N, 2) scan positions (y, x) in object pixels.
    parts
        Number of parts.
    probe_shape
        (ny, nx) of the probe window (the frame shape).
    margin_px
        Positions of other parts within this distance of a part's own are
        shared with it. Default a quarter of the window, the probe's radius
        when it fills half the window as sampling the diffraction twice
        over requires.
    seed
        Seed of k-means.

    Returns
    -------
    list of numpy.ndarray
        Sorted position indices of each part; together they cover every position,
        and a position belongs to one part's k-means cluster and to the margins
        of its neighbours.

    Examples
    --------
    >>> import numpy as np
    >>> grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1).reshape(-1, 2) * 10
    >>> [len(p) for p in split_positions(grid, 2, (32, 32), margin_px=12)]
    [40, 40]
    """
    if len(probe_shape) != 2 or min(probe_shape) < 1:
        raise ValueError(f"probe_shape must be the (ny, nx) of the probe window, got {probe_shape!r}")
    margin = min(probe_shape) / 4.0 if margin_px is None else float(margin_px)
    return extend_parts(positions_px, kmeans_labels(positions_px, parts, seed=seed), margin)


def _check_positions(positions_px: Any) -> np.ndarray:
    pos = np.asarray(to_numpy(positions_px), dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions_px must be an (N, 2) array of (y, x) positions, got shape {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions_px hold NaN or infinite values; every frame needs a position")
    return pos


# ------------------------------------------------------------------ merging
def merge_objects(objects: Sequence[np.ndarray], illuminations: Sequence[np.ndarray], boxes: Sequence[Box],
                  previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the parts' objects, weighted by illumination, each aligned by a complex factor first.

    ``O = (sum_k I_k c_k O_k + r O_prev) / (sum_k I_k + r)`` on the full grid, with
    ``r`` = :data:`MERGE_INERTIA` times the largest summed illumination. The first
    part keeps its factor 1; every other part, taken in order of its overlap with
    the parts merged so far, gets the ``c_k`` minimising
    ``sum w |c_k O_k - O_merged|^2`` with ``w = I_k * sum_merged I``: the global
    phase and scale that the part chose on its own.

    Parameters
    ----------
    objects
        Each part's object on its crop of the grid (complex).
    illuminations
        Each part's illumination on its crop (``EngineState.illumination``).
    boxes
        Each part's crop of the full grid, ``(slice(y0, y1), slice(x0, x1))``.
    previous
        The object before this merge, full grid: kept where no part has light.

    Returns
    -------
    merged : numpy.ndarray
        complex64, the shape of ``previous``.
    factors : numpy.ndarray
        complex128 (parts,), the factor ``c_k`` each part's object was multiplied by.
    """
    n = len(objects)
    if not (len(illuminations) == len(boxes) == n) or n == 0:
        raise ValueError(f"need one object, illumination and box per part; got {len(objects)}, "
                         f"{len(illuminations)} and {len(boxes)}")
    num = np.zeros(previous.shape, dtype=np.complex128)
    den = np.zeros(previous.shape, dtype=np.float64)
    factors = np.ones(n, dtype=np.complex128)
    remaining = list(range(n))
    while remaining:
        if len(remaining) == n:
            k = remaining[0]
        else:
            overlap = [float(np.sum(den[boxes[j]] * illuminations[j])) for j in remaining]
            k = remaining[int(np.argmax(overlap))]  # ties: the lowest part number
            w = den[boxes[k]] * illuminations[k]
            part = np.asarray(objects[k], dtype=np.complex128)
            norm = float(np.sum(w * (part.real**2 + part.imag**2)))
            if norm > 0:
                reference = num[boxes[k]] / np.where(den[boxes[k]] > 0, den[boxes[k]], 1.0)
                factors[k] = np.sum(w * np.conj(part) * reference) / norm
        remaining.remove(k)
        num[boxes[k]] += illuminations[k] * (factors[k] * np.asarray(objects[k], dtype=np.complex128))
        den[boxes[k]] += illuminations[k]
    r = MERGE_INERTIA * float(den.max()) if den.max() > 0 else 1.0
    merged = (num + r * previous) / (den + r)
    return merged.astype(np.complex64), factors


def merge_probes(probes: Sequence[np.ndarray], factors: Sequence[complex], weights: Sequence[float]) -> np.ndarray:
    """Mean of the parts' probes ``P_k / c_k`` weighted by ``weights``, each mode phase-aligned to the first part's.

    Parameters
    ----------
    probes
        Each part's probe modes (M, ny, nx).
    factors
        The factor each part's object was multiplied by in :func:`merge_objects`.
    weights
        Weight of each part (the photons it measured).

    Returns
    -------
    numpy.ndarray
        complex64 (M, ny, nx).
    """
    aligned = [np.asarray(p, dtype=np.complex128) / complex(c) for p, c in zip(probes, factors)]
    reference = aligned[0]
    total = np.zeros_like(reference)
    for p, w in zip(aligned, weights):
        # incoherent modes each carry a phase of their own, which no data fixes
        overlap = np.sum(np.conj(p) * reference, axis=(1, 2))
        phase = np.where(np.abs(overlap) > 0, overlap / np.maximum(np.abs(overlap), 1e-300), 1.0)
        total += float(w) * p * phase[:, None, None]
    return (total / float(np.sum(weights))).astype(np.complex64)


# ------------------------------------------------------------------ one part
@dataclass
class PartData:
    """What one part needs to start: its frames, positions on its crop of the grid, guesses and settings.

    Sent to the part's worker once (:meth:`distributed.Client.scatter`).
    """

    intensities: np.ndarray
    positions_px: np.ndarray
    probe: np.ndarray
    obj: np.ndarray
    mask: np.ndarray | None
    probe_modes: int
    threads: int
    fft: str
    engine_params: dict[str, dict[str, Any]]
    probe_update_start: int


@dataclass
class PartResult:
    """What a part sends back after a merge period.

    Attributes
    ----------
    object, illumination, probe
        The part's object and illumination on its crop, and its probe modes.
    fourier_errors, engines
        Fourier error (normalised by the part's photons) and engine of each iteration of the period.
    photons
        Photons the part's frames measured (weight of its errors and probe).
    seconds
        Time the part spent on the period, on its worker.
    """

    object: np.ndarray
    illumination: np.ndarray
    probe: np.ndarray
    fourier_errors: list[float]
    engines: list[str]
    photons: float
    seconds: float


class PartReconstruction:
    """One part of a distributed reconstruction: its :class:`EngineState`, kept between merge periods.

    On Dask it lives on one worker as an actor; without a client, in this process.

    Parameters
    ----------
    data
        The part's frames, positions, guesses and settings.
    """

    def __init__(self, data: PartData) -> None:
        # The engines run in the actor's thread, whose heaps glibc deletes when they
        # empty unless told otherwise: that cost 16 % in page faults (lightpipe.core.allocator).
        tune_allocator()
        self.state = EngineState(data.intensities, data.positions_px, data.probe, data.obj, mask=data.mask,
                                 probe_modes=data.probe_modes, threads=data.threads, fft=data.fft)
        self.engines = {name: make_engine(name, data.engine_params.get(name)) for name in ENGINES}
        self.probe_update_start = data.probe_update_start

    def run(self, obj: np.ndarray | None, probe: np.ndarray | None, steps: list[tuple[str, int]]) -> PartResult:
        """Continue from ``obj`` and ``probe`` (``None``: keep the part's own) for ``steps`` of the chain."""
        t0 = time.perf_counter()
        state = self.state
        if obj is not None:
            state.set_object(obj)
        if probe is not None:
            state.set_probe(probe)
        records = []
        for name, count in steps:
            records += iterate(state, self.engines[name], count, probe_update_start=self.probe_update_start)
        return PartResult(
            object=np.asarray(to_numpy(state.object)),
            illumination=np.asarray(to_numpy(state.illumination())),
            probe=np.asarray(to_numpy(state.probe)),
            fourier_errors=[r.fourier_error for r in records],
            engines=[r.engine for r in records],
            photons=state.measured_photons(),
            seconds=time.perf_counter() - t0,
        )


class _LocalParts:
    """The parts in this process, side by side on threads (NumPy and the FFTs release the GIL)."""

    def __init__(self, data: list[PartData]) -> None:
        self.parts = [PartReconstruction(d) for d in data]
        lanes = max(1, min(len(data), default_threads() // max(1, data[0].threads)))
        self.pool = ThreadPoolExecutor(lanes, thread_name_prefix="ptycho-part")

    def run(self, objects: list[np.ndarray | None], probe: np.ndarray | None,
            steps: list[tuple[str, int]]) -> list[PartResult]:
        futures = [self.pool.submit(p.run, o, probe, steps) for p, o in zip(self.parts, objects)]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown()


class _DaskParts:
    """One Dask actor per part, on workers taken in turn; each part's data is scattered to its worker once."""

    def __init__(self, client: Any, data: list[PartData]) -> None:
        workers = sorted(client.scheduler_info().get("workers", {}))
        if not workers:
            raise LightpipeError("the Dask cluster has no workers to reconstruct on; start some, or run without "
                                 "a client to reconstruct in this process")
        self.client = client
        self.workers = [workers[k % len(workers)] for k in range(len(data))]
        self.futures: list[Any] = []
        self.actors: list[Any] = []
        try:
            for d, worker in zip(data, self.workers):
                [shipped] = client.scatter([d], workers=[worker], hash=False)
                self.futures.append(client.submit(PartReconstruction, shipped, actor=True, workers=[worker],
                                                  allow_other_workers=False, pure=False))
                del shipped  # the actor has its copy: the worker may drop the raw frames
            self.actors = [f.result() for f in self.futures]
        except BaseException:
            self.close()
            raise

    def run(self, objects: list[np.ndarray | None], probe: np.ndarray | None,
            steps: list[tuple[str, int]]) -> list[PartResult]:
        calls = [a.run(o, probe, steps) for a, o in zip(self.actors, objects)]
        return [c.result() for c in calls]

    def close(self) -> None:
        self.actors = []
        self.client.cancel(self.futures)  # releasing an actor's future removes the actor from its worker
        self.futures = []


# ------------------------------------------------------------------ the driver
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
    engines
        Engine of each iteration.
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
        Where each part ran (worker addresses; empty in this process).
    """

    object: np.ndarray
    probe: np.ndarray
    fourier_errors: list[float]
    engines: list[str]
    labels: np.ndarray
    parts: list[np.ndarray]
    boxes: list[Box]
    part_seconds: np.ndarray
    period_seconds: list[float]
    merge_seconds: float
    setup_seconds: float
    wall_seconds: float
    workers: list[str] = field(default_factory=list)


def merge_periods(steps: Sequence[tuple[str, int]], merge_every: int) -> list[list[tuple[str, int]]]:
    """Cut an engine chain into periods of ``merge_every`` iterations (the last may be shorter).

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


def _scaled_probe(probe: np.ndarray, intensities: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``probe`` scaled so that its far-field power on valid pixels is the mean frame's, as EngineState scales it."""
    modes = probe if probe.ndim == 3 else probe[None]
    far = np.fft.fftshift(np.abs(np.fft.fft2(modes, norm="ortho")) ** 2, axes=(-2, -1)).sum(axis=0)
    valid = np.ones(far.shape, dtype=bool) if mask is None else mask
    photons = np.mean([float(np.sum(np.maximum(frame, 0)[valid], dtype=np.float64)) for frame in intensities])
    model = float(far[valid].sum())
    return (probe * math.sqrt(photons / model)).astype(np.complex64) if photons > 0 and model > 0 else probe


def reconstruct_distributed(intensities: Any, positions_px: Any, probe: Any, *, chain: str = "DM:100, ML:50",
                            parts: int = 2, merge_every: int = 10, client: Any = None, mask: Any = None,
                            margin_px: float | None = None, probe_modes: int = 1, threads: int = 1,
                            probe_update_start: int = PROBE_UPDATE_START,
                            engine_params: Mapping[str, Mapping[str, Any]] | None = None, fft: str = "auto",
                            seed: int = 0) -> DistributedResult:
    """Reconstruct a ptychographic scan split into parts, on Dask workers or in this process, merging them often.

    Parameters
    ----------
    intensities
        (N, ny, nx) measured intensities, zero frequency at the centre (as for
        :func:`~.engines.reconstruct`).
    positions_px
        (N, 2) top-left corners (y, x) of the probe window in the object, object pixels, >= 0.
    probe
        Probe guess (ny, nx) or modes (K, ny, nx); scaled to the frames' power.
    chain
        Engines and iterations, ``"DM:100, ML:50"``.
    parts
        Number of parts (k-means clusters of the positions); 1 runs the whole
        scan as one part, through the same code.
    merge_every
        Iterations between merges of the parts' objects and probes.
    client
        A ``distributed.Client``: each part runs as an actor on a worker (workers
        taken in turn). ``None``: the parts run in this process.
    mask
        Valid detector pixels (ny, nx), zero frequency at the centre.
    margin_px
        Positions of neighbouring parts within this distance of a part's own are
        shared with it (:func:`split_positions`; default a quarter of the window).
    probe_modes
        Incoherent probe modes.
    threads
        Threads each part computes with: the threads of one Dask worker. The
        result does not depend on where the parts run, only on this.
    probe_update_start
        First iteration at which the probe is refined.
    engine_params
        Parameters per engine, e.g. ``{"DM": {"alpha": 0.9}}``.
    fft
        FFT library for NumPy (see :class:`~.engines.EngineState`).
    seed
        Seed of the k-means split.

    Returns
    -------
    DistributedResult
        The merged object and probe, the error curve, the split and the timings.

    Raises
    ------
    ValueError
        On inputs that do not fit together, a bad chain or engine parameter.
    LightpipeError
        When the client has no workers.
    """
    t_start = time.perf_counter()
    frames = np.asarray(to_numpy(intensities))
    if frames.ndim != 3:
        raise ValueError(f"intensities must be a stack of frames (N, ny, nx), got shape {frames.shape}")
    pos = _check_positions(positions_px)
    if len(pos) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(pos)} positions: give one (y, x) position per frame")
    if np.rint(pos).min() < 0:
        raise ValueError(f"positions_px reach {pos.min(axis=0).tolist()} (y, x); they must be >= 0: shift them, "
                         "e.g. positions_px - positions_px.min(axis=0)")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer (threads per part), got {threads!r}")
    steps = parse_chain(chain)
    periods = merge_periods(steps, merge_every)
    params = {k.upper(): dict(v) for k, v in (engine_params or {}).items()}
    unknown = set(params) - set(ENGINES)
    if unknown:
        raise ValueError(f"engine_params names unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    for name in ENGINES:  # bad parameters fail here, before any frame is shipped
        make_engine(name, params.get(name))
    host_mask = None if mask is None else np.asarray(to_numpy(mask), dtype=bool)
    ny, nx = frames.shape[1:]
    guess = np.asarray(to_numpy(probe)).astype(np.complex64)
    if guess.shape[-2:] != (ny, nx):
        raise ValueError(f"probe has shape {guess.shape} but the frames are {ny}x{nx}: give a probe of the frame shape")
    guess = _scaled_probe(guess, frames, host_mask)

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
    runner: _LocalParts | _DaskParts = _DaskParts(client, data) if client is not None else _LocalParts(data)
    del data
    setup_seconds = time.perf_counter() - t_start
    errors: list[float] = []
    engines: list[str] = []
    part_seconds, period_seconds = [], []
    merge_seconds = 0.0
    probe_now: np.ndarray | None = None
    objects: list[np.ndarray | None] = [None] * len(members)
    try:
        for period in periods:
            t0 = time.perf_counter()
            results = runner.run(objects, probe_now, period)
            t1 = time.perf_counter()
            merged, factors = merge_objects([r.object for r in results], [r.illumination for r in results], boxes,
                                            merged)
            photons = [r.photons for r in results]
            probe_now = merge_probes([r.probe for r in results], factors, photons)
            objects = [merged[b] for b in boxes]
            merge_seconds += time.perf_counter() - t1
            total = float(np.sum(photons))
            errors += [float(np.dot(photons, e)) / total for e in zip(*(r.fourier_errors for r in results))]
            engines += results[0].engines
            part_seconds.append([r.seconds for r in results])
            period_seconds.append(time.perf_counter() - t0)
    finally:
        runner.close()
    assert probe_now is not None  # parse_chain gives at least one iteration
    return DistributedResult(
        object=merged, probe=probe_now, fourier_errors=errors, engines=engines, labels=labels, parts=members,
        boxes=boxes, part_seconds=np.asarray(part_seconds), period_seconds=period_seconds,
        merge_seconds=merge_seconds, setup_seconds=setup_seconds, wall_seconds=time.perf_counter() - t_start,
        workers=list(runner.workers) if isinstance(runner, _DaskParts) else [],
    )


# ------------------------------------------------------------------ the stage
def default_client() -> Any:
    """The process's default Dask client (the Dask engine's, while it runs), or ``None``."""
    try:
        from distributed import default_client as current
    except ImportError:
        return None
    try:
        return current()
    except ValueError:
        return None


class DistributedParams(FitParams):
    """Parameters of :class:`DistributedReconstruction`."""

    chain: str = param("DM:100, ML:50", "Engines and iterations, e.g. 'DM:100, ML:50' (DM, AP, ML)")
    parts: int = param(2, "Parts the scan positions are split into with k-means; one Dask actor each", ge=1)
    merge_every: int = param(10, "Iterations between merges of the parts' objects and probes", ge=1)
    probe_modes: int = param(1, "Incoherent probe modes to reconstruct", ge=1)
    overlap_px: float | None = param(
        None, "Positions of other parts within this distance of a part's own are shared with it; default a "
        "quarter of the frame", unit="px", ge=0)
    threads_per_part: int = param(1, "Threads each part computes with (the threads of one Dask worker)", ge=1)
    seed: int = param(0, "Seed of the k-means split")

    @field_validator("chain")
    @classmethod
    def _chain(cls, chain: str) -> str:
        parse_chain(chain)
        return chain


_SCAN_PORT = {"scan": True}


class DistributedReconstruction(SolverStage):
    """Reconstruct the object and probe with the scan split into parts on Dask workers, merged every few iterations.

    Frames and positions are collected as they come; at the end of the scan the
    positions are split with k-means into overlapping parts, each part is
    reconstructed on its own worker (in this process without a Dask client),
    and the parts' objects are merged, weighted by illumination, every
    ``merge_every`` iterations (see :mod:`lightpipe.techniques.ptychography.distributed`).
    The probe starts from the mean diffraction amplitude, propagated by
    ``defocus_m``. Positions in metres become object pixels through the object
    pixel size (the geometry of :mod:`~lightpipe.techniques.ptychography.stages`),
    shifted so the first window starts at pixel 0.
    """

    name = "ptycho_distributed"
    Params = DistributedParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Pre-processed diffraction frame, centred"),
        "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Probe position y on the sample"),
        "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Probe position x on the sample"),
    }
    outputs = {
        "object": Port(ndim=2, dtype="complex", description="Reconstructed object transmission", **_SCAN_PORT),
        "probe": Port(ndim=3, dtype="complex", description="Reconstructed probe modes (M, ny, nx)", **_SCAN_PORT),
        "errors": Port(ndim=1, dtype="float", description="Fourier error per iteration", **_SCAN_PORT),
        "parts": Port(ndim=1, dtype="int", description="k-means part of each scan position", **_SCAN_PORT),
        "part_seconds": Port(ndim=1, dtype="float", unit="s", description="Time each part spent iterating",
                             **_SCAN_PORT),
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
        pixel = object_pixel_size(meta, p.object_pixel_size_m, p.detector_window_px)
        positions = np.asarray(self._positions) / np.asarray(pixel)
        positions -= positions.min(axis=0)
        guess = probe_from_intensity(frames.mean(axis=0), p.defocus_m, scan_wavelength(meta) if p.defocus_m else None,
                                     pixel)
        result = reconstruct_distributed(
            frames, positions, guess, chain=p.chain, parts=min(p.parts, len(frames)), merge_every=p.merge_every,
            client=default_client(), mask=beamstop_mask(frames.shape[1:], p.beamstop_radius_px),
            margin_px=p.overlap_px, probe_modes=p.probe_modes, threads=p.threads_per_part, seed=p.seed,
        )
        return {
            "object": result.object,
            "probe": result.probe,
            "errors": np.asarray(result.fourier_errors, dtype=np.float64),
            "parts": result.labels,
            "part_seconds": result.part_seconds.sum(axis=0),
        }
