"""HDF5/NeXus input: DECTRIS-style master files, and every kind of bad file."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from lightpipe import SourceError, load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation, write_nxmx
from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader
from lightpipe.sources.hdf5 import hdf5_defaults


def test_master_file_with_external_bitshuffle_links(nxmx_file: Path, sim_params: FrameSimParams) -> None:
    reader = HDF5Reader(HDF5Params(**hdf5_defaults(str(nxmx_file))))
    scan = reader.scan
    assert scan.name == "scan"
    assert scan.streams == {"dark": range(0, 8), "flat": range(8, 14), "data": range(14, 54)}
    assert scan.metadata["frame_shape"] == [64, 80] and scan.metadata["distance_m"] == pytest.approx(0.2)
    with h5py.File(nxmx_file) as f:
        assert isinstance(f["entry/data"].get("data_000001", getlink=True), h5py.ExternalLink)
        assert "32008" in f["entry/data/data_000001"]._filters  # bitshuffle, decoded through hdf5plugin
        assert len([k for k in f["entry/data"] if k.startswith("data_")]) == 3
    sim = FrameSimulation(sim_params)
    # a range that crosses the boundary between two linked data files
    events = pickle.loads(pickle.dumps(reader)).read(28, 33)
    assert [e.index for e in events] == [28, 29, 30, 31, 32]
    for e in events:
        assert np.array_equal(e.fields["frame"], sim.frame(e.index)[1])
        assert e.fields["monitor"] == pytest.approx(sim.frame(e.index)[2])


def _run(path: Path, out: Path, **params: object):
    doc = {
        "version": 1, "name": "t",
        "source": {"use": "hdf5", "params": {**hdf5_defaults(str(path)), **params}},
        "stages": {"s": {"use": "frame_scalars"}},
        "sinks": [{"use": "nexus"}],
    }
    with LocalEngine(chunk_size=4) as engine:
        return engine.run(load_pipeline(doc), out).scans[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="input file not found: .*nope.h5; check the path"):
        _run(tmp_path / "nope.h5", tmp_path)


def test_wrong_dataset_path_lists_what_is_there(nxmx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no dataset '/entry/data/frames'.*frame stacks in the file: .*/entry/dark/data"
                                          r".*/entry/data \(linked data_NNNNNN files\)"):
        _run(nxmx_file, tmp_path, dataset="/entry/data/frames")


def test_missing_linked_data_file(nxmx_file: Path, tmp_path: Path) -> None:
    for f in nxmx_file.parent.glob("scan*"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "scan_data_000002.h5").unlink()
    scan = _run(tmp_path / "scan_master.h5", tmp_path)
    # darks and flats come first: the second linked file holds events 14 + 16 to 14 + 31
    assert [f.index for f in scan.ledger.failed] == list(range(30, 46)) and scan.ledger.written == 40 - 16  # the stage reads the data stream
    assert "scan_data_000002.h5" in scan.ledger.failed[0].message


def test_truncated_file(tmp_path: Path) -> None:
    path = write_nxmx(tmp_path / "t.h5", FrameSimParams(frames=6, darks=0, flats=0, shape=(16, 16)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SourceError, match="truncated"):
        _run(path, tmp_path)


def test_corrupt_chunk_fails_that_frame_only(tmp_path: Path) -> None:
    params = FrameSimParams(frames=12, darks=0, flats=0, shape=(32, 32))
    path = write_nxmx(tmp_path / "c.h5", params)
    with h5py.File(path, "r") as f:
        info = f["entry/data/data"].id.get_chunk_info(5)  # frame 5, bitshuffle-LZ4 compressed
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 12)
        fh.write(b"\xff" * (info.size - 12))
    scan = _run(path, tmp_path / "out")
    assert [(f.index, f.stage) for f in scan.ledger.failed] == [(5, "source")]
    assert "cannot read frame 5" in scan.ledger.failed[0].message
    assert scan.ledger.written == 11
    with h5py.File(scan.files[0]) as f:
        total = f["entry/s/total"][()]
        assert np.isnan(total[5]) and np.isfinite(np.delete(total, 5)).all()
        assert f["entry/events/status"][5] == 1 and f["entry/failed_events/index"][()].tolist() == [5]
        assert "cannot read frame 5" in f["entry/failed_events/message"][0].decode()
    expected = FrameSimulation(params).frame(6)[1].astype(float).sum()
    assert total[6] == pytest.approx(expected)


def test_positions_that_do_not_match_the_frames_are_refused_naming_both_lengths(tmp_path: Path) -> None:
    path = write_nxmx(tmp_path / "scan.h5", FrameSimParams(frames=6, darks=0, flats=0, shape=(16, 16)))
    with h5py.File(path, "a") as f:
        f["entry/data/x"] = np.linspace(0.0, 1e-6, 4)  # a position for four of the six frames
    params = HDF5Params(path=str(path), scalars={"x": "/entry/data/x"})
    with pytest.raises(SourceError, match=r"/entry/data/x \(x\) has shape \(4,\) but the scan has 6 data frames"):
        HDF5Reader(params)
