"""Maximum likelihood with a Poisson noise model, by preconditioned nonlinear conjugate gradient.

The model of frame ``j`` is ``I_j = sum_m |F(P_m O_j)|^2`` (unitary FFT ``F``,
``M`` incoherent probe modes), and the algorithm minimises the Poisson negative
log-likelihood of the measured counts ``n``

    L = sum_j w_j sum_q mask_q (I_jq - n_jq log I_jq)

plus, optionally, a smoothness prior ``mu sum |grad O|^2`` (the Gaussian prior
on the object's gradient of Thibault & Guizar-Sicairos, New J. Phys. 14,
063004 (2012)).

One iteration is two passes over the frames:

1. Gradient pass: ``A_j = F(P O_j)``, ``chi_j = F^-1(w (1 - n / I_j) A_j)``, and
   the Wirtinger gradients ``g_O = sum_j conj(P) chi_j`` (at the windows) and
   ``g_P = sum_j conj(O_j) chi_j``. ``A`` is kept for the line search.
2. Line search along the search direction ``(h_O, h_P)``: the exit wave is a
   polynomial in the step, ``(P + a h_P)(O + a h_O)``, so its far field is
   ``A + a B + a^2 C`` with ``B = F(P h_O + h_P O)`` and ``C = F(h_P h_O)`` (two
   forward FFTs), and ``I(a)`` is a quartic. The step is the Newton step of
   ``L(a)`` from its exact first and second derivatives at ``a = 0``: the
   polynomial line search of Thibault & Guizar-Sicairos, to second order.

The direction is Polak-Ribiere conjugate gradient (reset to steepest descent
when beta < 0, when the likelihood rose, when the probe starts or stops
being refined, and whenever the frames, object or probe were replaced),
preconditioned by the illumination: the object gradient is divided by
``sum w |P|^2`` at the windows, the probe gradient by ``sum_j w |O_j|^2``,
which gives object and probe steps of the same scale. Four FFTs per frame and
mode (three while the probe is fixed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.algorithms.base import Algorithm
from lightpipe.techniques.ptychography.algorithms.common import (
    Chunk,
    beam_intensity,
    far_modulus,
    frame_dot,
    modes_re_dot,
    modulus_error,
    non_negative,
    positive,
    sum_parts,
    weighted_total,
)
from lightpipe.techniques.ptychography.algorithms.state import ReconstructionState

#: Added to the model intensity in ``n / I`` and ``log I``: a millionth of a photon.
INTENSITY_FLOOR = 1e-6
#: Most halvings of a step that raised the likelihood, before going on from there.
MAX_HALVINGS = 5


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
    """Per-thread sums of the line search: first and second derivative of L along the direction."""

    d1: float = 0.0
    d2: float = 0.0


@dataclass
class Gradient:
    """Result of the gradient pass."""

    g_obj: Any
    d_obj: Any
    g_probe: Any
    d_probe: Any
    error: float
    nll: float
    mu: float


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
    perfect_nll: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _re_dot(xp: Any, a: Any, b: Any) -> float:
    """``Re <a, b>`` = ``sum(Re(conj(a) b))``."""
    return float(xp.sum(xp.real(a) * xp.real(b) + xp.imag(a) * xp.imag(b), dtype=xp.float64))


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
        mean photon count per object pixel (0: no prior). It damps noise where the
        object is poorly lit, and blurs as it grows.
    preconditioner_floor
        Illumination below this fraction of its maximum is raised to it in the
        preconditioner, so barely lit pixels do not take huge steps.
    """

    name = "ML"

    def __init__(self, smoothness: float = 0.0, preconditioner_floor: float = 1e-3) -> None:
        self.smoothness = non_negative("ML smoothness", smoothness)
        self.preconditioner_floor = positive("ML preconditioner_floor", preconditioner_floor)

    def start(self, state: ReconstructionState) -> None:
        state.algorithm_memory.pop(self.name, None)

    def _memory(self, state: ReconstructionState, refine_probe: bool) -> Memory:
        mem = state.algorithm_memory.get(self.name)
        if mem is None or mem.frames_version != state.frames_version:
            mem = Memory(state.version, state.frames_version, refine_probe, perfect_nll=self._perfect_nll(state))
            state.algorithm_memory[self.name] = mem
        if mem.refine_probe != refine_probe or mem.version != state.version:
            # the variables changed, or the object or probe was replaced (a distributed merge):
            # start the directions and checks afresh; the data's own figures still hold
            mem.direction, mem.last_step, mem.nll = None, None, math.inf
            mem.refine_probe, mem.version = refine_probe, state.version
        return mem

    @staticmethod
    def _perfect_nll(state: ReconstructionState) -> np.ndarray:
        """Per frame ``sum_q mask (n - n log n)``: the NLL of a model equal to the data, subtracted for reporting."""
        xp = state.xp
        out = np.zeros(state.n_frames)
        for chunk in state.chunks():
            n = chunk.take(xp, state.intensities)
            n_log_n = xp.where(n > 0, n * xp.log(xp.where(n > 0, n, xp.ones_like(n))), xp.zeros_like(n))
            out[chunk.frames] = np.asarray(to_numpy(xp.sum(n - n_log_n, axis=(1, 2), dtype=xp.float64)))
        return out

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
            return grad.error, grad.nll  # the driver raises DivergenceError with the iteration number
        obj, probe = state.object, state.probe

        # Preconditioned Polak-Ribiere direction.
        s_obj = grad.g_obj / xp.clip(grad.d_obj, min=self.preconditioner_floor * float(xp.max(grad.d_obj)))
        s_probe = None
        if update_probe:
            s_probe = grad.g_probe / xp.clip(grad.d_probe, min=self.preconditioner_floor * float(xp.max(grad.d_probe)))

        def dot(a_obj: Any, a_probe: Any) -> float:
            return _re_dot(xp, grad.g_obj, a_obj) + (_re_dot(xp, grad.g_probe, a_probe) if update_probe else 0.0)

        g_dot_s = dot(s_obj, s_probe)
        h_obj, h_probe = -s_obj, (-s_probe if update_probe else None)
        if mem.direction is not None and mem.g_dot_s > 0:
            beta = (g_dot_s - dot(*mem.preconditioned)) / mem.g_dot_s
            if beta > 0:
                h_obj = h_obj + beta * mem.direction[0]
                if update_probe:
                    h_probe = h_probe + beta * mem.direction[1]
                if dot(h_obj, h_probe) >= 0:  # not a descent direction: steepest descent instead
                    h_obj, h_probe = -s_obj, (-s_probe if update_probe else None)
        mem.preconditioned, mem.g_dot_s, mem.nll = (s_obj, s_probe), g_dot_s, grad.nll

        d1, d2 = self._line_derivatives(state, mem.far_field, h_obj, h_probe)
        if grad.mu > 0:
            hy, hx = differences(h_obj)
            dy, dx = differences(obj)
            d1 += 2 * grad.mu * (_re_dot(xp, dy, hy) + _re_dot(xp, dx, hx))
            d2 += 2 * grad.mu * float(xp.sum(xp.abs(hy) ** 2) + xp.sum(xp.abs(hx) ** 2))
        if not (math.isfinite(d1) and math.isfinite(d2)) or d2 <= 0:
            # No curvature along this direction (or no finite one): take no step, restart from steepest descent.
            mem.direction = None
            return grad.error, grad.nll
        step = -d1 / d2
        state.object = obj + step * h_obj
        if update_probe:
            state.probe = probe + step * h_probe
        mem.direction, mem.last_step = (h_obj, h_probe), step
        return grad.error, grad.nll

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
            # sum(mask * (I - n log I)) per frame; n is 0 on masked pixels already
            predicted = xp.sum(model if mask is None else xp.where(mask, model, xp.zeros_like(model)), axis=(1, 2))
            acc.nll += weighted_total(xp, predicted - frame_dot(xp, n, xp.log(model)), w)
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
        mu = 0.0
        if self.smoothness > 0:
            mu = self.smoothness * state.measured_photons() / (state.object_shape[0] * state.object_shape[1])
            dy, dx = differences(obj)
            data_nll += mu * float(xp.sum(xp.abs(dy) ** 2) + xp.sum(xp.abs(dx) ** 2))
            g_obj = g_obj + mu * smoothness_gradient(xp, obj)
        pixels = state.frame_shape[0] * state.frame_shape[1] if mask is None else int(xp.sum(xp.astype(mask, xp.int32)))
        weights = state.weights[measured].astype(np.float64)
        nll = (data_nll - float(np.dot(weights, mem.perfect_nll[measured]))) / (pixels * float(weights.sum()))
        return Gradient(g_obj, sum_parts([p.d_obj for p in parts]),
                        sum_parts([p.g_probe for p in parts]) if update_probe else None,
                        sum_parts([p.d_probe for p in parts]), sum(p.error for p in parts), nll, mu)

    def _line_derivatives(self, state: ReconstructionState, cache: Any, h_obj: Any,
                          h_probe: Any) -> tuple[float, float]:
        """First and second derivative of the data NLL at step 0 along ``(h_obj, h_probe)`` (one pass)."""
        xp, fft = state.xp, state.fft
        obj, probe, mask = state.object, state.probe, state.mask

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
            i0 = far_modulus(xp, a)
            i0 *= i0
            i0 += INTENSITY_FLOOR
            i1 = modes_re_dot(xp, a, b)
            i1 *= 2.0
            i2 = far_modulus(xp, b)
            i2 *= i2
            if h_probe is not None:
                c = fft.forward(fft.product(h_patches[:, None], h_probe[None]))
                i2 += 2.0 * modes_re_dot(xp, a, c)
            # L'(0) = sum (1 - n/I0) I1 and L''(0) = sum 2 (1 - n/I0) I2 + (n/I0^2) I1^2, on valid pixels
            ratio = n / i0
            g1 = 1.0 - ratio
            if mask is not None:
                g1 = xp.where(mask, g1, xp.zeros_like(g1))
            ratio /= i0
            ratio *= i1
            acc.d1 += weighted_total(xp, frame_dot(xp, g1, i1), w)
            acc.d2 += weighted_total(xp, 2.0 * frame_dot(xp, g1, i2) + frame_dot(xp, ratio, i1), w)

        parts = state.run_chunks(work, LineSums)
        return sum(p.d1 for p in parts), sum(p.d2 for p in parts)
