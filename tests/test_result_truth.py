"""The file tells the truth: one writer per result file, and whatever stops a scan, its state and each row's status.

Real ``lightpipe run`` processes are started, signalled (SIGINT, SIGTERM) and killed
(SIGKILL); a second run is pointed at the output of a first; the Dask variants run on
the shared LocalCluster and are stopped by a real SIGINT and a real abort request.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the frames are bitshuffle-LZ4 compressed)
import numpy as np
import pytest
import yaml

from lightpipe import load_pipeline
from lightpipe.control import ControlClient
from lightpipe.core.driver import ScanInterrupted
from lightpipe.core.hooks import ChunkDone, RunHooks
from lightpipe.core.topology import Topology
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation
from lightpipe.core.output import FAILED, NOT_PROCESSED, STATUS_CODES, WRITTEN

FRAMES = 300
SIM = {"frames": FRAMES, "darks": 0, "flats": 0, "shape": [32, 32], "seed": 5}
TESTS = Path(__file__).parent


def _pipeline_file(tmp_path: Path, seconds: float = 0.02) -> Path:
    """A pipeline slower than its source (``seconds`` per frame), writing frames and their totals."""
    doc = {
        "version": 1, "name": "slow",
        "source": {"use": "simulated_frames", "params": SIM},
        "stages": {"nap": {"use": "stages_for_tests:Sleep", "params": {"seconds": seconds}},
                   "s": {"use": "frame_scalars", "inputs": {"frame": "nap.frame"}}},
        "sinks": [{"use": "nexus", "fields": ["nap.frame", "s.total"]}],
        "engine": {"chunk_size": 4},
    }
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "LIGHTPIPE_RUNTIME_DIR": str(tmp_path / "run"), "COLUMNS": "200"}


def _start(tmp_path: Path, pipeline: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lightpipe.cli.main", "run", str(pipeline), "-o", str(out), "-q"],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_events(tmp_path: Path, process: subprocess.Popen[str], events: int, timeout: float = 60.0) -> None:
    """Wait until the run's ``nap`` stage has passed on ``events`` events, asking it as `lightpipe status` does."""
    client = ControlClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended early: {process.communicate()}"
        for info in client.discover(tmp_path / "run"):
            try:
                components = {c["name"]: c for c in client.status(info.endpoint)["components"]}
            except Exception:  # the run is still starting its control channel
                continue
            if components.get("stage:nap", {}).get("events_out", 0) >= events:
                return
        time.sleep(0.05)
    process.kill()
    process.communicate()
    raise AssertionError(f"the run did not process {events} events in {timeout} s")


def _totals() -> np.ndarray:
    sim = FrameSimulation(FrameSimParams(**SIM))
    return np.array([float(sim.frame(i)[1].sum()) for i in range(FRAMES)])


