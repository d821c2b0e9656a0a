"""The service's REST API on a real uvicorn and a real database: tokens and roles on every route, templates,
datasets, results, and each bad input with its status and message (400/401/403/404/409/413/422/503).

The harness (:class:`RunningService`, the datasets, a PostgreSQL server a test may stop) is in
``service_harness.py``.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightpipe.service.settings import ServiceSettings
from postgres import postgres_url  # noqa: F401  (a fixture: a fresh database on a real server)
from service_harness import POWDER, PostgresServer, RunningService, make_data


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_data(root)
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """``None`` (the default SQLite file in the state folder) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def service(tmp_path: Path, dataset_root: Path, database_url: str | None) -> Iterator[RunningService]:
    settings = ServiceSettings(state_dir=tmp_path / "state", data_root=dataset_root, database_url=database_url,
                               max_body_bytes=64 * 1024)
    running = RunningService(settings)
    try:
        yield running
    finally:
        running.close()


# -- tokens and roles on every route -----------------------------------------------------------------
ADMIN_ONLY = {("POST", "/api/v1/pipelines"), ("POST", "/api/v1/pipelines/{name}/versions"),
              ("POST", "/api/v1/pipelines/{name}/retire"), ("GET", "/api/v1/tokens"), ("POST", "/api/v1/tokens"),
              ("DELETE", "/api/v1/tokens/{token_id}")}
PUBLIC = {("GET", "/api/v1/health")}


def _routes(service: RunningService) -> list[tuple[str, str]]:
    schema = service.app.openapi()
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item]


def _fill(path: str) -> str:
    return (path.replace("{name}", "powder-profile").replace("{version}", "1").replace("{job_id}", "nojob")
            .replace("{token_id}", "1").replace("{scan}", "scan").replace("{field}", "scalars.total")
            .replace("{path}", "scan.nxs"))


def test_every_route_wants_a_token_and_admin_routes_an_admin(service: RunningService) -> None:
    routes = _routes(service)
    assert len(routes) > 20 and PUBLIC | ADMIN_ONLY <= set(routes)
    user = service.token("alice")
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        for token in (None, "lp_not-a-token"):
            with service.client(token) as c:
                r = c.request(method, service.url + _fill(path), json={})
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert "token" in r.json()["detail"] and "Traceback" not in r.text
        if (method, path) in ADMIN_ONLY:
            with service.client(user) as c:
                r = c.request(method, service.url + _fill(path), json={"yaml": POWDER, "user": "x"})
                assert r.status_code == 403, (method, path, r.status_code, r.text)
                assert "admin" in r.json()["detail"]
    # the routes that are not in the OpenAPI list: metrics and the live websocket's HTTP side
    with service.client(None) as c:
        assert c.get(f"{service.url}/metrics").status_code == 401


def test_expired_and_revoked_tokens_are_refused(service: RunningService) -> None:
    expired = service.token("bob", days=1e-9)
    time.sleep(0.01)
    with service.client(expired) as c:
        r = c.get("/me")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    with service.client(service.admin) as c:
        made = c.post("/tokens", json={"user": "carol", "days": 2}).json()
        assert made["token"].startswith("lp_") and made["role"] == "user"
        assert all("token" not in t and "digest" not in t for t in c.get("/tokens").json())
        with service.client(made["token"]) as carol:
            assert carol.get("/me").json()["user"] == "carol"
        assert c.delete(f"/tokens/{made['id']}").status_code == 200
        assert c.delete(f"/tokens/{made['id']}").status_code == 409
    with service.client(made["token"]) as carol:
        r = carol.get("/me")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_tokens_are_stored_only_as_digests(service: RunningService) -> None:
    secret = service.token("dave")
    db = Path(service.settings.database.removeprefix("sqlite:///")) if service.settings.database_url is None else None
    if db is None:
        pytest.skip("the file check is for SQLite")
    raw = b"".join(p.read_bytes() for p in db.parent.glob("lightpipe.db*"))
    assert secret.encode() not in raw and service.admin.encode() not in raw


# -- templates --------------------------------------------------------------------------------------
def test_templates_are_versioned_never_edited_and_retired(service: RunningService) -> None:
    first = service.register()
    assert first["version"] == 1
    props = first["params_schema"]["properties"]
    threshold = props["photons"]["properties"]["threshold"]
    assert threshold["default"] == 6.0 and threshold["unit"] == "counts" and "description" in threshold
    assert props["profile"]["properties"]["bins"]["default"] == 150
    with service.client(service.admin) as c:
        r = c.post("/pipelines", json={"yaml": POWDER})
        assert r.status_code == 409 and "versions" in r.json()["detail"]
        changed = POWDER.replace("threshold: 6.0", "threshold: 7.0")
        second = c.post("/pipelines/powder-profile/versions", json={"yaml": changed}).json()
        assert second["version"] == 2
        assert c.get("/pipelines/powder-profile/versions/1").json()["yaml"] == POWDER
        assert c.get("/pipelines/powder-profile").json()["versions"] == [1, 2]
        bad = c.post("/pipelines", json={"yaml": POWDER.replace("use: threshold", "use: treshold")})
        assert bad.status_code == 422 and "did you mean 'threshold'" in bad.json()["detail"]
        assert bad.json()["problems"][0]["line"] is not None
        assert c.post("/pipelines/powder-profile/retire").status_code == 200
        assert c.get("/pipelines").json() == []
        assert c.post("/pipelines/powder-profile/retire").status_code == 409
        r = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5"})
        assert r.status_code == 404  # retired: no longer offered
        r = c.post("/jobs", json={"pipeline": "powder-profile", "version": 2, "dataset": "visit1/scan_master.h5"})
        assert r.status_code == 409 and "retired" in r.json()["detail"]


