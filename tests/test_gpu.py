"""The ptychography reconstruction on a CUDA GPU: CuPy arrays and PyTorch CUDA tensors run the NumPy code.

Each test is skipped, with the reason in pytest's summary, where its library
or a CUDA GPU is missing; run ``pytest -m gpu`` on a GPU machine to run them.
The scan is small and noise-free: 6 x 6 positions 6 pixels apart, 32 x 32
frames, a smooth phase object and a soft-edged disc probe with a quadratic
phase, reconstructed from a flat Gaussian probe guess.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

FRAME = 32
CHAIN = "DM:20, ML:5"


def make_scan(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(intensities, positions_px, probe_guess)`` of a noise-free scan, in the reconstruction's conventions."""
    rng = np.random.default_rng(seed)
    grid = np.arange(6) * 6.0
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    size = int(grid[-1]) + FRAME
    yy, xx = np.mgrid[:size, :size] / size
    phase = sum(rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * (rng.integers(1, 4) * yy + rng.integers(1, 4) * xx)
                                                + rng.uniform(0, 2 * np.pi)) for _ in range(3))
    obj = 0.9 * np.exp(1j * phase)
    y = np.arange(FRAME)[:, None] - FRAME / 2
    x = np.arange(FRAME)[None, :] - FRAME / 2
    r = np.hypot(y, x)
    probe = np.exp(1j * 0.02 * r**2) / (1 + np.exp(r - 8))
    patches = np.stack([obj[int(py):int(py) + FRAME, int(px):int(px) + FRAME] for py, px in positions])
    far = np.abs(np.fft.fft2(probe * patches, norm="ortho")) ** 2
    intensities = np.fft.fftshift(far * (1e6 / far.sum(axis=(1, 2)).mean()), axes=(-2, -1)).astype(np.float32)
    guess = np.exp(-(y**2 + x**2) / (2 * 5.0**2)).astype(np.complex64)
    return intensities, positions, guess


def cupy_on_gpu() -> ModuleType:
    """CuPy, or a skip saying what is missing."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy finds no CUDA GPU ({exc})")
    if count == 0:
        pytest.skip("CuPy finds no CUDA GPU")
    return cupy


def torch_on_gpu() -> ModuleType:
    """PyTorch with CUDA, or a skip saying what is missing."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch finds no CUDA GPU")
    return torch


def check_reconstruction(result: Any, to_numpy: Any, numpy_first_error: float) -> None:
    """Object and probe are finite; the Fourier error starts where NumPy's does and falls."""
    obj, probe = to_numpy(result.object), to_numpy(result.probe)
    assert obj.dtype == probe.dtype == np.complex64 and probe.shape == (1, FRAME, FRAME)
    assert np.isfinite(obj).all() and np.isfinite(probe).all()
    errors = result.fourier_errors
    assert len(errors) == 25 and all(np.isfinite(errors))
    # the first figure is that of the inputs: the same data and guess as on NumPy, up to float32 rounding
    assert errors[0] == pytest.approx(numpy_first_error, rel=1e-3)
    assert errors[-1] < errors[0] / 20, errors  # about 170 times lower on NumPy


def test_reconstruction_on_cupy_arrays() -> None:
    cupy = cupy_on_gpu()
    from lightpipe.techniques.ptychography.algorithms import reconstruct

    intensities, positions, guess = make_scan()
    reference = reconstruct(intensities, positions, guess, chain="DM:1")
    result = reconstruct(cupy.asarray(intensities), positions, cupy.asarray(guess), chain=CHAIN)
    assert isinstance(result.object, cupy.ndarray) and isinstance(result.probe, cupy.ndarray)
    assert result.object.device.id == result.probe.device.id == cupy.cuda.Device().id
    check_reconstruction(result, cupy.asnumpy, reference.fourier_errors[0])


def test_reconstruction_on_torch_cuda_tensors() -> None:
    torch = torch_on_gpu()
    from lightpipe.techniques.ptychography.algorithms import reconstruct

    intensities, positions, guess = make_scan()
    reference = reconstruct(intensities, positions, guess, chain="DM:1")
    result = reconstruct(torch.from_numpy(intensities).cuda(), positions, torch.from_numpy(guess).cuda(), chain=CHAIN)
    assert isinstance(result.object, torch.Tensor) and isinstance(result.probe, torch.Tensor)
    assert result.object.device.type == result.probe.device.type == "cuda"
    check_reconstruction(result, lambda t: t.cpu().numpy(), reference.fourier_errors[0])
