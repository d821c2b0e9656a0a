"""Every pipeline in pipelines/ has a header, validates, and runs as it stands."""
from __future__ import annotations

from pathlib import Path

import pytest

from lightpipe import load_pipeline
from lightpipe.engines.local import LocalEngine

PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml"))


def test_there_are_example_pipelines() -> None:
    assert len(PIPELINES) >= 2


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_example_pipeline_runs(path: Path, tmp_path: Path) -> None:
    lines = path.read_text().splitlines()
    header = [line for line in lines[: next(i for i, l in enumerate(lines) if not l.startswith("#"))]]
    assert len(header) >= 2, f"{path.name} needs a comment header saying what it does"
    pipeline = load_pipeline(path)
    doc = dict(pipeline.document)
    if doc["source"]["use"] == "simulated_frames":  # keep the test quick; the header's command runs the full size
        doc["source"] = {**doc["source"], "params": {**doc["source"].get("params", {}), "frames": 12}}
        pipeline = load_pipeline(doc, file=str(path))
    with LocalEngine() as engine:
        report = engine.run(pipeline, tmp_path)
    for scan in report.scans:
        assert scan.ledger.failed == [], scan.ledger.failed[:3]
        assert scan.ledger.written == scan.ledger.received > 0
    assert report.files and all(f.exists() for f in report.files)