# -- bad input --------------------------------------------------------------------------------------
def test_bad_submissions_get_the_right_status_and_a_message(service: RunningService) -> None:
    service.register()
    limited = service.token("erin", folders=("visit1",))
    with service.client(limited) as c:
        def submit(**body: Any) -> httpx.Response:
            return c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5", **body})

        r = submit(pipeline="powdr-profile")
        assert r.status_code == 404 and "powder-profile" in r.json()["detail"]
        r = submit(overrides={"profile.bins": 0})
        assert r.status_code == 422 and "profile" in r.json()["detail"] and "bins" in r.json()["detail"]
        r = submit(overrides={"photons.threshold": "many"})
        assert r.status_code == 422 and "number" in r.json()["detail"]
        r = submit(overrides={"photon.threshold": 5})
        assert r.status_code == 400 and "no stage 'photon'" in r.json()["detail"]
        r = submit(overrides={"threshold": 5})
        assert r.status_code == 400 and "stage.param" in r.json()["detail"]
        r = submit(dataset="visit2/scan_master.h5")
        assert r.status_code == 403
        r = submit(dataset="../../etc/passwd")
        assert r.status_code == 403
        r = submit(dataset="visit1/missing_master.h5")
        assert r.status_code == 404
        r = submit(dataset=None)
        assert r.status_code == 400 and "dataset" in r.json()["detail"]
        r = submit(stream="eiger://127.0.0.1:9999", dataset=None)
        assert r.status_code == 403 and "live_streams" in r.json()["detail"]
        r = c.post("/jobs", json={"pipeline": 5})
        assert r.status_code == 422 and "pipeline" in r.json()["detail"]
        r = c.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "x" * 100_000})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
        r = c.get("/jobs/nosuchjob")
        assert r.status_code == 404
        r = c.get("/datasets", params={"path": "visit2"})
        assert r.status_code == 403
        assert all("Traceback" not in x for x in (r.text,))
    with service.client(service.admin) as c:
        r = c.post("/tokens", json={"user": "frank", "folders": ["no-such-visit"]})
        assert r.status_code == 404


def test_a_streamed_body_over_the_limit_is_refused(service: RunningService) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    with service.client(service.admin) as c:
        r = c.post("/pipelines", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_an_upload_over_the_limit_is_refused_and_nothing_registered(service: RunningService) -> None:
    # a template file padded past max_body_bytes (64 KiB here) with a comment: valid YAML, too large
    big = POWDER + "# " + "x" * (70 * 1024) + "\n"
    with service.client(service.admin) as c:
        r = c.post("/pipelines", json={"yaml": big})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"] and "65536 bytes" in r.json()["detail"]
        assert c.get("/pipelines/powder-profile").status_code == 404  # nothing was registered
        assert c.post("/pipelines", json={"yaml": POWDER}).status_code == 201
        r = c.post("/pipelines/powder-profile/versions", json={"yaml": big})
        assert r.status_code == 413
        assert c.get("/pipelines/powder-profile").json()["versions"] == [1]


def test_a_huge_page_size_is_refused_naming_the_limit(service: RunningService) -> None:
    routes = [path for path, item in service.app.openapi()["paths"].items()
              if any(p["name"] == "limit" for p in item.get("get", {}).get("parameters", []))]
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}/log", "/api/v1/jobs/{job_id}/failed",
            "/api/v1/jobs/{job_id}/chunks"} <= set(routes)
    with service.client(service.admin) as c:
        for path in routes:
            for limit in (10**9, 10**30, -1):
                r = c.get(service.url + path.replace("{job_id}", "nojob"), params={"limit": limit})
                assert r.status_code == 422, (path, limit, r.text)
                assert r.json()["detail"].startswith("query.limit: Input should be"), (path, r.text)
        page = c.get("/jobs", params={"limit": 1000}).json()  # the largest page allowed is answered
        assert page["limit"] == 1000 and page["items"] == []


