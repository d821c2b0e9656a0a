"""Image-file series (TIFF, CBF, EDF) through real pipeline runs, with bad frames kept aside."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from fabio.cbfimage import CbfImage
from fabio.edfimage import EdfImage
from PIL import Image

from lightpipe import SourceError, load_pipeline
from lightpipe.cli.main import main
from lightpipe.engines import get_engine
from lightpipe.sources.image_series import ImageSeriesParams, ImageSeriesReader, natural_key

SHAPE = (12, 16)


def _frames(n: int, dtype: type, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, SHAPE).astype(dtype) for _ in range(n)]


def _pipeline(path: str, **source: object) -> dict:
    return {
        "version": 1,
        "name": "series",
        "source": {"use": "image_series", "params": {"path": path, **source}},
        "stages": {"copy": {"use": "identity"}, "scalars": {"use": "frame_scalars", "inputs": {"frame": "source.frame"}}},
        "sinks": [{"use": "nexus", "fields": ["copy.frame", "scalars.total"]}],
        "engine": {"chunk_size": 3},
    }


def _run(doc: dict, out: Path):
    with get_engine("local") as engine:
        return engine.run(load_pipeline(doc), out)


def test_tiff_series_with_a_wrong_shape_frame(tmp_path: Path) -> None:
    frames = _frames(9, np.uint16, seed=1)
    bad = 4
    for k, frame in enumerate(frames):
        # numbers without padding: natural order must put 10 after 9
        Image.fromarray(frame if k != bad else np.zeros((SHAPE[0] + 1, SHAPE[1]), np.uint16)).save(tmp_path / f"s_{k + 2}.tif")
    report = _run(_pipeline(str(tmp_path / "s_*.tif")), tmp_path / "out")
    (scan,) = report.scans
    assert scan.scan == "s"
    assert scan.ledger.received == 9 and scan.ledger.written == 8
    assert [f.index for f in scan.ledger.failed] == [bad]
    assert "shape (13, 16)" in scan.ledger.failed[0].message
    with h5py.File(scan.files[0], "r") as f:
        assert list(f["entry/failed_events/index"][()]) == [bad]
        assert list(f["entry/events/status"][()]) == [int(k == bad) for k in range(9)]
        copied = f["entry/copy/frame"][()]
        totals = f["entry/scalars/total"][()]
    for k, frame in enumerate(frames):
        if k != bad:
            np.testing.assert_array_equal(copied[k], frame)
            assert totals[k] == frame.sum()


@pytest.mark.parametrize("fmt", ["edf", "cbf"])
def test_edf_and_cbf_series_with_an_unreadable_file(tmp_path: Path, fmt: str) -> None:
    dtype = np.uint16 if fmt == "edf" else np.int32
    frames = _frames(6, dtype, seed=2)
    garbage = 3
    for k, frame in enumerate(frames):
        path = tmp_path / f"scan_{k:04d}.{fmt}"
        if k == garbage:
            path.write_bytes(np.random.default_rng(3).bytes(700))
        elif fmt == "edf":
            EdfImage(data=frame, header={"ExposureTime": "0.25"}).write(str(path))
        else:
            pilatus = "# Detector: PILATUS3 2M\r\n# Exposure_time 0.2500000 s\r\n"
            CbfImage(data=frame, header={"_array_data.header_contents": pilatus}).write(str(path))
    report = _run(_pipeline(str(tmp_path)), tmp_path / "out")
    (scan,) = report.scans
    assert scan.ledger.written == 5
    (failed,) = scan.ledger.failed
    assert failed.index == garbage and failed.stage == "source" and f"scan_{garbage:04d}.{fmt}" in failed.message
    with h5py.File(scan.files[0], "r") as f:
        copied = f["entry/copy/frame"][()]
        meta = f["entry/process/scan_metadata"]
        assert list(meta["frame_shape"][()]) == list(SHAPE)
        assert meta["count_time_s"][()] == 0.25
    for k, frame in enumerate(frames):
        if k != garbage:
            np.testing.assert_array_equal(copied[k], frame)


def test_dark_and_flat_streams_come_first(tmp_path: Path) -> None:
    for name, frames in (("dark", _frames(2, np.uint16, 4)), ("flat", _frames(3, np.uint16, 5)), ("img", _frames(4, np.uint16, 6))):
        for k, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp_path / f"{name}_{k}.tif")
    # the folder holds darks and flats too: the data stream leaves them out
    reader = ImageSeriesReader(ImageSeriesParams(path=str(tmp_path), dark=str(tmp_path / "dark_*"), flat=str(tmp_path / "flat_*"), name="x"))
    assert reader.scan.streams == {"dark": range(0, 2), "flat": range(2, 5), "data": range(5, 9)}
    assert reader.scan.name == "x"
    assert [e.stream for e in reader.read(0, 9)] == ["dark"] * 2 + ["flat"] * 3 + ["data"] * 4


def test_natural_order() -> None:
    names = ["a_10.tif", "a_9.tif", "a_100.tif", "a_1.tif", "b_2.tif"]
    assert sorted(names, key=natural_key) == ["a_1.tif", "a_9.tif", "a_10.tif", "a_100.tif", "b_2.tif"]


def test_no_match_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"matched no file.*check the folder and the pattern"):
        ImageSeriesReader(ImageSeriesParams(path=str(tmp_path / "nothing_*.cbf")))
    with pytest.raises(SourceError, match=r"holds no image files"):
        ImageSeriesReader(ImageSeriesParams(path=str(tmp_path)))
    (tmp_path / "ok_1.tif").write_bytes(b"")
    with pytest.raises(SourceError, match=r"source.params.dark .*matched no file"):
        ImageSeriesReader(ImageSeriesParams(path=str(tmp_path), dark=str(tmp_path / "dark_*.tif")))


def test_cli_input_glob(tmp_path: Path) -> None:
    frames = _frames(5, np.uint16, seed=7)
    raw = tmp_path / "raw"
    raw.mkdir()
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(raw / f"run_{k:03d}.tif")
    doc = _pipeline("unused")
    doc["source"] = {"use": "simulated_frames", "params": {"frames": 2}}
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["run", str(pipeline), "--input", str(raw / "*.tif"), "-o", str(out), "-q"]) == 0
    with h5py.File(out / "run.nxs", "r") as f:
        np.testing.assert_array_equal(f["entry/copy/frame"][()], np.stack(frames))


def test_a_folder_of_images_given_as_input_is_one_series(tmp_path: Path) -> None:
    from lightpipe.core.source import source_for_input

    (tmp_path / "a_0001.tif").write_bytes(b"")
    assert source_for_input(str(tmp_path), "simulated_frames", {}) == ("image_series", {"path": str(tmp_path)})
    (tmp_path / "b.h5").write_bytes(b"")
    assert source_for_input(str(tmp_path), "simulated_frames", {})[0] == "folder"
