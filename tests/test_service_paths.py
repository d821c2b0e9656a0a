"""The data root keeps every dataset path inside the root and inside a token's folders."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from lightpipe.core.errors import LightpipeError
from lightpipe.service.paths import DataRoot, PathNotAllowed, PathNotFound
from lightpipe.simulators.frames import FrameSimParams, write_nxmx


@pytest.fixture()
def data(tmp_path: Path) -> DataRoot:
    """visit1 and visit2 with a file each, a secret file outside the root, and links of every kind."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.h5").write_bytes(b"not for you")
    root = tmp_path / "data"
    for visit in ("visit1", "visit2"):
        (root / visit).mkdir(parents=True)
        with h5py.File(root / visit / "scan.nxs", "w") as f:
            f["entry/data/data"] = np.zeros((3, 4, 5), dtype=np.uint16)
    (root / "visit1" / "to_visit2").symlink_to(root / "visit2")
    (root / "visit1" / "to_visit2_file.h5").symlink_to(root / "visit2" / "scan.nxs")
    (root / "visit1" / "to_outside").symlink_to(outside)
    (root / "visit1" / "secret.h5").symlink_to(outside / "secret.h5")
    (root / "visit1" / "sub").mkdir()
    (root / "visit1" / "current").symlink_to(root / "visit1" / "sub")
    (root / "visit1" / "loop").symlink_to(root / "visit1" / "loop")
    return DataRoot(root)


def test_errors_are_lightpipe_errors() -> None:
    assert issubclass(PathNotAllowed, LightpipeError) and issubclass(PathNotFound, LightpipeError)


def test_resolves_inside_the_root(data: DataRoot) -> None:
    assert data.resolve("visit1/scan.nxs") == data.root / "visit1" / "scan.nxs"
    assert data.resolve("") == data.root
    assert data.resolve("visit1/current") == data.root / "visit1" / "sub"  # a link inside the root is followed
    assert data.resolve("visit1/sub/../scan.nxs") == data.root / "visit1" / "scan.nxs"
    assert data.resolve(str(data.root / "visit2" / "scan.nxs")) == data.root / "visit2" / "scan.nxs"


@pytest.mark.parametrize("path", ["..", "../outside/secret.h5", "visit1/../../outside", "visit1/to_outside",
                                  "visit1/to_outside/secret.h5", "visit1/secret.h5", "/etc/passwd", "/", "//etc"])
def test_nothing_outside_the_root(data: DataRoot, path: str) -> None:
    with pytest.raises(PathNotAllowed, match="outside the data root"):
        data.resolve(path)


def test_root_outside_even_when_missing(data: DataRoot) -> None:
    # a path outside is refused before it is looked up: the answer does not tell whether it exists
    with pytest.raises(PathNotAllowed):
        data.resolve("../no/such/file.h5")


def test_missing_inside_the_root(data: DataRoot) -> None:
    with pytest.raises(PathNotFound, match="does not exist"):
        data.resolve("visit1/nothing.h5")
    with pytest.raises(PathNotFound, match="cannot be followed"):
        data.resolve("visit1/loop/x")


def test_nul_bytes_and_long_names(data: DataRoot) -> None:
    with pytest.raises(PathNotAllowed, match="NUL"):
        data.resolve("visit1/scan.nxs\x00.png")
    with pytest.raises(PathNotFound, match="255 bytes"):
        data.resolve("visit1/" + "x" * 256)
    with pytest.raises(PathNotFound, match="4096"):
        data.resolve("a/" * 3000)
    with pytest.raises(PathNotAllowed):
        data.resolve(b"visit1/scan.nxs")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["visit2", "visit2/scan.nxs", "visit1/../visit2", "visit1/../visit2/scan.nxs",
                                  "visit1/to_visit2", "visit1/to_visit2/scan.nxs", "visit1/to_visit2_file.h5",
                                  "", "visit2/nothing.h5"])
def test_a_token_limited_to_visit1(data: DataRoot, path: str) -> None:
    with pytest.raises(PathNotAllowed, match="outside the folders this token may read"):
        data.resolve(path, allowed=["visit1"])


def test_a_token_limited_to_visit1_reads_it(data: DataRoot) -> None:
    assert data.resolve("visit1/scan.nxs", ["visit1"]) == data.root / "visit1" / "scan.nxs"
    assert data.resolve("visit1/current", ["visit1/"]) == data.root / "visit1" / "sub"
    assert data.resolve("visit2/scan.nxs", ["visit1", "visit2"]).name == "scan.nxs"
    with pytest.raises(PathNotFound):
        data.resolve("visit1/nothing.h5", ["visit1"])


def test_an_allowed_folder_that_escapes_allows_nothing(data: DataRoot) -> None:
    for folder in ("visit1/..", "..", "visit1/to_outside", "/etc"):
        with pytest.raises(PathNotAllowed):
            data.resolve("visit2/scan.nxs", [folder])


