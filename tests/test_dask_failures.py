"""Failure is local on the Dask engine: a killed worker's tasks run elsewhere, once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import h5py
import numpy as np
import pytest

from lightpipe import LightpipeError, load_pipeline
from lightpipe.engines.dask import LOCAL_CLUSTER_CONFIG, AllocatorPlugin, DaskEngine, make_cluster
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation
from processes import stop_process

pytestmark = pytest.mark.dask

SIM = {"frames": 30, "darks": 0, "flats": 0, "shape": [24, 24], "seed": 11}


def test_killed_worker_is_replaced_and_nothing_is_counted_twice(tmp_path: Path) -> None:
    sim = FrameSimulation(FrameSimParams(**SIM))
    victim = 17
    doc = {
        "version": 1, "name": "crash",
        "source": {"use": "simulated_frames", "params": SIM},
        "stages": {
            "crash": {"use": "stages_for_tests:CrashOnce",
                      "params": {"marker": str(tmp_path / "killed"), "index_sum": float(sim.frame(victim)[1].sum())}},
            "s": {"use": "frame_scalars"},
        },
        "sinks": [{"use": "nexus", "fields": ["crash.frame", "s.total"]}],
    }
    # a cluster of its own: this test kills one of its workers
    client, cluster = make_cluster(None, n_workers=2, threads_per_worker=1)
    try:
        # the workers run with lightpipe's quieter housekeeping (LOCAL_CLUSTER_CONFIG)
        seen = client.run(lambda: {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG})
        assert all(config == LOCAL_CLUSTER_CONFIG for config in seen.values())
        with DaskEngine(client=client, chunk_size=4) as engine:
            scan = engine.run(load_pipeline(doc), tmp_path / "out").scans[0]
    finally:
        client.close()
        cluster.close()
    assert (tmp_path / "killed").exists()  # the worker really died
    assert (scan.ledger.received, scan.ledger.written, scan.ledger.failed) == (30, 30, [])
    with h5py.File(scan.files[0]) as f:
        frames = f["entry/crash/frame"][()]
        totals = f["entry/s/total"][()]
        assert np.array_equal(f["entry/events/index"][()], np.arange(30))
    for i in range(30):
        assert np.array_equal(frames[i], sim.frame(i)[1])
    assert np.array_equal(totals, frames.reshape(30, -1).sum(axis=1).astype(float))


def test_cluster_argument_errors_say_what_to_use() -> None:
    with pytest.raises(LightpipeError, match="neither a scheduler address"):
        make_cluster("slurmm", 1, 1)
    with pytest.raises(LightpipeError, match="cannot build a slurm cluster from your Dask configuration"):
        make_cluster("slurm", 1, 1)  # no cores/memory configured here


def test_scheduler_address_is_accepted(dask_client: Any, tmp_path: Path) -> None:
    doc = {"version": 1, "name": "a", "source": {"use": "simulated_frames", "params": {**SIM, "frames": 6}},
           "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]}
    with DaskEngine(cluster=dask_client.scheduler.address) as engine:
        scan = engine.run(load_pipeline(doc), tmp_path).scans[0]
    assert scan.ledger.written == 6
    # workers lightpipe did not start still get the allocator settings, through a worker plugin
    has_plugin = dask_client.run(lambda dask_worker: AllocatorPlugin.name in dask_worker.plugins)
    assert list(has_plugin.values()) == [True, True]


def test_workers_lightpipe_did_not_start_run_stages_at_one_blas_thread(tmp_path: Path) -> None:
    """A worker started by hand (or by a batch system) with two BLAS threads computes at the stages' one."""
    from distributed import Client

    from lightpipe.core.blas import STAGE_BLAS_THREADS

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    scheduler_file = tmp_path / "scheduler.json"
    started = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not (scheduler_file.exists() and "address" in scheduler_file.read_text()):
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        started.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
                                         "--no-dashboard", "--no-nanny"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        with Client(address) as client:
            client.wait_for_workers(1, timeout=60)

            def blas_threads() -> list[int]:
                from threadpoolctl import threadpool_info

                return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})

            assert list(client.run(blas_threads).values()) == [[2]]  # as the worker was started
            doc = {"version": 2, "name": "a", "source": {"use": "simulated_frames", "params": {**SIM, "frames": 6}},
                   "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]}
            with DaskEngine(cluster=address) as engine:
                assert engine.run(load_pipeline(doc), tmp_path).scans[0].ledger.written == 6
            # on a thread of the worker, where chunks run, as on its main thread: the stages' count
            threads = client.submit(blas_threads, pure=False).result()
            assert threads == [STAGE_BLAS_THREADS] and list(client.run(blas_threads).values()) == [threads]
    finally:
        for process in reversed(started):
            stop_process(process)
