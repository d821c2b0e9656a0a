"""Shared fixtures: simulated files and a real Dask LocalCluster."""
from __future__ import annotations

import os

# lightpipe opens HDF5 files without locking (beamline NFS); tests that open the same files
# with plain h5py must do likewise, or HDF5 refuses the second open in one process.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lightpipe.simulators.frames import FrameSimParams, write_nxmx  # noqa: E402


@pytest.fixture(scope="session")
def sim_params() -> FrameSimParams:
    return FrameSimParams(name="scan", frames=40, darks=8, flats=6, shape=(64, 80), photons=100.0, seed=3)


@pytest.fixture(scope="session")
def nxmx_file(tmp_path_factory: pytest.TempPathFactory, sim_params: FrameSimParams) -> Path:
    """A DECTRIS-style master file with bitshuffle-LZ4 data in linked files."""
    return write_nxmx(tmp_path_factory.mktemp("raw") / "scan_master.h5", sim_params, frames_per_file=16)


@pytest.fixture(scope="session")
def dask_client():
    """A real two-worker Dask LocalCluster, shared by the tests of a session."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client
