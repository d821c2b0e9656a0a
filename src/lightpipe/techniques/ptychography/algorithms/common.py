"""Operators the algorithms share: chunks of frames run on threads, the Fourier-modulus projection, probe modes.

Every algorithm iteration is one or two passes over the measured frames. A pass
is cut into chunks of a few frames (1 MiB of exit waves: one chunk stays in
the core's own cache from extraction through both FFTs to the scatter-add),
and on NumPy the chunks run on one thread per core, each with its own
accumulators, summed in thread order at the end, so results do not depend on
timing. On CuPy and PyTorch one chunk holds every frame and one thread runs
it: the GPU is the parallelism.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from lightpipe.core.errors import LightpipeError

Acc = TypeVar("Acc")

#: Bytes of exit waves per chunk on NumPy: with its temporaries a chunk stays in the core's own cache.
#: 8 frames of 128x128 were 12-20 % faster than 32 (and 4) here, and two processes slowed
#: each other by 3-9 % instead of 12-14 % (shared L3; benchmarks/ptycho_engines.py, ptycho_distributed.py).
NUMPY_CHUNK_BYTES = 1 << 20
#: Bytes of exit waves per chunk on a GPU: large enough for one launch per operation, small enough for memory.
GPU_CHUNK_BYTES = 1 << 30
#: Added to modulus denominators: far below one photon, so it only guards against dividing by zero.
TINY = 1e-12

_POOLS: dict[int, ThreadPoolExecutor] = {}


class DivergenceError(LightpipeError, ArithmeticError):
    """An algorithm produced NaN or infinite values: the reconstruction cannot go on from this state."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive entries of the list of measured frames, handled together.

    Attributes
    ----------
    frames
        Frame indices (host integers).
    span
        The same frames as a slice when they are consecutive (then per-frame arrays
        are read as views, not copies).
    rows
        Slice of this chunk in the list of measured frames (for per-algorithm buffers
        that hold only measured frames).
    """

    frames: np.ndarray
    span: slice | None
    rows: slice

    def take(self, xp: Any, array: Any) -> Any:
        """``array[frames]``: a view when the frames are consecutive, else a copy."""
        if self.span is not None:
            return array[self.span]
        return xp.take(array, xp.asarray(self.frames), axis=0)

    def put(self, xp: Any, array: Any, values: Any) -> None:
        """Write ``values`` back to ``array[frames]`` (nothing to do when :meth:`take` gave a view)."""
        if self.span is None:
            array[xp.asarray(self.frames)] = values


def plan_chunks(frames: np.ndarray, chunk_frames: int) -> list[Chunk]:
    """Cut the measured ``frames`` into chunks of at most ``chunk_frames``."""
    chunks = []
    for start in range(0, len(frames), chunk_frames):
        part = frames[start:start + chunk_frames]
        consecutive = part[-1] - part[0] == len(part) - 1
        span = slice(int(part[0]), int(part[-1]) + 1) if consecutive else None
        chunks.append(Chunk(part, span, slice(start, start + len(part))))
    return chunks


def chunk_frames_for(library: str, modes: int, frame_shape: tuple[int, int]) -> int:
    """Default frames per chunk for an array library, ``modes`` probe modes and a frame shape."""
    per_frame = 8 * modes * frame_shape[0] * frame_shape[1]
    budget = NUMPY_CHUNK_BYTES if library == "numpy" else GPU_CHUNK_BYTES
    return max(1, budget // per_frame)


def run_chunks(chunks: Sequence[Chunk], work: Callable[[Acc, Chunk], None], new_acc: Callable[[], Acc],
               threads: int) -> list[Acc]:
    """Run ``work(acc, chunk)`` over ``chunks`` on ``threads`` threads; return each thread's accumulator.

    Thread ``t`` runs chunks ``t, t + threads, ...`` in order into its own accumulator,
    so the accumulators, and their sum in the returned order, are the same on every run.
    """
    threads = max(1, min(threads, len(chunks)))

    def lane(t: int) -> Acc:
        acc = new_acc()
        for chunk in chunks[t::threads]:
            work(acc, chunk)
        return acc

    if threads == 1:
        return [lane(0)]
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="ptycho-algorithm")
    return list(pool.map(lane, range(threads)))


def far_modulus(xp: Any, far: Any) -> Any:
    """``sqrt(sum_m |far_m|^2)`` (B, ny, nx) of far-field waves (B, M, ny, nx): the model's Fourier modulus."""
    if far.shape[1] == 1:
        return xp.abs(far[:, 0])
    return xp.sqrt(xp.sum(xp.real(far) ** 2 + xp.imag(far) ** 2, axis=1))


