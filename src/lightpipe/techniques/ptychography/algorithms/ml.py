"""Maximum likelihood with a Poisson noise model, by preconditioned nonlinear conjugate gradient.

The model of frame ``j`` is ``I_j = sum_m |F(P_m O_j)|^2`` (unitary FFT ``F``,
``M`` incoherent probe modes), and the algorithm minimises the Poisson negative
log-likelihood of the measured counts ``n``

    L = sum_j w_j sum_q mask_q (I_jq - n_jq log I_jq)

plus, optionally, a smoothness prior ``mu sum |grad O|^2`` (the Gaussian prior
on the object's gradient of Thibault & Guizar-Sicairos, New J. Phys. 14,
063004 (2012)), whose weight ``mu`` follows the data term: ``smoothness`` times
the mean illumination of the object, ``sum_j w_j |P|^2`` at the windows averaged
over its pixels, which is the data term's curvature in the object. A weight
then means the same at any dose and scan size, and however the scale is split
between object and probe (``O, P`` and ``c O, P / c`` fit the data alike; a
weight per photon would change with ``c``). The history reports the data term alone.

One iteration is two passes over the frames (three when the line search has
to try steps):

1. Gradient pass: ``A_j = F(P O_j)``, ``chi_j = F^-1(w (1 - n / I_j) A_j)``, and
   the Wirtinger gradients ``g_O = sum_j conj(P) chi_j`` (at the windows) and
   ``g_P = sum_j conj(O_j) chi_j``. ``A`` is kept for the line search.
2. Line search along the search direction ``(h_O, h_P)``: the exit wave is a
   polynomial in the step, ``(P + a h_P)(O + a h_O)``, so its far field is
   ``A + a B + a^2 C`` with ``B = F(P h_O + h_P O)`` and ``C = F(h_P h_O)`` (two
   forward FFTs), and ``I(a) = I_0 + a I_1 + a^2 I_2 + a^3 I_3 + a^4 I_4`` is a
   quartic at every pixel. The pass sums the exact first and second
   derivatives of ``L(a)`` at ``a = 0``; the step is their Newton step (the
   polynomial line search of Thibault & Guizar-Sicairos, to second order)
   when the curvature is positive and the step within the bound below.
3. Otherwise (no positive curvature, a curvature that is not finite, or a
   Newton step beyond the bound) a second pass evaluates the change of the
   exact likelihood, ``sum (dI - n log(1 + dI / I_0))`` with ``dI`` the
   quartic's increment (no difference of two large numbers), at
   :data:`TRIAL_STEPS` steps halving from the bound, and takes the best one
   that lowers it. When none does along a conjugate direction, the search is
   repeated along steepest descent; when none does there either, the
   iteration changes nothing and says so.

The bound is ``max_step`` times the step that changes the object (or the probe)
by its own size, root-mean-square over the illumination. Every sum of the line
search and of the likelihood is accumulated in float64, whatever the precision
of the FFTs (single: complex64): their terms have both signs and cancel near
the solution, and float32 sums gave a curvature of the wrong sign there.

An iteration that changes nothing is counted; after :data:`STALL_ITERATIONS`
of them in a row, :meth:`MaximumLikelihood.stall` gives the reason, and
:func:`~lightpipe.techniques.ptychography.algorithms.iterate` marks the
iterations as stalled and logs a warning.

The direction is Polak-Ribiere conjugate gradient (reset to steepest descent
when beta < 0, when the likelihood rose, when the probe starts or stops
being refined, and whenever the frames, object or probe were replaced),
preconditioned by the illumination: the object gradient is divided by
``sum w |P|^2`` at the windows, the probe gradient by ``sum_j w |O_j|^2``,
which gives object and probe steps of the same scale. Four FFTs per frame and
mode (three while the probe is fixed), two more for a tried step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightpipe.techniques.ptychography.algorithms.base import Algorithm
from lightpipe.techniques.ptychography.algorithms.common import (
    TINY,
    Chunk,
    beam_intensity,
    far_modulus,
    modes_re_dot,
    modulus_error,
    non_negative,
    positive,
    sum_parts,
)
from lightpipe.techniques.ptychography.algorithms.state import ReconstructionState

#: Added to the model intensity in ``n / I`` and ``log I``: a millionth of a photon.
INTENSITY_FLOOR = 1e-6
#: Most halvings of a step that raised the likelihood, before going on from there.
MAX_HALVINGS = 5
#: Steps the line search tries when the quadratic model cannot be trusted: the bound, then halved each time.
TRIAL_STEPS = 12
#: Iterations in a row that change nothing before ML reports a stall.
STALL_ITERATIONS = 3
#: Default weight of the smoothness prior: the lowest object error after DM:100, ML:50 on the scans of
#: benchmarks/ptycho_engines.py (mean of 3 noise draws: 0.6304 % without the prior, 0.6272 % at 1e-4,
#: 0.6268 % at 3e-4, 0.6282 % at 1e-3, 0.6416 % at 3e-3; `--smoothness`).
SMOOTHNESS = 3e-4


@dataclass
class GradientSums:
    """Per-thread sums of the gradient pass."""

    g_obj: Any
    d_obj: Any
    g_probe: Any
    d_probe: Any
    nll: float = 0.0
    error: float = 0.0


@dataclass
class LineSums:
    """Per-thread sums of a line-search pass: ``L'(0)``, ``L''(0)`` and ``L(a) - L(0)`` at the tried steps."""

    d1: float = 0.0
    d2: float = 0.0
    changes: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Gradient:
    """Result of the gradient pass."""

    g_obj: Any
    d_obj: Any
    g_probe: Any
    d_probe: Any
    error: float
    #: The objective per pixel: the data's NLL less that of a perfect model, plus the prior.
    nll: float
    mu: float
    #: The data term alone (``nll`` less the prior), per pixel: what the history reports.
    data_nll: float = 0.0


