"""The overlap constraint on a reconstruction's state: object and probe sums from the exit waves.

Every algorithm updates the object (and, from ``probe_update_start`` on, the
probe) as the least-squares fit of the exit waves ``psi_j`` it holds:
``O = sum_j w_j conj(P) psi_j / sum_j w_j |P|^2`` at each frame's window, and
``P = sum_j w_j conj(O_j) psi_j / sum_j w_j |O_j|^2``. The sums are taken
chunk by chunk on the state's threads (:meth:`ReconstructionState.run_chunks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightpipe.techniques.ptychography.algorithms.common import Chunk, sum_parts
from lightpipe.techniques.ptychography.algorithms.state import ReconstructionState


@dataclass
class ProbeSums:
    """Per-thread sums of the probe update: ``sum_j w_j conj(O_j) psi_jm`` and ``sum_j w_j |O_j|^2``."""

    num: Any
    den: Any


@dataclass
class ObjectSums:
    """Per-thread sums of the object update (``sum w conj(P) psi``, ``sum w |P|^2`` at the windows) and error."""

    num: Any
    den: Any
    error: float = 0.0


def probe_from_exit_waves(state: ReconstructionState, obj: Any, inertia: float) -> Any:
    """Least-squares probe for the object ``obj`` and the state's exit waves (one pass over the frames).

    ``P_m = (sum_j w_j conj(O_j) psi_jm + r P_m) / (sum_j w_j |O_j|^2 + r)``, ``r = inertia * max(den)``.
    """
    xp = state.xp

    def work(acc: ProbeSums, chunk: Chunk) -> None:
        patches = state.windows.extract(obj, chunk.frames)
        power = xp.abs(patches)
        power *= power
        weighted = xp.conj(patches)
        w = state.frame_weights(chunk)
        if w is not None:
            weighted *= w
            power *= w
        acc.num += xp.sum(weighted[:, None] * chunk.take(xp, state.exit_waves), axis=0)
        acc.den += xp.sum(power, axis=0)

    shape = state.probe.shape
    parts = state.run_chunks(work, lambda: ProbeSums(xp.zeros(shape, dtype=xp.complex64),
                                                     xp.zeros(shape[1:], dtype=xp.float32)))
    num = sum_parts([p.num for p in parts])
    den = sum_parts([p.den for p in parts])
    r = inertia * float(xp.max(den))
    return (num + r * state.probe) / (den + r)


def new_object_sums(state: ReconstructionState) -> ObjectSums:
    """Zeroed :class:`ObjectSums` for ``state``'s object."""
    xp = state.xp
    return ObjectSums(xp.zeros(state.object_shape, dtype=xp.complex64),
                      xp.zeros(state.object_shape, dtype=xp.float32))


def add_overlap(state: ReconstructionState, acc: ObjectSums, chunk: Chunk, conj_probe: Any, beam: Any,
                waves: Any) -> None:
    """Add one chunk's ``w conj(P) psi`` (waves (B, M, ny, nx)) and ``w |P|^2`` to the object sums."""
    xp = state.xp
    w = state.chunk_weights(chunk)
    if waves.shape[1] == 1:
        contribution = waves[:, 0] * conj_probe[0]
    else:
        contribution = xp.sum(conj_probe[None] * waves, axis=1)
    state.windows.scatter_add(acc.num, chunk.frames, contribution, w)
    state.windows.scatter_add(acc.den, chunk.frames, beam, w)