def _check_truth(path: Path, state: str, written: int | None = None) -> np.ndarray:
    """The file's state, and rows that are what their status says; returns the statuses."""
    with h5py.File(path, "r") as f:
        assert f["entry/process/state"][()].decode() == state
        status = f["entry/events/status"][()]
        codes = f["entry/events/status"].attrs
        assert {name: int(codes[name]) for name in STATUS_CODES.values()} == {v: k for k, v in STATUS_CODES.items()}
        totals = f["entry/s/total"][()]
        frames = f["entry/nap/frame"][()]
        assert f["entry/process"].attrs["written"] == np.count_nonzero(status == WRITTEN)
    assert set(np.unique(status)) <= {WRITTEN, FAILED, NOT_PROCESSED}
    if written is not None:
        assert np.count_nonzero(status == WRITTEN) == written
    done = status == WRITTEN
    # written rows hold the real results, the others the fill value and nothing else
    assert np.array_equal(totals[done], _totals()[done])
    assert np.array_equal(frames[done].reshape(done.sum(), -1).sum(axis=1), _totals()[done])
    assert np.isnan(totals[~done]).all() and not frames[~done].any()
    return status


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path: Path) -> None:
    # about 9 s of work left when the second run starts: its start-up takes seconds on a loaded machine
    pipeline, out = _pipeline_file(tmp_path, seconds=0.03), tmp_path / "out"
    first = _start(tmp_path, pipeline, out)
    try:
        _wait_for_events(tmp_path, first, 8)
        assert (out / ".simulated.nxs.partial").exists() and not (out / "simulated.nxs").exists()
        second = subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "run", str(pipeline), "-o", str(out),
                                 "-q"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
        message = " ".join(second.stderr.split())
        assert second.returncode == 2, second.stderr
        assert f"is being written by pipeline 'slow' (host {os.uname().nodename}, pid {first.pid}," in message
        assert "another output directory (-o)" in message
        assert first.poll() is None  # the refused run touched nothing of the first
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    status = _check_truth(out / "simulated.nxs", "completed", written=FRAMES)
    assert (status == WRITTEN).all()
    assert sorted(p.name for p in out.iterdir()) == ["simulated.nxs"]  # no lock, no partial file left


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_closes_the_scan_as_interrupted_and_keeps_what_was_processed(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    pipeline, out = _pipeline_file(tmp_path), tmp_path / "out"
    run = _start(tmp_path, pipeline, out)
    _wait_for_events(tmp_path, run, 12)
    run.send_signal(sig)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == code, stderr
    assert f"{sig.name}: scan simulated closed as interrupted" in " ".join(stderr.split())
    assert f"result: {out / 'simulated.nxs'}" in stdout
    status = _check_truth(out / "simulated.nxs", "interrupted")
    written = np.count_nonzero(status == WRITTEN)
    assert 12 <= written < FRAMES
    # the local engine writes in acquisition order: what was processed is the start of the scan
    assert (status[:written] == WRITTEN).all() and (status[written:] == NOT_PROCESSED).all()
    with h5py.File(out / "simulated.nxs", "r") as f:
        assert f["entry/process/error"][()].decode() == f"{sig.name} received"
        # events in flight at the stop are listed with the reason; never-received ones are only flagged
        assert set(f["entry/failed_events/stage"].asstr()[()]) <= {"scan"}
        assert set(f["entry/failed_events/index"][()]) <= set(np.flatnonzero(status == NOT_PROCESSED))
    assert sorted(p.name for p in out.iterdir()) == ["simulated.nxs"]


def test_a_killed_run_leaves_its_partial_file_and_a_rerun_says_what_to_do(tmp_path: Path) -> None:
    pipeline, out = _pipeline_file(tmp_path), tmp_path / "out"
    run = _start(tmp_path, pipeline, out)
    _wait_for_events(tmp_path, run, 8)
    run.kill()
    run.communicate(timeout=30)
    partial, lock = out / ".simulated.nxs.partial", out / ".simulated.nxs.lock"
    assert not (out / "simulated.nxs").exists()  # nothing under the result's name looks complete
    assert partial.exists() and lock.exists()
    with h5py.File(partial, "r") as f:  # readable, and it says the scan never closed
        assert f["entry/process/state"][()] == b"running"

    again = subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "run", str(pipeline), "-o", str(out), "-q"],
                           env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    message = " ".join(again.stderr.split())
    assert again.returncode == 2
    assert f"was left unfinished by pipeline 'slow' (host {os.uname().nodename}, pid {run.pid}," in message
    assert ("which no longer runs: it was killed before it could close the scan. "
            f"What it wrote is in {partial}") in message
    assert f"remove (or move away) {partial} and remove {lock}, then run again" in message
    assert partial.exists()  # the refusal kept the dead run's results

    partial.unlink()
    lock.unlink()
    rerun = subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "run", str(_pipeline_file(tmp_path, 0.0)),
                            "-o", str(out), "-q"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert (_check_truth(out / "simulated.nxs", "completed") == WRITTEN).all()


def test_a_stale_lock_without_a_partial_file_is_taken_over(tmp_path: Path) -> None:
    """A run that died between renaming its file and removing its lock blocks nobody."""
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = out / ".simulated.nxs.lock"
    lock.write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.stdout.strip()}, "pipeline": "slow", '
                    '"started": "earlier", "process_start": 0.0}')
    from lightpipe.engines.local import LocalEngine

    with LocalEngine() as engine:
        (scan,) = engine.run(load_pipeline(_pipeline_file(tmp_path, 0.0)), out).scans
    assert scan.ledger.state == "completed" and not lock.exists()
    assert (_check_truth(out / "simulated.nxs", "completed") == WRITTEN).all()


class _After(RunHooks):
    """Does ``action`` once, when the ``chunks``-th chunk is collected."""

    def __init__(self, chunks: int, action: Any) -> None:
        self.chunks, self.action, self.seen = chunks, action, 0

    def chunk_done(self, chunk: ChunkDone) -> None:
        self.seen += 1
        if self.seen == self.chunks:
            self.action()