@dataclass
class Memory:
    """What ML keeps between its iterations on one state."""

    version: int
    frames_version: int
    refine_probe: bool
    far_field: Any = None
    direction: tuple[Any, Any] | None = None
    preconditioned: tuple[Any, Any] | None = None
    g_dot_s: float = 0.0
    nll: float = math.inf
    last_step: float | None = None
    #: Iterations in a row that changed nothing, and why the last one did not.
    idle: int = 0
    idle_reason: str = ""


@dataclass
class Step:
    """Outcome of a line search: the step (0: none) and, without one, why."""

    size: float
    reason: str = ""


def _re_dot(xp: Any, a: Any, b: Any) -> float:
    """``Re <a, b>`` = ``sum(Re(conj(a) b))``, summed in float64."""
    return float(xp.sum(xp.real(a) * xp.real(b) + xp.imag(a) * xp.imag(b), dtype=xp.float64))


def _power(xp: Any, a: Any) -> float:
    """``sum |a|^2``, summed in float64."""
    return _re_dot(xp, a, a)


def _total(xp: Any, values: Any, weights: Any) -> float:
    """``sum_j w_j sum_q values_jq`` of a chunk's (B, ny, nx) values, summed in float64; ``weights`` (B, 1, 1) or None."""
    return float(xp.sum(values if weights is None else values * weights, dtype=xp.float64))


def _deviance(xp: Any, excess: Any, model: Any, n: Any) -> Any:
    """``I - n - n log(I / n)`` per pixel (``>= 0``) from ``excess = I - n`` (overwritten and returned), ``n >= 0``.

    One quotient and one log: ``log(I / n)`` is off by about 1e-7 (float32), so a
    term by about ``1e-7 n``, at any ratio of model to counts. ``I - n log I`` less
    ``n - n log n``, the textbook form, carried ``1e-7 n log n`` in each of two
    numbers a million times larger than their difference near the solution.
    """
    # the model carries the same floor, so a model equal to the counts gives log(1) = 0; with n = 0 the
    # term is 0 whatever the quotient
    quotient = model / (n + INTENSITY_FLOOR)
    term = xp.log(quotient)
    term *= n
    excess -= term
    return excess


def differences(obj: Any) -> tuple[Any, Any]:
    """Forward differences ``D O`` of ``obj`` along y and x."""
    return obj[1:, :] - obj[:-1, :], obj[:, 1:] - obj[:, :-1]


