"""Jobs of the service, in processes of their own: the same result file as ``lightpipe run``, cancel (a stop) and
abort through the control channel, a live job cancelled while it waits, a job that fails mid-way, and jobs left
running by a server that stopped."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from lightpipe.cli.main import main as lightpipe_main
from lightpipe.service.db.models import Job
from lightpipe.service.db.session import transaction
from lightpipe.service.jobs import JobRunner
from lightpipe.service.settings import ServiceSettings
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource
from lightpipe.simulators.frames import FrameSimParams, write_nxmx
from service_harness import POWDER, REPO, RunningService, importable_by_jobs, make_data

#: Strings that differ between any two runs: when and with which process the file was made.
RUN_STAMPS = ("start_time", "end_time", "date", "pipeline", "version", "program")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_data(root)
    # long enough to abort while it runs: many chunks of one event
    long = FrameSimParams(name="long", frames=1500, darks=8, flats=0, shape=(128, 128), photons=50.0, seed=5)
    write_nxmx(root / "visit1" / "long_master.h5", long, frames_per_file=500)
    return root


@pytest.fixture()
def service(tmp_path: Path, data: Path) -> Iterator[RunningService]:
    running = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=data))
    try:
        yield running
    finally:
        running.close()


def _datasets(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and name.rsplit("/", 1)[-1] not in RUN_STAMPS:
            found[name] = item[()]

    with h5py.File(path, "r", locking=False) as f:
        f.visititems(visit)
    return found


def test_a_submitted_job_writes_the_file_lightpipe_run_writes(service: RunningService, data: Path,
                                                               tmp_path: Path) -> None:
    with service.client(service.admin) as c:
        assert c.post("/pipelines", json={"yaml": POWDER}).status_code == 201
        job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5"}).json()
    done = service.wait(service.admin, job["id"])
    assert done["state"] == "completed", done["error"]
    assert "simulated_frames" not in done["yaml"] and "scan_master.h5" in done["yaml"]
    # the job ran below the server's priority, so that the server answers promptly while jobs take the cores
    with service.client(service.admin) as c:
        log = " ".join(line["message"] for line in c.get(f"/jobs/{job['id']}/log").json()["lines"])
    niceness = min(os.nice(0) + service.settings.job_niceness, 19)
    assert service.settings.job_niceness == 5 and f"(niceness {niceness})" in log, log
    ran = tmp_path / "run"
    assert lightpipe_main(["run", str(REPO / "pipelines" / "powder-profile.yaml"), "--input",
                           str(data / "visit1" / "scan_master.h5"), "-o", str(ran), "-q"]) == 0
    served, direct = _datasets(service.settings.jobs_dir / job["id"] / "scan.nxs"), _datasets(ran / "scan.nxs")
    assert served.keys() == direct.keys() and len(served) > 20
    for name, value in direct.items():
        assert np.array_equal(served[name], value, equal_nan=np.asarray(value).dtype.kind == "f"), name
        assert np.asarray(served[name]).dtype == np.asarray(value).dtype, name


def _wait_for(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_abort_and_cancel_go_through_the_control_channel(service: RunningService,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    importable_by_jobs(monkeypatch)
    # 5 ms more per frame: 1500 frames take seconds more than the test needs to cancel, on any machine
    slow = POWDER.replace("stages:", "engine: {chunk_size: 1}\nstages:", 1).replace(
        "  photons:\n    use: threshold\n", "  wait:\n    use: stages_for_tests:Sleep\n    params: {seconds: 0.005}\n"
        "    inputs: {frame: corrected.frame}\n  photons:\n    use: threshold\n    inputs: {frame: wait.frame}\n", 1)
    assert "stages_for_tests:Sleep" in slow
    user = service.token("hana")
    with service.client(service.admin) as c:
        assert c.post("/pipelines", json={"yaml": slow}).status_code == 201
    with service.client(user) as c:
        job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/long_master.h5"}).json()
        # the rate is measured over a second or more of the job
        _wait_for(lambda: (p := c.get(f"/jobs/{job['id']}").json()["progress"])["written"] > 20 and p["rate"] > 0)
        running = _scrape(c)  # the job's series, from the row its process writes every half second
        series = (("job", job["id"]), ("pipeline", "powder-profile"))
        assert running[("lightpipe_jobs", (("state", "running"),))] == 1
        assert running[("lightpipe_job_events_written", series)] > 20
        assert running[("lightpipe_job_events_received", series)] >= running[("lightpipe_job_events_written", series)]
        assert running[("lightpipe_job_events_failed", series)] == 0
        assert running[("lightpipe_job_events_per_second", series)] > 0
        assert running[("lightpipe_job_lag_seconds", series)] == 0  # a file: never behind
        assert 0 <= running[("lightpipe_job_buffer_fill", series)] <= 1
        status_reads = (("method", "GET"), ("route", "/api/v1/jobs/{job_id}"), ("status", "200"))
        assert running[("lightpipe_http_requests_total", status_reads)] >= 1  # by the route's whole template
        topo = c.get(f"/jobs/{job['id']}/topology").json()
        assert topo["reachable"] and {comp["name"] for comp in topo["components"]} >= {"engine", "buffer"}
        assert [j["id"] for j in c.get("/topology").json()["jobs"]] == [job["id"]]
        r = c.post(f"/jobs/{job['id']}/cancel", json={"reason": "wrong sample"})
        assert r.status_code == 200 and r.json()["cancel_requested"]
    done = service.wait(user, job["id"])
    assert done["state"] == "cancelled"
    with service.client(user) as c:
        (scan,) = c.get(f"/jobs/{job['id']}/scans").json()
        assert scan["state"] == "aborted" and "wrong sample" in scan["error"]
        assert 0 < scan["written"] < 1500 and scan["written"] + scan["failed"] == scan["received"]
        failed = c.get(f"/jobs/{job['id']}/failed").json()
        assert failed["total"] == scan["failed"]
        log = c.get(f"/jobs/{job['id']}/log").json()
        assert {"service", "job"} <= set(log["components"])
        ended = _scrape(c)
        assert ended[("lightpipe_jobs", (("state", "cancelled"),))] == 1
        assert not any(dict(labels).get("job") for _, labels in ended)  # an ended job has no series
        assert ended[("lightpipe_events_written_total", ())] == scan["written"]
        assert ended[("lightpipe_events_failed_total", ())] == scan["failed"]
    with h5py.File(service.settings.jobs_dir / job["id"] / "long.nxs", "r", locking=False) as f:
        assert f["entry/process/state"][()] == b"aborted"


def _scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the service's ``/metrics``, keyed by name and sorted labels."""
    r = client.get(f"{client.base_url.scheme}://{client.base_url.netloc.decode()}/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


@pytest.mark.parametrize("how", ["api", "flag"])
def test_cancelling_a_live_job_that_waits_for_its_next_series_ends_it(service: RunningService, how: str) -> None:
    """``api``: the service stops the job through its control channel. ``flag``: only the job's
    ``cancel_requested`` flag is set, as for a job cancelled before its channel was up; it stops itself."""
    frames = FrameSource.from_simulator("simulated_frames", {"frames": 4, "darks": 0, "flats": 0, "shape": [32, 32]})
    with EigerSimulator(frames, stream_port=0, rest_port=0) as sim, service.client(service.admin) as c:
        assert c.post("/pipelines", json={"yaml": POWDER}).status_code == 201
        stream = sim.stream_endpoint.replace("tcp://", "eiger://")
        job = c.post("/jobs", json={"pipeline": "powder-profile", "stream": stream}).json()

        def waiting() -> bool:
            topo = c.get(f"/jobs/{job['id']}/topology").json()
            return bool(topo["reachable"]) and "receiver" in {comp["name"] for comp in topo["components"]}

        _wait_for(waiting)  # no series comes: without a stop, the job would wait for ever
        t0 = time.monotonic()
        if how == "api":
            r = c.post(f"/jobs/{job['id']}/cancel", json={"reason": "beamtime over"})
            assert r.status_code == 200 and r.json()["cancel_requested"]
        else:
            with transaction(service.app.state.sessions) as session:
                session.get(Job, job["id"]).cancel_requested = True
        _wait_for(lambda: c.get(f"/jobs/{job['id']}").json()["state"] != "running", timeout_s=10)
        took = time.monotonic() - t0
        done = c.get(f"/jobs/{job['id']}").json()
        assert done["state"] == "cancelled" and done["error"] == "" and took < 3.0
        assert c.get(f"/jobs/{job['id']}/scans").json() == []
        reason = "beamtime over" if how == "api" else "the job was cancelled"
        messages = [line["message"] for line in c.get(f"/jobs/{job['id']}/log").json()["lines"]]
        assert any(f"the run was stopped after 0 scans: {reason}" in m for m in messages)


def test_a_job_that_fails_keeps_its_record_and_says_why(service: RunningService, data: Path) -> None:
    doomed = data / "visit1" / "doomed_master.h5"
    write_nxmx(doomed, FrameSimParams(name="doomed", frames=40, darks=8, flats=0, shape=(64, 80), seed=1),
               frames_per_file=16)
    (doomed.parent / "doomed_data_000003.h5").unlink()  # a data file lost after the acquisition
    with service.client(service.admin) as c:
        assert c.post("/pipelines", json={"yaml": POWDER}).status_code == 201
        job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/doomed_master.h5"}).json()
        done = service.wait(service.admin, job["id"])
        assert done["state"] == "failed" and "doomed_data_000003.h5" in done["error"]
        log = c.get(f"/jobs/{job['id']}/log", params={"level": "error"}).json()
        assert any("doomed_data_000003.h5" in line["message"] for line in log["lines"])
        assert [j["state"] for j in c.get("/jobs").json()["items"]] == ["failed"]


ODD_FRAMES = """\
version: 2
name: odd-frames
source: {use: simulated_frames}
stages:
  refuse: {use: "service_harness:RefuseOddFrames", inputs: {frame: source.frame}}
  scalars: {use: frame_scalars, inputs: {frame: refuse.frame}}
sinks:
  - {use: nexus, fields: [scalars.total]}
"""
NO_CALIBRATION = """\
version: 2
name: no-calibration
source: {use: simulated_frames}
stages:
  check: {use: "service_harness:NoCalibration", inputs: {frame: source.frame}}
sinks:
  - {use: nexus, fields: [check.frames]}
"""


def test_failed_events_are_listed_and_a_failed_scan_fails_the_job(service: RunningService, data: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    importable_by_jobs(monkeypatch)
    with h5py.File(data / "visit1" / "scan_master.h5", "r", locking=False) as f:
        group = f["entry/data"]
        frames = np.concatenate([group[name][()] for name in sorted(group) if name.startswith("data_")])
        first = len(f["entry/dark/data"]) + len(f["entry/flat/data"])  # darks and flats are acquired first
    odd = {i for i, frame in enumerate(frames) if int(frame.sum()) % 2}  # rows of the data stream
    assert 0 < len(odd) < len(frames)  # the seeded data has both kinds
    user = service.token("iris")
    service.register(ODD_FRAMES)
    service.register(NO_CALIBRATION)
    with service.client(user) as c:  # both run at once (max_running_jobs 2)
        some = c.post("/jobs", json={"pipeline": "odd-frames", "dataset": "visit1/scan_master.h5"}).json()
        whole = c.post("/jobs", json={"pipeline": "no-calibration", "dataset": "visit1/scan_master.h5"}).json()
    done = service.wait(user, some["id"])
    assert done["state"] == "completed" and done["error"] == ""  # failed events do not fail the job
    assert done["progress"]["failed"] == len(odd) and done["progress"]["written"] == len(frames) - len(odd)
    with service.client(user) as c:
        (scan,) = c.get(f"/jobs/{some['id']}/scans").json()
        assert scan["state"] == "completed" and scan["failed"] == len(odd)
        failed = c.get(f"/jobs/{some['id']}/failed", params={"limit": 1000}).json()
        assert failed["total"] == len(odd) and {e["index"] - first for e in failed["items"]} == odd
        assert all(e["stage"] == "refuse" and e["stream"] == "data" and e["scan"] == "scan"
                   and f"frame sum {int(frames[e['index'] - first].sum())} is odd" in e["message"]
                   for e in failed["items"])
        total = c.get(f"/jobs/{some['id']}/scans/scan/outputs/scalars.total").json()["data"]
        assert [i for i, value in enumerate(total) if value is None] == sorted(odd)  # failed rows are NaN
    with h5py.File(service.settings.jobs_dir / some["id"] / "scan.nxs", "r", locking=False) as f:
        assert f["entry/process/state"][()] == b"completed"

    ended = service.wait(user, whole["id"])
    assert ended["state"] == "failed" and "no calibration for this scan (40 frames seen)" in ended["error"]
    with service.client(user) as c:
        (scan,) = c.get(f"/jobs/{whole['id']}/scans").json()
        assert scan["state"] == "failed" and "no calibration" in scan["error"] and scan["files"] == ["scan.nxs"]
        log = c.get(f"/jobs/{whole['id']}/log", params={"level": "error"}).json()
        assert any("no calibration" in line["message"] for line in log["lines"])
    with h5py.File(service.settings.jobs_dir / whole["id"] / "scan.nxs", "r", locking=False) as f:
        assert f["entry/process/state"][()] == b"failed"
        assert "no calibration" in f["entry/process/error"][()].decode()


def test_jobs_left_running_by_a_stopped_server_are_interrupted(service: RunningService) -> None:
    sessions = service.app.state.sessions
    with service.client(service.admin) as c:
        assert c.post("/pipelines", json={"yaml": POWDER}).status_code == 201
        job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5"}).json()
    service.wait(service.admin, job["id"])
    runner = service.app.state.service.runner
    _wait_for(lambda: not runner.processes)
    with transaction(sessions) as session:  # as a server killed while the job ran leaves it
        session.get(Job, job["id"]).state = "running"
    service.close()
    settings = service.settings
    restarted = JobRunner(sessions, settings.database, settings.runtime_dir)
    restarted.start()
    restarted.stop()
    with transaction(sessions) as session:
        left = session.scalars(select(Job)).all()
        assert [(j.id, j.state) for j in left] == [(job["id"], "interrupted")]
        assert "service stopped" in left[0].error and left[0].written == 48  # the record is kept