@pytest.mark.dask
def test_sigint_on_dask_closes_the_scan_and_its_shards_as_interrupted(tmp_path: Path, dask_client: Any) -> None:
    from lightpipe.engines.dask import DaskEngine

    pipeline = load_pipeline(_pipeline_file(tmp_path, seconds=0.01))
    with DaskEngine(client=dask_client, chunk_size=4) as engine, pytest.raises(ScanInterrupted) as stop:
        engine.run(pipeline, tmp_path / "out", hooks=[_After(3, lambda: signal.raise_signal(signal.SIGINT))])
    report = stop.value.report
    assert report.ledger.state == "interrupted" and report.ledger.error == "SIGINT received"
    path = tmp_path / "out" / "simulated.nxs"
    assert report.files == [path]
    status = _check_truth(path, "interrupted", written=report.ledger.written)
    assert 12 <= np.count_nonzero(status == WRITTEN) < FRAMES
    with h5py.File(path, "r") as f:
        assert f["entry/nap/frame"].is_virtual  # the frames stayed in the workers' files, mapped after the rename
        mapped = {Path(v.file_name).name for v in f["entry/nap/frame"].virtual_sources()}
    assert mapped <= {p.name for p in (tmp_path / "out" / "simulated_parts").iterdir()}


@pytest.mark.dask
def test_an_abort_on_dask_marks_each_row_true(tmp_path: Path, dask_client: Any) -> None:
    from lightpipe.engines.dask import DaskEngine

    pipeline = load_pipeline(_pipeline_file(tmp_path, seconds=0.01))
    topology = Topology(pipeline.name)
    with DaskEngine(client=dask_client, chunk_size=4) as engine:
        (scan,) = engine.run(pipeline, tmp_path / "out", topology=topology,
                             hooks=[_After(3, lambda: topology.request_abort("wrong sample"))]).scans
    assert scan.ledger.state == "aborted"
    status = _check_truth(scan.files[0], "aborted", written=scan.ledger.written)
    assert np.count_nonzero(status == NOT_PROCESSED) == FRAMES - scan.ledger.written > 0


# ---------------------------------------------------------------- the CXI file of a ptychography scan
PTYCHO = {"name": "small", "frame_shape": [64, 64], "distance_m": 1.0, "defocus_m": 2e-4, "n_positions": 49,
          "darks": 4, "seed": 3}


def _ptycho_file(tmp_path: Path, seconds: float = 0.05) -> Path:
    """pipelines/ptycho-stream.yaml on a small scan, a ``nap`` of ``seconds`` per frame before the solver, one CXI sink."""
    doc = load_pipeline(TESTS.parent / "pipelines" / "ptycho-stream.yaml").document
    doc["source"]["params"] = PTYCHO
    doc["stages"]["window"]["params"]["shape"] = doc["stages"]["frames"]["params"]["shape"] = [64, 64]
    stages = list(doc["stages"].items())
    at = [name for name, _ in stages].index("frames") + 1
    nap = {"use": "stages_for_tests:Sleep", "inputs": {"frame": "frames.frame"}, "params": {"seconds": seconds}}
    doc["stages"] = dict(stages[:at] + [("nap", nap)] + stages[at:])
    doc["stages"]["recon"]["inputs"]["frame"] = "nap.frame"
    doc["stages"]["recon"]["params"].update(chain="DM:2, ML:1", final_iterations=0, min_frames=8, probe_from_frames=8,
                                            defocus_m=PTYCHO["defocus_m"])
    # the CXI sink alone, so that the claim refusing a second run is the CXI file's
    doc["sinks"] = [{"use": "cxi", "fields": ["nap.frame", "source.position_y_m", "source.position_x_m",
                                              "recon.object"]}]
    doc["engine"] = {"chunk_size": 4, "chunk_seconds": 0.1}
    path = tmp_path / "ptycho.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))  # stages stay in data-flow order
    return path


def _check_cxi_truth(path: Path, state: str) -> np.ndarray:
    """The CXI file's state, and frame rows that are what their status says; returns the statuses."""
    from lightpipe.techniques.ptychography.cxi import read_cxi
    from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation

    sim = PtychoSimulation(PtychoSimParams(**PTYCHO))
    truth_m = sim.recorded_positions_px * np.asarray(sim.object_pixel_size_m)
    with h5py.File(path, "r") as f:
        assert f["entry_1/process_1/state"][()].decode() == state
        status_ds = f["entry_1/instrument_1/detector_1/frame_status"]
        status = status_ds[()]
        assert {name: int(status_ds.attrs[name]) for name in STATUS_CODES.values()} == {
            v: k for k, v in STATUS_CODES.items()}
        frames = f["entry_1/data_1/data"][()]
        index = f["entry_1/instrument_1/detector_1/frame_index"][()]
        translation = f["entry_1/data_1/translation"][()]
    assert len(status) == len(frames) == PTYCHO["n_positions"]
    assert np.array_equal(index, np.arange(PTYCHO["darks"], PTYCHO["darks"] + PTYCHO["n_positions"]))
    assert set(np.unique(status)) <= {WRITTEN, FAILED, NOT_PROCESSED}
    done = status == WRITTEN
    # written rows hold frames and their true positions; the others NaN, never something that looks like a frame
    assert np.isfinite(frames[done]).all() and frames[done].reshape(done.sum(), -1).sum(axis=1).min() > 0
    assert np.isnan(frames[~done]).all() and np.isnan(translation[~done, :2]).all()
    np.testing.assert_allclose(translation[done][:, [1, 0]], truth_m[done], rtol=1e-9)
    data = read_cxi(path)  # a reader gets the written frames alone
    assert data.data is not None and len(data.data) == len(data.positions_m) == done.sum()
    return status