def smoothness_gradient(xp: Any, obj: Any) -> Any:
    """Wirtinger gradient of ``sum |D O|^2``: ``D^H D O`` for forward differences ``D``."""
    dy, dx = differences(obj)
    g = xp.zeros_like(obj)
    g[1:, :] += dy
    g[:-1, :] -= dy
    g[:, 1:] += dx
    g[:, :-1] -= dx
    return g


class MaximumLikelihood(Algorithm):
    """Poisson maximum likelihood by preconditioned conjugate gradient.

    Parameters
    ----------
    smoothness
        Weight ``mu`` of the smoothness prior ``mu sum |grad O|^2``, in units of the
        object's mean illumination ``sum_j |P|^2`` (0: no prior). It damps noise where
        the object is poorly lit, and blurs as it grows. The default, :data:`SMOOTHNESS`,
        gave the lowest object error on the benchmark's scans.
    preconditioner_floor
        Illumination below this fraction of its maximum is raised to it in the
        preconditioner, so barely lit pixels do not take huge steps.
    max_step
        Largest change of the object (and of the probe) one step may make, as a
        fraction of its own size (root-mean-square over the illumination): a
        longer Newton step, or any step where the likelihood has no positive
        curvature, is replaced by the best of the bounded steps tried on the
        exact likelihood.
    """

    name = "ML"

    def __init__(self, smoothness: float = SMOOTHNESS, preconditioner_floor: float = 1e-3,
                 max_step: float = 0.5) -> None:
        self.smoothness = non_negative("ML smoothness", smoothness)
        self.preconditioner_floor = positive("ML preconditioner_floor", preconditioner_floor)
        self.max_step = positive("ML max_step", max_step)

    def start(self, state: ReconstructionState) -> None:
        state.algorithm_memory.pop(self.name, None)

    def stall(self, state: ReconstructionState) -> str | None:
        mem = state.algorithm_memory.get(self.name)
        if mem is None or mem.idle < STALL_ITERATIONS:
            return None
        return (f"ML changed nothing in {mem.idle} iterations in a row: {mem.idle_reason}. The object and probe "
                "sit where the likelihood is flat to single precision: at its minimum, or at a point its gradient "
                "cannot leave (a blank object or probe guess; check the guesses, the mask and the positions). More "
                "ML iterations change nothing")

    def _memory(self, state: ReconstructionState, refine_probe: bool) -> Memory:
        mem = state.algorithm_memory.get(self.name)
        if mem is None or mem.frames_version != state.frames_version:
            mem = Memory(state.version, state.frames_version, refine_probe)
            state.algorithm_memory[self.name] = mem
        if mem.refine_probe != refine_probe or mem.version != state.version:
            # the variables changed, or the object or probe was replaced (a distributed merge):
            # start the directions and checks afresh; the data's own figures still hold
            mem.direction, mem.last_step, mem.nll, mem.idle = None, None, math.inf, 0
            mem.refine_probe, mem.version = refine_probe, state.version
        return mem

    def iteration(self, state: ReconstructionState, update_probe: bool) -> tuple[float, float | None]:
        xp = state.xp
        mem = self._memory(state, update_probe)
        grad = self._gradient(state, mem, update_probe)
        # Backtracking: the Newton step of the quadratic model can overshoot where the
        # Poisson likelihood is far from quadratic. Then go back half the step (and
        # again, up to MAX_HALVINGS times) and restart the conjugate directions.
        halvings = 0
        while grad.nll > mem.nll and mem.last_step is not None and halvings < MAX_HALVINGS:
            halvings += 1
            back, (h_obj, h_probe) = mem.last_step / 2, mem.direction
            state.object = state.object - back * h_obj
            if h_probe is not None:
                state.probe = state.probe - back * h_probe
            mem.last_step = back
            grad = self._gradient(state, mem, update_probe)
        if halvings:
            mem.direction = None
        mem.last_step = None
        if not (math.isfinite(grad.nll) and math.isfinite(grad.error)):
            return grad.error, grad.data_nll  # the driver raises DivergenceError with the iteration number
        obj, probe = state.object, state.probe

        # Preconditioned Polak-Ribiere direction.
        s_obj = grad.g_obj / self._preconditioner(xp, grad.d_obj)
        s_probe = grad.g_probe / self._preconditioner(xp, grad.d_probe) if update_probe else None

        def dot(a_obj: Any, a_probe: Any) -> float:
            return _re_dot(xp, grad.g_obj, a_obj) + (_re_dot(xp, grad.g_probe, a_probe) if update_probe else 0.0)

        g_dot_s = dot(s_obj, s_probe)
        steepest = (-s_obj, (-s_probe if update_probe else None))
        h_obj, h_probe = steepest
        if mem.direction is not None and mem.g_dot_s > 0:
            beta = (g_dot_s - dot(*mem.preconditioned)) / mem.g_dot_s
            if beta > 0:
                h_obj = h_obj + beta * mem.direction[0]
                if update_probe:
                    h_probe = h_probe + beta * mem.direction[1]
                if dot(h_obj, h_probe) >= 0:  # not a descent direction: steepest descent instead
                    h_obj, h_probe = steepest
        mem.preconditioned, mem.g_dot_s, mem.nll = (s_obj, s_probe), g_dot_s, grad.nll

        step = self._line_search(state, mem, grad, h_obj, h_probe)
        if step.size == 0 and h_obj is not steepest[0]:
            h_obj, h_probe = steepest  # nothing to gain along the conjugate direction: try steepest descent
            step = self._line_search(state, mem, grad, h_obj, h_probe)
        if step.size == 0:
            mem.direction = None
            mem.idle += 1
            mem.idle_reason = step.reason
            return grad.error, grad.data_nll
        state.object = obj + step.size * h_obj
        if update_probe:
            state.probe = probe + step.size * h_probe
        mem.direction, mem.last_step, mem.idle = (h_obj, h_probe), step.size, 0
        return grad.error, grad.data_nll

    def _preconditioner(self, xp: Any, illumination: Any) -> Any:
        """``illumination`` raised to ``preconditioner_floor`` of its maximum (and above 0, for a blank one)."""
        return xp.clip(illumination, min=max(self.preconditioner_floor * float(xp.max(illumination)), TINY))

    def _line_search(self, state: ReconstructionState, mem: Memory, grad: Gradient, h_obj: Any,
                     h_probe: Any) -> Step:
        """The step along ``(h_obj, h_probe)``: the Newton step when it can be trusted, else the best bounded one."""
        xp = state.xp
        sums = self._line_pass(state, mem.far_field, h_obj, h_probe)
        d1, d2 = sums.d1, sums.d2
        p1 = p2 = 0.0
        if grad.mu > 0:  # the prior is quadratic in the step: mu (|DO|^2 + a p1 + a^2 p2 / 2)
            hy, hx = differences(h_obj)
            dy, dx = differences(state.object)
            p1 = 2 * grad.mu * (_re_dot(xp, dy, hy) + _re_dot(xp, dx, hx))
            p2 = 2 * grad.mu * (_power(xp, hy) + _power(xp, hx))
            d1, d2 = d1 + p1, d2 + p2
        if not math.isfinite(d1):
            return Step(0.0, f"the slope of the likelihood along the search direction is {d1}")
        if d1 >= 0:
            return Step(0.0, f"the likelihood does not fall along the search direction (slope {d1:.3g} >= 0)")
        bound = self._step_bound(state, grad, h_obj, h_probe)
        if math.isfinite(d2) and d2 > 0 and -d1 / d2 <= bound:
            return Step(-d1 / d2)
        # No positive curvature, none that is finite, or a step beyond the bound: the quadratic
        # model says nothing useful. Try bounded steps on the exact likelihood instead.
        steps = bound * 0.5 ** np.arange(TRIAL_STEPS)
        changes = self._line_pass(state, mem.far_field, h_obj, h_probe, steps).changes
        changes = changes + steps * p1 + 0.5 * steps**2 * p2
        changes[~np.isfinite(changes)] = np.inf
        best = int(np.argmin(changes))
        if changes[best] < 0:
            return Step(float(steps[best]))
        curvature = f"{d2:.3g}" if math.isfinite(d2) else str(d2)
        return Step(0.0, f"no step from {steps[-1]:.3g} to {bound:.3g} along the search direction lowers the "
                         f"likelihood (slope {d1:.3g}, curvature {curvature})")

    def _step_bound(self, state: ReconstructionState, grad: Gradient, h_obj: Any, h_probe: Any) -> float:
        """Largest step: one that changes the object, or the probe, by ``max_step`` of its size (RMS over the beam)."""
        xp = state.xp
        lit = grad.d_obj
        size = float(xp.sum(lit * (xp.real(state.object) ** 2 + xp.imag(state.object) ** 2), dtype=xp.float64))
        change = float(xp.sum(lit * (xp.real(h_obj) ** 2 + xp.imag(h_obj) ** 2), dtype=xp.float64))
        bound = math.inf if change == 0 else self.max_step * math.sqrt(size / change)
        if h_probe is not None:
            change = _power(xp, h_probe)
            if change > 0:
                bound = min(bound, self.max_step * math.sqrt(_power(xp, state.probe) / change))
        return bound if math.isfinite(bound) else 0.0

    def _gradient(self, state: ReconstructionState, mem: Memory, update_probe: bool) -> Gradient:
        """The gradient pass: NLL, Fourier error, gradients and preconditioners at the current object and probe."""
        xp, fft = state.xp, state.fft
        measured = state.measured_frames()
        cache_shape = (len(measured), state.modes, *state.frame_shape)
        if mem.far_field is None or tuple(mem.far_field.shape) != cache_shape:
            mem.far_field = fft.empty(cache_shape)
        obj, probe, mask, cache = state.object, state.probe, state.mask, mem.far_field
        conj_probe, beam = xp.conj(probe), beam_intensity(xp, probe)

        def work(acc: GradientSums, chunk: Chunk) -> None:
            w, host_w = state.frame_weights(chunk), state.chunk_weights(chunk)
            n = chunk.take(xp, state.intensities)
            patches = state.windows.extract(obj, chunk.frames)
            far = fft.forward(fft.product(patches[:, None], probe[None]), out=cache[chunk.rows])
            modulus = far_modulus(xp, far)
            acc.error += modulus_error(xp, modulus, chunk.take(xp, state.amplitudes), mask, w)
            model = modulus * modulus
            model += INTENSITY_FLOOR
            # The NLL less that of a perfect model, I - n - n log(I / n) per pixel, written so that
            # no two large numbers are subtracted: near the solution each term is about
            # (I - n)^2 / 2n, where I - n log I and n - n log n are each 1e6 times larger
            # and float32 rounding of them alone moved the sum more than a step changes it.
            deviance = _deviance(xp, model - n, model, n)
            if mask is not None:
                deviance = xp.where(mask, deviance, xp.zeros_like(deviance))
            acc.nll += _total(xp, deviance, w)
            factor = 1.0 - n / model
            if mask is not None:
                factor = xp.where(mask, factor, xp.zeros_like(factor))
            if w is not None:
                factor *= w
            chi = fft.backward(fft.product(far, factor[:, None]))
            if chi.shape[1] == 1:
                contribution = chi[:, 0] * conj_probe[0]
            else:
                contribution = xp.sum(conj_probe[None] * chi, axis=1)
            state.windows.scatter_add(acc.g_obj, chunk.frames, contribution)
            state.windows.scatter_add(acc.d_obj, chunk.frames, beam, host_w)
            power = xp.abs(patches)
            power *= power
            acc.d_probe += xp.sum(power if w is None else power * w, axis=0)
            if update_probe:
                acc.g_probe += xp.sum(xp.conj(patches)[:, None] * chi, axis=0)

        def new_sums() -> GradientSums:
            return GradientSums(xp.zeros(state.object_shape, dtype=xp.complex64),
                                xp.zeros(state.object_shape, dtype=xp.float32),
                                xp.zeros(probe.shape, dtype=xp.complex64),
                                xp.zeros(state.frame_shape, dtype=xp.float32))

        parts = state.run_chunks(work, new_sums)
        g_obj = sum_parts([p.g_obj for p in parts])
        data_nll = sum(p.nll for p in parts)
        d_obj = sum_parts([p.d_obj for p in parts])
        prior, mu = 0.0, 0.0
        if self.smoothness > 0:
            mu = self.smoothness * float(xp.mean(d_obj, dtype=xp.float64))
            dy, dx = differences(obj)
            prior = mu * (_power(xp, dy) + _power(xp, dx))
            g_obj = g_obj + mu * smoothness_gradient(xp, obj)
        pixels = state.frame_shape[0] * state.frame_shape[1] if mask is None else int(xp.sum(xp.astype(mask, xp.int32)))
        scale = pixels * float(state.weights[measured].sum(dtype=np.float64))
        return Gradient(g_obj, d_obj,
                        sum_parts([p.g_probe for p in parts]) if update_probe else None,
                        sum_parts([p.d_probe for p in parts]), sum(p.error for p in parts), (data_nll + prior) / scale,
                        mu, data_nll / scale)

    def _line_pass(self, state: ReconstructionState, cache: Any, h_obj: Any, h_probe: Any,
                   steps: np.ndarray | None = None) -> LineSums:
        """One pass along ``(h_obj, h_probe)``: the data NLL's first and second derivative at step 0 and, for
        ``steps``, its exact change ``L(a) - L(0)`` at each."""
        xp, fft = state.xp, state.fft
        obj, probe, mask = state.object, state.probe, state.mask
        tried = np.zeros(0) if steps is None else np.asarray(steps, dtype=np.float64)

        def work(acc: LineSums, chunk: Chunk) -> None:
            w = state.frame_weights(chunk)
            n = chunk.take(xp, state.intensities)
            h_patches = state.windows.extract(h_obj, chunk.frames)
            a = cache[chunk.rows]
            lin = fft.product(h_patches[:, None], probe[None])
            if h_probe is not None:
                patches = state.windows.extract(obj, chunk.frames)
                lin += patches[:, None] * h_probe[None]
            b = fft.forward(lin)
            # I(step) = i0 + step i1 + step^2 i2 + step^3 i3 + step^4 i4 at every pixel
            i0 = far_modulus(xp, a)
            i0 *= i0
            i0 += INTENSITY_FLOOR
            i1 = modes_re_dot(xp, a, b)
            i1 *= 2.0
            i2 = far_modulus(xp, b)
            i2 *= i2
            c = None
            if h_probe is not None:
                c = fft.forward(fft.product(h_patches[:, None], h_probe[None]))
                i2 += 2.0 * modes_re_dot(xp, a, c)
            # L'(0) = sum (1 - n/I0) I1 and L''(0) = sum 2 (1 - n/I0) I2 + (n/I0^2) I1^2, on valid pixels
            ratio = n / i0
            g1 = 1.0 - ratio
            if mask is not None:
                g1 = xp.where(mask, g1, xp.zeros_like(g1))
            acc.d1 += _total(xp, g1 * i1, w)
            ratio /= i0
            ratio *= i1
            ratio *= i1
            curvature = g1 * i2
            curvature *= 2.0
            curvature += ratio
            acc.d2 += _total(xp, curvature, w)
            if len(tried) == 0:
                return
            i3 = i4 = None
            if c is not None:
                i3 = 2.0 * modes_re_dot(xp, b, c)
                i4 = far_modulus(xp, c)
                i4 *= i4
            # the floor I(step) >= 0 as a change relative to I0, which float32 rounding of dI may cross
            lowest = INTENSITY_FLOOR / i0 - 1.0
            for k, step in enumerate(tried.tolist()):
                poly = i2 if i3 is None else i2 + step * (i3 + step * i4)
                change = step * (i1 + step * poly)  # dI, with no difference of two large numbers
                if mask is not None:
                    change = xp.where(mask, change, xp.zeros_like(change))
                relative = xp.maximum(change / i0, lowest)
                acc.changes[k] += _total(xp, change - n * xp.log1p(relative), w)

        parts = state.run_chunks(work, lambda: LineSums(changes=np.zeros(len(tried))))
        return LineSums(sum(p.d1 for p in parts), sum(p.d2 for p in parts), sum_parts([p.changes for p in parts]))