def test_a_glob_is_checked_file_by_file(data: DataRoot) -> None:
    folder = data.root / "visit1" / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"img_{i:05d}.cbf").write_bytes(b"x")
    assert data.resolve("visit1/images/img_*.cbf", ["visit1"]) == folder / "img_*.cbf"
    (folder / "img_00099.cbf").symlink_to(data.root / "visit2" / "scan.nxs")
    with pytest.raises(PathNotAllowed, match="img_00099.cbf"):
        data.resolve("visit1/images/img_*.cbf", ["visit1"])
    with pytest.raises(PathNotFound, match="matches no file"):
        data.resolve("visit1/images/none_*.tif")


def test_browse_lists_data(data: DataRoot, sim_params: FrameSimParams) -> None:
    visit = data.root / "visit1"
    write_nxmx(visit / "series_master.h5", sim_params, frames_per_file=16)
    series = visit / "tiffs"
    series.mkdir()
    for i in range(1, 5):
        (series / f"frame_{i:04d}.tif").write_bytes(b"x" * 10)
    (series / "notes.txt").write_text("not data")
    (visit / "readme.txt").write_text("not data")
    with h5py.File(visit / "result.cxi", "w") as f:
        f["cxi_version"] = 150
    entries = {e["name"]: e for e in data.browse("visit1", ["visit1"])}
    # links out of the token's folders or out of the root are not shown at all
    assert set(entries) == {"current", "sub", "tiffs", "scan.nxs", "series_master.h5", "result.cxi"}
    master = entries["series_master.h5"]
    assert master["kind"] == "dectris_master" and master["source"] == "hdf5"
    assert master["linked_files"] == ["series_data_000001.h5", "series_data_000002.h5", "series_data_000003.h5"]
    assert master["size"] > sum((visit / n).stat().st_size for n in master["linked_files"])
    assert entries["scan.nxs"]["kind"] == "nexus" and entries["scan.nxs"]["path"] == "visit1/scan.nxs"
    assert entries["result.cxi"]["kind"] == "cxi" and entries["result.cxi"]["source"] == "cxi"
    assert entries["tiffs"] == {**entries["tiffs"], "kind": "folder", "source": "image_series", "images": 4}
    assert [e["kind"] for e in data.browse("visit1", ["visit1"])][:3] == ["folder"] * 3  # folders first

    [group] = data.browse("visit1/tiffs")
    assert group == {**group, "kind": "image_series", "name": "frame_*.tif", "path": "visit1/tiffs/frame_*.tif",
                     "files": 4, "first": "frame_0001.tif", "last": "frame_0004.tif", "size": 40}
    assert data.resolve(group["path"]) == series / "frame_*.tif"


def test_browse_above_the_allowed_folders_shows_the_way_down(data: DataRoot) -> None:
    assert [e["name"] for e in data.browse("", ["visit1"])] == ["visit1"]
    assert [e["name"] for e in data.browse("")] == ["visit1", "visit2"]
    assert [e["name"] for e in data.browse("visit1", ["visit1/sub"])] == ["sub"]
    with pytest.raises(PathNotAllowed):
        data.browse("visit2", ["visit1"])
    with pytest.raises(PathNotAllowed):
        data.browse("visit1/to_visit2", ["visit1"])
    with pytest.raises(PathNotFound, match="not a folder"):
        data.browse("visit1/scan.nxs")


def test_describe_finds_the_scans(data: DataRoot, sim_params: FrameSimParams) -> None:
    write_nxmx(data.root / "visit1" / "series_master.h5", sim_params, frames_per_file=16)
    found = data.describe("visit1/series_master.h5", ["visit1"])
    assert found["source"] == "hdf5" and found["params"]["path"] == "visit1/series_master.h5"
    [scan] = found["scans"]
    assert scan["name"] == "series"
    assert scan["events"] == {"dark": sim_params.darks, "flat": sim_params.flats, "data": sim_params.frames}
    assert scan["metadata"]["frame_shape"] == list(sim_params.shape)
    assert scan["metadata"]["source_file"] == "visit1/series_master.h5"  # never the server's own path
    broken = data.root / "visit1" / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    assert "cannot open" in data.describe("visit1/broken.h5")["error"]
    assert data.describe("visit1/sub")["source"] == "folder"
    with pytest.raises(PathNotAllowed):
        data.describe("visit2/scan.nxs", ["visit1"])


def test_token_folders_are_checked_when_made(data: DataRoot) -> None:
    assert data.check_folders(["visit1/", "/visit2"[1:], "visit1/current"]) == ["visit1", "visit2", "visit1/sub"]
    with pytest.raises(PathNotAllowed, match="'..'"):
        data.check_folders(["visit1/.."])
    with pytest.raises(PathNotAllowed, match="outside the data root"):
        data.check_folders(["visit1/to_outside"])
    with pytest.raises(PathNotFound, match="not a folder"):
        data.check_folders(["visit1/scan.nxs"])
