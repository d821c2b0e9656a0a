"""The folder source on a real folder, with a writer thread delivering files while it watches."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe import SourceError, load_pipeline
from lightpipe.engines import get_engine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation, write_nxmx
from lightpipe.sources.folder import FolderParams, FolderSource

FAST = {"poll_s": 0.03, "settle_s": 0.3}


def _sim(name: str, frames: int) -> FrameSimParams:
    return FrameSimParams(name=name, frames=frames, darks=2, flats=0, shape=(8, 10), seed=frames)


def _deliver(path: Path, frames: int, **kwargs: Any) -> None:
    """Write a scan file beside ``path`` and rename it into place, as careful acquisition software does."""
    part = path.with_name(path.name + ".part")
    write_nxmx(part, _sim(path.stem, frames), **kwargs)
    os.replace(part, path)


def _copy_slowly(src: Path, dst: Path, pieces: int, pause_s: float) -> None:
    """Copy a file in pieces with pauses, as a slow network transfer writes it."""
    data = src.read_bytes()
    step = -(-len(data) // pieces)
    with open(dst, "wb") as f:
        for lo in range(0, len(data), step):
            f.write(data[lo : lo + step])
            f.flush()
            time.sleep(pause_s)


def _append_slowly(path: Path, frames: int, pause_s: float) -> None:
    """Write a scan frame by frame with pauses, as a detector writer appends to an open file."""
    sim = FrameSimulation(_sim(path.stem, frames))
    with h5py.File(path, "w") as f:
        f["entry/dark/data"] = np.stack([sim.frame(i)[1] for i in sim.streams["dark"]])
        ds = f.create_dataset("entry/data/data", (0, 8, 10), np.uint16, maxshape=(None, 8, 10), chunks=(1, 8, 10))
        for i in sim.streams["data"]:
            ds.resize(ds.shape[0] + 1, axis=0)
            ds[-1] = sim.frame(i)[1]
            f.flush()
            time.sleep(pause_s)


def _in_thread(function: Any, limit_s: float) -> Any:
    """Run ``function`` in a thread; fail if it has not returned within ``limit_s`` (a watch that never ends)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = function()
        except BaseException as exc:  # re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"the watch did not end within {limit_s} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_watch_takes_each_complete_file_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch, staging, out = tmp_path / "watch", tmp_path / "staging", tmp_path / "out"
    watch.mkdir()
    staging.mkdir()
    _deliver(watch / "a.h5", 5)  # already there when the watch starts
    frames = {"a": 5, "b": 6, "c": 7, "d": 8, "e": 6}

    def writer() -> None:
        time.sleep(0.1)
        _deliver(watch / "b.h5", frames["b"])
        (watch / "junk.h5").write_bytes(np.random.default_rng(0).bytes(4096))
        write_nxmx(staging / "c.h5", _sim("c", frames["c"]))
        _copy_slowly(staging / "c.h5", watch / "c.h5", pieces=5, pause_s=0.12)
        # a DECTRIS master with a linked data file: data file first, master last
        write_nxmx(staging / "d_master.h5", _sim("d", frames["d"]), frames_per_file=5)
        for name in ("d_data_000001.h5", "d_data_000002.h5", "d_master.h5"):
            shutil.move(staging / name, watch / name)
        _append_slowly(watch / "e.h5", frames["e"], pause_s=0.1)

    doc = {
        "version": 1,
        "name": "watch",
        "source": {"use": "folder", "params": {"path": str(watch), "timeout_s": 1.0, **FAST}},
        "stages": {"copy": {"use": "identity"}},
        "sinks": [{"use": "nexus", "fields": ["copy.frame"]}],
    }
    thread = threading.Thread(target=writer)
    caplog.set_level(logging.WARNING, logger="lightpipe.sources.folder")
    with get_engine("local") as engine:
        thread.start()
        report = _in_thread(lambda: engine.run(load_pipeline(doc), out), limit_s=30)
    thread.join()
    assert [s.scan for s in report.scans] == ["a", "b", "c", "d", "e"]
    for scan in report.scans:
        assert scan.ledger.received == scan.ledger.written == frames[scan.scan]
        (path,) = scan.files
        sim = FrameSimulation(_sim(scan.scan, frames[scan.scan]))
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["entry/copy/frame"][()], [sim.frame(i)[1] for i in sim.streams["data"]])
    skipped = [r for r in caplog.records if "junk.h5" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING
    assert "unreadable" in skipped[0].getMessage()


def test_timeout_ends_an_idle_watch(tmp_path: Path) -> None:
    source = FolderSource(FolderParams(path=str(tmp_path), timeout_s=0.4, **FAST))
    t0 = time.monotonic()
    assert _in_thread(lambda: list(source.scans()), limit_s=20) == []
    assert time.monotonic() - t0 >= 0.4


def test_existing_files_are_ignored_when_asked(tmp_path: Path) -> None:
    _deliver(tmp_path / "old.h5", 3)
    source = FolderSource(FolderParams(path=str(tmp_path), existing=False, timeout_s=0.8, **FAST))
    timer = threading.Timer(0.3, _deliver, (tmp_path / "new.h5", 4))
    timer.start()
    readers = _in_thread(lambda: list(source.scans()), limit_s=20)
    timer.join()
    assert [r.scan.name for r in readers] == ["new"]
    assert readers[0].scan.streams["data"] == range(2, 6)


def test_max_scans_ends_the_watch_in_order_of_appearance(tmp_path: Path) -> None:
    for k, name in enumerate(["z.h5", "y.nxs", "x.h5"]):
        _deliver(tmp_path / name, 2)
        os.utime(tmp_path / name, ns=(10**18 + k, 10**18 + k))  # appearance order z, y, x, whatever the names say
    source = FolderSource(FolderParams(path=str(tmp_path), max_scans=2, **FAST))
    readers = _in_thread(lambda: list(source.scans()), limit_s=20)
    assert [r.scan.name for r in readers] == ["z", "y"]


def test_watch_survives_the_folder_vanishing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()

    def outage() -> None:
        time.sleep(0.1)
        watch.rmdir()  # as an NFS mount that goes away for a moment
        time.sleep(0.2)
        watch.mkdir()
        _deliver(watch / "after.h5", 3)

    source = FolderSource(FolderParams(path=str(watch), timeout_s=0.8, **FAST))
    caplog.set_level(logging.WARNING, logger="lightpipe.sources.folder")
    thread = threading.Thread(target=outage)
    thread.start()
    readers = _in_thread(lambda: list(source.scans()), limit_s=20)
    thread.join()
    assert [r.scan.name for r in readers] == ["after"]
    assert len([r for r in caplog.records if "cannot list" in r.getMessage()]) == 1


def test_params_and_missing_folder(tmp_path: Path) -> None:
    assert FolderParams(path=".", pattern="*.cxi").pattern == ["*.cxi"]
    source = FolderSource(FolderParams(path=str(tmp_path / "absent")))
    with pytest.raises(SourceError, match="does not exist.*source.params.path"):
        next(source.scans())
