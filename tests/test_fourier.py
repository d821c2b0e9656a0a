"""FFT downsampling: exact on band-limited frames, total-preserving, clear errors, runs in a pipeline."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from lightpipe.core import registry
from lightpipe.core.errors import PipelineError
from lightpipe.core.pipeline import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation, write_nxmx
from lightpipe.stages.fourier import FFTDownsample, FFTDownsampleParams, fft_downsample


def _band_limited(shape: tuple[int, int], target: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random trigonometric polynomial on ``shape``, and the same function sampled on the ``target`` grid.

    Every frequency stays strictly below the target's Nyquist frequency, so the
    coarse grid can hold the function exactly.
    """
    rng = np.random.default_rng(seed)
    (ny, nx), (my, mx) = shape, target
    ky_max, kx_max = (my - 1) // 2, (mx - 1) // 2

    def sample(gy: int, gx: int, terms: list[tuple[int, int, float, float]]) -> np.ndarray:
        # the same continuous function, evaluated on a gy x gx grid over one period
        y, x = np.mgrid[0:gy, 0:gx]
        out = np.full((gy, gx), 50.0)
        for ky, kx, amplitude, phase in terms:
            out += amplitude * np.cos(2 * np.pi * (ky * y / gy + kx * x / gx) + phase)
        return out

    terms = [
        (int(rng.integers(-ky_max, ky_max + 1)), int(rng.integers(-kx_max, kx_max + 1)),
         float(rng.uniform(1, 10)), float(rng.uniform(0, 2 * np.pi)))
        for _ in range(6)
    ]
    return sample(ny, nx, terms), sample(my, mx, terms)


@pytest.mark.parametrize(
    ("shape", "target"),
    [((96, 80), (48, 40)), ((63, 65), (21, 33)), ((64, 64), (37, 20)), ((50, 70), (50, 70))],
)
def test_band_limited_frame_equals_the_sampled_function(shape: tuple[int, int], target: tuple[int, int]) -> None:
    frame, expected = _band_limited(shape, target, seed=sum(shape) + sum(target))
    out = fft_downsample(frame, target, preserve_total=False)
    assert out.shape == target
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


def test_preserve_total_scales_by_area_ratio() -> None:
    frame, expected = _band_limited((96, 80), (32, 40), seed=5)
    out = fft_downsample(frame, (32, 40), preserve_total=True)
    np.testing.assert_allclose(out, expected * (96 * 80) / (32 * 40), rtol=1e-12)


