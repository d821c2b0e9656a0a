"""`lightpipe status`, `abort` and `stop` against real running pipelines: a live stream, a watched folder and a
``lightpipe run`` process."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.control import RUNTIME_DIR_ENV, ControlClient, ControlServer
from lightpipe.core.hooks import RunHooks
from lightpipe.core.output import NOT_PROCESSED, WRITTEN
from lightpipe.core.report import ScanReport
from lightpipe.core.topology import Topology
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource
from lightpipe.simulators.frames import FrameSimParams, write_nxmx


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


# three long scans of one-event chunks: a stop comes while the first one runs
MULTI_SCAN = """
version: 1
name: multi
source:
  use: simulated_frames
  params: {name: sim, frames: 20000, darks: 0, flats: 0, shape: [64, 64], scans: 3}
stages:
  s: {use: frame_scalars}
sinks:
  - use: nexus
engine: {chunk_size: 1}
"""


def _lightpipe(*argv: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lightpipe.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_lightpipe_stop_aborts_the_current_scan_and_starts_no_other(tmp_path: Path) -> None:
    rundir, out = tmp_path / "run", tmp_path / "out"
    env = {**os.environ, RUNTIME_DIR_ENV: str(rundir)}
    (tmp_path / "multi.yaml").write_text(MULTI_SCAN)
    with _lightpipe("run", str(tmp_path / "multi.yaml"), "-o", str(out), "-q", env=env) as run:
        try:
            client = ControlClient()

            def running() -> bool:
                mine = [r for r in client.discover(rundir) if r.pid == run.pid]
                if not mine:
                    assert run.poll() is None, "the pipeline process ended before it was stopped"
                    return False
                components = {c["name"]: c for c in client.status(mine[0].endpoint)["components"]}
                return "stage:s" in components and components["stage:s"]["events_out"] >= 20

            _wait(running, timeout=60)
            with _lightpipe("stop", "--pid", str(run.pid), "--reason", "wrong sample", env=env) as stop:
                said, complaint = stop.communicate(timeout=30)
            said = " ".join(said.split())
            assert stop.returncode == 0, complaint
            assert f"stop requested: multi (pid {run.pid}" in said and "its scan sim_000 is aborted" in said
            _, err = run.communicate(timeout=30)
        finally:
            run.kill()  # nothing, once it has ended
    assert run.returncode == 0, err
    assert "stopped on request (wrong sample) after 1 scan" in " ".join(err.split())
    assert sorted(p.name for p in out.iterdir()) == ["sim_000.nxs"]  # no later scan was started
    with h5py.File(out / "sim_000.nxs") as f:
        assert f["entry/process/state"][()] == b"aborted"
        assert "wrong sample" in f["entry/process/error"][()].decode()
        status = f["entry/events/status"][()]
        assert 20 <= np.count_nonzero(status == WRITTEN) < 20000
    assert not list(rundir.glob("*.json"))


class _StopAfterFirstScan(RunHooks):
    """Asks the run to stop as its first scan closes: between two scans."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def scan_finished(self, report: ScanReport) -> None:
        self.topology.request_stop("enough")


def test_a_stop_between_scans_ends_the_run_with_the_scans_done(tmp_path: Path) -> None:
    pipeline = load_pipeline(MULTI_SCAN.replace("frames: 20000", "frames: 12"))
    topology = Topology(pipeline.name)
    with LocalEngine() as engine:
        report = engine.run(pipeline, tmp_path / "out", topology=topology, hooks=[_StopAfterFirstScan(topology)])
    assert [(s.scan, s.ledger.state, s.ledger.written) for s in report.scans] == [("sim_000", "completed", 12)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sim_000.nxs"]
    assert topology.snapshot()["stop"]["reason"] == "enough" and topology.scan is None


def _run_in_thread(pipeline: Any, topology: Topology, output: Path) -> tuple[threading.Thread, list[Any]]:
    """Run ``pipeline`` on the local engine in a thread; the list gets its report when it ends."""
    reports: list[Any] = []

    def run() -> None:
        with LocalEngine() as engine:
            reports.append(engine.run(pipeline, output, topology=topology))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    return runner, reports


def test_a_stop_ends_the_wait_of_a_watched_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "run"))
    watched = tmp_path / "watched"
    write_nxmx(watched / "first.h5", FrameSimParams(name="first", frames=6, darks=0, flats=0, shape=(32, 32)))
    poll_s = 2.0  # a stop must not wait for the next look at the folder
    pipeline = load_pipeline({
        "version": 1, "name": "watch",
        "source": {"use": "folder", "params": {"path": str(watched), "poll_s": poll_s, "settle_s": 0}},
        "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}],
    })
    topology = Topology(pipeline.name)
    with ControlServer(topology) as server:
        runner, reports = _run_in_thread(pipeline, topology, tmp_path / "out")
        _wait(lambda: topology.snapshot()["scan"]["scans_done"] == 1)  # the watch waits for the next file
        t0 = time.monotonic()
        assert ControlClient().stop(server.endpoint, "shift over", token=server.token) == {"ok": True, "scan": None}
        runner.join(10)
        took = time.monotonic() - t0
    assert not runner.is_alive() and took < poll_s / 2
    (report,) = reports
    assert [(s.scan, s.ledger.state) for s in report.scans] == [("first", "completed")]


def test_a_stop_ends_a_live_run_waiting_for_a_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "run"))
    frames = FrameSource.from_simulator("simulated_frames", {"frames": 10, "darks": 0, "flats": 0, "shape": [32, 32]})
    with EigerSimulator(frames, stream_port=0, rest_port=0) as sim:
        pipeline = load_pipeline({
            "version": 1, "name": "live",
            "source": {"use": "eiger", "params": {"endpoint": sim.stream_endpoint}},  # series until stopped
            "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}],
        })
        topology = Topology(pipeline.name)
        with ControlServer(topology):
            runner, reports = _run_in_thread(pipeline, topology, tmp_path / "out")
            sim.acquire(10)  # arm waits until the receiver has connected
            _wait(lambda: topology.snapshot()["scan"]["scans_done"] == 1)
            time.sleep(0.6)  # the source is back waiting for a header
            client = ControlClient()
            (info,) = client.discover()
            t0 = time.monotonic()
            assert client.stop(info.endpoint, "beamtime over", token=info.token)["scan"] is None
            runner.join(10)
            took = time.monotonic() - t0
            assert not runner.is_alive() and took < 2.0
            assert "receiver" not in topology  # the source stopped its receiver
    (report,) = reports
    assert [(s.scan, s.ledger.state, s.ledger.written) for s in report.scans] == [("series_000001", "completed", 10)]
