"""Jobs of the service, in processes of their own: the same result file as ``lightpipe run``, cancel and abort
through the control channel, a job that fails mid-way, and jobs left running by a server that stopped."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from sqlalchemy import select

from lightpipe.cli.main import main as lightpipe_main
from lightpipe.service.db.models import Job
from lightpipe.service.db.session import transaction
from lightpipe.service.jobs import JobRunner
from lightpipe.service.settings import ServiceSettings
from lightpipe.simulators.frames import FrameSimParams, write_nxmx
from test_service_api import POWDER, REPO, RunningService, make_data

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


def test_abort_and_cancel_go_through_the_control_channel(service: RunningService) -> None:
    slow = POWDER.replace("stages:", "engine: {chunk_size: 1}\nstages:", 1)
    user = service.token("hana")
    with service.client(service.admin) as c:
        assert c.post("/pipelines", json={"yaml": slow}).status_code == 201
    with service.client(user) as c:
        job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/long_master.h5"}).json()
        _wait_for(lambda: c.get(f"/jobs/{job['id']}").json()["progress"]["written"] > 20)
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
    with h5py.File(service.settings.jobs_dir / job["id"] / "long.nxs", "r", locking=False) as f:
        assert f["entry/process/state"][()] == b"aborted"


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