@pytest.mark.parametrize("target", [(64, 64), (31, 17), (1, 1), (128, 1)])
def test_total_counts_are_preserved(target: tuple[int, int]) -> None:
    rng = np.random.default_rng(11)
    frame = rng.poisson(3.0, (128, 96)).astype(np.uint16)  # not band-limited: noise everywhere
    out = fft_downsample(frame, target)
    assert out.shape == target and out.dtype == np.float64
    assert float(out.sum()) == pytest.approx(float(frame.sum()), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_same_shape_is_the_frame_itself(dtype: type) -> None:
    frame = np.random.default_rng(4).poisson(0.2, (72, 72)).astype(dtype)  # mostly zeros, as behind a threshold
    out = fft_downsample(frame, (72, 72))
    assert np.array_equal(out, frame) and out.min() >= 0  # no rounding, so no small negatives
    assert out is not frame  # a copy: a later stage may change it in place


def test_float32_frames_stay_float32() -> None:
    frame = np.random.default_rng(2).random((40, 40), dtype=np.float32)
    out = fft_downsample(frame, (20, 20))
    assert out.dtype == np.float32
    assert float(out.sum()) == pytest.approx(float(frame.sum(dtype=np.float64)), rel=1e-5)


def test_frame_centre_stays_at_the_centre() -> None:
    """Output pixel j samples input position j*ny/my: a pattern centred on ny//2 stays centred on my//2."""
    ny, nx, my, mx, sigma = 128, 96, 64, 32, 6.0
    y, x = np.mgrid[0:ny, 0:nx]
    frame = 1000.0 * np.exp(-0.5 * (((y - ny // 2) / sigma) ** 2 + ((x - nx // 2) / sigma) ** 2))
    out = fft_downsample(frame, (my, mx), preserve_total=False)
    assert np.unravel_index(np.argmax(out), out.shape) == (my // 2, mx // 2)
    yy, xx = np.mgrid[0:my, 0:mx] * np.array([ny / my, nx / mx])[:, None, None]
    expected = 1000.0 * np.exp(-0.5 * (((yy - ny // 2) / sigma) ** 2 + ((xx - nx // 2) / sigma) ** 2))
    np.testing.assert_allclose(out, expected, atol=1e-6 * 1000.0)


@pytest.mark.parametrize("target", [(129, 96), (128, 97), (0, 10)])
def test_target_that_does_not_fit_is_a_clear_error(target: tuple[int, int]) -> None:
    frame = np.zeros((128, 96), np.uint16)
    with pytest.raises(ValueError, match=r"does not fit the 128x96 frame.*between \(1, 1\) and \(128, 96\)"):
        fft_downsample(frame, target)


def test_non_positive_shape_parameter_is_rejected() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        FFTDownsampleParams(shape=(0, 64))
    with pytest.raises(PipelineError, match=r"stages\.small\.params\.shape.*greater than or equal to 1"):
        load_pipeline(
            {
                "version": 1,
                "name": "bad",
                "source": {"use": "simulated_frames", "params": {"frames": 2}},
                "stages": {"small": {"use": "fft_downsample", "params": {"shape": [-4, 64]}}},
            }
        )


def test_non_2d_frame_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a 2-D frame"):
        fft_downsample(np.zeros((4, 8, 8)), (4, 4))


def test_runs_in_a_pipeline_and_oversized_target_fails_only_that_stage(tmp_path: Path) -> None:
    assert registry.load("stages", "fft_downsample") is FFTDownsample
    doc = {
        "version": 1,
        "name": "fft",
        "source": {"use": "simulated_frames", "params": {"frames": 6, "darks": 0, "flats": 0, "shape": [48, 40]}},
        "stages": {
            "small": {"use": "fft_downsample", "params": {"shape": [24, 20]}},
            "too_big": {"use": "fft_downsample", "inputs": {"frame": "source.frame"}, "params": {"shape": [96, 20]}},
        },
        "sinks": [{"use": "nexus", "fields": ["small.frame"]}],
        "engine": {"chunk_size": 4},
    }
    report = LocalEngine().run(load_pipeline(doc), tmp_path)
    scan = report.scans[0]
    assert scan.ledger.written == 6 and not scan.ledger.failed
    frames = [FrameSimulation(FrameSimParams(frames=6, darks=0, flats=0, shape=(48, 40))).frame(i)[1] for i in range(6)]
    with h5py.File(scan.files[0], "r") as f:
        small = f["entry/small/frame"][()]
    assert small.shape == (6, 24, 20)
    np.testing.assert_allclose(small.sum(axis=(1, 2)), [fr.sum() for fr in frames], rtol=1e-10)

    # a sink that asks for the oversized stage: refused before the run, as the source says its frame shape
    doc["sinks"] = [{"use": "nexus", "fields": ["too_big.frame"], "params": {"filename": "big.nxs"}}]
    with pytest.raises(PipelineError, match=r"stages\.too_big\.params: shape=\[96, 20\] is larger than the 48 x 40 frame"):
        load_pipeline(doc)

    # a file whose frame shape is known only when the scan starts: every event fails with the reason
    raw = write_nxmx(tmp_path / "raw" / "fft_master.h5", FrameSimParams(frames=6, darks=0, flats=0, shape=(48, 40)))
    doc["source"] = {"use": "hdf5", "params": {"path": str(raw)}}
    failed = LocalEngine().run(load_pipeline(doc), tmp_path).scans[0].ledger.failed
    assert len(failed) == 6
    assert all(e.stage == "too_big" and "does not fit" in e.message and "48" in e.message for e in failed)