def frame_dot(xp: Any, a: Any, b: Any) -> Any:
    """``sum(a * b)`` over the last two axes of (B, ny, nx) float arrays, per frame (B,).

    One BLAS dot per frame: four times faster here than ``sum(a * b)``, with no temporary.
    """
    rows = a.shape[0]
    return xp.vecdot(xp.reshape(a, (rows, -1)), xp.reshape(b, (rows, -1)), axis=-1)


def weighted_total(xp: Any, per_frame: Any, weights: Any) -> float:
    """``sum_j w_j x_j`` of per-frame values (B,) as a Python float; ``weights`` (B, 1, 1) or ``None`` for all 1."""
    if weights is not None:
        per_frame = per_frame * xp.reshape(weights, (-1,))
    return float(xp.sum(per_frame, dtype=xp.float64))


def modes_re_dot(xp: Any, u: Any, v: Any) -> Any:
    """``sum_m Re(conj(u_m) v_m)`` (B, ny, nx) of waves (B, M, ny, nx)."""
    product = xp.real(xp.conj(u) * v)
    return product[:, 0] if product.shape[1] == 1 else xp.sum(product, axis=1)


def modulus_error(xp: Any, modulus: Any, amplitudes: Any, mask: Any, weights: Any) -> float:
    """``sum(w * mask * (modulus - amplitude)**2)``: the numerator of the Fourier error.

    Parameters
    ----------
    modulus
        Model Fourier modulus (B, ny, nx), from :func:`far_modulus`.
    amplitudes
        Square roots of the measured intensities (B, ny, nx), zero on masked pixels.
    mask
        Valid pixels (ny, nx), or ``None`` when all are valid.
    weights
        Frame weights (B, 1, 1), or ``None`` for all 1.
    """
    misfit = modulus - amplitudes
    if mask is not None:
        misfit = xp.where(mask, misfit, xp.zeros_like(misfit))
    return weighted_total(xp, frame_dot(xp, misfit, misfit), weights)


def project_modulus(xp: Any, far: Any, modulus: Any, amplitudes: Any, mask: Any, bound: Any = None) -> Any:
    """Give far-field waves ``far`` (B, M, ny, nx) the measured modulus, in place, and return them.

    Every mode is scaled by the same factor (the modes share one measured
    intensity). Masked pixels keep the model's wave. ``modulus`` is overwritten.

    With ``bound`` ((B, 1, 1), the squared modulus misfit each frame may keep) the
    projection is relaxed: a frame whose ``sum((modulus - amplitude)**2)`` is within
    its bound is left as it is, and a frame beyond it is moved only onto the bound
    (the misfit scaled down), not onto the measured moduli: the projection onto a
    ball of noise radius around the data instead of onto the noisy data.
    """
    target = amplitudes
    if bound is not None:
        misfit = modulus - amplitudes
        if mask is not None:
            misfit = xp.where(mask, misfit, xp.zeros_like(misfit))
        power = xp.reshape(frame_dot(xp, misfit, misfit), (-1, 1, 1))
        shrink = xp.sqrt(bound / xp.clip(power, min=TINY))
        misfit *= xp.clip(shrink, max=1.0)
        target = amplitudes + misfit
    modulus += TINY
    factor = target / modulus
    if mask is not None:
        factor = xp.where(mask, factor, xp.ones_like(factor))
    far *= factor[:, None]
    return far


def noise_bound(xp: Any, intensities: Any) -> Any:
    """Expected ``sum((sqrt(I) - sqrt(n))**2)`` per frame (B, 1, 1) under Poisson noise, from the counts ``n``.

    ``sqrt(n)`` of a Poisson count has variance 1/4 once the mean is a few photons,
    and about the mean below one: ``1/4 * sum(min(n, 1))`` per frame (masked pixels hold 0).
    """
    return 0.25 * xp.sum(xp.clip(intensities, max=1.0), axis=(1, 2), keepdims=True)


def check_finite(algorithm: str, iteration: int, **values: float) -> None:
    """Raise :class:`DivergenceError` when any of ``values`` (named figures of one iteration) is NaN or infinite."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise DivergenceError(
            f"{algorithm} diverged at iteration {iteration}: {what}. The object or probe now holds NaN or "
            "infinite values. Check the algorithm's step parameters (steps above 1 over-relax, far above it "
            "diverge), the probe guess (its power should match the frames) and the positions; then restart "
            "from the last good object and probe (a callback passed to iterate() can keep copies)."
        )


class DivergenceWatch:
    """Warns once when an algorithm's error climbs far above the best it reached in this run.

    A factor of 10 above the running minimum is not seen on converging
    reconstructions (DM's error can rise a little after the probe starts to
    move, never tenfold); it is the first sign of a step that overshoots.
    """

    FACTOR = 10.0

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.best = math.inf
        self.warned = False

    def see(self, iteration: int, error: float) -> None:
        """Record this iteration's error; warn (:class:`RuntimeWarning`) the first time it runs away."""
        if error > self.FACTOR * self.best and not self.warned:
            self.warned = True
            warnings.warn(
                f"{self.algorithm} is diverging: at iteration {iteration} its Fourier error {error:.4g} is "
                f"{error / self.best:.0f}x the best of this run ({self.best:.4g}). Lower the algorithm's step, "
                "check the probe guess, the mask and the positions.", RuntimeWarning, stacklevel=3)
        self.best = min(self.best, error)


