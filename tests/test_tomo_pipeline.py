"""Tomography in a pipeline: the example's volume against the phantom, streaming slices, TIFF slices, bad input."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage.metrics import structural_similarity

from lightpipe.core.hooks import RunHooks
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.report import ScanReport
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.tomo.geometry import circle
from lightpipe.techniques.tomo.sim_source import TomoSimSource
from lightpipe.techniques.tomo.simulate import TomoSimParams, TomoSimulation

EXAMPLE = Path(__file__).parents[1] / "pipelines" / "tomo-reconstruct.yaml"
#: A 64^3 scan: 64 rows, 64 columns, 181 projections over 0-180 deg.
SOURCE = {"name": "phantom", "shape": [64, 64], "projections": 181, "darks": 4, "flats": 4, "centre_offset_px": 2.3,
          "ring_pixels": 3, "pixel_size_m": 1.0e-6}


class Intermediate(RunHooks):
    """Keeps every intermediate result the solvers emit."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def intermediate_result(self, scan: str, results: dict[str, Any]) -> None:
        self.results.append(dict(results))


def run(document: dict[str, Any], output: Path, hooks: list[RunHooks] | None = None) -> ScanReport:
    with LocalEngine() as engine:
        [scan] = engine.run(load_pipeline(document), output, hooks=hooks or []).scans
    return scan


def example(**source: Any) -> dict[str, Any]:
    """The example pipeline on a smaller scan (``source`` overrides)."""
    doc = dict(load_pipeline(EXAMPLE).document)
    doc["source"] = {"use": "tomo_sim", "params": {**SOURCE, **source}}
    return doc


def truth(**source: Any) -> TomoSimulation:
    params = {k: v for k, v in {**SOURCE, **source}.items() if k != "rate_hz"}
    return TomoSimulation(TomoSimParams(**params))


def test_the_example_reconstructs_the_phantom(tmp_path: Path) -> None:
    hook = Intermediate()
    scan = run(example(), tmp_path, [hook])
    assert scan.ledger.state == "completed" and scan.ledger.failed == []
    sim = truth()
    with h5py.File(tmp_path / "phantom.nxs") as f:
        entry = f["entry"]
        assert entry.attrs["default"] == "recon"
        recon = entry["recon"]
        assert recon.attrs["signal"] == "slice" and list(recon.attrs["axes"]) == ["y", "x"]
        volume = recon["volume"][()]
        assert volume.shape == (64, 64, 64)
        assert recon["volume"].attrs["units"] == "1/m" and recon["x"].attrs["units"] == "m"
        np.testing.assert_allclose(recon["x"][()], (np.arange(64) - 31.5) * 1e-6)
        np.testing.assert_array_equal(recon["slice"][()], volume[32])
        assert abs(entry["centre/centre"][()] - sim.centre) < 0.5
        assert abs(recon["centre"][()] - sim.centre) < 0.5
        assert recon["projections"][()] == 181
    expected = sim.volume() / 1e-6  # attenuation per metre
    mask = circle(64)
    middle = slice(16, 48)  # away from the phantom's top and bottom caps
    error = np.linalg.norm((volume - expected)[middle][:, mask]) / np.linalg.norm(expected[middle][:, mask])
    similarity = np.mean([structural_similarity(expected[z], volume[z], data_range=float(expected.max()))
                          for z in range(16, 48, 4)])
    print(f"64^3 phantom, 181 projections, FBP: normalised error {error:.3f}, SSIM {similarity:.3f}")
    assert error < 0.4
    assert similarity > 0.45
    # the example's live updates: the middle slice so far, after every chunk that brings 40 projections or more
    counts = [int(r["recon.projections"]) for r in hook.results]
    assert 40 <= counts[0] < 181 and len(counts) >= 3
    assert all(later - earlier >= 40 for earlier, later in zip(counts, counts[1:]))
    # the TIFF slices are the volume
    tiffs = sorted((tmp_path / "phantom_slices").glob("*.tif"))
    assert [p.name for p in tiffs[:2]] == ["recon.volume_00.tif", "recon.volume_01.tif"] and len(tiffs) == 64
    np.testing.assert_array_equal(np.asarray(Image.open(tiffs[32])), volume[32])


