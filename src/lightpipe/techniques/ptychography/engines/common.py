"""Operators the engines share: chunks of frames run on threads, the Fourier-modulus projection, probe modes.

Every engine iteration is one or two passes over the measured frames. A pass
is cut into chunks of a few dozen frames (a few MiB: the exit waves of one
chunk stay in cache from extraction through both FFTs to the scatter-add),
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

#: Bytes of exit waves per chunk on NumPy: fits the cache with its temporaries (16-64 frames of 128x128 measured alike).
NUMPY_CHUNK_BYTES = 4 << 20
#: Bytes of exit waves per chunk on a GPU: large enough for one launch per operation, small enough for memory.
GPU_CHUNK_BYTES = 1 << 30
#: Added to modulus denominators: far below one photon, so it only guards against dividing by zero.
TINY = 1e-12

_POOLS: dict[int, ThreadPoolExecutor] = {}


class DivergenceError(LightpipeError, ArithmeticError):
    """An engine produced NaN or infinite values: the reconstruction cannot go on from this state."""


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
        Slice of this chunk in the list of measured frames (for per-engine buffers
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
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="ptycho-engine")
    return list(pool.map(lane, range(threads)))


def modulus_projection(xp: Any, waves: Any, amplitudes: Any, mask: Any, weights: Any) -> tuple[Any, float]:
    """Replace the Fourier moduli of ``waves`` by the measured ``amplitudes``, in place; return them and the error.

    Parameters
    ----------
    waves
        Far-field exit waves (B, M, ny, nx), in FFT order; M probe modes share one measured
        intensity, so every mode is scaled by the same factor.
    amplitudes
        Square roots of the measured intensities (B, ny, nx), zero on masked pixels.
    mask
        Valid pixels (ny, nx), or ``None`` when all are valid. Masked pixels keep the model's wave.
    weights
        Frame weights (B, 1, 1).

    Returns
    -------
    waves, error
        The projected waves and ``sum(w * mask * (|model| - amplitude)**2)`` before projection.
    """
    if waves.shape[1] == 1:
        modulus = xp.abs(waves[:, 0])
    else:
        modulus = xp.sqrt(xp.sum(xp.real(waves) ** 2 + xp.imag(waves) ** 2, axis=1))
    misfit = modulus - amplitudes
    if mask is not None:
        misfit = xp.where(mask, misfit, xp.zeros_like(misfit))
    error = float(xp.sum(weights * xp.sum(misfit * misfit, axis=(1, 2), keepdims=True)))
    modulus += TINY
    factor = amplitudes / modulus
    if mask is not None:
        factor = xp.where(mask, factor, xp.ones_like(factor))
    waves *= factor[:, None]
    return waves, error


def check_finite(engine: str, iteration: int, **values: float) -> None:
    """Raise :class:`DivergenceError` when any of ``values`` (named figures of one iteration) is NaN or infinite."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise DivergenceError(
            f"{engine} diverged at iteration {iteration}: {what}. The object or probe now holds NaN or "
            "infinite values. Check the engine's step parameters (steps above 1 over-relax, far above it "
            "diverge), the probe guess (its power should match the frames) and the positions; then restart "
            "from the last good object and probe (the callback sees every state)."
        )


class DivergenceWatch:
    """Warns once when an engine's error climbs far above the best it reached in this run.

    A factor of 10 above the running minimum is not seen on converging
    reconstructions (DM's error can rise a little after the probe starts to
    move, never tenfold); it is the first sign of a step that overshoots.
    """

    FACTOR = 10.0

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.best = math.inf
        self.warned = False

    def see(self, iteration: int, error: float) -> None:
        """Record this iteration's error; warn (:class:`RuntimeWarning`) the first time it runs away."""
        if error > self.FACTOR * self.best and not self.warned:
            self.warned = True
            warnings.warn(
                f"{self.engine} is diverging: at iteration {iteration} its Fourier error {error:.4g} is "
                f"{error / self.best:.0f}x the best of this run ({self.best:.4g}). Lower the engine's step, "
                "check the probe guess, the mask and the positions.", RuntimeWarning, stacklevel=4)
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


def orthogonalize_modes(xp: Any, probe: Any) -> Any:
    """Orthogonal probe modes (M, ny, nx) spanning the same incoherent sum, strongest first.

    The incoherent sum of mode intensities (what the detector sees) is unchanged;
    the modes are the eigenvectors of their Gram matrix.
    """
    m = probe.shape[0]
    if m == 1:
        return probe
    flat = xp.reshape(probe, (m, -1))
    gram = xp.matmul(xp.conj(flat), xp.permute_dims(flat, (1, 0)))  # G[a, b] = <P_a, P_b>
    values, vectors = xp.linalg.eigh(gram)
    vectors = xp.astype(vectors, xp.complex64)
    order = xp.flip(xp.argsort(xp.real(values)), axis=0)
    vectors = xp.take(vectors, order, axis=1)
    # new mode k = sum_a V[a, k] P_a: the Gram matrix of the new modes is diagonal
    return xp.reshape(xp.matmul(xp.permute_dims(vectors, (1, 0)), flat), probe.shape)
