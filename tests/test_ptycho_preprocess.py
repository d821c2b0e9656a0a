"""The pre-processing steps of Nanosurveyor's section 4.1, and scanning maps, on frames with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from lightpipe.core.event import Scan
from lightpipe.stages.maps import ScanMap, TransmissionDpc
from lightpipe.techniques.ptychography.stages.preprocess import (
    BackgroundFilter,
    BeamstopCorrection,
    BackgroundParams,
    BeamstopParams,
    CentredCrop,
    CentreParams,
    CropParams,
    DiffractionCentre,
    OverscanOffset,
    OverscanParams,
)
from lightpipe.testing import run_stage

SCAN = Scan("s", {"data": range(10)}, {"beam_center_y_px": 30.0, "beam_center_x_px": 41.0})


def _spot(shape: tuple[int, int], cy: float, cx: float, sigma: float = 3.0) -> np.ndarray:
    y, x = np.indices(shape)
    return 1000.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def test_diffraction_centre_finds_the_centre_of_mass() -> None:
    rng = np.random.default_rng(0)
    frames = [{"frame": rng.poisson(_spot((64, 80), 20.3, 30.7))} for _ in range(6)]
    (out,) = [run_stage(DiffractionCentre, {}, frames)]
    assert out["centre"] == pytest.approx([20.3, 30.7], abs=0.05)
    with pytest.raises(ValueError, match="no signal"):
        DiffractionCentre(CentreParams()).finish(np.zeros((4, 4)))


def test_overscan_offset_removes_a_drifting_row_offset() -> None:
    rows = np.arange(50)[:, None]
    drift = 80.0 + 0.5 * rows + 0.01 * rows**2
    signal = np.zeros((50, 40))
    signal[:, 10:] = 7.0
    out = OverscanOffset(OverscanParams(columns=(0, 4), order=2)).process(frame=signal + drift)["frame"]
    assert np.abs(out[:, :4]).max() < 1e-3 and np.allclose(out[:, 10:], 7.0, atol=1e-3)
    with pytest.raises(ValueError, match="outside"):
        OverscanOffset(OverscanParams(columns=(38, 45))).process(frame=signal)


def test_background_filter_removes_periodic_readout_noise_only() -> None:
    rng = np.random.default_rng(1)
    ny, nx = 256, 64
    pickup = 1.5 * np.sin(2 * np.pi * 17 * np.arange(ny) / ny)[:, None]
    clean = rng.normal(0.0, 0.3, (ny, nx))
    clean[100:140, 20:40] += 50.0  # photons
    stage = BackgroundFilter(BackgroundParams(threshold=5.0, channels=2, spike_factor=5.0))
    out = stage.process(frame=clean + pickup)["frame"]
    background = clean < 5.0
    assert np.std((clean + pickup)[background]) > 1.0
    assert np.std((out - clean)[background]) < 0.1  # the pickup is gone
    assert np.abs(out - clean)[100:140, 20:40].max() < 0.2  # photons untouched but for the pickup


def test_beamstop_correction_and_centred_crop_use_the_scan_centre() -> None:
    frame = np.ones((60, 80), np.float32)
    stage = BeamstopCorrection(BeamstopParams(radius_px=3.0, transmission=0.02))
    stage.setup(SCAN)
    out = stage.process(frame=frame)["frame"]
    assert out[30, 41] == pytest.approx(50.0) and out[30, 45] == 1.0 and out[0, 0] == 1.0
    crop = CentredCrop(CropParams(shape=(16, 16)))
    crop.setup(SCAN)
    marked = np.zeros((60, 80))
    marked[30, 41] = 1.0
    window = crop.process(frame=marked)["frame"]
    assert window.shape == (16, 16) and window[8, 8] == 1.0
    too_big = CentredCrop(CropParams(shape=(64, 16)))
    too_big.setup(SCAN)
    with pytest.raises(ValueError, match="leaves the"):
        too_big.process(frame=marked)


def test_scan_map_places_values_on_the_grid() -> None:
    positions = [(y * 1e-6, x * 1e-6) for y in range(4) for x in range(5)]
    events = [{"value": float(10 * y + x), "y": p[0], "x": p[1]}
              for (y, x), p in zip([(y, x) for y in range(4) for x in range(5)], positions)]
    out = run_stage(ScanMap, {}, events[:-1])  # the last position was never measured
    expected = np.arange(4)[:, None] * 10.0 + np.arange(5)
    expected[3, 4] = np.nan
    np.testing.assert_allclose(out["map"], expected)
    assert out["step"] == pytest.approx(1e-6)


def test_transmission_and_dpc_follow_the_beam() -> None:
    stage = TransmissionDpc(TransmissionDpc.Params())
    shifted = stage.process(frame=_spot((64, 64), 34.0, 29.0))
    assert shifted["dpc_y"] == pytest.approx(2.0, abs=1e-3) and shifted["dpc_x"] == pytest.approx(-3.0, abs=1e-3)
    assert shifted["transmission"] == pytest.approx(_spot((64, 64), 34.0, 29.0).sum())
