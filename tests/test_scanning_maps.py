"""Scanning maps of a simulated object: transmission, absorption, DPC phase, dark field, XBIC; live maps grow."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.core.hooks import RunHooks
from lightpipe.engines.local import LocalEngine
from lightpipe.stages.maps import BLOCK_ROWS, LiveScanMap, TransmissionDpc
from lightpipe.techniques.scanning.simulate import ScanningSimParams, ScanningSimulation
from lightpipe.techniques.scanning.stages import (
    DiffractionSignals, DpcPhase, FluxNormalise, TransmissionCounters, integrate_gradients,
)
from lightpipe.testing import check_stage

PIPELINE = Path(__file__).parents[1] / "pipelines" / "scanning-maps.yaml"


class _Intermediate(RunHooks):
    def __init__(self) -> None:
        self.maps: list[np.ndarray] = []

    def intermediate_result(self, scan: str, results: dict[str, Any]) -> None:
        if "transmission_map.map" in results:
            self.maps.append(np.asarray(results["transmission_map.map"]))


def _run(tmp_path: Path, pattern: str, chunk: int = 40) -> tuple[h5py.File, _Intermediate, ScanningSimulation]:
    doc = dict(load_pipeline(PIPELINE).document)
    params = {"name": f"scan_{pattern}", "map_shape": [16, 20], "pattern": pattern, "frame_shape": [64, 64]}
    doc["source"] = {"use": "scanning_sim", "params": params}
    doc["engine"] = {"chunk_size": chunk}
    hook = _Intermediate()
    with LocalEngine() as engine:
        (report,) = engine.run(load_pipeline(doc), tmp_path, hooks=[hook]).scans
    assert report.ledger.failed == []
    return h5py.File(tmp_path / f"scan_{pattern}.nxs"), hook, ScanningSimulation(ScanningSimParams(**params))


@pytest.mark.parametrize("pattern", ["snake", "fly"])
def test_maps_match_the_known_object(pattern: str, tmp_path: Path) -> None:
    f, _, sim = _run(tmp_path, pattern)
    truth = sim.truth()
    with f:
        e = f["entry"]
        assert e.attrs["default"] == "dpc"
        assert e["dpc/phase"].attrs["units"] == "rad" and e["dpc/y"].attrs["units"] == "m"
        assert e["stxm_map/map"].shape == (16, 20)  # the fly scan's encoder readings snap to its rows and columns
        # the truth is on the nominal grid; a fly scan measured up to a tenth of a step beside it
        tolerance = 0.01 if pattern == "snake" else 0.03
        np.testing.assert_allclose(e["transmission_map/map"][()], truth["transmission"], rtol=tolerance)
        np.testing.assert_allclose(e["absorption_map/map"][()], -np.log(truth["transmission"]), atol=tolerance)
        phase = e["dpc/phase"][()]
        true_phase = truth["phase"] - truth["phase"].mean()
        error = np.sqrt(np.mean((phase - true_phase) ** 2)) / np.ptp(true_phase)
        assert error < 0.03, error
        gx = e["dpc/gradient_x"][()]
        np.testing.assert_allclose(gx, truth["gradient_x"], atol=5 * tolerance * np.abs(truth["gradient_x"]).max())
        # the STXM map follows the transmission times the flux's drift; the dark field lights up in the patch
        stxm = e["stxm_map/map"][()]
        assert np.corrcoef(stxm.ravel(), truth["transmission"].ravel())[0, 1] > 0.95
        dark = e["dark_field_map/map"][()]
        patch = truth["scattering"] > 0
        assert np.median(dark[patch]) > 5 * np.median(dark[~patch])
        xbic = e["xbic_map/map"][()]
        np.testing.assert_allclose(xbic, truth["responsivity"] * sim.params.i0_reference, rtol=3 * tolerance)


def test_live_map_grows_while_the_scan_runs_and_ends_as_scan_map(tmp_path: Path) -> None:
    f, hook, _ = _run(tmp_path, "snake", chunk=40)
    with f:
        final = f["entry/transmission_map/map"][()]
        reduced = f["entry/absorption_map/map"][()]
    assert len(hook.maps) >= 6  # 320 points in chunks of 40
    filled = [int(np.isfinite(m).sum()) for m in hook.maps]
    assert filled == sorted(filled) and filled[0] < filled[-1] == final.size
    np.testing.assert_allclose(hook.maps[-1], final)
    np.testing.assert_allclose(-np.log(final), reduced, atol=1e-12)


def test_fourier_integration_recovers_a_surface() -> None:
    y, x = np.meshgrid(np.linspace(0, 1, 30), np.linspace(0, 2, 50), indexing="ij")
    surface = np.sin(2 * x) * y**2 + 0.5 * x  # not periodic: the mirrored extension handles its edges
    gy, gx = np.gradient(surface, y[:, 0], x[0], edge_order=2)
    out = integrate_gradients(gy, gx, y[1, 0] - y[0, 0], x[0, 1] - x[0, 0])
    assert np.sqrt(np.mean((out - (surface - surface.mean())) ** 2)) < 0.01 * np.ptp(surface)


def test_stages_conform() -> None:
    check_stage(DiffractionSignals)
    check_stage(TransmissionCounters)
    check_stage(FluxNormalise)
    check_stage(DpcPhase, {"distance_m": 2.0, "pixel_size_m": 75e-6, "energy_ev": 1e4})
    check_stage(LiveScanMap)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "int64", "float32", "float64"])
def test_frame_signals_are_the_float64_sums(dtype: str) -> None:
    """Sums in blocks of rows and in 64-bit integers: the same numbers as float64 sums of the whole frame."""
    rng = np.random.default_rng(5)
    ny, nx = 2 * BLOCK_ROWS + 37, 301  # blocks of rows, the last one short; the disc spans three of them
    frame = rng.poisson(20.0, (ny, nx)) * np.where(rng.random((ny, nx)) < 0.01, 3000, 1)
    frame = frame.astype(dtype)
    centre, radius = (BLOCK_ROWS + 10.5, 140.0), 130.0
    out = DiffractionSignals(DiffractionSignals.Params(centre_px=centre, bright_field_radius_px=radius)).process(frame)
    f = frame.astype(np.float64)
    yy, xx = np.indices(f.shape)
    total = f.sum()
    bright = f[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2].sum()
    expected = [total, bright, total - bright, (f * yy).sum() / total - centre[0], (f * xx).sum() / total - centre[1]]
    got = [out[k] for k in ("total", "bright_field", "dark_field", "com_y", "com_x")]
    if np.dtype(dtype).kind in "iu":
        assert got[:3] == expected[:3]  # integer frames are summed exactly
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    dpc = TransmissionDpc().process(frame)
    np.testing.assert_allclose([dpc["transmission"], dpc["dpc_y"]], [total, expected[3] + centre[0] - ny / 2],
                               rtol=1e-9)


def test_bad_counters_fail_their_point_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="I0 reads 0: no incident flux"):
        TransmissionCounters().process(i0=0.0, it=5.0)
    with pytest.raises(ValueError, match="It reads 0"):
        TransmissionCounters().process(i0=5.0, it=0.0)
    with pytest.raises(ValueError, match="holds no counts"):
        DiffractionSignals().process(frame=np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="needs the distance, pixel size and energy"):
        DpcPhase().finish(np.zeros((1, 4)))
