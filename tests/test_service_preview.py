"""h5web's h5grove routes behind tokens, with the data root's path checks, over a real FastAPI app."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
import anyio
import httpx
from fastapi import FastAPI, HTTPException, Request

from lightpipe.service.h5preview import h5grove_router
from lightpipe.service.paths import DataRoot
from lightpipe.simulators.frames import FrameSimParams, write_nxmx

#: Tokens of the test app and the folders each may read (() = all).
TOKENS = {"admin-token": (), "visit1-token": ("visit1",)}


def make_app(root: DataRoot) -> FastAPI:
    """An app that resolves files as the service does: bearer token -> allowed folders -> DataRoot."""

    def resolve(request: Request, file: str) -> Path:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in TOKENS:
            raise HTTPException(401, "a valid token is needed")
        return root.resolve(file, TOKENS[token])  # PathNotAllowed and PathNotFound: the router's 403 and 404

    app = FastAPI()
    app.include_router(h5grove_router(resolve), prefix="/api/v1/h5grove")
    return app


@pytest.fixture()
def frame() -> np.ndarray:
    return np.random.default_rng(5).poisson(20, size=(60, 70)).astype(np.uint16)


class Client:
    """Requests through httpx's ASGI transport, each on an event loop of its own (the tests are plain functions)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        async def request() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test") as c:
                return await c.get(url, **kwargs)

        return anyio.run(request)


