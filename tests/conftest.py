"""Shared fixtures (simulated files, a real Dask cluster) and the checks every test passes: no leftovers.

After each test, the threads and child processes it started must have ended
(a few seconds' grace for those on their way out), or the test fails naming
them. Session- and module-scoped fixtures are set up before a test's own
snapshot is taken, so what they own is not counted; the shared Dask cluster
also records what it starts, for the tests that ask for it late (with
``request.getfixturevalue``) and for workers a nanny restarts. Threads and
processes that live as long as the interpreter are named, with the reason,
in :data:`PROCESS_LIFETIME_THREADS` and :data:`PROCESS_LIFETIME_CHILDREN`.
"""
from __future__ import annotations

import os

# lightpipe opens HDF5 files without locking (beamline NFS); tests that open the same files
# with plain h5py must do likewise, or HDF5 refuses the second open in one process.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hdf5plugin  # noqa: E402, F401  (tests read bitshuffle-LZ4 results with plain h5py, as users do after this import)
import psutil  # noqa: E402
import pytest  # noqa: E402

from lightpipe.simulators.frames import FrameSimParams, write_nxmx  # noqa: E402

# A test run started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored,
# and so would every process it starts: the tests of Ctrl-C could not send one. Python's own handler here;
# the processes the tests start get the default action back at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Seconds a thread or process that a test started may take to end after the test.
GRACE_S = 5.0

#: Threads that live as long as the interpreter once something starts them: they are no test's leftover.
#: - ``Dask-Offload``: distributed's module-wide offload executor (``distributed.utils``), started by the
#:   first (de)serialisation a client offloads, ended only at interpreter exit.
#: - ``lightpipe-liveview-PORT``: the Lavue publisher of a port, shared by design by every scan and run
#:   of the process and closed by ``lightpipe.sinks.liveview.release`` or at exit.
#: - ``ptycho-algorithm``: the thread pool of the ptychography algorithms on NumPy, one per thread count,
#:   kept for the process (``_POOLS`` in ``techniques/ptychography/algorithms/common.py``).
PROCESS_LIFETIME_THREADS = ("Dask-Offload", "lightpipe-liveview-", "ptycho-algorithm")

#: Child processes that live as long as the interpreter once something starts them: multiprocessing's
#: resource tracker, started with the first process that a Dask nanny spawns.
PROCESS_LIFETIME_CHILDREN = ("from multiprocessing.resource_tracker import main",)

#: Threads that session fixtures started. A fixture that a test asks for with ``getfixturevalue`` is set up
#: after the test's snapshot, so what it starts must be named here.
SESSION_OWNED_THREADS: set[threading.Thread] = set()

#: Each gives the pids of processes a session fixture owns now, e.g. the shared cluster's workers,
#: which a nanny replaces while a test runs when that test kills one.
SESSION_OWNED_PIDS: list[Callable[[], set[int]]] = []


def _children() -> dict[tuple[int, float], psutil.Process]:
    """Live child processes (recursive), keyed by pid and start time so that a reused pid is a new process.

    Processes of session fixtures, and their own children, are left out, as are those of
    :data:`PROCESS_LIFETIME_CHILDREN`.
    """
    owned = set().union(*(pids() for pids in SESSION_OWNED_PIDS))
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if (child.status() == psutil.STATUS_ZOMBIE or {child.pid, *(p.pid for p in child.parents())} & owned
                    or any(name in " ".join(child.cmdline()) for name in PROCESS_LIFETIME_CHILDREN)):
                continue
            found[child.pid, child.create_time()] = child
        except psutil.NoSuchProcess:
            pass
    return found


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} {process.name()!r} ({' '.join(process.cmdline())[:200]})"
    except psutil.Error:
        return f"pid {process.pid}"


@pytest.fixture(autouse=True)
def no_leftover_threads_or_processes() -> Iterator[None]:
    """Fail a test that leaves threads or child processes behind, naming them."""
    threads_before = set(threading.enumerate())
    children_before = set(_children())
    yield
    deadline = time.monotonic() + GRACE_S
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t not in SESSION_OWNED_THREADS
                   and t.is_alive() and not t.name.startswith(PROCESS_LIFETIME_THREADS)]
        children = {key: p for key, p in _children().items() if key not in children_before}
        if not (threads or children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if threads or children:
        names = [f"thread {t.name!r} (daemon={t.daemon})" for t in threads]
        names += [f"process {_describe(p)}" for p in children.values()]
        pytest.fail(f"the test left {len(names)} behind after {GRACE_S:g} s: " + "; ".join(names), pytrace=False)


@pytest.fixture(scope="session")
def sim_params() -> FrameSimParams:
    return FrameSimParams(name="scan", frames=40, darks=8, flats=6, shape=(64, 80), photons=100.0, seed=3)


@pytest.fixture(scope="session")
def nxmx_file(tmp_path_factory: pytest.TempPathFactory, sim_params: FrameSimParams) -> Path:
    """A DECTRIS-style master file with bitshuffle-LZ4 data in linked files."""
    return write_nxmx(tmp_path_factory.mktemp("raw") / "scan_master.h5", sim_params, frames_per_file=16)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A two-worker Dask LocalCluster built as production builds it, shared by the tests of a session.

    :func:`lightpipe.engines.dask.make_cluster` gives it lightpipe's cluster settings and
    the allocator plug-in on every worker.
    """
    from lightpipe.engines.dask import make_cluster

    before = set(threading.enumerate())
    client, cluster = make_cluster(None, n_workers=2, threads_per_worker=1)
    SESSION_OWNED_THREADS.update(set(threading.enumerate()) - before)

    def worker_pids() -> set[int]:
        return {nanny.process.pid for nanny in cluster.workers.values()
                if nanny.process is not None and nanny.process.pid is not None}

    SESSION_OWNED_PIDS.append(worker_pids)
    try:
        yield client
    finally:
        SESSION_OWNED_PIDS.remove(worker_pids)
        client.close()
        cluster.close()
