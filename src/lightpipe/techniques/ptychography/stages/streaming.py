"""The ``ptycho_reconstruction`` stage: a reconstruction that starts while the scan is acquired.

:class:`PtychoReconstruction` is a solver, fed the pre-processed frames and
their positions in acquisition order; after each batch of frames it runs a
few iterations on what has arrived, so a live view shows the object, the
probe and the error curve growing with the scan, and when the last frame is
in only the end of the algorithm chain is left to run. It must not depend on
a reduce stage of the same stream (a reduce result exists only after the
whole scan, which would hold the solver back to a later pass), so it
estimates its initial probe itself, from its first frames, as
:class:`~lightpipe.techniques.ptychography.stages.initial_probe.InitialProbe`
does from all of them. Positions in metres become object pixels as
:mod:`lightpipe.techniques.ptychography.geometry` describes.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from pydantic import field_validator

from lightpipe.core.bounds import MAX_COUNT, MAX_EVENTS
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import SolverStage, param
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.algorithms import (
    Algorithm,
    DivergenceError,
    ReconstructionState,
    algorithm_parameters,
    iterate,
    make_algorithm,
    parse_chain,
)
from lightpipe.techniques.ptychography.geometry import (
    FitParams,
    beamstop_mask,
    check_chain_length,
    object_axes,
    object_pixel_size,
    probe_axes,
    scan_wavelength,
)
from lightpipe.techniques.ptychography.probe import load_probe_guess, probe_from_intensity

__all__ = ["PtychoReconstruction", "ReconstructionParams"]

log = logging.getLogger(__name__)

#: Object pixels kept free around the outermost probe windows.
MARGIN_PX = 2


class ReconstructionParams(FitParams):
    """Parameters of :class:`PtychoReconstruction`."""

    chain: str = param("DM:100, ML:50", "Algorithms and iterations in order, e.g. 'DM:100, ML:50' (DM, AP, ML, "
                       "ePIE)")
    iterations_per_update: int = param(
        2, "Iterations at each update while the scan runs (0: none until the scan ends)", ge=0, le=MAX_COUNT)
    frames_per_update: int = param(16, "Frames between updates while the scan runs", ge=1, le=MAX_EVENTS)
    min_frames: int = param(16, "Frames that must have arrived before the first update", ge=1, le=MAX_EVENTS)
    catch_up: bool = param(
        True, "Run every update that is due, so results do not depend on timing; false: updates due together "
        "(the reconstruction fell behind the scan) run once, which keeps up on a busy machine")
    final_iterations: int = param(
        20, "Iterations at the end of the chain kept for after the last frame, run on every frame", ge=0, le=MAX_COUNT)
    probe_from_frames: int = param(
        16, "Frames averaged for the initial probe estimate (at most those of the first update)", ge=1, le=MAX_EVENTS)
    probe_modes: int = param(1, "Incoherent probe modes to reconstruct", ge=1, le=64)
    probe_guess: str | None = param(
        None, "Probe guess instead of the estimate: a .npy file of a complex (ny, nx) or (M, ny, nx) array, or a "
        "CXI file (its illumination, else its reconstruction's probe); default the probe of the scan's CXI file, "
        "if it holds one")
    # the name pipeline files already write: "engine" here is the algorithm, not lightpipe's executor
    engine_params: dict[str, dict[str, Any]] = param(
        {}, "Parameters per algorithm, e.g. {DM: {alpha: 0.9}, ML: {smoothness: 0.05}, ePIE: {seed: 1}}")
    negative_tolerance: float = param(
        1.0, "Negative values down to minus this count as 0 (noise, FFT rounding); a frame reaching lower fails",
        unit="counts", ge=0, le=1e12)

    @field_validator("chain")
    @classmethod
    def _valid_chain(cls, chain: str) -> str:
        check_chain_length(parse_chain(chain))
        return chain

    @field_validator("engine_params")
    @classmethod
    def _valid_algorithms(cls, params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        named = algorithm_parameters(params)  # chain names: {epie: ...} is ePIE's
        for name, values in named.items():
            make_algorithm(name, values)  # raises ValueError naming the algorithm and its parameters
        return named

    @field_validator("probe_guess")
    @classmethod
    def _existing_file(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"probe_guess file {path!r} does not exist; give a .npy or .cxi file, or leave it out "
                             "to estimate the probe from the first frames")
        return path


def _scan_port(ndim: int, dtype: str | None, description: str, unit: str | None = None, *,
               axes: tuple[str, ...] = (), main: bool = False) -> Port:
    return Port(ndim=ndim, dtype=dtype, unit=unit, description=description, scan=True, axes=axes, main=main)


#: The outputs that label the object's rows and columns, and the curves' iterations.
OBJECT_AXES = ("object_y", "object_x")
ITERATION_AXIS = ("iteration",)


class PtychoReconstruction(SolverStage):
    """Reconstruct object and probe with an algorithm chain, starting while the scan is acquired.

    **Streaming.** Frames are collected in acquisition order. An update is
    due when ``min_frames`` frames have arrived, then after every
    ``frames_per_update`` more: it hands the frames up to that count to the
    algorithms and runs ``iterations_per_update`` iterations of the chain on them;
    positions not measured yet weigh 0. Updates are counted in frames, not in
    the engine's batches, so the result is the same on every engine and chunk
    size: a late call catches up on every update due. With ``catch_up`` false
    the updates due at once run as one instead, so a reconstruction that falls
    behind the scan (a busy machine) gets back to it, at the price of results
    that depend on timing. The chain is spent in
    order, except its last ``final_iterations`` iterations, which wait for the
    last frame. A scan longer than the chain's streaming share keeps iterating
    the algorithm reached so far, so new frames are still worked on; those extra
    iterations show in the error curve and do not count against the chain.
    :meth:`finish` runs what is left of the chain (at least
    ``final_iterations``) on all frames. The live results (object, its phase,
    their axes, probe, error curve, iterations and frames so far) go to the
    sinks' live views after every update.

    **Results for viewers.** ``object_phase`` is ``np.angle(object)`` as it
    stands: no phase offset or ramp is removed (ptychography leaves the
    global phase free; the object starts at 1, so the unlit margin stays at
    0 rad). It is the stage's main result, plotted on ``object_y`` and
    ``object_x``: the probe positions in metres (``position_y_m``,
    ``position_x_m``) that put the probe's centre on each row and column
    (:func:`~lightpipe.techniques.ptychography.geometry.object_axes`), so the
    image lines up with scan maps of the same positions. ``probe_y`` and
    ``probe_x`` are the probe's pixels from its centre, in metres.
    ``fourier_error``, ``engines`` and ``seconds`` have one value per
    iteration, numbered by ``iteration`` (1 to n). ``object_origin_m`` ties the
    object to the positions' frame (``position_m = positions_px * pixel +
    object_origin_m``), in any origin the scan's positions have (centred
    translations are negative on one side).

    **Nothing silent.** ``stalled`` (live and final) is true once an algorithm
    stopped changing the object and probe (ML whose line search found no step
    that lowers the likelihood, several iterations in a row); the log says why.
    ``probe_scale`` is the factor the probe guess was scaled by to hold the
    first frames' mean photon count (logged too); 1 for the estimate, which
    has that power already. The probe guess is ``probe_guess``, else the probe
    the scan's CXI file holds (the ``cxi`` source names it in the scan's
    ``probe_file``), else the estimate from the first frames.

    **Object extent.** When the scan's metadata plans the positions
    (``positions_px`` with ``object_pixel_size_m``, the same positions as the
    events' in metres), the object covers them from the start and frame ``k`` of
    the stream takes planned slot ``k``. Otherwise
    the object covers the frames fed so far and grows (with a margin) when a
    frame lands outside it; the algorithms then restart their exit waves from the
    current object and probe. A frame beyond the plan is warned about and grows
    the object the same way, from its own position.

    **Bad input** fails the event, with the reason, and the reconstruction goes
    on without it: a frame of another shape than the first, NaN or infinite
    values, counts below ``-negative_tolerance``, a position that is not a
    number. A probe guess of the wrong shape is warned about and the probe is
    estimated from the frames instead. An algorithm that diverges (NaN) is logged
    as an error; the object and probe of the last good iteration are the
    results, with ``diverged`` set, and the reconstruction stops there.
    """

    name = "ptycho_reconstruction"
    Params = ReconstructionParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts",
                      description="Pre-processed diffraction intensity, zero frequency at the centre"),
        "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Probe position y on the sample"),
        "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Probe position x on the sample"),
    }
    outputs = {
        "object": _scan_port(2, "complex", "Reconstructed object transmission", axes=OBJECT_AXES),
        "object_phase": _scan_port(2, "float", "Phase of the object, np.angle (the main result)", "rad",
                                   axes=OBJECT_AXES, main=True),
        "object_y": _scan_port(1, "float", "Probe position y that centres the probe on each object row", "m"),
        "object_x": _scan_port(1, "float", "Probe position x that centres the probe on each object column", "m"),
        "probe": _scan_port(2, "complex", "Reconstructed probe (the strongest mode)", axes=("probe_y", "probe_x")),
        "probe_y": _scan_port(1, "float", "Probe pixel rows from the probe's centre", "m"),
        "probe_x": _scan_port(1, "float", "Probe pixel columns from the probe's centre", "m"),
        "probe_modes": _scan_port(3, "complex", "Reconstructed probe modes (M, ny, nx)"),
        "fourier_error": _scan_port(1, "float", "Fourier error of each iteration", axes=ITERATION_AXIS),
        "iteration": _scan_port(1, "int", "Number of each iteration run so far, 1 to n"),
        "engines": _scan_port(1, None, "Algorithm of each iteration", axes=ITERATION_AXIS),
        "seconds": _scan_port(1, "float", "Time of each iteration", "s", axes=ITERATION_AXIS),
        "frames": _scan_port(0, "int", "Frames in the reconstruction so far"),
        "positions_px": _scan_port(2, "float", "Position (y, x) of each frame's window on the object, in order", "px"),
        "object_pixel_size_m": _scan_port(1, "float", "Object pixel size (y, x)", "m"),
        "diverged": _scan_port(0, "bool", "Whether an algorithm diverged (the results are its last good iteration)"),
        "stalled": _scan_port(0, "bool", "Whether an algorithm stopped changing the object and probe (ML: no step "
                              "lowered the likelihood, several iterations in a row; the log says why)"),
        "probe_scale": _scan_port(0, "float", "Factor the probe guess was multiplied by to match the frames' power "
                                  "(1: taken as it is)"),
        "object_origin_m": _scan_port(1, "float", "Position (y, x) of the object's pixel (0, 0) as a probe-window "
                                      "corner, in the frame of the scan's positions: position = positions_px * "
                                      "pixel + this", "m"),
    }

    # -------------------------------------------------------------- set-up
    def setup(self, scan: Scan) -> None:
        p = self.params
        meta = scan.metadata
        self._scan = scan
        self._pixel = object_pixel_size(meta, p.object_pixel_size_m, self.input_geometry.get("frame"))
        self._wavelength = scan_wavelength(meta)
        self._steps = parse_chain(p.chain)
        self._algorithms: dict[str, Algorithm] = {name: make_algorithm(name, p.engine_params.get(name))
                                                  for name in {*(n for n, _ in self._steps)}}
        total = sum(count for _, count in self._steps)
        self._streaming_budget = total - min(p.final_iterations, total)
        self._consumed = 0  # iterations of the chain run so far
        self._planned = self._planned_positions(meta)
        self._guess_file = p.probe_guess or meta.get("probe_file")
        self._guess = load_probe_guess(self._guess_file) if self._guess_file else None
        self._probe_scale = 1.0
        self._frame_shape: tuple[int, int] | None = None
        self._fed_slots: list[int] = []
        self._extra_slots: dict[int, int] = {}  # stream position -> slot, for frames beyond the plan
        self._handed = 0  # frames (in feed order) handed to the algorithms
        self._next_update = p.min_frames  # frames fed at which the next update is due
        # per slot: the frame (centred) and its measured position (object px before the origin shift, NaN until
        # fed); grown as slots appear
        self._frames: np.ndarray | None = None
        self._measured = np.zeros((0, 2))
        self._origin = np.zeros(2)
        self._state: ReconstructionState | None = None
        # object, probe, history length and origin of the last good iteration
        self._good: tuple[np.ndarray, np.ndarray, int, np.ndarray] | None = None
        self._diverged: str | None = None

    def _planned_positions(self, meta: Mapping[str, Any]) -> np.ndarray | None:
        """The scan's planned positions in this stage's object pixels, or ``None``; warns when they miss frames."""
        planned, scanned = meta.get("positions_px"), meta.get("object_pixel_size_m")
        if planned is None or scanned is None:
            return None
        q = np.asarray(planned, dtype=np.float64).reshape(-1, 2) * np.asarray(scanned, dtype=np.float64) / self._pixel
        frames = len(self._scan.streams.get("data", ()))
        if frames and len(q) != frames:
            log.warning("scan %s plans %d positions but its data stream has %d frames; frames beyond the plan are "
                        "placed by their own positions and the object grows to hold them", self._scan.name, len(q),
                        frames)
        return q if len(q) else None

    # ---------------------------------------------------------------- feed
    def feed(self, index: int, frame: Any, position_y_m: Any, position_x_m: Any) -> None:
        image = np.asarray(to_numpy(frame), dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"ptycho_reconstruction takes 2-D frames; event {index} has shape {image.shape}")
        if self._frame_shape is None:
            self._frame_shape = (int(image.shape[0]), int(image.shape[1]))
        elif image.shape != self._frame_shape:
            raise ValueError(f"event {index} has a {image.shape[0]}x{image.shape[1]} frame but the reconstruction's "
                             f"frames are {self._frame_shape[0]}x{self._frame_shape[1]} (the first frame's); the "
                             "pre-processing must give every frame the same shape")
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ValueError(f"event {index}: {bad} pixels of the frame are NaN or infinite; mask them in the "
                             "pre-processing (dark_correction blanks bad pixels)")
        low = float(image.min())
        if low < -self.params.negative_tolerance:
            raise ValueError(f"event {index}: the frame holds negative counts (down to {low:.3g}); intensities are "
                             "photon counts >= 0: check the dark subtraction and put a threshold stage before the "
                             "reconstruction (FFT downsampling rings when the probe fills the window; "
                             "negative_tolerance sets what passes as rounding)")
        y, x = float(position_y_m), float(position_x_m)
        if not (math.isfinite(y) and math.isfinite(x)):
            raise ValueError(f"event {index} has no position (y={y}, x={x}); a frame without a position cannot be "
                             "placed on the object")
        slot = self._slot(index)
        self._store(slot, np.clip(image, 0.0, None), np.array([y / self._pixel[0], x / self._pixel[1]]))
        self._fed_slots.append(slot)

    def _slot(self, index: int) -> int:
        """Where event ``index`` goes: its planned slot, else the next slot after the plan."""
        stream = self._scan.stream_of(index)
        k = index - self._scan.streams[stream].start
        planned = 0 if self._planned is None else len(self._planned)
        if k < planned:
            return k
        if k not in self._extra_slots:
            if planned and not self._extra_slots:
                log.warning("scan %s: event %d is frame %d of stream %s but the scan plans only %d positions; it and "
                            "the frames after it are placed by their own positions", self._scan.name, index, k,
                            stream, planned)
            self._extra_slots[k] = planned + len(self._extra_slots)
        return self._extra_slots[k]

    def _store(self, slot: int, image: np.ndarray, position: np.ndarray) -> None:
        """Keep the frame and position of ``slot``, growing the arrays (by doubling) when it is new."""
        if self._frames is None or slot >= len(self._frames):
            planned = 0 if self._planned is None else len(self._planned)
            size = max(slot + 1, planned, 2 * (0 if self._frames is None else len(self._frames)))
            frames = np.zeros((size, *image.shape), np.float32)
            measured = np.full((size, 2), np.nan)
            if self._frames is not None:
                frames[: len(self._frames)] = self._frames
            measured[: len(self._measured)] = self._measured
            self._frames, self._measured = frames, measured
        self._frames[slot] = image
        self._measured[slot] = position

    # -------------------------------------------------------------- update
    def update(self) -> dict[str, Any] | None:
        p = self.params
        done = False
        due = (len(self._fed_slots) - self._next_update) // p.frames_per_update + 1
        if not p.catch_up and due > 1:  # behind the scan: one update for all of them, on every frame so far
            self._next_update += (due - 1) * p.frames_per_update
        while p.iterations_per_update and self._diverged is None and len(self._fed_slots) >= self._next_update:
            self._take_frames(self._next_update)
            self._next_update += p.frames_per_update
            n = p.iterations_per_update
            take = max(0, min(n, self._streaming_budget - self._consumed))
            steps = self._chain_part(self._consumed, take)
            self._consumed += take
            if n > take:  # the scan outlasts the chain's streaming share: go on with the algorithm reached
                steps.append((self._algorithm_at(self._streaming_budget), n - take))
            self._run(steps)
            done = True
        return self._live() if done else None

    def _chain_part(self, start: int, count: int) -> list[tuple[str, int]]:
        """Iterations ``start`` to ``start + count - 1`` of the chain, as (algorithm, iterations) steps."""
        steps, first = [], 0
        for name, n in self._steps:
            lo, hi = max(start, first), min(start + count, first + n)
            if hi > lo:
                steps.append((name, hi - lo))
            first += n
        return steps

    def _algorithm_at(self, iteration: int) -> str:
        """Algorithm of chain iteration ``iteration`` (the last algorithm beyond the chain)."""
        first = 0
        for name, n in self._steps:
            if iteration < first + n:
                return name
            first += n
        return self._steps[-1][0]

    def _run(self, steps: list[tuple[str, int]]) -> None:
        """Iterate ``steps`` on the reconstruction state; on divergence keep the last good iteration and stop."""
        state = self._state
        assert state is not None

        def keep(_: int, current: ReconstructionState) -> None:
            # an iteration's error is that of the estimate entering it: its own update may already be NaN
            obj, probe = np.array(to_numpy(current.object)), np.array(to_numpy(current.probe))
            if np.isfinite(obj).all() and np.isfinite(probe).all():
                self._good = (obj, probe, len(current.history), self._origin.copy())

        if self._good is None:  # the guesses, in case the very first iteration diverges
            keep(0, state)
        for name, count in steps:
            try:
                iterate(state, self._algorithms[name], count, callback=keep)
            except DivergenceError as exc:
                self._diverged = str(exc)
                assert self._good is not None
                log.error("ptycho reconstruction of scan %s diverged: %s The results are the object and probe after "
                          "%d good iterations; the reconstruction stops there.", self._scan.name, exc, self._good[2])
                return

    # ------------------------------------------------ reconstruction state
    def _take_frames(self, upto: int) -> None:
        """Hand the fed frames up to number ``upto`` to the algorithms, making or growing their state as needed."""
        if upto <= self._handed:
            return
        pending = np.array(self._fed_slots[self._handed: upto])
        self._handed = upto
        state = self._state
        assert self._frames is not None
        fits = state is not None and pending.max() < state.n_frames and self._inside(self._measured[pending])
        if not fits:
            self._state = self._new_state(state)
            return
        assert state is not None
        state.set_frames(pending, self._frames[pending], positions_px=self._measured[pending] - self._origin)

    def _inside(self, positions: np.ndarray) -> bool:
        """Whether windows at ``positions`` (object px before the origin shift) fit the current object."""
        assert self._state is not None and self._frame_shape is not None
        corner = np.rint(positions - self._origin)
        far = corner.max(axis=0) + self._frame_shape
        return bool(corner.min() >= 0 and far[0] <= self._state.object_shape[0] and far[1] <= self._state.object_shape[1])

    def _new_state(self, old: ReconstructionState | None) -> ReconstructionState:
        """A state over every slot so far, carrying ``old``'s object, probe and history if there is one.

        Its extent covers the planned positions and those of the frames handed over, never of frames fed
        after them, so that it does not depend on how the engine batched the events.
        """
        assert self._frame_shape is not None and self._frames is not None
        ny, nx = self._frame_shape
        fed = np.array(self._fed_slots[: self._handed])
        n = max(int(fed.max()) + 1, 0 if self._planned is None else len(self._planned))
        known = np.full((n, 2), np.nan)
        if self._planned is not None:
            known[: len(self._planned)] = self._planned
        known[fed] = self._measured[fed]
        placed = ~np.isnan(known[:, 0])
        slack = 0 if self._planned is not None else min(ny, nx) // 2  # room to grow into before the next rebuild
        origin = np.floor(known[placed].min(axis=0)) - MARGIN_PX - slack
        if old is not None:
            origin = np.minimum(origin, self._origin)
        positions = np.where(placed[:, None], known, origin + MARGIN_PX) - origin
        far = np.rint(positions).max(axis=0).astype(int) + (ny, nx) + MARGIN_PX + slack
        previous = None if old is None else np.asarray(to_numpy(old.object))
        shift = (self._origin - origin).astype(int)
        if previous is not None:
            far = np.maximum(far, shift + previous.shape)
        obj = np.ones((int(far[0]), int(far[1])), np.complex64)
        if previous is not None:
            obj[shift[0]: shift[0] + previous.shape[0], shift[1]: shift[1] + previous.shape[1]] = previous
        weights = np.zeros(n, np.float32)
        weights[fed] = 1.0
        probe = self._initial_probe() if old is None else np.asarray(to_numpy(old.probe))
        state = ReconstructionState(self._frames[:n], positions, probe, obj, mask=self._mask(), weights=weights,
                                    probe_modes=self.params.probe_modes)
        if old is not None:
            state.history, state.iteration = old.history, old.iteration
        self._origin = origin
        return state

    def _mask(self) -> np.ndarray | None:
        """Valid pixels of the frames (centred): all but the beamstop's disc; ``None`` when every pixel is."""
        assert self._frame_shape is not None
        return beamstop_mask(self._frame_shape, self.params.beamstop_radius_px)

    def _initial_probe(self) -> np.ndarray:
        """The probe guess if it fits the frames, else the estimate from the first ``probe_from_frames`` frames."""
        assert self._frames is not None
        first = np.array(self._fed_slots[: min(self.params.probe_from_frames, self._handed)])
        mean = self._frames[first].mean(axis=0, dtype=np.float64)
        guess = self._guess
        if guess is not None:
            if guess.shape[-2:] == self._frame_shape:
                power = float(np.sum(np.abs(guess) ** 2))
                if power > 0:
                    self._probe_scale = math.sqrt(float(mean.sum()) / power)
                    log.info("scan %s: the probe guess %s was scaled by %.4g so that its far field holds the first "
                             "frames' mean photon count", self._scan.name, self._guess_file, self._probe_scale)
                    return (guess * self._probe_scale).astype(np.complex64)
                return guess
            log.warning("scan %s: the probe guess %s is %s but the frames are %dx%d; the probe is estimated from "
                        "the first %d frames instead", self._scan.name, self._guess_file, guess.shape,
                        *self._frame_shape, len(first))
        p = self.params
        return probe_from_intensity(mean, p.defocus_m, self._wavelength, self._pixel)

    # ------------------------------------------------------------- results
    def _current(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Object, probe modes and origin (object px): the state's, or the last good iteration's after a divergence."""
        if self._diverged is not None and self._good is not None:
            return self._good[0], self._good[1], self._good[3]
        assert self._state is not None
        return np.asarray(to_numpy(self._state.object)), np.asarray(to_numpy(self._state.probe)), self._origin

    def _history(self) -> list[Any]:
        assert self._state is not None
        history = self._state.history
        return history[: self._good[2]] if self._diverged is not None and self._good is not None else history

    def _live(self) -> dict[str, Any]:
        obj, modes, origin = self._current()
        history = self._history()
        assert self._frame_shape is not None
        object_y, object_x = object_axes(origin, obj.shape, self._frame_shape, self._pixel)
        probe_y, probe_x = probe_axes(self._frame_shape, self._pixel)
        return {
            "object": obj,
            "object_phase": np.angle(obj).astype(np.float32),
            "object_y": object_y,
            "object_x": object_x,
            "object_origin_m": np.asarray(origin, dtype=np.float64) * np.asarray(self._pixel),
            "probe": modes[0],
            "probe_y": probe_y,
            "probe_x": probe_x,
            "fourier_error": np.array([r.fourier_error for r in history], dtype=np.float64),
            "iteration": np.arange(1, len(history) + 1, dtype=np.int64),
            "frames": np.int64(self._handed),
            "stalled": np.bool_(any(r.stalled for r in history)),
            "probe_scale": np.float64(self._probe_scale),
        }

    def finish(self) -> dict[str, Any]:
        if not self._fed_slots:
            raise ValueError("no frame reached ptycho_reconstruction (every event failed before it, or the stage's "
                             "stream has none); nothing to reconstruct")
        self._take_frames(len(self._fed_slots))
        if self._diverged is None:
            total = sum(count for _, count in self._steps)
            self._run(self._chain_part(self._consumed, total - self._consumed))
            self._consumed = total
        _, modes, _ = self._current()
        history = self._history()
        assert self._state is not None
        return {
            **self._live(),
            "probe_modes": modes,
            "engines": np.array([r.algorithm for r in history], dtype="S"),
            "seconds": np.array([r.seconds for r in history], dtype=np.float64),
            "positions_px": np.asarray(self._state.positions_px[np.array(self._fed_slots)], dtype=np.float64),
            "object_pixel_size_m": np.asarray(self._pixel, dtype=np.float64),
            "diverged": np.bool_(self._diverged is not None),
        }
