"""XRD in a pipeline: a mapping scan's ring maps against the simulator's truth, one integrator per worker, a failing frame."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pytest

pytest.importorskip("pyFAI")

from lightpipe.core.event import Event
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.source import ScanReader
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.xrd import geometry
from lightpipe.techniques.xrd.sim_source import PowderSimReader, PowderSimSource
from lightpipe.techniques.xrd.simulate import PowderSimParams, PowderSimulation

#: A 4 x 4 map on a small generic detector (LaB6 disc in CeO2), two dark frames first.
SOURCE = {"name": "map", "detector": None, "shape": [192, 192], "distance_m": 0.08, "map_shape": [4, 4],
          "darks": 2, "dark_level": 2.0, "photons": 3000.0, "step_m": 1.0e-6}


def _document(source: str = "powder_sim", **extra: Any) -> dict[str, Any]:
    curve = {"use": "azimuthal_integration_dark", "inputs": {"frame": "source.frame", "dark": "dark.mean",
                                                              "mask": "dark.mask"}, "params": {"npt": 700}}
    return {
        "version": 2, "name": "xrd-map", "source": {"use": source, "params": {**SOURCE, **extra}},
        "stages": {
            "dark": {"use": "dark_statistics", "stream": "dark"},
            "curve": curve,
            "cake": {**curve, "use": "cake_integration_dark", "params": {"npt_rad": 200, "npt_azim": 36}},
            "lab6": {"use": "roi_intensity", "inputs": {"intensity": "curve.intensity", "radial": "curve.radial"},
                     "params": {"range": [9.45, 9.85]}},
            "lab6_map": {"use": "scan_map", "inputs": {"value": "lab6.area", "y": "source.position_y_m",
                                                       "x": "source.position_x_m"}},
            "pattern": {"use": "xrd_pattern", "inputs": {"intensity": "curve.intensity",
                                                         "intensity_errors": "curve.intensity_errors",
                                                         "radial": "curve.radial"}},
        },
        "sinks": [{"use": "nexus", "fields": ["curve.intensity", "curve.intensity_errors", "curve.radial",
                                              "cake.cake", "lab6_map.map", "pattern.intensity",
                                              "pattern.radial"]}],
    }


def test_ring_map_follows_the_phase_fraction_and_integrators_are_built_once(tmp_path: Path) -> None:
    pipeline = load_pipeline(_document())
    before = geometry.BUILT["count"]
    with LocalEngine() as engine:
        report = engine.run(pipeline, tmp_path / "first")
    assert geometry.BUILT["count"] == before + 2  # one for the curves, one for the cakes: not one per frame
    [scan] = report.scans
    assert scan.ledger.failed == [] and scan.ledger.written == scan.ledger.received == 18
    truth = PowderSimulation(PowderSimParams(**{k: v for k, v in SOURCE.items()})).truth()
    with h5py.File(scan.files[0]) as f:
        entry = f["entry"]
        assert entry.attrs["default"] == "pattern"
        assert entry["pattern"].attrs["signal"] == "intensity" and list(entry["pattern"].attrs["axes"]) == ["radial"]
        ring_map = entry["lab6_map/map"][()]
        assert entry["curve/intensity"].shape == (16, 700) and entry["cake/cake"].shape == (16, 36, 200)
    fraction = truth["fraction"].reshape(4, 4)
    assert np.corrcoef(ring_map.ravel(), fraction.ravel())[0, 1] > 0.99
    with LocalEngine() as engine:  # a second scan with the same calibration reuses both
        engine.run(pipeline, tmp_path / "second")
    assert geometry.BUILT["count"] == before + 2


class OneSaturatedFrameReader(PowderSimReader):
    """A powder scan whose data frame 5 came back saturated everywhere (the detector was not ready)."""

    def read(self, start: int, stop: int) -> list[Event]:
        events = super().read(start, stop)
        for event in events:
            if event.index == self.scan.streams["data"].start + 5:
                event.fields["frame"] = np.full_like(event.fields["frame"], np.iinfo(np.uint32).max)
        return events


class OneSaturatedFrameSource(PowderSimSource):
    """``powder_sim`` with :class:`OneSaturatedFrameReader` scans."""

    def scans(self) -> Iterator[ScanReader]:
        for reader in super().scans():
            assert isinstance(reader, PowderSimReader)
            yield OneSaturatedFrameReader(reader.params)


def test_a_frame_that_fails_is_recorded_and_the_others_are_written(tmp_path: Path) -> None:
    pipeline = load_pipeline(_document("test_xrd_pipeline:OneSaturatedFrameSource"))
    with LocalEngine() as engine:
        [scan] = engine.run(pipeline, tmp_path).scans
    first = scan.ledger.received - 16
    assert [e.index for e in scan.ledger.failed] == [first + 5]
    assert scan.ledger.written == scan.ledger.received - 1
    with h5py.File(scan.files[0]) as f:
        entry = f["entry"]
        assert list(entry["failed_events/stage"].asstr()) == ["curve"]
        assert "every pixel of this frame is left out" in entry["failed_events/message"].asstr()[0]
        curves = entry["curve/intensity"][()]
        assert np.isnan(curves[5]).all() and np.isfinite(np.delete(curves, 5, axis=0)).all()
        assert entry["pattern/intensity"].shape == (700,)


def test_the_source_writes_its_poni_file_for_the_stages(tmp_path: Path) -> None:
    poni = tmp_path / "sim.poni"
    doc = _document(poni_file=str(poni))
    doc["stages"] = {"curve": {"use": "azimuthal_integration", "params": {"npt": 300}},
                     "pattern": {"use": "xrd_pattern"}}
    doc["sinks"] = [{"use": "nexus", "fields": ["pattern.intensity", "pattern.radial"]}]
    with LocalEngine() as engine:
        [scan] = engine.run(load_pipeline(doc), tmp_path / "out").scans
    assert scan.ledger.failed == []
    from lightpipe.techniques.xrd.geometry import read_poni

    assert read_poni(poni).config == PowderSimulation(PowderSimParams(**SOURCE)).geometry.config