def test_streaming_shows_the_slice_before_the_last_projection_and_it_improves(tmp_path: Path) -> None:
    doc = example(shape=[16, 64], projections=181, rate_hz=400.0)
    doc["stages"]["recon"]["params"] = {"algorithm": "sirt", "update_every": 30, "live_iterations": 10,
                                        "iterations": 60}
    doc["engine"] = {"chunk_size": 10, "chunk_seconds": 0.05}
    hook = Intermediate()
    scan = run(doc, tmp_path, [hook])
    assert scan.ledger.state == "completed"
    counts = [int(r["recon.projections"]) for r in hook.results]
    assert counts[0] < 181 and counts == sorted(counts) and len(counts) >= 4
    expected = truth(shape=[16, 64]).volume()[8]  # no pixel_size_m here: attenuation per pixel
    mask = circle(64)
    errors = [np.linalg.norm((r["recon.slice"] - expected)[mask]) / np.linalg.norm(expected[mask])
              for r in hook.results]
    assert errors[-1] < 0.85 * errors[0]
    with h5py.File(tmp_path / "phantom.nxs") as f:
        final = f["entry/recon/slice"][()]
    assert np.linalg.norm((final - expected)[mask]) / np.linalg.norm(expected[mask]) < errors[-1]


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing, stage", [("darks", "dark"), ("flats", "flat")])
def test_missing_darks_or_flats_fail_the_scan_with_a_clear_message(tmp_path: Path, missing: str, stage: str) -> None:
    scan = run(example(shape=[8, 32], projections=20, **{missing: 0}), tmp_path)
    assert scan.ledger.state == "failed"
    assert f"stage {stage!r} needs events of stream {stage}" in (scan.ledger.error or "")
    with h5py.File(tmp_path / "phantom.nxs") as f:  # the file says so
        assert f["entry/process/state"][()] == b"failed"


def test_a_centre_outside_the_detector_is_refused(tmp_path: Path) -> None:
    doc = example(shape=[8, 32], projections=20)
    doc["stages"]["recon"]["params"] = {"centre_px": 40.0}
    scan = run(doc, tmp_path)
    assert scan.ledger.state == "failed"
    assert "centre of rotation 40 px is outside the detector's 32 columns" in (scan.ledger.error or "")


def test_angles_that_do_not_match_the_frames_are_refused() -> None:
    with pytest.raises(ValidationError, match="angles_deg has 19 angles but the scan has 20 projections"):
        TomoSimSource.Params(shape=[8, 32], projections=20, angles_deg=list(np.linspace(0, 180, 19)))


def test_a_projection_without_its_angle_fails_alone(tmp_path: Path) -> None:
    angles = list(np.linspace(0.0, 180.0, 37))
    angles[5] = float("nan")
    scan = run(example(shape=[8, 32], projections=37, angles_deg=angles, darks=2, flats=2), tmp_path)
    assert scan.ledger.state == "completed"
    [failed] = scan.ledger.failed
    assert failed.index == 2 + 2 + 5 and "needs its rotation angle" in failed.message
    assert scan.ledger.written == scan.ledger.received - 1
    with h5py.File(tmp_path / "phantom.nxs") as f:
        assert f["entry/recon/projections"][()] == 36


def test_projections_of_another_shape_than_the_darks_fail(tmp_path: Path) -> None:
    from lightpipe.testing import run_stage

    frame = np.ones((8, 16), np.uint16)
    with pytest.raises(ValueError, match=r"the projection is \(8, 16\) but the dark is \(8, 32\)"):
        run_stage("tomo_normalise", None, [{"frame": frame, "dark": np.zeros((8, 32)), "flat": np.ones((8, 32))}])
