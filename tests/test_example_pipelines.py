"""Every pipeline in pipelines/ has a header, validates, and runs as it stands."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lightpipe import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource

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
    params = doc["source"].get("params", {})
    simulator = None
    if doc["source"]["use"] == "simulated_frames":  # keep the test quick; the header's command runs the full size
        doc["source"] = {**doc["source"], "params": {**params, "frames": 12}}
    elif doc["source"]["use"] == "ptycho_sim":  # a small scan and a short engine chain
        doc["source"] = {**doc["source"], "params": {**params, "n_positions": 16}}
        for stage in doc["stages"].values():
            if "chain" in stage.get("params", {}):
                stage["params"] = {**stage["params"], "chain": "DM:5, ML:2"}
    elif doc["source"]["use"] == "eiger":  # a simulated detector streams one series of 12 frames
        simulator = EigerSimulator(FrameSource.from_simulator(), stream_port=0, rest_port=0).start()
        doc["source"] = {**doc["source"], "params": {**params, "endpoint": simulator.stream_endpoint, "max_scans": 1}}
        threading.Thread(target=simulator.acquire, args=(12,), daemon=True).start()
    for sink in doc.get("sinks", []):
        if sink["use"] == "lavue":  # any free port: the example's port may be taken on this machine
            sink["params"] = {**sink.get("params", {}), "port": 0}
    pipeline = load_pipeline(doc, file=str(path))
    try:
        with LocalEngine() as engine:
            report = engine.run(pipeline, tmp_path)
    finally:
        if simulator is not None:
            simulator.stop()
    for scan in report.scans:
        assert scan.ledger.failed == [], scan.ledger.failed[:3]
        assert scan.ledger.written == scan.ledger.received > 0
    assert report.files and all(f.exists() for f in report.files)
