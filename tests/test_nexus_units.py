"""Every field the NeXus sink writes carries ``@units`` from its port's declared unit."""
from __future__ import annotations

from pathlib import Path

import h5py

from lightpipe import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.sinks.nexus import NEXUS_UNITS

PIPELINE = Path(__file__).parents[1] / "pipelines" / "dark-flat-correction.yaml"


def test_written_fields_carry_the_units_of_their_ports(tmp_path: Path) -> None:
    doc = dict(load_pipeline(PIPELINE).document)
    doc["source"] = {"use": "simulated_frames", "params": {"frames": 6, "darks": 3, "flats": 3, "shape": [256, 256]}}
    pipeline = load_pipeline(doc)
    with LocalEngine() as engine:
        (scan,) = engine.run(pipeline, tmp_path).scans
    (sink,) = pipeline.sinks
    expected = {key: pipeline.ports[key].unit for key in sink.fields if pipeline.ports[key].unit}
    assert {"scalars.com_x": "px", "roi.sum": "counts"}.items() <= expected.items()
    with h5py.File(scan.files[0], "r") as f:
        for key, unit in expected.items():
            group, _, name = key.partition(".")
            assert f[f"entry/{group}/{name}"].attrs["units"] == NEXUS_UNITS.get(unit, unit), key
        assert f["entry/scalars/com_x"].attrs["units"] == "pixel"  # as NeXus spells it
        assert "units" not in f["entry/events/index"].attrs  # a row number has no unit
