"""ePIE, the extended ptychographic iterative engine (Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009)).

One iteration visits every measured view once, in a random order drawn from
a generator seeded by ``seed`` (a new order each iteration, the same
sequence of orders on every run), and for each view ``j`` in turn:

1. ``psi = P O_j`` (every probe mode), ``Psi = F(psi)``; the Fourier error of
   the view is added up;
2. ``psi' = F^-1(project(Psi))``, the exit wave with the measured modulus;
3. with ``d = psi' - psi``, the object and (from ``probe_update_start`` on) the
   probe move at once, each from the other's value before the step:
   ``O_j += alpha w_j sum_m conj(P_m) d_m / max(sum_m |P_m|^2)`` and
   ``P_m += beta w_j conj(O_j) d_m / max|O_j|^2``.

The next view already sees both updates: that is what makes ePIE sequential,
and what :class:`~.ap.AlternatingProjections` (every view from the same
estimate, averaged) is not. It is a Python loop of one view at a time (two
FFTs of one frame each): on NumPy about as fast per iteration as DM, on a GPU
much slower than the batched algorithms.

Position refinement (optional, ``refine_positions_every``): on every such
iteration from ePIE's ``refine_positions_start``-th on (and while the probe is
refined), each view, before its update, also tries its window one pixel up,
down, left and right, and moves to the one whose far field fits the
measured modulus best (the annealing idea of Maiden et al., Ultramicroscopy
120, 64 (2012), on whole pixels: the windows are whole pixels). A view never
moves more than ``max_shift_px`` from where ePIE found it, nor out of the
object. Four more FFTs per view on those iterations; the refined positions
are the state's ``positions_px``. It is a simple scheme, and a fragile one: on
the tests' scans (64 views, a quarter of them 1-2 px off) refinement every 2
iterations from the 20th put every view back on three scans out of three,
but from the 10th, the 30th, or every 4 iterations, it left 12-26 views off
on one scan in three, and every iteration from the start it moved good views
as well, chasing an object and probe that were still wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lightpipe.techniques.ptychography.algorithms.base import Algorithm
from lightpipe.techniques.ptychography.algorithms.common import (
    beam_intensity,
    far_modulus,
    modulus_error,
    non_negative,
    orthogonalize_modes,
    positive,
    project_modulus,
)
from lightpipe.techniques.ptychography.algorithms.state import ReconstructionState

#: Window shifts (y, x) a view tries in a position-refinement iteration; its own place first, so ties keep it.
NEIGHBOURS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass
class Memory:
    """What ePIE keeps between its iterations on one state."""

    rng: np.random.Generator
    start_corners: np.ndarray
    iterations: int = 0


class EPIE(Algorithm):
    """Sequential ePIE: one view at a time, in a seeded random order.

    Parameters
    ----------
    alpha
        Object step: the fraction of the exit-wave correction given to the
        object where the beam is brightest (1 in the paper).
    beta
        Probe step, the same for the probe where the object is brightest.
    seed
        Seed of the generator that draws the order of the views in each iteration.
    refine_positions_every
        Refine the positions every this many ePIE iterations, while the probe is
        refined (0: never). See the module notes.
    refine_positions_start
        ePIE iterations (on this state) before the first refinement: the object and
        probe must be roughly right before they can tell a position apart.
    max_shift_px
        How far, in object pixels, refinement may move a view from where ePIE found it.
    """

    name = "ePIE"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, seed: int = 0, refine_positions_every: int = 0,
                 refine_positions_start: int = 20, max_shift_px: float = 4.0) -> None:
        self.alpha = positive("ePIE alpha", alpha)
        self.beta = positive("ePIE beta", beta)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"ePIE seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        if (isinstance(refine_positions_every, bool) or not isinstance(refine_positions_every, (int, np.integer))
                or refine_positions_every < 0):
            raise ValueError(f"ePIE refine_positions_every must be an integer >= 0 (0: never), got "
                             f"{refine_positions_every!r}")
        self.refine_positions_every = int(refine_positions_every)
        if (isinstance(refine_positions_start, bool) or not isinstance(refine_positions_start, (int, np.integer))
                or refine_positions_start < 0):
            raise ValueError(f"ePIE refine_positions_start must be an integer >= 0, got {refine_positions_start!r}")
        self.refine_positions_start = int(refine_positions_start)
        self.max_shift_px = non_negative("ePIE max_shift_px", max_shift_px)

    def start(self, state: ReconstructionState) -> None:
        corners = np.stack([state.windows.iy, state.windows.ix], axis=1)
        state.algorithm_memory[self.name] = Memory(np.random.default_rng(self.seed), corners)

    def iteration(self, state: ReconstructionState, update_probe: bool) -> tuple[float, float | None]:
        xp, fft = state.xp, state.fft
        mem = state.algorithm_memory.get(self.name)
        if mem is None:
            self.start(state)
            mem = state.algorithm_memory[self.name]
        mem.iterations += 1
        every, later = self.refine_positions_every, mem.iterations - self.refine_positions_start
        refine = update_probe and every > 0 and later > 0 and later % every == 0
        ny, nx = state.frame_shape
        obj = xp.asarray(state.object, copy=True)  # updated in place, view by view
        probe = state.probe
        amplitudes, mask, weights = state.amplitudes, state.mask, state.weights
        corners = np.stack([state.windows.iy, state.windows.ix], axis=1)
        moved = corners.copy()
        error = 0.0
        for j in mem.rng.permutation(state.measured_frames()).tolist():
            measured = amplitudes[j:j + 1]
            if refine:
                moved[j] = self._best_window(state, obj, probe, moved[j], mem.start_corners[j], measured)
            y, x = int(moved[j, 0]), int(moved[j, 1])
            w = float(weights[j])
            patch = xp.asarray(obj[y:y + ny, x:x + nx], copy=True)
            waves = fft.product(patch[None, None], probe[None])  # (1, M, ny, nx)
            far = fft.forward(waves, out=fft.empty(waves.shape))
            modulus = far_modulus(xp, far)
            error += w * modulus_error(xp, modulus, measured, mask, None)
            correction = fft.backward(project_modulus(xp, far, modulus, measured, mask))[0]
            correction -= waves[0]
            step = self.alpha * w / float(xp.max(beam_intensity(xp, probe)))
            obj[y:y + ny, x:x + nx] += step * xp.sum(xp.conj(probe) * correction, axis=0)
            if update_probe:
                lit = float(xp.max(xp.real(patch) ** 2 + xp.imag(patch) ** 2))
                if lit > 0:
                    probe = probe + (self.beta * w / lit) * (xp.conj(patch)[None] * correction)
        state.object = obj
        if update_probe:
            state.probe = orthogonalize_modes(xp, probe)
        changed = np.flatnonzero(np.any(moved != corners, axis=1))
        if len(changed):
            state.move_frames(changed, state.positions_px[changed] + (moved[changed] - corners[changed]))
        return error, None

    def _best_window(self, state: ReconstructionState, obj: Any, probe: Any, corner: np.ndarray,
                     start: np.ndarray, measured: Any) -> np.ndarray:
        """The corner, among ``corner`` and its four neighbours, whose far field fits ``measured`` best."""
        xp, fft = state.xp, state.fft
        ny, nx = state.frame_shape
        hy, hx = state.object_shape
        tried = []
        for dy, dx in NEIGHBOURS:
            y, x = int(corner[0]) + dy, int(corner[1]) + dx
            inside = 0 <= y <= hy - ny and 0 <= x <= hx - nx
            if inside and np.hypot(y - start[0], x - start[1]) <= self.max_shift_px:
                tried.append((y, x))
        patches = xp.stack([obj[y:y + ny, x:x + nx] for y, x in tried])
        far = fft.forward(fft.product(patches[:, None], probe[None]))
        modulus = far_modulus(xp, far)
        misfit = modulus - measured
        if state.mask is not None:
            misfit = xp.where(state.mask, misfit, xp.zeros_like(misfit))
        errors = np.asarray([float(xp.sum(misfit[k] * misfit[k], dtype=xp.float64)) for k in range(len(tried))])
        return np.asarray(tried[int(np.argmin(errors))], dtype=np.int64)
