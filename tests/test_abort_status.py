"""`lightpipe status` and `lightpipe abort` against a real running pipeline on a live stream."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.control import ControlClient, ControlServer
from lightpipe.core.topology import Topology
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource
from lightpipe.core.output import NOT_PROCESSED, WRITTEN


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_status_shows_the_components_and_abort_stops_only_the_current_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGHTPIPE_RUNTIME_DIR", str(tmp_path / "run"))
    frames = FrameSource.from_simulator("simulated_frames", {"frames": 16, "darks": 0, "flats": 0, "shape": [64, 64]})
    with EigerSimulator(frames, stream_port=0, rest_port=0, rate_hz=100.0) as sim:
        pipeline = load_pipeline({
            "version": 1, "name": "watched",
            "source": {"use": "eiger", "params": {"endpoint": sim.stream_endpoint, "max_scans": 2}},
            "stages": {"s": {"use": "frame_scalars"}},
            "sinks": [{"use": "nexus"}],
            "engine": {"chunk_size": 4, "chunk_seconds": 0.1},
        })
        topology = Topology(pipeline.name)
        reports: list[Any] = []

        def run() -> None:
            with LocalEngine() as engine:
                reports.append(engine.run(pipeline, tmp_path / "out", topology=topology))

        def acquire() -> None:
            sim.acquire(300)  # 3 s at 100 Hz: aborted long before it ends
            sim.acquire(20)

        with ControlServer(topology) as server:
            runner = threading.Thread(target=run, daemon=True)
            runner.start()
            threading.Thread(target=acquire, daemon=True).start()
            client = ControlClient()
            (info,) = client.discover()
            assert info.endpoint == server.endpoint and info.pipeline == "watched"
            _wait(lambda: topology.scan is not None and topology["stage:s"].snapshot()["events_out"] >= 8)

            snap = client.status(info.endpoint)
            names = {c["name"]: c for c in snap["components"]}
            assert {"engine", "source", "receiver", "buffer", "stage:s", "sink:0:nexus"} <= names.keys()
            assert names["receiver"]["state"] == "running" and names["receiver"]["events_in"] >= 8
            assert snap["scan"]["name"] == "series_000001" and names["stage:s"]["state"] == "running"
            assert names["stage:s"]["events_out"] >= 8 and names["source"]["events_out"] >= 8

            client.abort(info.endpoint, "wrong sample", token=info.token)
            runner.join(20)
            assert not runner.is_alive()
    (report,) = reports
    first, second = report.scans
    assert first.ledger.state == "aborted" and "wrong sample" in str(first.ledger.error)
    assert first.ledger.received == first.ledger.written + len(first.ledger.failed) < 300
    with h5py.File(first.files[0]) as f:
        assert f["entry/process/state"][()] == b"aborted"
        # each row says what became of its event: 0 written, 2 never processed (no event failed here)
        status, total = f["entry/events/status"][()], f["entry/s/total"][()]
        assert len(status) == 300 and f["entry/events/status"].attrs["not_processed"] == NOT_PROCESSED
        assert np.count_nonzero(status == WRITTEN) == first.ledger.written
        assert np.count_nonzero(status == NOT_PROCESSED) == 300 - first.ledger.written
        assert np.isfinite(total[status == WRITTEN]).all() and np.isnan(total[status != WRITTEN]).all()
    # the pipeline was ready for the next series without a restart
    assert second.ledger.state == "completed" and second.ledger.written == 20
    assert not list((tmp_path / "run").glob("*.json"))  # the run file is gone with the server


def test_a_receiver_that_stops_beating_is_reported_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTPIPE_RUNTIME_DIR", str(tmp_path / "run"))
    frames = FrameSource.from_simulator("simulated_frames", {"frames": 8, "darks": 0, "flats": 0, "shape": [32, 32]})
    with EigerSimulator(frames, stream_port=0, rest_port=0, rate_hz=50.0) as sim:
        pipeline = load_pipeline({
            "version": 1, "name": "dying",
            "source": {"use": "eiger", "params": {"endpoint": sim.stream_endpoint, "max_scans": 1}},
            "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}],
        })
        topology = Topology(pipeline.name)
        engine = LocalEngine()
        runner = threading.Thread(target=lambda: engine.run(pipeline, tmp_path / "out", topology=topology), daemon=True)
        runner.start()
        threading.Thread(target=sim.acquire, args=(500,), daemon=True).start()
        _wait(lambda: "receiver" in topology and topology["receiver"].snapshot()["events_in"] > 3)
        with ControlServer(topology) as server:
            client = ControlClient()
            assert {c["name"]: c["state"] for c in client.status(server.endpoint)["components"]}["receiver"] == "running"
            import gc

            receiver = next(o for o in gc.get_objects() if type(o).__name__ == "Receiver")
            receiver._handle = lambda parts: time.sleep(8)  # the receiver thread hangs on its next message
            _wait(lambda: topology.snapshot()["components"] and any(
                c["name"] == "receiver" and c["state"] == "failed" and "missed heartbeats" in c["detail"]
                for c in client.status(server.endpoint)["components"]), timeout=5)
            client.abort(server.endpoint, "receiver died", token=server.token)
            runner.join(10)
            assert not runner.is_alive()
