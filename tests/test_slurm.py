"""``--cluster slurm`` on a real Slurm: the same bits as the local engine; a cancelled job costs nothing.

The workers are real Slurm jobs submitted by dask-jobqueue, configured by the
``jobqueue.yaml`` that docs/deploying.md shows for the one-node Slurm of ``.ci/run``
(read from the page itself, only its paths adapted), and ``lightpipe run`` runs as a real
process. Where no Slurm answers with an idle node, those tests are skipped, saying how to get
one; ``.ci/run`` sets ``LIGHTPIPE_REQUIRE_SLURM``, which turns that skip into an error.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from lightpipe.simulators.frames import FrameSimParams, FrameSimulation, write_nxmx

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent
LIGHTPIPE = [sys.executable, "-m", "lightpipe.cli.main"]
#: The first line of the docs' code block that tests/test_slurm.py uses as the Dask configuration.
CONFIG_HEADING = "# jobqueue.yaml for the one-node Slurm of .ci/run"
ENABLE = "run .ci/run, or start Slurm: see docs/deploying.md"


def documented_jobqueue_config() -> dict[str, Any]:
    """The ``jobqueue.yaml`` of docs/deploying.md, parsed, from the code block that starts with :data:`CONFIG_HEADING`."""
    page = (ROOT / "docs" / "deploying.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, flags=re.S)
    matching = [b for b in blocks if b.startswith(CONFIG_HEADING)]
    assert len(matching) == 1, f"docs/deploying.md should show one yaml block starting with {CONFIG_HEADING!r}"
    return yaml.safe_load(matching[0])


def _why_no_slurm(partition: str) -> str:
    """Why Slurm cannot run the tests here, or ``""`` when ``partition`` has an idle (or partly used) node."""
    if shutil.which("sinfo") is None:
        return "no Slurm here (sinfo not found)"
    try:
        found = subprocess.run(["sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%t"],
                               capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "Slurm does not answer (sinfo took over 20 s)"
    if found.returncode != 0:
        return f"Slurm does not answer (sinfo: {found.stderr.strip()[:200]})"
    # the compact state: "idle" and "mix" take jobs; "drain", "down", "idle*" (not responding) ... do not
    if not {"idle", "mix"} & set(found.stdout.split()):
        return f"Slurm has no idle node in partition {partition!r} (sinfo: {' '.join(found.stdout.split()) or 'none'})"
    return ""


NO_SLURM = _why_no_slurm(documented_jobqueue_config()["jobqueue"]["slurm"]["queue"])
if NO_SLURM and os.environ.get("LIGHTPIPE_REQUIRE_SLURM"):
    # .ci/run sets this: there a missing Slurm is a broken CI, not a reason to skip
    raise RuntimeError(f"LIGHTPIPE_REQUIRE_SLURM is set but {NO_SLURM}")

pytestmark = [pytest.mark.dask, pytest.mark.slow]
requires_slurm = pytest.mark.skipif(bool(NO_SLURM), reason=f"{NO_SLURM}: {ENABLE}")


def _dask_config(tmp_path: Path) -> tuple[Path, Path]:
    """Write the documented configuration into ``tmp_path/dask``; return that folder and the job log folder.

    Only the paths change: this environment's Python, and a log folder of the test's own.
    """
    config = documented_jobqueue_config()
    logs = tmp_path / "job-logs"
    logs.mkdir()
    config["jobqueue"]["slurm"]["python"] = sys.executable
    config["jobqueue"]["slurm"]["log-directory"] = str(logs)
    folder = tmp_path / "dask"
    folder.mkdir()
    (folder / "jobqueue.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder, logs


def _environment(dask_config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DASK_CONFIG"] = str(dask_config)
    # the worker jobs inherit the environment (sbatch --export=ALL): they import the test stages too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


def _job_ids(logs: Path) -> list[str]:
    """The Slurm jobs that ran workers, from the names of their logs (``<name>-<jobid>.err``)."""
    return sorted({m.group(1) for p in logs.glob("*.err") if (m := re.search(r"-(\d+)\.err$", p.name))})


def _queued(job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` that Slurm still lists (pending, running or completing)."""
    if not job_ids:
        return []
    found = subprocess.run(["squeue", "--noheader", "--format=%i", "--jobs", ",".join(job_ids)],
                           capture_output=True, text=True, timeout=20)
    return found.stdout.split()


def _wait(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.2)