def mode_shapes(xp: Any, probe: Any, modes: int) -> Any:
    """Add incoherent probe modes to ``probe`` (K, ny, nx) up to ``modes``; the total power is kept.

    Each added mode is the first mode times a low-order polynomial of the
    window coordinates (y, x, xy, y^2 - x^2, ...), so it lies where the beam is,
    with 5 % of the first mode's power, then all modes are orthogonalised.
    Deterministic: no random numbers.
    """
    k, ny, nx = probe.shape
    if modes <= k:
        return probe
    y = xp.reshape(xp.linspace(-1.0, 1.0, ny, dtype=xp.float32), (ny, 1))
    x = xp.reshape(xp.linspace(-1.0, 1.0, nx, dtype=xp.float32), (1, nx))
    shapes = [y + 0 * x, 0 * y + x, y * x, y * y - x * x, y * y + x * x]
    power = float(xp.sum(xp.abs(probe) ** 2))
    added = []
    for i in range(modes - k):
        shape = xp.astype(shapes[i % len(shapes)] * (1.0 + i // len(shapes)), xp.complex64)
        mode = probe[0] * shape
        mode_power = float(xp.sum(xp.abs(mode) ** 2))
        added.append(mode * math.sqrt(0.05 * float(xp.sum(xp.abs(probe[0]) ** 2)) / max(mode_power, TINY)))
    out = orthogonalize_modes(xp, xp.concat([probe, xp.stack(added)], axis=0))
    return out * math.sqrt(power / float(xp.sum(xp.abs(out) ** 2)))


def mode_basis(xp: Any, probe: Any) -> Any:
    """The unitary (M, M) mixing that makes probe modes (M, ny, nx) orthogonal, strongest first.

    New mode ``k`` is ``sum_a V[a, k] P_a``: the eigenvectors ``V`` of the modes' Gram
    matrix ``G[a, b] = <P_a, P_b>``, so the new modes' Gram matrix is diagonal.
    """
    m = probe.shape[0]
    flat = xp.reshape(probe, (m, -1))
    gram = xp.matmul(xp.conj(flat), xp.permute_dims(flat, (1, 0)))
    values, vectors = xp.linalg.eigh(gram)
    order = xp.flip(xp.argsort(xp.real(values)), axis=0)
    return xp.take(xp.astype(vectors, xp.complex64), order, axis=1)


def mix_modes(xp: Any, basis: Any, waves: Any) -> Any:
    """Apply a mode mixing from :func:`mode_basis` to ``waves`` (..., M, ny, nx): ``new_k = sum_a V[a, k] w_a``."""
    shape = waves.shape
    m = shape[-3]
    flat = xp.reshape(waves, (*shape[:-3], m, shape[-2] * shape[-1]))
    return xp.reshape(xp.matmul(xp.permute_dims(basis, (1, 0)), flat), shape)


def orthogonalize_modes(xp: Any, probe: Any) -> Any:
    """Orthogonal probe modes (M, ny, nx) spanning the same incoherent sum, strongest first.

    The incoherent sum of mode intensities (what the detector sees) is unchanged.
    An algorithm that keeps exit waves per mode must mix them alike (:func:`mix_modes`).
    """
    if probe.shape[0] == 1:
        return probe
    return mix_modes(xp, mode_basis(xp, probe), probe)


def positive(name: str, value: float) -> float:
    """``value`` as a float if it is finite and > 0, else a clear :class:`ValueError`."""
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def non_negative(name: str, value: float) -> float:
    """``value`` as a float if it is finite and >= 0, else a clear :class:`ValueError`."""
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def sum_parts(parts: Sequence[Any]) -> Any:
    """Sum of per-thread partial results, in thread order."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def beam_intensity(xp: Any, probe: Any) -> Any:
    """Incoherent sum of the probe modes' intensities (ny, nx)."""
    return xp.sum(xp.real(probe) ** 2 + xp.imag(probe) ** 2, axis=0)


def object_from_parts(xp: Any, obj: Any, numerator: Any, denominator: Any, inertia: float) -> Any:
    """Least-squares object ``(num + r O) / (den + r)``, ``r = inertia * max(den)``.

    ``r`` keeps pixels the beam barely reaches at their previous value instead of
    dividing noise by almost nothing.
    """
    r = inertia * float(xp.max(denominator))
    return (numerator + r * obj) / (denominator + r)
