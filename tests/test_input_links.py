"""DECTRIS master files: linked data files are read beside the master only, a missing one is named."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lightpipe import SourceError, load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation, write_nxmx
from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader

PARAMS = FrameSimParams(name="scan", frames=40, darks=0, flats=0, shape=(24, 20), seed=11)


def _master(folder: Path, params: FrameSimParams = PARAMS) -> Path:
    """A DECTRIS-style master with three linked files of 16, 16 and 8 frames."""
    return write_nxmx(folder / "scan_master.h5", params, frames_per_file=16)


def _run(master: Path, out: Path) -> object:
    doc = {"version": 2, "name": "links", "source": {"use": "hdf5", "params": {"path": str(master)}},
           "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]}
    with LocalEngine(chunk_size=5) as engine:
        return engine.run(load_pipeline(doc), out).scans[0]


def test_the_default_dataset_finds_the_linked_data_files(tmp_path: Path) -> None:
    """A master written by `lightpipe simulate frames --frames-per-file 50` is read whole with default parameters."""
    master = tmp_path / "raw" / "m_master.h5"
    subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "simulate", "frames", str(master), "--frames", "120",
                    "--darks", "0", "--flats", "0", "--shape", "16", "16", "--frames-per-file", "50"],
                   check=True, capture_output=True, timeout=120)
    with h5py.File(master) as f:
        assert "data" not in f["entry/data"] and sorted(k for k in f["entry/data"] if k.startswith("data_")) == [
            "data_000001", "data_000002", "data_000003"]
    reader = HDF5Reader(HDF5Params(path=str(master)))  # dataset left at its default, /entry/data/data
    try:
        assert reader.scan.streams == {"data": range(120)}
        events = reader.read(45, 105)  # crosses both boundaries between linked files
    finally:
        reader.close()
    sim = FrameSimulation(FrameSimParams(frames=120, darks=0, flats=0, shape=(16, 16), seed=0))
    assert all(e.error is None for e in events)
    for e in events:
        assert np.array_equal(e.fields["frame"], sim.frame(e.index)[1])


def test_a_missing_linked_file_is_named_and_only_its_frames_fail(tmp_path: Path) -> None:
    master = _master(tmp_path / "raw")
    (tmp_path / "raw" / "scan_data_000002.h5").unlink()
    scan = _run(master, tmp_path / "out")
    led = scan.ledger
    assert led.state == "completed" and led.received == 40 and led.written == 24
    assert [f.index for f in led.failed] == list(range(16, 32))
    message = led.failed[0].message
    for name in ("scan_data_000002.h5", "/entry/data/data_000002", str(master), "never from the current directory"):
        assert name in message
    sim = FrameSimulation(PARAMS)
    with h5py.File(scan.files[0]) as f:
        total = f["entry/s/total"][()]
        assert np.isnan(total[16:32]).all()
        assert total[0] == pytest.approx(sim.frame(0)[1].astype(float).sum())
        assert total[39] == pytest.approx(sim.frame(39)[1].astype(float).sum())
        assert "scan_data_000002.h5" in f["entry/failed_events/message"][0].decode()


def test_a_same_named_file_in_the_current_directory_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = _master(tmp_path / "raw")
    (tmp_path / "raw" / "scan_data_000002.h5").unlink()
    # another scan's data file, same name, in the folder the pipeline is started from
    _master(tmp_path / "elsewhere", PARAMS.model_copy(update={"seed": 99}))
    monkeypatch.chdir(tmp_path / "elsewhere")
    with h5py.File(master) as f:  # the trap: HDF5 on its own reads the decoy without a word
        assert f["entry/data/data_000002"][0].sum() > 0
    reader = HDF5Reader(HDF5Params(path=str(master)))
    try:
        events = reader.read(14, 34)
    finally:
        reader.close()
    assert reader.missing and reader.missing[0].file == str(tmp_path / "raw" / "scan_data_000002.h5")
    assert reader.scan.metadata["missing_files"] == [str(tmp_path / "raw" / "scan_data_000002.h5")]
    failed = [e.index for e in events if e.error is not None]
    assert failed == list(range(16, 32))
    sim = FrameSimulation(PARAMS)
    for e in events:
        if e.error is None:
            assert np.array_equal(e.fields["frame"], sim.frame(e.index)[1])


def test_a_file_beside_the_master_wins_over_the_current_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    master = _master(tmp_path / "raw")
    _master(tmp_path / "elsewhere", PARAMS.model_copy(update={"seed": 99}))
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("HDF5_EXT_PREFIX", str(tmp_path / "elsewhere"))  # HDF5 would look there first
    reader = HDF5Reader(HDF5Params(path=str(master)))
    try:
        events = reader.read(0, 40)
    finally:
        reader.close()
    sim = FrameSimulation(PARAMS)
    assert all(np.array_equal(e.fields["frame"], sim.frame(e.index)[1]) for e in events)


def test_a_missing_last_file_is_counted_from_the_detector_settings(tmp_path: Path) -> None:
    master = _master(tmp_path / "raw")
    (tmp_path / "raw" / "scan_data_000003.h5").unlink()
    with pytest.raises(SourceError, match=r"cannot tell how many frames .* scan_data_000003.h5.*copy"):
        HDF5Reader(HDF5Params(path=str(master)))
    with h5py.File(master, "a") as f:  # what a DECTRIS master file records of the acquisition
        spec = f.require_group("entry/instrument/detector/detectorSpecific")
        spec["nimages"], spec["ntrigger"] = 40, 1
    reader = HDF5Reader(HDF5Params(path=str(master)))
    try:
        assert reader.scan.streams == {"data": range(40)}
        events = reader.read(30, 40)
    finally:
        reader.close()
    assert [e.index for e in events if e.error is not None] == list(range(32, 40))
    assert "scan_data_000003.h5" in str(events[-1].error)


def test_every_linked_file_missing_says_which(tmp_path: Path) -> None:
    master = _master(tmp_path / "raw")
    for k in (1, 2, 3):
        (tmp_path / "raw" / f"scan_data_00000{k}.h5").unlink()
    with pytest.raises(SourceError, match=r"no frame of stream 'data' can be read: link /entry/data/data_000001"):
        HDF5Reader(HDF5Params(path=str(master)))


def test_a_moved_master_reads_its_files_in_the_new_folder(tmp_path: Path) -> None:
    master = _master(tmp_path / "raw")
    moved = tmp_path / "copy"
    shutil.copytree(master.parent, moved)
    shutil.rmtree(master.parent)
    reader = HDF5Reader(HDF5Params(path=str(moved / master.name)))
    try:
        assert not reader.missing and all(e.error is None for e in reader.read(0, 40))
    finally:
        reader.close()


def test_a_watched_folder_waits_for_the_linked_files_then_names_those_still_missing(tmp_path: Path) -> None:
    from lightpipe.sources.folder import FolderParams, FolderWatch

    raw = tmp_path / "raw"
    _master(raw)
    late = tmp_path / "late"
    late.mkdir()
    (raw / "scan_data_000002.h5").rename(late / "scan_data_000002.h5")
    watch = FolderWatch(FolderParams(path=str(raw), settle_s=0.3, poll_s=0.05))
    watch.poll()
    time.sleep(0.35)
    assert watch.poll()[0] == []  # settled, but a linked file is missing: wait for it
    (late / "scan_data_000002.h5").rename(raw / "scan_data_000002.h5")
    (reader,) = watch.poll()[0]
    assert not reader.missing and all(e.error is None for e in reader.read(0, 40))
    reader.close()

    other = write_nxmx(raw / "other_master.h5", PARAMS, frames_per_file=16)
    (raw / "other_data_000003.h5").unlink()
    with h5py.File(other, "a") as f:
        spec = f.require_group("entry/instrument/detector/detectorSpecific")
        spec["nimages"], spec["ntrigger"] = 40, 1
    watch.poll()
    time.sleep(0.35)
    assert watch.poll()[0] == []
    time.sleep(0.3)
    (reader,) = watch.poll()[0]  # given up waiting: taken, its missing frames fail with the file's name
    events = reader.read(30, 40)
    reader.close()
    assert [e.index for e in events if e.error] == list(range(32, 40)) and "other_data_000003.h5" in str(events[-1].error)