def _datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a result file but the provenance and times, which name the run itself."""
    found: dict[str, np.ndarray] = {}
    with h5py.File(path) as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and not name.startswith(("entry/process", "entry/start_time",
                                                                      "entry/end_time")):
                found[name] = np.asarray(obj[()])
        f.visititems(visit)
    return found


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit: dtype, shape and bytes (NaN rows and -0.0 included); strings by value."""
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        return a.shape == b.shape and bool(np.all(a == b))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _interrupt(driver: subprocess.Popen[str]) -> str:
    """Stop ``lightpipe run`` as Ctrl-C does, and return what it printed.

    Ctrl-C, not a kill: ``lightpipe run`` then closes its dask-jobqueue cluster, which cancels
    the worker jobs, pending ones included, instead of leaving them queued after the test.
    """
    driver.send_signal(signal.SIGINT)
    try:
        return driver.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        driver.kill()
        return driver.communicate()[0]


def _finish(driver: subprocess.Popen[str], timeout_s: float) -> str:
    """Wait for ``lightpipe run`` and return what it printed; past ``timeout_s``, interrupt it and fail."""
    try:
        return driver.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        printed = _interrupt(driver)
        raise AssertionError(f"lightpipe run took over {timeout_s:g} s (is the Slurm queue busy?):\n{printed}")


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*LIGHTPIPE, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def _run(args: list[str], env: dict[str, str], timeout_s: float = 180) -> str:
    driver = _start(args, env)
    printed = _finish(driver, timeout_s)
    assert driver.returncode == 0, f"lightpipe run {' '.join(args)} failed:\n{printed}"
    return printed


def _slow_scan(path: Path, name: str, frames: int) -> dict[str, Any]:
    """Write a pipeline of ``frames`` simulated events at 0.1 s each to ``path``; return its source's parameters."""
    sim = {"name": name, "frames": frames, "darks": 0, "flats": 0, "shape": [32, 32], "seed": 9}
    path.write_text(yaml.safe_dump({
        "version": 2, "name": "slow",
        "source": {"use": "simulated_frames", "params": sim},
        "stages": {"wait": {"use": "stages_for_tests:Sleep", "params": {"seconds": 0.1}},
                   "s": {"use": "frame_scalars", "inputs": {"frame": "wait.frame"}}},
        "sinks": [{"use": "nexus", "fields": ["s.total"]}],
    }, sort_keys=False))
    return sim


def _wait_for_rows_from_two_jobs(driver: subprocess.Popen[str], parts: Path, logs: Path) -> list[str]:
    """Wait until both worker jobs have written rows (each has its composite file); return their job ids."""
    _wait(lambda: driver.poll() is not None or parts.is_dir() and len(list(parts.iterdir())) == 2, 120,
          "both worker jobs to write rows")
    jobs = _job_ids(logs)
    assert driver.poll() is None and len(jobs) == 2, f"expected a scan running on 2 worker jobs, found {jobs}"
    return jobs


@pytest.mark.slurm
@requires_slurm
def test_slurm_cluster_writes_the_same_bits_as_the_local_engine(tmp_path: Path) -> None:
    raw = write_nxmx(tmp_path / "raw" / "m_master.h5",
                     FrameSimParams(name="m", frames=24, darks=4, flats=4, shape=(160, 170), seed=7),
                     frames_per_file=10)
    pipeline = str(ROOT / "pipelines" / "dark-flat-correction.yaml")
    dask_config, logs = _dask_config(tmp_path)
    env = _environment(dask_config)
    started = time.monotonic()
    printed = _run([pipeline, "--input", str(raw), "-o", str(tmp_path / "slurm"), "--engine", "dask",
                    "--cluster", "slurm", "--workers", "2", "--quiet"], env)
    slurm_s = time.monotonic() - started
    _run([pipeline, "--input", str(raw), "-o", str(tmp_path / "local"), "--quiet"], env)

    # the workers were Slurm jobs, and none is left once the run has ended
    jobs = _job_ids(logs)
    assert jobs, f"no Slurm job logs in {logs}: the workers did not run as Slurm jobs\n{printed}"
    assert all("Registered to" in (logs / f"lightpipe-worker-{job}.err").read_text() for job in jobs)
    _wait(lambda: not _queued(jobs), 60, f"the worker jobs {jobs} to end after the run")

    on_slurm, local = _datasets(tmp_path / "slurm" / "m.nxs"), _datasets(tmp_path / "local" / "m.nxs")
    assert on_slurm.keys() == local.keys()
    differing = [name for name in local if not _same_bits(local[name], on_slurm[name])]
    assert differing == []
    # the comparison covered the frames themselves, and every data frame was written
    assert on_slurm["entry/normalised/frame"].shape == (24, 160, 170)
    assert on_slurm["entry/events/status"].sum() == 0 and len(on_slurm["entry/events/index"]) == 24
    print(f"slurm: {len(jobs)} worker jobs, {slurm_s:.1f} s for 32 events, {len(local)} datasets identical")


