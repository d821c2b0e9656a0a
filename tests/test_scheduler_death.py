"""A Dask scheduler that dies mid-scan: the scan is closed as failed and keeps what was written.

The cluster is the one of docs/deploying.md ("A scheduler started by hand"): a real
``dask scheduler`` and two ``dask worker`` processes on localhost, and ``lightpipe run
--cluster tcp://...`` as a real process. Killing the scheduler (SIGKILL: a crashed node, no
goodbye) leaves the driver with futures that can never finish; the driver must notice, close
the scan as failed and leave a result file that says so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from lightpipe.simulators.frames import FrameSimParams, FrameSimulation
from processes import stop_process

pytestmark = [pytest.mark.dask, pytest.mark.slow]

TESTS = Path(__file__).parent
FRAMES = 80
SIM = {"name": "slow", "frames": FRAMES, "darks": 0, "flats": 0, "shape": [32, 32], "seed": 5}
#: Seconds per event: two workers need about FRAMES / 2 * SLEEP_S = 4 s for the scan, time to kill
#: the scheduler once some chunks are written and many are still to come.
SLEEP_S = 0.1


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # the workers import the test stages (stages_for_tests:Sleep) by module name
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    # Dask's default is to retry a lost scheduler for 30 s; 5 s keeps the test short
    env["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "5s"
    return env


def _wait(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.1)


@pytest.fixture
def scheduler_and_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A ``dask scheduler`` and two ``dask worker`` processes, as docs/deploying.md starts them by hand."""
    env = _environment()
    scheduler_file = tmp_path / "scheduler.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            processes.append(subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=log, env=env))

    try:
        start("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file))
        _wait(lambda: scheduler_file.exists() and "address" in scheduler_file.read_text(), 60,
              "the scheduler to write its address")
        address = json.loads(scheduler_file.read_text())["address"]
        for i in (1, 2):
            # --death-timeout: a worker whose scheduler is gone ends by itself
            start(f"worker-{i}", "distributed.cli.dask_worker", address, "--name", f"worker-{i}", "--nthreads", "1",
                  "--no-dashboard", "--death-timeout", "10")
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield processes[0], address
    finally:
        for process in reversed(processes):
            stop_process(process)


def test_a_scheduler_that_dies_mid_scan_closes_the_scan_as_failed(
    tmp_path: Path, scheduler_and_workers: tuple[subprocess.Popen[bytes], str],
) -> None:
    scheduler, address = scheduler_and_workers
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(yaml.safe_dump({
        "version": 2, "name": "slow",
        "source": {"use": "simulated_frames", "params": SIM},
        "stages": {"wait": {"use": "stages_for_tests:Sleep", "params": {"seconds": SLEEP_S}},
                   "s": {"use": "frame_scalars", "inputs": {"frame": "wait.frame"}}},
        "sinks": [{"use": "nexus", "fields": ["s.total"]}],
    }, sort_keys=False))
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "lightpipe.cli.main", "run", str(pipeline), "-o", str(out), "--engine", "dask",
         "--cluster", address, "--chunk-size", "4", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_environment())
    try:
        # the workers write their composite files as chunks finish: some rows are written
        parts = out / "slow_parts"
        _wait(lambda: parts.is_dir() and len(list(parts.iterdir())) == 2 or driver.poll() is not None, 60,
              "both workers to write their first rows")
        time.sleep(4 * SLEEP_S * 2)  # a few chunks more
        if driver.poll() is not None:
            raise AssertionError("the scan ended before the scheduler could be killed:\n"
                                 + driver.communicate()[0].decode(errors="replace"))
        killed_at = time.monotonic()
        scheduler.send_signal(signal.SIGKILL)
        output, _ = driver.communicate(timeout=120)
        gave_up_s = time.monotonic() - killed_at
    finally:
        stop_process(driver)
    text = output.decode(errors="replace")
    # status 1, as for any failed scan (docs/deploying.md, "When the scheduler dies")
    assert driver.returncode == 1, f"lightpipe run ended with {driver.returncode} after its scheduler died:\n{text}"
    with h5py.File(out / "slow.nxs") as f:
        assert f["entry/process/state"][()] == b"failed", text
        assert b"scheduler" in f["entry/process/error"][()], "the file does not say why the scan failed"
        index = f["entry/events/index"][()]
        status = f["entry/events/status"][()]
        totals = f["entry/s/total"][()]
        received = int(f["entry/process"].attrs["received"])
        written = int(f["entry/process"].attrs["written"])
        failed = int(f["entry/process"].attrs["failed"])
        failed_index = f["entry/failed_events/index"][()]
    # every event once: the ones written before the death, and the rest failed with the reason, none twice
    assert len(set(index.tolist())) == len(index) == received
    assert 0 < written < received and written + failed == received
    assert written == int((status == 0).sum())
    assert sorted(failed_index.tolist()) == sorted(index[status != 0].tolist())
    sim = FrameSimulation(FrameSimParams(**SIM))
    for row in np.flatnonzero(status == 0):
        assert totals[row] == float(sim.frame(int(index[row]))[1].sum())
    print(f"scheduler killed with {written} of {FRAMES} events written; the driver gave up {gave_up_s:.1f} s later")
