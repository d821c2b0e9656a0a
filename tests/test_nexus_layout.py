"""The NeXus sink's layout: instrument, sample and per-stage processes, 1-D axes, default plots and reserved names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.core import registry
from lightpipe.core.errors import PipelineError
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import DETECTOR_METADATA
from lightpipe.sinks.nexus import RESERVED_NAMES, reserved_problem
from lightpipe.sinks.nexus_layout import HC_EV_ANGSTROM

PIPELINES = Path(__file__).parents[1] / "pipelines"
SMALL = {"frames": 6, "darks": 3, "flats": 0, "shape": [64, 64], "rings_px": [10.0, 20.0]}


def _small(name: str, **source: Any) -> dict[str, Any]:
    doc = dict(load_pipeline(PIPELINES / name).document)
    doc["source"] = {"use": "simulated_frames", "params": {**SMALL, **source}}
    return doc


def _run(doc: dict[str, Any], out: Path) -> Any:
    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(doc), out).scans
    return scan


def test_the_instrument_beam_and_stages_are_where_nexus_puts_them(tmp_path: Path) -> None:
    doc = _small("powder-profile.yaml")
    doc["stages"] = {**doc["stages"], "binned": {"use": "bin", "inputs": {"frame": "photons.frame"},
                                                 "params": {"factor": 4}}}
    doc["sinks"] = [{**doc["sinks"][0], "fields": [*doc["sinks"][0]["fields"], "binned.frame"]}]
    scan = _run(doc, tmp_path)
    with h5py.File(scan.files[0], "r") as f:
        det = f["entry/instrument/detector"]
        assert f["entry/instrument"].attrs["NX_class"] == "NXinstrument" and det.attrs["NX_class"] == "NXdetector"
        assert det["distance"][()] == DETECTOR_METADATA["distance_m"] and det["distance"].attrs["units"] == "m"
        assert det["x_pixel_size"][()] == DETECTOR_METADATA["x_pixel_size_m"]
        assert det["beam_center_x"].attrs["units"] == "pixel" and list(det["frame_shape"][()]) == [64, 64]
        binned = det["binned_frame"]  # the 4 x 4 binned frames: 16 x 16 pixels of 300 um over the whole detector
        assert list(binned["shape"][()]) == [16, 16] and list(binned["detector_window"][()]) == [64, 64]
        assert np.allclose(binned["pixel_size"][()], 4 * DETECTOR_METADATA["x_pixel_size_m"])
        assert "powder_sum" not in det  # a per-scan sum is not a detector frame the pipeline can follow
        beam = f["entry/instrument/beam"]
        assert beam["incident_wavelength"][()] == 1.0 and beam["incident_wavelength"].attrs["units"] == "angstrom"
        assert beam["incident_energy"][()] == pytest.approx(HC_EV_ANGSTROM, rel=1e-6)
        assert f["entry/sample"].attrs["NX_class"] == "NXsample"
        stages = list(load_pipeline(doc).stages)
        for k, name in enumerate(stages, start=1):
            process = f[f"entry/process_{name}"]
            assert process.attrs["NX_class"] == "NXprocess" and process["sequence_index"][()] == k
            assert process["version"].attrs["package"] == "lightpipe"
        threshold = f["entry/process_photons/parameters/threshold"]
        assert threshold[()] == 6.0 and threshold.attrs["units"] == "counts"
        assert f["entry/process_binned/program"][()] == b"bin"


def test_an_axis_that_is_the_same_for_every_frame_is_stored_once(tmp_path: Path) -> None:
    scan = _run(_small("powder-profile.yaml"), tmp_path)
    with h5py.File(scan.files[0], "r") as f:
        profile = f["entry/profile"]
        assert profile["profile"].shape == (6, 150) and profile["radius"].shape == (150,)
        assert list(profile.attrs["axes"]) == ["index", "radius"] and profile["radius"].attrs["units"] == "pixel"
        assert f.attrs["default"] == "entry" and f["entry"].attrs["default"] == "pattern"
        pattern = f["entry/pattern"]
        assert pattern.attrs["signal"] == "intensity" and list(pattern.attrs["axes"]) == ["radius"]
        # the powder pattern is the mean of the frames' profiles, bin by bin
        rows = profile["profile"][()]
        finite = np.isfinite(rows).sum(axis=0)
        mean = np.where(finite > 0, np.nansum(rows, axis=0) / np.maximum(finite, 1), np.nan)
        assert np.isnan(mean).any() and not np.isnan(mean).all()  # rings outside the small frame have no pixels
        assert np.allclose(pattern["intensity"][()], mean, equal_nan=True)


def test_a_stage_whose_constant_output_changes_fails_the_scan_saying_which(tmp_path: Path) -> None:
    doc = _small("powder-profile.yaml", darks=0)
    doc["stages"] = {"drift": {"use": "stages_for_tests:DriftingAxis"}}
    doc["sinks"] = [{"use": "nexus", "fields": ["drift.profile", "drift.bins"]}]
    scan = _run(doc, tmp_path)
    assert scan.ledger.state == "failed"
    assert "drift.bins is declared the same for every event" in str(scan.ledger.error)


def test_the_sink_parameter_default_picks_the_plot(tmp_path: Path) -> None:
    doc = _small("powder-profile.yaml")
    doc["sinks"] = [{**doc["sinks"][0], "params": {"default": "powder.sum"}}]
    with h5py.File(_run(doc, tmp_path).files[0], "r") as f:
        assert f["entry"].attrs["default"] == "powder" and f["entry/powder"].attrs["signal"] == "sum"


def test_a_default_plot_the_sink_does_not_write_is_refused_when_the_pipeline_loads() -> None:
    doc = _small("powder-profile.yaml")
    doc["sinks"] = [{**doc["sinks"][0], "params": {"default": "dark.mean"}}]
    with pytest.raises(PipelineError, match="'dark.mean' is not among the fields this sink writes"):
        load_pipeline(doc)


def test_names_nexus_reserves_are_refused_unless_they_mean_what_nexus_means() -> None:
    doc = _small("powder-profile.yaml", darks=0)
    doc["stages"] = {"u": {"use": "stages_for_tests:Uncertain"}}
    doc["sinks"] = [{"use": "nexus", "fields": ["u.total", "u.total_errors", "u.errors"]}]
    with pytest.raises(PipelineError) as caught:
        load_pipeline(doc)
    assert "NeXus reserves 'errors'" in str(caught.value) and "total_errors" not in str(caught.value)
    doc["sinks"] = [{"use": "nexus", "fields": ["u.total", "u.total_errors"]}]
    load_pipeline(doc)  # the uncertainty of 'total' is what NeXus means by total_errors


def test_no_registered_stage_or_source_output_uses_a_reserved_name() -> None:
    assert set(RESERVED_NAMES) == {"errors", "signal", "axes"}
    offending = []
    for group in ("stages", "sources"):
        for name, cls in registry.load_all(group).items():
            ports = {f"{name}.{out}": port for out, port in cls.outputs.items()}
            offending += [key for key in ports if reserved_problem(key, ports)]
    assert offending == []
