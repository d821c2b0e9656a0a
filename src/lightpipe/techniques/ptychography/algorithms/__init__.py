"""Ptychographic reconstruction algorithms: difference map (DM), alternating projections (AP), maximum likelihood
(ML) and the sequential ePIE.

A reconstruction is a chain of algorithms, written as in the SSRF nanoprobe
paper's tables: ``"DM:100, ML:50"`` runs 100 difference-map iterations, then
50 maximum-likelihood iterations from where DM left the object and probe.
Names are case-insensitive (``"epie:100"`` is ePIE).

Conventions (shared with the simulator, CXI files and metrics of
:mod:`lightpipe.techniques.ptychography`):

- ``intensities`` (N, ny, nx) float32 photons, zero frequency at the centre:
  ``fftshift(|fft2(probe * object_patch, norm="ortho")|**2)``, summed over probe modes;
- ``positions_px`` (N, 2) float, (y, x) of the top-left corner of the probe
  window, in object pixels, in any origin (rounded to whole pixels; the object
  array starts at ``state.origin_px``, see :mod:`.state`);
- ``probe`` (ny, nx) or modes (M, ny, nx) complex64; ``object`` (Hy, Hx) complex64;
- ``mask`` (ny, nx) bool, True = valid pixel; ``weights`` (N,) with 0 = frame not measured yet.

Arrays go through the array namespace of ``intensities`` (or ``xp``): NumPy
here, CuPy or PyTorch arrays on a GPU run the same code. On NumPy the frames
are processed in chunks on one thread per core, with pyFFTW's FFTs when it is
installed (about three times faster here than NumPy's or SciPy's).

Examples
--------
>>> result = reconstruct(intensities, positions_px, probe, chain="DM:100, ML:50")  # doctest: +SKIP
>>> result.object, result.probe, result.history[-1].fourier_error  # doctest: +SKIP

Streaming: keep one :class:`ReconstructionState` and call :func:`iterate` as frames arrive
(see :mod:`.state` for the design)::

    state = ReconstructionState(frames, planned_positions, probe, weights=np.zeros(n))
    for indices, new_frames in arrivals:
        state.set_frames(indices, new_frames)
        iterate(state, "DM", 5, callback=show)
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightpipe.techniques.ptychography.algorithms.ap import AlternatingProjections
from lightpipe.techniques.ptychography.algorithms.base import Algorithm
from lightpipe.techniques.ptychography.algorithms.common import DivergenceError, DivergenceWatch, check_finite
from lightpipe.techniques.ptychography.algorithms.dm import DifferenceMap
from lightpipe.techniques.ptychography.algorithms.epie import EPIE
from lightpipe.techniques.ptychography.algorithms.ml import MaximumLikelihood
from lightpipe.techniques.ptychography.algorithms.state import IterationRecord, ReconstructionState

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlternatingProjections",
    "DifferenceMap",
    "DivergenceError",
    "EPIE",
    "IterationRecord",
    "MaximumLikelihood",
    "Reconstruction",
    "ReconstructionState",
    "algorithm_parameters",
    "canonical_name",
    "iterate",
    "make_algorithm",
    "parse_chain",
    "reconstruct",
]

log = logging.getLogger(__name__)

#: Algorithms by chain name (looked up case-insensitively).
ALGORITHMS: dict[str, type[Algorithm]] = {"DM": DifferenceMap, "AP": AlternatingProjections, "ML": MaximumLikelihood,
                                          "ePIE": EPIE}
_BY_KEY = {name.upper(): name for name in ALGORITHMS}

#: Default first iteration (counted across the chain) at which the probe is refined.
PROBE_UPDATE_START = 2

_STEP = re.compile(r"^\s*([A-Za-z]+)\s*[:*]\s*([^\s,]*)\s*$")


def canonical_name(name: str) -> str:
    """The chain name of algorithm ``name``, whatever its case (``"epie"`` -> ``"ePIE"``).

    Raises
    ------
    ValueError
        On an unknown algorithm.
    """
    key = str(name).upper()
    if key not in _BY_KEY:
        raise ValueError(f"unknown algorithm {name!r}; known algorithms: {', '.join(ALGORITHMS)} (difference map, "
                         "alternating projections, maximum likelihood, sequential ePIE)")
    return _BY_KEY[key]


def parse_chain(chain: str) -> list[tuple[str, int]]:
    """Parse an algorithm chain such as ``"DM:100, ML:50"`` into ``[("DM", 100), ("ML", 50)]``.

    Steps are separated by commas (or spaces); each is ``NAME:COUNT`` (``NAME*COUNT``, the
    SSRF paper's notation, is accepted too). Names are case-insensitive; the result holds
    their chain names (:data:`ALGORITHMS`).

    Raises
    ------
    ValueError
        On an empty chain, an unknown algorithm, or a count that is not a positive integer.

    Examples
    --------
    >>> parse_chain("DM:100, ML:50")
    [('DM', 100), ('ML', 50)]
    >>> parse_chain("dm*10 ap*5 epie:3")
    [('DM', 10), ('AP', 5), ('ePIE', 3)]
    """
    if not isinstance(chain, str) or not chain.strip():
        raise ValueError(f"algorithm chain must be a string like 'DM:100, ML:50', got {chain!r}")
    steps = []
    for part in re.split(r"\s*,\s*|\s+(?=[A-Za-z]+\s*[:*])", chain.strip()):
        match = _STEP.match(part)
        if not match:
            raise ValueError(f"cannot read {part!r} in algorithm chain {chain!r}: write each step as NAME:COUNT, "
                             f"e.g. 'DM:100, ML:50' (algorithms: {', '.join(ALGORITHMS)})")
        count = match.group(2)
        try:
            name = canonical_name(match.group(1))
        except ValueError as exc:
            raise ValueError(f"{exc}, in chain {chain!r}") from None
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"iteration count {count!r} of {name} in chain {chain!r} must be a positive integer, "
                             f"e.g. '{name}:100'")
        steps.append((name, int(count)))
    return steps


def make_algorithm(name: str, params: Mapping[str, Any] | None = None) -> Algorithm:
    """The algorithm ``name`` (``"DM"``, ``"AP"``, ``"ML"``, ``"ePIE"``, any case) with ``params`` (its keywords).

    Raises
    ------
    ValueError
        On an unknown algorithm or parameter, or a bad parameter value.
    """
    key = canonical_name(name)
    cls = ALGORITHMS[key]
    try:
        return cls(**dict(params or {}))
    except TypeError as exc:
        import inspect

        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"bad parameters {dict(params or {})} for algorithm {key}: {exc}; its parameters are "
                         f"{', '.join(known)}") from None


def algorithm_parameters(params: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Parameters per algorithm with their names made chain names (``{"epie": ...}`` -> ``{"ePIE": ...}``).

    Raises
    ------
    ValueError
        When a name is not an algorithm's, or two names are the same algorithm's.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, values in (params or {}).items():
        try:
            key = canonical_name(name)
        except ValueError as exc:
            raise ValueError(f"algorithm_params: {exc}") from None
        if key in out:
            raise ValueError(f"algorithm_params gives the parameters of {key} twice; give them once")
        out[key] = dict(values)
    return out


def iterate(state: ReconstructionState, algorithm: str | Algorithm, iterations: int, *,
            probe_update_start: int = PROBE_UPDATE_START,
            callback: Callable[[int, ReconstructionState], None] | None = None,
            callback_every: int = 1) -> list[IterationRecord]:
    """Run ``iterations`` iterations of ``algorithm`` on ``state``, in place; return their records.

    Call it again to go on (e.g. after :meth:`ReconstructionState.set_frames` in a streaming
    reconstruction): iteration numbers, the probe-update start and each algorithm's
    memory carry over.

    Parameters
    ----------
    state
        The reconstruction to advance.
    algorithm
        An algorithm name or instance.
    iterations
        Number of iterations (>= 0).
    probe_update_start
        First iteration, counted over the state's whole history, at which the probe is refined.
    callback
        Called as ``callback(iteration, state)`` after every ``callback_every`` iterations
        and after the last one: a live view of object, probe and ``state.history``.
    callback_every
        Iterations between callbacks.

    An algorithm that stops changing the state (:meth:`Algorithm.stall`: ML whose line
    search found no step that lowers the likelihood, several iterations in a row) has its
    iterations recorded with ``stalled`` set and ``state.stall_reason`` saying why, and a
    warning is logged when the stall begins.

    Raises
    ------
    DivergenceError
        When an iteration produced NaN or infinite values. The state then holds them;
        ``state.history`` keeps the records of the good iterations, and a callback
        that copies object and probe keeps the last good state it was called with.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if callback_every < 1:
        raise ValueError(f"callback_every must be >= 1, got {callback_every}")
    algo = make_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
    if state.last_algorithm != algo.name:
        state.algorithm_memory.clear()
        algo.start(state)
        state.last_algorithm = algo.name
    if len(state.measured_frames()) == 0:
        raise ValueError("no frame is measured yet (every weight is 0): hand over frames with state.set_frames "
                         "before iterating")
    watch = DivergenceWatch(algo.name)
    records = []
    for k in range(iterations):
        t0 = time.perf_counter()
        error, nll = algo.iteration(state, state.iteration >= probe_update_start)
        seconds = time.perf_counter() - t0
        error /= max(state.measured_photons(), 1e-30)
        check_finite(algo.name, state.iteration, fourier_error=error, **({} if nll is None else {"nll": nll}))
        watch.see(state.iteration, error)
        reason = algo.stall(state)
        if reason is not None and state.stall_reason is None:
            log.warning("iteration %d: %s", state.iteration, reason)
        state.stall_reason = reason
        record = IterationRecord(state.iteration, algo.name, error, nll, seconds, stalled=reason is not None)
        state.history.append(record)
        records.append(record)
        state.iteration += 1
        if callback is not None and ((k + 1) % callback_every == 0 or k == iterations - 1):
            callback(state.iteration - 1, state)
    return records


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct`.

    Attributes
    ----------
    object
        Reconstructed object (Hy, Hx) complex64, in the array library of the input.
    probe
        Reconstructed probe modes (M, ny, nx) complex64 (M = 1 without modes).
    history
        One :class:`IterationRecord` per iteration.
    state
        The final :class:`ReconstructionState`: pass it to :func:`iterate` to go on. Its
        ``origin_px`` places the object in the positions' frame, its ``probe_scale`` says
        how the probe guess was scaled, its ``positions_px`` are the (refined) positions.
    """

    object: Any
    probe: Any
    history: list[IterationRecord] = field(default_factory=list)
    state: ReconstructionState | None = None

    @property
    def stalled(self) -> bool:
        """Whether any iteration was stalled (see :func:`iterate`)."""
        return any(r.stalled for r in self.history)

    @property
    def fourier_errors(self) -> list[float]:
        """Fourier error per iteration."""
        return [r.fourier_error for r in self.history]

    @property
    def neg_log_likelihoods(self) -> list[float | None]:
        """Poisson NLL per iteration (``None`` for DM and AP iterations)."""
        return [r.neg_log_likelihood for r in self.history]

    @property
    def algorithms(self) -> list[str]:
        """Algorithm of each iteration."""
        return [r.algorithm for r in self.history]

    @property
    def seconds(self) -> list[float]:
        """Wall-clock seconds of each iteration."""
        return [r.seconds for r in self.history]


def reconstruct(intensities: Any, positions_px: Any, probe: Any, obj: Any = None, *,
                chain: str | Sequence[tuple[str, int]] = "DM:100,ML:50", mask: Any = None, weights: Any = None,
                probe_update_start: int = PROBE_UPDATE_START, probe_modes: int = 1, xp: Any = None,
                callback: Callable[[int, ReconstructionState], None] | None = None, callback_every: int = 1,
                algorithm_params: Mapping[str, Mapping[str, Any]] | None = None, fft: str = "auto",
                threads: int | None = None, chunk_frames: int | None = None,
                origin_px: Any = None) -> Reconstruction:
    """Reconstruct object and probe from a ptychographic scan with a chain of algorithms.

    Parameters
    ----------
    intensities, positions_px, probe, obj, mask, weights, probe_modes, xp, fft, threads, chunk_frames, origin_px
        The data, guesses and options of :class:`ReconstructionState` (see there and the module conventions).
    chain
        Algorithms and iteration counts, ``"DM:100, ML:50"`` or ``[("DM", 100), ("ML", 50)]``.
    probe_update_start
        First iteration (counted over the whole chain) at which the probe is refined.
    callback, callback_every
        Live view, as for :func:`iterate`; iteration numbers count over the whole chain.
    algorithm_params
        Parameters per algorithm name, e.g. ``{"DM": {"alpha": 0.9}, "ePIE": {"seed": 3}}``.

    Returns
    -------
    Reconstruction
        Object, probe modes, per-iteration history and the final state.

    Raises
    ------
    ValueError
        On a bad chain, algorithm parameter, or input (shapes, NaN, windows outside the object).
    DivergenceError
        When an algorithm diverges to NaN or infinite values.
    """
    steps = parse_chain(chain) if isinstance(chain, str) else [parse_chain(f"{n}:{c}")[0] for n, c in chain]
    params = algorithm_parameters(algorithm_params)
    algorithms = {name: make_algorithm(name, params.get(name)) for name in {*params, *(n for n, _ in steps)}}
    state = ReconstructionState(intensities, positions_px, probe, obj, mask=mask, weights=weights,
                                probe_modes=probe_modes, xp=xp, fft=fft, threads=threads, chunk_frames=chunk_frames,
                                origin_px=origin_px)
    for name, count in steps:
        iterate(state, algorithms[name], count, probe_update_start=probe_update_start, callback=callback,
                callback_every=callback_every)
    return Reconstruction(state.object, state.probe, list(state.history), state)