@pytest.fixture()
def client(tmp_path: Path, frame: np.ndarray, sim_params: FrameSimParams) -> Client:
    root = tmp_path / "data"
    (tmp_path / "outside").mkdir()
    with h5py.File(tmp_path / "outside" / "secret.h5", "w") as f:
        f["value"] = np.arange(7)
    for visit in ("visit1", "visit2"):
        (root / visit).mkdir(parents=True)
    with h5py.File(root / "visit2" / "other.h5", "w") as f:
        f["private"] = np.full((2, 2), 42.0)
    with h5py.File(root / "visit1" / "result.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry.create_dataset("frame", data=frame, chunks=frame.shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        entry["frame"].attrs["units"] = "counts"
        entry["mean"] = np.float64(frame.mean())
        entry["alias"] = h5py.SoftLink("/entry/frame")
        f["links/visit2"] = h5py.ExternalLink("../visit2/other.h5", "/private")
        f["links/outside"] = h5py.ExternalLink(str(tmp_path / "outside" / "secret.h5"), "/value")
        f["links/via_soft"] = h5py.SoftLink("/links/visit2")
        f["links/missing"] = h5py.ExternalLink("nothing_here.h5", "/x")
        f["same_visit/frame"] = h5py.ExternalLink("series_master.h5", "/entry/dark/data")
    write_nxmx(root / "visit1" / "series_master.h5", sim_params, frames_per_file=16)
    with h5py.File(root / "visit1" / "parts.h5", "w") as f:
        f["part"] = np.arange(6.0)
    with h5py.File(root / "visit1" / "virtual.h5", "w") as f:
        for name, source, dataset in (("beside", "parts.h5", "/part"), ("outside", str(tmp_path / "outside" /
                                      "secret.h5"), "/value"), ("visit2", "../visit2/other.h5", "/private")):
            shape = (6,) if name == "beside" else (7,) if name == "outside" else (2, 2)
            layout = h5py.VirtualLayout(shape, np.float64)
            layout[...] = h5py.VirtualSource(source, dataset, shape=shape)
            f.create_virtual_dataset(name, layout)
    return Client(make_app(DataRoot(root)))


def get(client: Client, route: str, token: str = "visit1-token", **params: Any) -> httpx.Response:
    return client.get(f"/api/v1/h5grove/{route}", params=params, headers={"Authorization": f"Bearer {token}"})


def test_meta_of_a_compressed_2d_dataset(client: Client, frame: np.ndarray) -> None:
    response = get(client, "meta/", file="visit1/result.nxs", path="/entry/frame")
    assert response.status_code == 200, response.text
    meta = response.json()
    assert meta["kind"] == "dataset" and meta["shape"] == list(frame.shape)
    assert meta["filters"][0]["id"] == hdf5plugin.BSHUF_ID
    assert meta["attributes"] == [{"name": "units", "shape": [], "type": meta["attributes"][0]["type"]}]


def test_data_of_a_compressed_2d_dataset(client: Client, frame: np.ndarray) -> None:
    binary = get(client, "data/", file="visit1/result.nxs", path="/entry/frame", format="bin")
    assert binary.status_code == 200, binary.text
    assert np.array_equal(np.frombuffer(binary.content, dtype=np.uint16).reshape(frame.shape), frame)
    rows = get(client, "data/", file="visit1/result.nxs", path="/entry/frame", selection="10:12,::7")
    assert rows.json() == frame[10:12, ::7].tolist()
    through_soft_link = get(client, "data/", file="visit1/result.nxs", path="/entry/alias", format="npy")
    assert through_soft_link.status_code == 200 and len(through_soft_link.content) > frame.nbytes
    stats = get(client, "stats/", file="visit1/result.nxs", path="/entry/frame").json()
    assert stats["max"] == frame.max() and stats["min"] == frame.min()
    assert get(client, "attr/", file="visit1/result.nxs", path="/entry").json() == {"NX_class": "NXentry",
                                                                                   "default": "data"}


def test_dectris_master_reads_its_data_files(client: Client) -> None:
    meta = get(client, "meta/", file="visit1/series_master.h5", path="/entry/data").json()
    kinds = {c["name"]: c["kind"] for c in meta["children"]}
    assert kinds["data_000001"] == "dataset"  # the external link to the data file beside it is followed
    block = get(client, "data/", file="visit1/series_master.h5", path="/entry/data/data_000002", selection="0",
                format="bin", dtype="safe")
    assert block.status_code == 200 and len(block.content) > 0
    paths = get(client, "paths/", file="visit1/series_master.h5", path="/entry").json()
    assert "/entry/data/data_000001" in paths and paths[0] == "/entry"
    assert get(client, "data/", file="visit1/result.nxs", path="/same_visit/frame", selection="0").status_code == 200


@pytest.mark.parametrize("file", ["../outside/secret.h5", "visit1/../../outside/secret.h5", "visit1/../visit2/other.h5",
                                  "visit2/other.h5", "/etc/passwd"])
def test_files_outside_the_token_folders_are_refused(client: Client, file: str) -> None:
    for route in ("meta/", "data/", "attr/", "stats/", "paths/", "meta"):
        response = get(client, route, file=file, path="/")
        assert response.status_code == 403, (route, response.text)
        assert "outside" in response.json()["detail"]


def test_the_admin_token_reads_every_visit_but_not_outside(client: Client) -> None:
    assert get(client, "data/", "admin-token", file="visit2/other.h5", path="/private").json() == [[42.0] * 2] * 2
    assert get(client, "meta/", "admin-token", file="../outside/secret.h5").status_code == 403


def test_external_links_out_of_the_token_folders_are_refused(client: Client) -> None:
    for path in ("/links/visit2", "/links/outside", "/links/via_soft"):
        for route in ("data/", "meta/", "attr/"):
            response = get(client, route, file="visit1/result.nxs", path=path)
            assert response.status_code == 403, (route, path, response.text)
    # listing the group shows the links as links: nothing about their targets' contents
    children = get(client, "meta/", file="visit1/result.nxs", path="/links").json()["children"]
    assert {c["name"]: c["kind"] for c in children} == {
        "visit2": "external_link", "outside": "external_link", "via_soft": "soft_link", "missing": "external_link"}
    assert "shape" not in json.dumps(children)
    # a missing linked file is refused, never looked for in the server's working directory
    assert get(client, "data/", file="visit1/result.nxs", path="/links/missing").status_code == 403
    # the admin follows the link to visit2, but not out of the data root
    assert get(client, "data/", "admin-token", file="visit1/result.nxs", path="/links/visit2").status_code == 200
    assert get(client, "data/", "admin-token", file="visit1/result.nxs", path="/links/outside").status_code == 403


def test_virtual_datasets_read_only_allowed_files(client: Client) -> None:
    assert get(client, "data/", file="visit1/virtual.h5", path="/beside").json() == list(np.arange(6.0))
    for path in ("/outside", "/visit2"):
        for route in ("data/", "stats/"):
            response = get(client, route, file="visit1/virtual.h5", path=path)
            assert response.status_code == 403 and "takes its values from" in response.json()["detail"], path
    assert get(client, "meta/", file="visit1/virtual.h5", path="/visit2").json()["shape"] == [2, 2]  # no values
    assert get(client, "data/", "admin-token", file="visit1/virtual.h5", path="/visit2").json() == [[42.0] * 2] * 2
    assert get(client, "data/", "admin-token", file="visit1/virtual.h5", path="/outside").status_code == 403


def test_bad_requests(client: Client) -> None:
    assert get(client, "meta/", "wrong", file="visit1/result.nxs").status_code == 401
    assert client.get("/api/v1/h5grove/meta/", params={"file": "visit1/result.nxs"}).status_code == 401
    assert get(client, "meta/", file="visit1/nothing.h5").status_code == 404
    assert get(client, "meta/", file="visit1/result.nxs", path="/nothing").status_code == 404
    assert get(client, "data/", file="visit1/result.nxs", path="/entry").status_code == 422
    assert get(client, "data/", file="visit1/result.nxs", path="/entry/frame", format="exe").status_code == 422
    assert get(client, "data/", file="visit1/result.nxs", path="/entry/frame", selection="0:2,bad").status_code == 422
    assert get(client, "attr/", file="visit1/result.nxs", path="/entry", attr_keys="nope").status_code == 404
    assert get(client, "meta/", file="visit1").status_code == 422


def test_a_file_that_is_not_hdf5(client: Client, tmp_path: Path) -> None:
    (tmp_path / "data" / "visit1" / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n then nothing")
    response = get(client, "meta/", file="visit1/broken.h5")
    assert response.status_code == 422 and "cannot be read as HDF5" in response.json()["detail"]
