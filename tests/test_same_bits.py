"""Guarantee 2, bit for bit: every example pipeline writes the same numbers on every engine, run after run.

Each pipeline in ``pipelines/`` runs three times on the local engine and three
times on the shared Dask LocalCluster, on small versions of its own simulated
data; every dataset of every file it writes must equal the first local run's,
bit for bit (NaN where NaN), except the clock: timestamps, the record of the
run, and the seconds stages report they took.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.core.blas import BLAS_THREADS, STAGE_BLAS_THREADS
from lightpipe.engines.dask import DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.eiger import EigerSimulator
from lightpipe.simulators.eiger_frames import FrameSource

from example_runs import small_document

PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml"))
RUNS = 3
#: Events per chunk in every run.
CHUNK = 4

#: What may differ between two runs of the same scan: when it ran and how long it took.
#: - ``entry/start_time``, ``entry/end_time``, ``entry/process``: timestamps, version and the run's record.
#: - ``*/seconds``, ``*/part_seconds``, ``*/iteration_seconds``: time per iteration or per part, on the clock.
#: - ``*/date``: when a CXI process ran.
CLOCK = ("entry/start_time", "entry/end_time", "entry/process")
CLOCK_NAMES = ("seconds", "part_seconds", "iteration_seconds", "date")


def _small(path: Path) -> dict[str, Any]:
    """The pipeline's document with its simulated source shrunk as the example tests shrink it, in small chunks
    (a live ``eiger`` source gets its simulator from :func:`_live_source`)."""
    doc = dict(load_pipeline(path).document)
    if doc["source"]["use"] != "eiger":
        doc = small_document(path)
    # small chunks: more of them in flight at once on Dask, so results arrive out of order, as on a cluster
    doc["engine"] = {**doc.get("engine", {}), "chunk_size": CHUNK}
    doc["sinks"] = [{**s, "params": {**s.get("params", {}), "port": 0}} if s["use"] == "lavue" else s
                    for s in doc.get("sinks", [])]
    return doc


@contextmanager
def _live_source(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """For a live ``eiger`` source, a simulated detector that sends one series of 16 frames."""
    if doc["source"]["use"] != "eiger":
        yield doc
        return
    simulator = EigerSimulator(FrameSource.from_simulator(), stream_port=0, rest_port=0).start()
    acquisition = threading.Thread(target=simulator.acquire, args=(16,), daemon=True)
    try:
        params = {**doc["source"].get("params", {}), "endpoint": simulator.stream_endpoint, "max_scans": 1}
        acquisition.start()
        yield {**doc, "source": {**doc["source"], "params": params}}
    finally:
        acquisition.join(30)
        simulator.stop()


def _datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if (isinstance(obj, h5py.Dataset) and not name.startswith(CLOCK)
                    and name.rsplit("/", 1)[-1] not in CLOCK_NAMES):
                found[name] = obj[()]
        f.visititems(visit)
    return found


def _run(engine: Any, doc: dict[str, Any], path: Path, out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every dataset of every file the run wrote, by file name and dataset path."""
    with _live_source(doc) as live, engine:
        report = engine.run(load_pipeline(live, file=str(path)), out)
    assert report.scans and all(s.ledger.written == s.ledger.received > 0 for s in report.scans)
    files = [f for f in report.files if h5py.is_hdf5(f)]
    assert files
    return {f.name: _datasets(f) for f in files}


def _differences(first: dict[str, dict[str, np.ndarray]], other: dict[str, dict[str, np.ndarray]]) -> list[str]:
    if first.keys() != other.keys():
        return [f"files {sorted(first)} against {sorted(other)}"]
    found = []
    for name, datasets in first.items():
        if datasets.keys() != other[name].keys():
            found.append(f"{name}: datasets {sorted(datasets.keys() ^ other[name].keys())} in one run only")
            continue
        for key, a in datasets.items():
            a, b = np.asarray(a), np.asarray(other[name][key])
            same = a.shape == b.shape and (
                np.array_equal(a, b, equal_nan=True) if a.dtype.kind in "fc" else np.array_equal(a, b))
            if not same:
                found.append(f"{name}:{key}")
    return found


@pytest.mark.dask
@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_engine_writes_the_same_bits(path: Path, tmp_path: Path, dask_client: Any) -> None:
    doc = _small(path)
    runs = [("local", _run(LocalEngine(), doc, path, tmp_path / f"local-{k}")) for k in range(RUNS)]
    runs += [("dask", _run(DaskEngine(client=dask_client), doc, path, tmp_path / f"dask-{k}")) for k in range(RUNS)]
    first = runs[0][1]
    assert sum(len(d) for d in first.values()) >= 3  # the comparison compares something
    for k, (engine, written) in enumerate(runs[1:], start=2):
        assert not _differences(first, written), (
            f"{path.name}: run {k} ({engine}) differs from run 1 (local) in {_differences(first, written)}")


def test_the_differences_are_found(tmp_path: Path) -> None:
    a = {"x.nxs": {"entry/v": np.array([1.0, np.nan]), "entry/n": np.array(3)}}
    b = {"x.nxs": {"entry/v": np.array([np.nextafter(1.0, 2.0), np.nan]), "entry/n": np.array(3)}}
    assert _differences(a, a) == []
    assert _differences(a, b) == ["x.nxs:entry/v"]  # one unit in the last place is a difference


def test_stages_run_at_the_fixed_blas_thread_count() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    def other_worker() -> None:  # a second thread of stages, as the local engine's workers
        with BLAS_THREADS.held():
            seen.append(blas())

    seen: list[set[int]] = []
    with threadpool_limits(STAGE_BLAS_THREADS + 1, user_api="blas"):  # a session set to more threads
        with BLAS_THREADS.held():
            assert blas() == {STAGE_BLAS_THREADS}
            worker = threading.Thread(target=other_worker)
            worker.start()
            worker.join(10)
            assert blas() == {STAGE_BLAS_THREADS}  # the other thread leaving does not lift the limit
        assert seen == [{STAGE_BLAS_THREADS}]
        assert blas() == {STAGE_BLAS_THREADS + 1}  # the last to leave gives the session its setting back