def test_the_database_gone_away_gives_503_and_loses_nothing(service: RunningService, tmp_path: Path) -> None:
    if service.settings.database_url is not None:
        pytest.skip("this test moves the SQLite file away; for PostgreSQL, test_the_postgresql_server_gone_away_... "
                    "stops a server of its own")
    service.register()
    user = service.token("gina")
    state = service.settings.state_dir
    moved = tmp_path / "moved-away"
    shutil.move(state, moved)
    try:
        with service.client(user) as c:
            r = c.get("/pipelines")
            assert r.status_code == 503, r.text
            assert "database is unavailable" in r.json()["detail"] and "Traceback" not in r.text
            r = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5"})
            assert r.status_code == 503
    finally:
        shutil.move(moved, state)
    with service.client(user) as c:
        assert [t["name"] for t in c.get("/pipelines").json()] == ["powder-profile"]


def test_another_users_job_is_refused_and_results_are_served(service: RunningService) -> None:
    service.register()
    alice, bob = service.token("alice"), service.token("bob")
    with service.client(alice) as c:
        job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5"}).json()
    done = service.wait(alice, job["id"])
    assert done["state"] == "completed", done["error"]
    assert done["progress"]["written"] == 48 and done["packages"]["lightpipe"]
    with service.client(bob) as c:
        for path in ("", "/scans", "/files", "/log", "/chunks", "/failed", "/files/scan.nxs"):
            r = c.get(f"/jobs/{job['id']}{path}")
            assert r.status_code == 403, path
        assert c.get("/jobs").json()["total"] == 0
        assert c.post(f"/jobs/{job['id']}/cancel").status_code == 403
    with service.client(alice) as c:
        assert c.get("/jobs").json()["total"] == 1
        assert c.post(f"/jobs/{job['id']}/cancel").status_code == 409
        assert c.post(f"/jobs/{job['id']}/abort").status_code == 409
        total = c.get(f"/jobs/{job['id']}/scans/scan/outputs/scalars.total").json()
        assert total["shape"] == [40] and total["unit"] == "counts" and len(total["data"]) == 40
        part = c.get(f"/jobs/{job['id']}/scans/scan/outputs/profile.profile", params={"start": 5, "stop": 7}).json()
        assert part["shape"] == [2, 150]
        assert c.get(f"/jobs/{job['id']}/scans/scan/outputs/nothing.here").status_code == 404
        assert c.get(f"/jobs/{job['id']}/scans/noscan/outputs/scalars.total").status_code == 404
        assert c.get(f"/jobs/{job['id']}/files/..%2F..%2Fstate%2Flightpipe.db").status_code in (403, 404)
        r = c.get(f"/jobs/{job['id']}/files/scan.nxs")
        assert r.status_code == 200 and r.content[:8] == b"\x89HDF\r\n\x1a\n"
        chunks = c.get(f"/jobs/{job['id']}/chunks").json()["items"]
        assert chunks and all(ch["worker"] and ch["finished"] >= ch["started"] for ch in chunks)
        assert sum(ch["stop"] - ch["start"] for ch in chunks) == 48
        meta = c.get("/h5grove/meta/", params={"file": f"job:{job['id']}/scan.nxs", "path": "/entry"})
        assert meta.status_code == 200 and meta.json()["kind"] == "group"
    with service.client(bob) as c:
        meta = c.get("/h5grove/meta/", params={"file": f"job:{job['id']}/scan.nxs", "path": "/entry"})
        assert meta.status_code == 403


def test_the_postgresql_server_gone_away_gives_503_and_loses_nothing(tmp_path: Path, dataset_root: Path) -> None:
    server = PostgresServer()  # the test's own server: it stops it mid-way
    try:
        service = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=dataset_root,
                                                 database_url=server.url))
        try:
            service.register()
            user = service.token("ida")
            with service.client(user) as c:
                job = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": "visit1/scan_master.h5"}).json()
            assert service.wait(user, job["id"])["state"] == "completed"
            server.stop()
            with service.client(user) as c:
                for method, path, body in (("GET", "/pipelines", None), ("GET", f"/jobs/{job['id']}", None),
                                           ("POST", "/jobs", {"pipeline": "powder-profile",
                                                              "dataset": "visit1/scan_master.h5"})):
                    r = c.request(method, path, json=body)
                    assert r.status_code == 503, (path, r.text)
                    assert "database is unavailable" in r.json()["detail"] and "nothing was changed" in r.json()["detail"]
                    assert r.headers["retry-after"] == "5" and "Traceback" not in r.text
            server.start()
            with service.client(user) as c:  # the pool reconnects; everything stored before is there
                assert [t["name"] for t in c.get("/pipelines").json()] == ["powder-profile"]
                page = c.get("/jobs").json()
                assert page["total"] == 1 and page["items"][0]["state"] == "completed"
                assert page["items"][0]["progress"]["written"] == 48
                assert len(c.get(f"/jobs/{job['id']}/scans/scan/outputs/scalars.total").json()["data"]) == 40
        finally:
            service.close()
    finally:
        server.close()
