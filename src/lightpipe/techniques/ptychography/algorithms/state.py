"""The state of a ptychographic reconstruction: data, geometry, object, probe and exit waves.

One :class:`ReconstructionState` is what every algorithm iterates on, and what a
streaming or distributed reconstruction keeps between calls:

- **Streaming** (frames arriving while the scan runs): create the state with
  the full scan, i.e. every planned position and a frame array of the final
  size, with ``weights`` 0 for frames not measured yet; as frames arrive, hand
  them over with :meth:`ReconstructionState.set_frames`, which also sets their weight
  to 1, and call :func:`~lightpipe.techniques.ptychography.algorithms.iterate`
  again. Frames of weight 0 cost nothing and change nothing. Positions read
  back from encoders can come with the frames (``positions_px`` of
  :meth:`~ReconstructionState.set_frames`). This was chosen over appending frames:
  the arrays never grow or move, the object covers the whole scan from the
  start, and a GPU copy is made once.
- **Distributed** (positions split among workers, objects merged every few
  iterations): give each part the full-size object and only its frames and
  positions (positions are in pixels of the shared object grid), run it, merge
  the parts' objects weighted by :meth:`ReconstructionState.illumination`, and hand
  the merged object back with :meth:`ReconstructionState.set_object`.

Positions, their origin, and sub-pixel shifts
    Positions are the (y, x) top-left corners of the probe window, in object
    pixels, in any origin: centred translations (negative ones too) or
    absolute motor positions work as they come. The object array starts at
    :attr:`ReconstructionState.origin_px`: 0 when every corner lies between 0
    and one frame from it (the positions then index the object directly, as
    before), else the smallest corner; a window's place in the array is
    ``position - origin_px``. With an object guess the origin is 0 unless
    given. Positions are rounded to whole pixels; the remainder (at most half
    a pixel) is ignored. A Fourier sub-pixel shift of the probe per frame would
    cost one more FFT pair per frame and iteration.

Probe power
    Without an object guess the object starts as 1 everywhere and the probe
    guess is scaled so that its far field holds the mean measured frame's
    photons; the factor is :attr:`ReconstructionState.probe_scale`, and it is
    logged.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightpipe.core.allocator import tune_allocator
from lightpipe.core.xp import array_namespace, to_numpy
from lightpipe.techniques.ptychography.algorithms.backend import FFT, Windows, default_threads, namespace_name
from lightpipe.techniques.ptychography.algorithms.common import (
    Chunk,
    chunk_frames_for,
    mode_shapes,
    plan_chunks,
    run_chunks,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IterationRecord:
    """Figures of one algorithm iteration.

    Attributes
    ----------
    iteration
        Index of the iteration since the state was made (0-based, across algorithms).
    algorithm
        Name of the algorithm that ran it (``"DM"``, ``"AP"``, ``"ML"``).
    fourier_error
        ``sum(w * mask * (|F(P O_j)| - sqrt(n_j))**2) / sum(w * mask * n_j)`` over the
        measured frames, for the object and probe entering the iteration (for every
        algorithm: the same figure, so a chain's history is one curve). With Poisson
        noise it levels off near ``(pixels with counts) / (4 * photons per frame)``.
    neg_log_likelihood
        ML only: the Poisson negative log-likelihood per valid pixel, less that of a
        perfect model, ``mean(w * mask * (I - n + n log(n / I)))``; about 0.5 when the
        model explains the data to the noise. ``None`` for the other algorithms.
    seconds
        Wall-clock time of the iteration.
    stalled
        Whether the algorithm had stopped changing the object and probe by this iteration
        (:meth:`~.base.Algorithm.stall`: ML after several iterations in a row whose line search
        found no step that lowers the likelihood); ``state.stall_reason`` says why.
    """

    iteration: int
    algorithm: str
    fourier_error: float
    neg_log_likelihood: float | None
    seconds: float
    stalled: bool = False


def _photon_counts(xp: Any, frames: Any) -> Any:
    """Intensities as the algorithms use them: negative values (dark subtraction) and non-finite ones
    (allowed only in frames not measured yet) become 0."""
    return xp.where(xp.isfinite(frames) & (frames > 0), frames, xp.zeros_like(frames))


def object_origin(corners: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Where an object made for window corners (N, 2) (whole pixels, any origin) starts, per axis.

    0 when the smallest corner lies in ``[0, frame)`` (the positions then index the
    object as they are), else the smallest corner: centred or far-off positions get an
    object just large enough for their windows.
    """
    lowest = np.asarray(corners, dtype=np.int64).min(axis=0)
    near_zero = (lowest >= 0) & (lowest < np.asarray(frame_shape))
    return np.where(near_zero, 0, lowest).astype(np.int64)


def _shift_to_fft_order(xp: Any, a: Any) -> Any:
    """``ifftshift`` over the last two axes: centred frames to the order the FFT produces."""
    ny, nx = a.shape[-2:]
    return xp.roll(a, shift=(-(ny // 2), -(nx // 2)), axis=(-2, -1))


class ReconstructionState:
    """Data, geometry and current estimates of one ptychographic reconstruction.

    Parameters
    ----------
    intensities
        Diffraction intensities (N, ny, nx), zero frequency at the centre
        (``fftshift(|fft2(probe * patch, norm="ortho")|**2)``), in photons.
        Negative values (from dark subtraction) are taken as 0.
    positions_px
        (N, 2) top-left corners (y, x) of the probe window, in object pixels, in any
        origin (see the module notes), rounded to whole pixels.
    probe
        Probe guess (ny, nx) or modes (K, ny, nx), complex. When ``obj`` is not given
        (the object starts as 1 everywhere), the probe is scaled so that its
        far-field power matches the mean measured frame (:attr:`probe_scale`).
    obj
        Object guess (Hy, Hx), complex; default ones, just large enough for every window.
    origin_px
        Position (y, x), in the frame of ``positions_px``, of the object array's pixel
        (0, 0) as a window corner; default see the module notes.
    mask
        Valid detector pixels (ny, nx), zero frequency at the centre; ``False`` pixels
        (beamstop, bad pixels) are never compared with the model.
    weights
        Per-frame weights (N,) >= 0; 0 means not measured yet (ignored entirely),
        default 1.
    probe_modes
        Number of incoherent probe modes to reconstruct; modes missing from
        ``probe`` are added (see :func:`~.common.mode_shapes`).
    xp
        Array namespace to compute with (NumPy, CuPy or PyTorch through
        ``array_api_compat``); default that of ``intensities``. Arrays are moved to it.
    fft
        FFT library for NumPy arrays: ``"auto"`` (pyFFTW if installed, else SciPy,
        else NumPy), ``"pyfftw"``, ``"scipy"``, ``"numpy"``.
    threads
        Worker threads on NumPy (default: one per core). GPUs use one.
    chunk_frames
        Frames per chunk (default: 1 MiB of exit waves on NumPy, about 1 GiB on a GPU).

    Attributes
    ----------
    origin_px
        (2,) integer position of the object array's pixel (0, 0) in the frame of the positions.
    probe_scale
        Factor the probe guess was multiplied by to match the frames' power (1: not scaled).
    stall_reason
        Why the last iteration was stalled (:meth:`~.base.Algorithm.stall`), ``None`` if it was not.

    Raises
    ------
    ValueError
        When shapes disagree, a window falls outside the object, weights are negative,
        or measured, valid pixels or the guesses hold NaN or infinite values.
    """

    def __init__(self, intensities: Any, positions_px: Any, probe: Any, obj: Any = None, *, mask: Any = None,
                 weights: Any = None, probe_modes: int = 1, xp: Any = None, fft: str = "auto",
                 threads: int | None = None, chunk_frames: int | None = None, origin_px: Any = None) -> None:
        # Every pass allocates and frees chunk-sized temporaries (512 KiB for 8 frames of 128 x 128):
        # with glibc's defaults each is a fresh mmap, page-faulted in again, which made ML's
        # likelihood sums 4x slower here than with the pipeline engines' allocator settings.
        tune_allocator()
        xp = xp if xp is not None else array_namespace(intensities)
        self.xp = xp
        self.library = namespace_name(xp)
        shape = tuple(getattr(intensities, "shape", ()))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"intensities must be a stack of frames (N, ny, nx), got shape {shape}")
        n, ny, nx = (int(s) for s in shape)
        self.frame_shape = (ny, nx)
        self.n_frames = n

        self.positions_px = self._check_positions(positions_px, n)
        self.weights = self._check_weights(weights, n)
        if mask is None:
            self._mask = None
        else:
            host_mask = np.asarray(to_numpy(mask))
            if host_mask.shape != (ny, nx):
                raise ValueError(f"mask has shape {host_mask.shape} but the frames are {ny}x{nx}: "
                                 "give one boolean (ny, nx) mask, True for valid pixels")
            if not host_mask.any():
                raise ValueError("the mask excludes every pixel: True marks valid pixels")
            self._mask = None if host_mask.all() else _shift_to_fft_order(xp, xp.asarray(host_mask.astype(bool)))

        frames = xp.astype(xp.asarray(intensities), xp.float32)
        frames = _shift_to_fft_order(xp, frames)
        if self._mask is not None:
            frames = xp.where(self._mask, frames, xp.zeros_like(frames))
        self._check_frames_finite(frames, np.flatnonzero(self.weights > 0))
        self._intensities = _photon_counts(xp, frames)
        self._amplitudes: Any = None
        self._photons = np.asarray(to_numpy(xp.sum(self._intensities, axis=(1, 2), dtype=xp.float64)))

        self.probe = self._check_probe(probe, probe_modes)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.threads = (threads or default_threads()) if self.library == "numpy" else 1
        self.fft = FFT(xp, fft)
        self.chunk_frames = int(chunk_frames or chunk_frames_for(self.library, self.modes, self.frame_shape))
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")

        corners = np.rint(self.positions_px).astype(np.int64)
        self.origin_px = self._origin(corners, origin_px, obj is None)
        iy, ix = (corners - self.origin_px).T
        self.probe_scale = 1.0
        if obj is None:
            self.object = xp.ones((int(iy.max()) + ny, int(ix.max()) + nx), dtype=xp.complex64)
            self._scale_probe_to_frames()
        else:
            self.object = self._check_object(obj, iy, ix)
        self.object_shape = tuple(int(s) for s in self.object.shape)
        self.windows = Windows(xp, iy, ix, self.frame_shape, self.object_shape)

        #: Exit waves (N, M, ny, nx) of DM (and AP's last projected waves); ``None`` until one runs.
        self.exit_waves: Any = None
        self.exit_waves_valid = np.zeros(n, dtype=bool)
        #: Iterations run so far, across algorithms and calls.
        self.iteration = 0
        self.history: list[IterationRecord] = []
        #: Scratch memory of the algorithm that ran last (ML's conjugate-gradient state); cleared on a switch.
        self.algorithm_memory: dict[str, Any] = {}
        self.last_algorithm: str | None = None
        #: Bumped whenever the measured frames or their weights change, or the object or probe is replaced.
        self.version = 0
        #: Bumped whenever the measured frames or their weights change (what depends on the data alone).
        self.frames_version = 0
        self.stall_reason: str | None = None

    # ----------------------------------------------------------------- checks
    @staticmethod
    def _check_positions(positions_px: Any, n: int) -> np.ndarray:
        pos = np.asarray(to_numpy(positions_px), dtype=np.float64)
        if pos.shape != (n, 2):
            raise ValueError(f"positions_px has shape {pos.shape}; expected ({n}, 2): one (y, x) per frame, "
                             "in object pixels")
        if not np.isfinite(pos).all():
            bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))[:5].tolist()
            raise ValueError(f"positions_px of frames {bad} are NaN or infinite")
        return pos

    def _origin(self, corners: np.ndarray, origin_px: Any, own_object: bool) -> np.ndarray:
        """The object's origin (see the module notes): ``origin_px`` if given, else 0 or the smallest corner."""
        if origin_px is not None:
            origin = np.asarray(to_numpy(origin_px), dtype=np.float64).reshape(-1)
            if origin.shape != (2,) or not np.isfinite(origin).all():
                raise ValueError(f"origin_px must be two finite numbers (y, x), got {origin_px!r}")
            return np.rint(origin).astype(np.int64)
        if not own_object:
            return np.zeros(2, dtype=np.int64)
        return object_origin(corners, self.frame_shape)

    @staticmethod
    def _check_weights(weights: Any, n: int) -> np.ndarray:
        if weights is None:
            return np.ones(n, dtype=np.float32)
        w = np.asarray(to_numpy(weights), dtype=np.float32)
        if w.shape != (n,):
            raise ValueError(f"weights has shape {w.shape}; expected ({n},): one weight per frame, 0 = not measured")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and >= 0 (0 = frame not measured yet)")
        return w

    def _check_frames_finite(self, frames: Any, measured: np.ndarray) -> None:
        if len(measured) == 0:
            return
        xp = self.xp
        per_frame = xp.all(xp.isfinite(frames), axis=(1, 2))
        bad = [int(j) for j in np.flatnonzero(~np.asarray(to_numpy(per_frame), dtype=bool)) if self.weights[j] > 0]
        if bad:
            raise ValueError(f"intensities of measured frames {bad[:10]}{' ...' if len(bad) > 10 else ''} hold NaN "
                             "or infinite values on valid pixels: exclude those pixels with the mask, or give those "
                             "frames weight 0")

    def _check_probe(self, probe: Any, modes: int) -> Any:
        xp = self.xp
        if isinstance(modes, bool) or not isinstance(modes, int) or modes < 1:
            raise ValueError(f"probe_modes must be a positive integer, got {modes!r}")
        p = xp.astype(xp.asarray(probe), xp.complex64)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or tuple(p.shape[1:]) != self.frame_shape:
            raise ValueError(f"probe has shape {tuple(p.shape)} but the frames are {self.frame_shape[0]}x"
                             f"{self.frame_shape[1]}: give a probe of the frame shape (ny, nx), or modes "
                             "(M, ny, nx); resample the probe guess to the detector's pixel size if needed")
        if p.shape[0] > modes:
            raise ValueError(f"probe has {p.shape[0]} modes but probe_modes={modes}: pass probe_modes="
                             f"{p.shape[0]}, or only the first {modes} mode(s)")
        if not bool(xp.all(xp.isfinite(xp.abs(p)))):
            raise ValueError("the probe guess holds NaN or infinite values")
        if float(xp.max(xp.abs(p))) == 0.0:
            raise ValueError("the probe guess is zero everywhere: give an illumination guess, e.g. from the "
                             "STXM/DPC stage")
        return mode_shapes(xp, p, modes)

    def _check_object(self, obj: Any, iy: np.ndarray, ix: np.ndarray) -> Any:
        xp = self.xp
        o = xp.astype(xp.asarray(obj), xp.complex64)
        ny, nx = self.frame_shape
        if o.ndim != 2:
            raise ValueError(f"object must be 2-D (Hy, Hx), got shape {tuple(o.shape)}")
        if min(int(iy.min()), int(ix.min())) < 0:
            raise ValueError(f"positions_px reach {(np.min(iy), np.min(ix))} (y, x) pixels before the object "
                             f"guess's first pixel (origin_px {self.origin_px.tolist()}): give origin_px, the "
                             "position of the object's pixel (0, 0), or leave obj=None")
        need = (int(iy.max()) + ny, int(ix.max()) + nx)
        if o.shape[0] < need[0] or o.shape[1] < need[1]:
            raise ValueError(f"object of shape {tuple(o.shape)} is too small for the scan: the windows need at "
                             f"least {need}; pad the object guess, or leave obj=None")
        if not bool(xp.all(xp.isfinite(xp.abs(o)))):
            raise ValueError("the object guess holds NaN or infinite values")
        return o

    def _scale_probe_to_frames(self) -> None:
        """Scale the probe so its far-field power on valid pixels matches the mean measured frame."""
        xp = self.xp
        if not np.any(self.weights > 0):
            return
        far = self.fft.forward(xp.asarray(self.probe, copy=True))
        power = xp.sum(xp.real(far) ** 2 + xp.imag(far) ** 2, axis=0)
        if self._mask is not None:
            power = xp.where(self._mask, power, xp.zeros_like(power))
        mean_frame = self.measured_photons() / float(np.sum(self.weights))
        model = float(xp.sum(power))
        if mean_frame > 0 and model > 0:
            self.probe_scale = math.sqrt(mean_frame / model)
            self.probe = self.probe * self.probe_scale
            log.info("the probe guess was scaled by %.4g so that its far field holds the mean frame's %.4g photons "
                     "(the object starts as 1)", self.probe_scale, mean_frame)

    # --------------------------------------------------------------- queries
    @property
    def modes(self) -> int:
        """Number of probe modes."""
        return int(self.probe.shape[0])

    @property
    def amplitudes(self) -> Any:
        """Square roots of the measured intensities (N, ny, nx), FFT order, zero on masked pixels."""
        if self._amplitudes is None:
            self._amplitudes = self.xp.sqrt(self._intensities)
        return self._amplitudes

    @property
    def intensities(self) -> Any:
        """Measured intensities (N, ny, nx) in FFT order (zero frequency at [0, 0]), zero on masked pixels."""
        return self._intensities

    @property
    def mask(self) -> Any:
        """Valid pixels (ny, nx) in FFT order, or ``None`` when every pixel is valid."""
        return self._mask

    def measured_photons(self) -> float:
        """``sum_j w_j sum_q mask_q n_jq``: the weighted photon count on valid pixels (normalises the Fourier error)."""
        return float(np.dot(self.weights.astype(np.float64), self._photons))

    def measured_frames(self) -> np.ndarray:
        """Indices of the frames with weight > 0."""
        return np.flatnonzero(self.weights > 0)

    def chunks(self) -> list[Chunk]:
        """The measured frames cut into chunks."""
        return plan_chunks(self.measured_frames(), self.chunk_frames)

    def chunk_weights(self, chunk: Chunk) -> np.ndarray | None:
        """Host weights (B,) of the frames of ``chunk``, or ``None`` when they are all 1 (nothing to multiply)."""
        w = self.weights[chunk.frames]
        return None if np.all(w == 1) else w

    def frame_weights(self, chunk: Chunk) -> Any:
        """Weights of the frames of ``chunk`` as an (B, 1, 1) array, or ``None`` when they are all 1."""
        w = self.chunk_weights(chunk)
        return None if w is None else self.xp.reshape(self.xp.asarray(w), (-1, 1, 1))

    def run_chunks(self, work: Any, new_acc: Any) -> list[Any]:
        """Run ``work(acc, chunk)`` over every chunk of measured frames (see :func:`.common.run_chunks`)."""
        return run_chunks(self.chunks(), work, new_acc, self.threads)

    def illumination(self) -> Any:
        """Total probe intensity each object pixel received: ``sum_j w_j sum_m |P_m|^2`` at the windows (Hy, Hx).

        The weight of this state's object in a merge of parts of a distributed reconstruction.
        """
        xp = self.xp
        beam = xp.sum(xp.real(self.probe) ** 2 + xp.imag(self.probe) ** 2, axis=0)

        def work(acc: Any, chunk: Chunk) -> None:
            self.windows.scatter_add(acc, chunk.frames, beam, self.chunk_weights(chunk))

        parts = self.run_chunks(work, lambda: xp.zeros(self.object_shape, dtype=xp.float32))
        return sum(parts[1:], parts[0])

    # --------------------------------------------------------------- updates
    def set_frames(self, indices: Any, intensities: Any, *, positions_px: Any = None, weights: Any = 1.0) -> None:
        """Hand over newly measured frames (streaming): their intensities, optionally positions, and weights.

        Parameters
        ----------
        indices
            Frame indices (K,) in the scan.
        intensities
            Their intensities (K, ny, nx), zero frequency at the centre.
        positions_px
            Their measured positions (K, 2), when they differ from the planned ones.
        weights
            Their weights (scalar or (K,)), default 1.

        Raises
        ------
        ValueError
            On indices outside the scan, a wrong shape, bad weights, NaN or infinite
            values on valid pixels of weighted frames, or windows outside the object.
            Nothing is changed then.
        """
        xp = self.xp
        idx = np.asarray(to_numpy(indices), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_frames):
            raise ValueError(f"frame indices must lie in [0, {self.n_frames}); got {idx.min()}..{idx.max()}")
        frames = xp.astype(xp.asarray(intensities), xp.float32)
        if tuple(frames.shape) != (len(idx), *self.frame_shape):
            raise ValueError(f"intensities have shape {tuple(frames.shape)}; expected {(len(idx), *self.frame_shape)}")
        w = np.broadcast_to(np.asarray(weights, dtype=np.float32), idx.shape).copy()
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and >= 0 (0 = frame not measured yet)")
        frames = _shift_to_fft_order(xp, frames)
        if self._mask is not None:
            frames = xp.where(self._mask, frames, xp.zeros_like(frames))
        finite = np.asarray(to_numpy(xp.all(xp.isfinite(frames), axis=(1, 2))), dtype=bool)
        if (~finite & (w > 0)).any():
            raise ValueError(f"{int((~finite & (w > 0)).sum())} of the new frames hold NaN or infinite values on "
                             "valid pixels: exclude those pixels with the mask, or give those frames weight 0")
        if positions_px is not None:
            pos = self._check_positions(positions_px, len(idx))
            self._place(idx, pos)
        rows = xp.asarray(idx)
        self._intensities[rows] = _photon_counts(xp, frames)
        if self._amplitudes is not None:
            self._amplitudes[rows] = xp.sqrt(self._intensities[rows])
        self._photons[idx] = np.asarray(to_numpy(xp.sum(self._intensities[rows], axis=(1, 2), dtype=xp.float64)))
        self.weights = self.weights.copy()
        self.weights[idx] = w
        self.exit_waves_valid[idx] = False
        self.version += 1
        self.frames_version += 1

    def _place(self, idx: np.ndarray, pos: np.ndarray) -> None:
        """Put the windows of frames ``idx`` at positions ``pos`` (the positions' frame); refuse any outside the object."""
        iy, ix = self.windows.iy.copy(), self.windows.ix.copy()
        iy[idx], ix[idx] = (np.rint(pos) - self.origin_px).T
        ny, nx = self.frame_shape
        if (min(iy.min(), ix.min()) < 0 or (iy + ny > self.object_shape[0]).any()
                or (ix + nx > self.object_shape[1]).any()):
            raise ValueError(f"new positions put windows outside the {self.object_shape} object: create the "
                             "state with an object that covers the whole scan")
        self.positions_px[idx] = pos
        self.windows = Windows(self.xp, iy, ix, self.frame_shape, self.object_shape)

    def move_frames(self, indices: Any, positions_px: Any) -> None:
        """Move the windows of frames ``indices`` to ``positions_px`` (K, 2) (position refinement).

        Raises
        ------
        ValueError
            When a window would leave the object; nothing is moved then.
        """
        idx = np.asarray(to_numpy(indices), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_frames):
            raise ValueError(f"frame indices must lie in [0, {self.n_frames}); got {idx.min()}..{idx.max()}")
        self._place(idx, self._check_positions(positions_px, len(idx)))
        self.exit_waves_valid[idx] = False
        self.version += 1

    def set_weights(self, weights: Any) -> None:
        """Replace every frame's weight (N,); 0 = not measured."""
        self.weights = self._check_weights(weights, self.n_frames)
        self.version += 1
        self.frames_version += 1

    def set_object(self, obj: Any) -> None:
        """Continue from another object of the same shape (e.g. a merged distributed reconstruction)."""
        o = self._check_object(obj, self.windows.iy, self.windows.ix)
        if tuple(o.shape) != self.object_shape:
            raise ValueError(f"new object has shape {tuple(o.shape)}; this state's object is {self.object_shape}")
        self.object = o
        self.version += 1

    def set_probe(self, probe: Any) -> None:
        """Continue from another probe of the same frame shape (modes are added up to this state's count)."""
        self.probe = self._check_probe(probe, self.modes)
        self.version += 1