@pytest.mark.slurm
@requires_slurm
def test_a_worker_job_cancelled_mid_scan_loses_and_repeats_nothing(tmp_path: Path) -> None:
    frames = 60
    sim = _slow_scan(tmp_path / "slow.yaml", "cancelled", frames)
    dask_config, logs = _dask_config(tmp_path)
    out = tmp_path / "out"
    driver = _start([str(tmp_path / "slow.yaml"), "-o", str(out), "--engine", "dask", "--cluster", "slurm",
                     "--workers", "2", "--chunk-size", "2", "--quiet"], _environment(dask_config))
    try:
        jobs = _wait_for_rows_from_two_jobs(driver, out / "cancelled_parts", logs)
        victim = jobs[0]
        subprocess.run(["scancel", victim], check=True, timeout=20)
        _wait(lambda: victim not in _queued(jobs), 60, f"job {victim} to end after scancel")
        assert driver.poll() is None, "the scan had already ended: the job was not cancelled mid-scan"
    except BaseException:
        print(_interrupt(driver))
        raise
    text = _finish(driver, 180)
    assert driver.returncode == 0, text
    assert "CANCELLED" in (logs / f"lightpipe-worker-{victim}.err").read_text()  # slurmstepd's own note
    with h5py.File(out / "cancelled.nxs") as f:
        assert f["entry/process/state"][()] == b"completed", text
        received = int(f["entry/process"].attrs["received"])
        written = int(f["entry/process"].attrs["written"])
        index = f["entry/events/index"][()]
        status = f["entry/events/status"][()]
        totals = f["entry/s/total"][()]
    assert received == written == frames
    assert np.array_equal(index, np.arange(frames)) and not status.any()
    truth = FrameSimulation(FrameSimParams(**sim))
    assert np.array_equal(totals, [float(truth.frame(i)[1].sum()) for i in range(frames)])
    print(f"slurm: job {victim} cancelled mid-scan; {written} of {received} events written once")


@pytest.mark.slurm
@requires_slurm
def test_ctrl_c_closes_the_scan_and_cancels_the_worker_jobs(tmp_path: Path) -> None:
    frames = 80
    sim = _slow_scan(tmp_path / "slow.yaml", "stopped", frames)
    dask_config, logs = _dask_config(tmp_path)
    out = tmp_path / "out"
    driver = _start([str(tmp_path / "slow.yaml"), "-o", str(out), "--engine", "dask", "--cluster", "slurm",
                     "--workers", "2", "--chunk-size", "2", "--quiet"], _environment(dask_config))
    try:
        jobs = _wait_for_rows_from_two_jobs(driver, out / "stopped_parts", logs)
    except BaseException:
        print(_interrupt(driver))
        raise
    text = _interrupt(driver)
    assert driver.returncode == 128 + signal.SIGINT, text
    _wait(lambda: not _queued(jobs), 60, f"the worker jobs {jobs} to be cancelled")
    with h5py.File(out / "stopped.nxs") as f:
        assert f["entry/process/state"][()] == b"interrupted", text
        written = int(f["entry/process"].attrs["written"])
        index = f["entry/events/index"][()]
        status = f["entry/events/status"][()]
        totals = f["entry/s/total"][()]
    # what was processed before Ctrl-C is kept, with its true values
    assert 0 < written == int((status == 0).sum()) < frames
    truth = FrameSimulation(FrameSimParams(**sim))
    for row in np.flatnonzero(status == 0):
        assert totals[row] == float(truth.frame(int(index[row]))[1].sum())


def test_importing_dask_jobqueue_keeps_the_ctrl_c_of_lightpipe_run() -> None:
    """dask-jobqueue's runner module sets SIGINT to ``sys.exit()`` when imported; lightpipe puts its own back.

    In a fresh interpreter, where dask-jobqueue is not imported yet; needs no Slurm.
    """
    code = (
        "import signal, sys\n"
        "from lightpipe.engines.dask import import_jobqueue\n"
        "def on_ctrl_c(*args): pass\n"
        "signal.signal(signal.SIGINT, on_ctrl_c)\n"
        "import_jobqueue('slurm')\n"
        "print('dask_jobqueue.runner' in sys.modules, signal.getsignal(signal.SIGINT) is on_ctrl_c)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