def test_a_second_run_on_the_same_cxi_output_is_refused_naming_the_first(tmp_path: Path) -> None:
    # about 6 s of work left when the second run starts: its start-up takes seconds on a loaded machine
    pipeline, out = _ptycho_file(tmp_path, seconds=0.15), tmp_path / "out"
    first = _start(tmp_path, pipeline, out)
    try:
        _wait_for_events(tmp_path, first, 8)
        assert (out / ".small.cxi.partial").exists() and not (out / "small.cxi").exists()
        with h5py.File(out / ".small.cxi.partial", "r") as f:
            assert f["entry_1/process_1/state"][()] == b"running"
        second = subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "run", str(pipeline), "-o", str(out),
                                 "-q"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
        message = " ".join(second.stderr.split())
        assert second.returncode == 2, second.stderr
        assert f"{out / 'small.cxi'} is being written by pipeline 'ptycho-stream' (host {os.uname().nodename}, " \
               f"pid {first.pid}," in message
        assert first.poll() is None  # the refused run touched nothing of the first
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert (_check_cxi_truth(out / "small.cxi", "completed") == WRITTEN).all()
    assert sorted(p.name for p in out.iterdir()) == ["small.cxi"]  # no lock, no partial file left


def test_an_interrupted_ptychography_scan_leaves_a_cxi_file_that_says_so(tmp_path: Path) -> None:
    pipeline, out = _ptycho_file(tmp_path), tmp_path / "out"
    run = _start(tmp_path, pipeline, out)
    _wait_for_events(tmp_path, run, 12)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    status = _check_cxi_truth(out / "small.cxi", "interrupted")
    written = np.count_nonzero(status == WRITTEN)
    assert 12 <= written < PTYCHO["n_positions"]
    # the local engine writes in acquisition order: what was processed is the start of the scan
    assert (status[:written] == WRITTEN).all() and (status[written:] == NOT_PROCESSED).all()
    with h5py.File(out / "small.cxi", "r") as f:
        assert f["entry_1/process_1/error"][()].decode() == "SIGINT received"
        assert f["entry_1/process_1"].attrs["written"] >= written  # the darks count too
    assert sorted(p.name for p in out.iterdir()) == ["small.cxi"]


def test_an_aborted_ptychography_scan_marks_each_frame_true(tmp_path: Path) -> None:
    from lightpipe.engines.local import LocalEngine

    pipeline = load_pipeline(_ptycho_file(tmp_path, seconds=0.0))
    topology = Topology(pipeline.name)
    with LocalEngine() as engine:
        (scan,) = engine.run(pipeline, tmp_path / "out", topology=topology,
                             hooks=[_After(4, lambda: topology.request_abort("wrong sample"))]).scans
    assert scan.ledger.state == "aborted"
    status = _check_cxi_truth(tmp_path / "out" / "small.cxi", "aborted")
    assert 0 < np.count_nonzero(status == WRITTEN) and np.count_nonzero(status == NOT_PROCESSED) > 0


def test_a_killed_ptychography_run_leaves_only_its_partial_cxi_file(tmp_path: Path) -> None:
    pipeline, out = _ptycho_file(tmp_path), tmp_path / "out"
    run = _start(tmp_path, pipeline, out)
    _wait_for_events(tmp_path, run, 8)
    run.kill()
    run.communicate(timeout=30)
    partial, lock = out / ".small.cxi.partial", out / ".small.cxi.lock"
    assert sorted(p.name for p in out.iterdir()) == sorted([partial.name, lock.name])
    with h5py.File(partial, "r") as f:  # readable; it says the scan never closed, and which frames it had written
        assert f["entry_1/process_1/state"][()] == b"running"
        status = f["entry_1/instrument_1/detector_1/frame_status"][()]
        frames = f["entry_1/instrument_1/detector_1/data"]
        assert set(np.unique(status)) <= {WRITTEN, NOT_PROCESSED} and (status == NOT_PROCESSED).any()
        assert np.isfinite(frames[np.flatnonzero(status == WRITTEN)]).all()
    again = subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "run", str(pipeline), "-o", str(out), "-q"],
                           env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert f"What it wrote is in {partial}" in " ".join(again.stderr.split())
    assert partial.exists()
