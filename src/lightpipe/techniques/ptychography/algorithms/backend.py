"""The few array operations that the array API lacks, dispatched to NumPy, CuPy or PyTorch.

The algorithms are written against the array-API namespace ``xp`` of their
arrays. Three operations need a library of their own:

- the batched 2-D FFT over the last two axes, done in place where the library
  allows it (on the CPU the FFT is most of an iteration, and pocketfft, which
  NumPy and SciPy use, is about three times slower here than FFTW on 128x128
  frames; see ``benchmarks/ptycho_engines.py``);
- extracting the object patches seen by a chunk of frames (a gather);
- adding a chunk of patches back into an object-sized array (a scatter-add).

Everything else in the algorithms is plain ``xp`` code.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

#: FFT libraries for NumPy arrays, fastest first; ``"auto"`` takes the first one installed.
NUMPY_FFTS = ("pyfftw", "scipy", "numpy")


def namespace_name(xp: Any) -> str:
    """``"numpy"``, ``"cupy"`` or ``"torch"``: which library backs the namespace ``xp``."""
    name = getattr(xp, "__name__", "")
    for lib in ("cupy", "torch", "numpy"):
        if lib in name.split("."):
            return lib
    raise TypeError(f"unsupported array namespace {name!r}: the ptychography algorithms run on NumPy, CuPy or PyTorch")


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def choose_numpy_fft(fft: str) -> str:
    """The FFT library used for NumPy arrays: ``fft`` itself, or for ``"auto"`` the fastest one installed.

    Raises
    ------
    ValueError
        When ``fft`` names an unknown or uninstalled library.
    """
    if fft == "auto":
        return next(lib for lib in NUMPY_FFTS if lib == "numpy" or _installed(lib))
    if fft not in NUMPY_FFTS:
        raise ValueError(f"unknown FFT library {fft!r}; choose one of auto, {', '.join(NUMPY_FFTS)}")
    if fft != "numpy" and not _installed(fft):
        raise ValueError(f"FFT library {fft!r} is not installed: pip install {'pyFFTW' if fft == 'pyfftw' else fft}, "
                         "or use fft='auto'")
    return fft


class FFT:
    """Unitary (``norm="ortho"``) 2-D FFTs over the last two axes of complex64 arrays.

    Parameters
    ----------
    xp
        The array namespace of the arrays to transform.
    fft
        For NumPy arrays: ``"auto"`` (default), ``"pyfftw"``, ``"scipy"`` or
        ``"numpy"``. Ignored for CuPy and PyTorch, which use their own FFTs.

    Notes
    -----
    :meth:`forward` and :meth:`backward` may overwrite their argument and
    return it; always use the returned array. Each transform runs on the
    calling thread: the algorithms run one chunk of frames per core, and a
    multi-threaded FFT on a shared machine was up to 4x slower than one
    thread (its threads wait for each other whenever another process holds a
    core). pyFFTW plans are made with ``FFTW_ESTIMATE`` (well under a
    millisecond; ``FFTW_MEASURE`` was no faster here) and cached per thread,
    because a plan may run in several threads at once only on arrays of its own.
    """

    def __init__(self, xp: Any, fft: str = "auto") -> None:
        self.xp = xp
        self.library = namespace_name(xp)
        self.name = choose_numpy_fft(fft) if self.library == "numpy" else self.library
        self._plans = threading.local()

    def forward(self, a: Any, out: Any = None) -> Any:
        """Unitary forward FFT of ``a`` over its last two axes.

        Without ``out`` the transform may overwrite ``a``; with ``out`` (an array of the
        same shape and dtype) ``a`` is kept and the result is written to ``out``.
        """
        return self._transform(a, True, out)

    def backward(self, a: Any, out: Any = None) -> Any:
        """Unitary inverse FFT of ``a`` over its last two axes (``out`` as for :meth:`forward`)."""
        return self._transform(a, False, out)

    def _transform(self, a: Any, forward: bool, out: Any) -> Any:
        if self.name == "pyfftw":
            return self._fftw(a, forward, out)
        overwrite = out is None
        if self.name == "scipy":
            import scipy.fft

            f = scipy.fft.fft2 if forward else scipy.fft.ifft2
            result = f(a, norm="ortho", overwrite_x=overwrite, workers=1)
        elif self.name == "cupy":
            import cupy

            f = cupy.fft.fft2 if forward else cupy.fft.ifft2
            result = f(a, norm="ortho", overwrite_x=overwrite)
        elif self.name == "torch":
            import torch

            f = torch.fft.fft2 if forward else torch.fft.ifft2
            result = f(a, norm="ortho", out=a) if overwrite else f(a, norm="ortho")
        else:
            result = (np.fft.fft2 if forward else np.fft.ifft2)(a, norm="ortho")
        if out is None:
            return result
        out[...] = result
        return out

    def product(self, a: Any, b: Any) -> Any:
        """``a * b`` (broadcast, complex64) in an array :meth:`forward` transforms without a copy.

        For pyFFTW the product is written straight into a SIMD-aligned array, which
        saves the copy an unaligned NumPy result would need.
        """
        if self.name == "pyfftw":
            out = self.empty(np.broadcast_shapes(a.shape, b.shape))
            np.multiply(a, b, out=out)
            return out
        return a * b

    def empty(self, shape: tuple[int, ...]) -> Any:
        """An uninitialised complex64 array for FFT input or output (SIMD-aligned for pyFFTW)."""
        if self.name == "pyfftw":
            import pyfftw

            return pyfftw.empty_aligned(shape, dtype="complex64")
        return self.xp.empty(shape, dtype=self.xp.complex64)

    def _fftw(self, a: Any, forward: bool, out: Any) -> Any:
        import pyfftw

        # FFTW's SIMD code needs 32-byte alignment, NumPy gives 16: an unaligned
        # transform is 3x slower here than copying into an aligned array first.
        if a.ctypes.data % pyfftw.simd_alignment or not a.flags.c_contiguous:
            aligned = pyfftw.empty_aligned(a.shape, dtype=a.dtype)
            aligned[...] = a
            a = aligned
        target = a if out is None else out
        if target.ctypes.data % pyfftw.simd_alignment or not target.flags.c_contiguous:
            target = pyfftw.empty_aligned(a.shape, dtype=a.dtype)
        key = (a.shape, a.dtype.str, forward, target is a)
        plans = self._plans.__dict__
        plan = plans.get(key)
        if plan is None:
            plan = pyfftw.FFTW(a, target, axes=(-2, -1), direction="FFTW_FORWARD" if forward else "FFTW_BACKWARD",
                               flags=("FFTW_ESTIMATE",), threads=1)
            plans[key] = plan
        result = plan(a, target, normalise_idft=False, ortho=True)
        if out is not None and result is not out:
            out[...] = result
            return out
        return result


class Windows:
    """Integer probe windows in the object array: the gather and scatter-add of object patches.

    Parameters
    ----------
    xp
        Array namespace of the object.
    iy, ix
        Top-left corner of each frame's window in the object, host integer arrays of shape (N,).
    frame_shape
        ``(ny, nx)`` of the window.
    object_shape
        ``(Hy, Hx)`` of the object.
    """

    def __init__(self, xp: Any, iy: np.ndarray, ix: np.ndarray, frame_shape: tuple[int, int],
                 object_shape: tuple[int, int]) -> None:
        self.xp = xp
        self.library = namespace_name(xp)
        self.iy = np.asarray(iy, dtype=np.int64)
        self.ix = np.asarray(ix, dtype=np.int64)
        self.frame_shape = frame_shape
        self.object_shape = object_shape
        if self.library != "numpy":
            # GPU gathers and scatters go through flat indices into the raveled object:
            # the offset of each window, plus the offsets of the pixels inside one window.
            ny, nx = frame_shape
            hx = object_shape[1]
            self._offsets = xp.asarray(self.iy * hx + self.ix)
            self._inside = xp.asarray((np.arange(ny)[:, None] * hx + np.arange(nx)[None, :]).ravel())

    def _flat(self, frames: np.ndarray) -> Any:
        xp = self.xp
        offsets = xp.take(self._offsets, xp.asarray(frames), axis=0)
        return xp.reshape(offsets[:, None] + self._inside[None, :], (-1,))

    def extract(self, obj: Any, frames: np.ndarray) -> Any:
        """The object patches of ``frames`` (host indices), shape (B, ny, nx)."""
        ny, nx = self.frame_shape
        if self.library == "numpy":
            # Fancy indexing on the two window axes of a strided view copies whole 128-wide
            # rows: 2x faster than a flat take, and no index array of the patch size.
            windows = np.lib.stride_tricks.sliding_window_view(obj, (ny, nx))
            return windows[self.iy[frames], self.ix[frames]]
        xp = self.xp
        flat = xp.take(xp.reshape(obj, (-1,)), self._flat(frames), axis=0)
        return xp.reshape(flat, (len(frames), ny, nx))

    def scatter_add(self, target: Any, frames: np.ndarray, patches: Any, weights: np.ndarray | None = None) -> None:
        """Add ``weights[k] * patches[k]`` into ``target`` (Hy, Hx) at the window of ``frames[k]``, in place.

        ``patches`` is (B, ny, nx), or one (ny, nx) patch added at every window;
        ``weights`` (host, (B,)) default to 1.
        """
        ny, nx = self.frame_shape
        one = patches.ndim == 2
        if self.library == "numpy":
            # One slice-add per frame beats np.add.at (2.6x) and bincount (17x) here:
            # each add is a cache-friendly block of the window's size.
            for k, j in enumerate(frames):
                y, x = self.iy[j], self.ix[j]
                patch = patches if one else patches[k]
                target[y:y + ny, x:x + nx] += patch if weights is None else patch * weights[k]
            return
        xp = self.xp
        if one:
            patches = xp.broadcast_to(patches[None], (len(frames), ny, nx))
        if weights is not None:
            patches = patches * xp.reshape(xp.asarray(weights, dtype=xp.float32), (-1, 1, 1))
        flat_index = self._flat(frames)
        values = xp.reshape(patches, (-1,))
        if self.library == "cupy":
            import cupyx

            cupyx.scatter_add(target.reshape(-1), flat_index, values)
            return
        import torch

        flat = target.view(-1)
        if flat.is_complex():
            # index_add_ on complex tensors is not available on every device: add re and im as pairs
            torch.view_as_real(flat).index_add_(0, flat_index, torch.view_as_real(values.contiguous()))
        else:
            flat.index_add_(0, flat_index, values.contiguous())


def default_threads() -> int:
    """Worker threads for NumPy algorithms: one per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
