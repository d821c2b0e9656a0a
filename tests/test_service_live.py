"""The live channel end to end: a real pipeline run -> LiveForwarder -> LiveHub -> uvicorn -> websocket clients;
and through the whole service: a job submitted to the API, run in its own process, watched on its websocket."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
import zmq
from fastapi import FastAPI, HTTPException
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lightpipe import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.service import live
from lightpipe.service.live import (MAX_IMAGE_PX, MAX_VALUES, NOT_VALUES, SUBPROTOCOL, LiveForwarder, LiveHub,
                                    json_value, live_image, live_router, pack_image, unpack_image)
from lightpipe.service.settings import ServiceSettings
from lightpipe.simulators.frames import FrameSimParams, write_nxmx
from lightpipe.testing import RunningMean
from service_harness import REPO, RunningService, tcp_socket

#: Tokens of the test service and the jobs each may read.
TOKENS = {"alice": {"job-1", "job-2"}, "bob": {"job-3"}}
JOBS = {"job-1", "job-2", "job-3"}
#: Frames the test pipeline runs, and their shape: larger than a browser needs, so the hub gets them reduced.
FRAMES = 24
SHAPE = (1100, 600)


class RefuseFifth(RunningMean):
    """A running mean whose event 5 fails (a bad frame): the scan goes on without it."""

    name = "refuse_fifth"

    def feed(self, index: int, frame: Any) -> None:
        if index == 5:
            raise ValueError("frame 5 is saturated")
        super().feed(index, frame)


def pipeline(frames: int = FRAMES, stage: str = "RunningMean") -> Any:
    return load_pipeline({
        "version": 2, "name": "live-test",
        "source": {"use": "simulated_frames",
                   "params": {"name": "live", "frames": frames, "darks": 0, "flats": 0, "shape": list(SHAPE)}},
        "stages": {"mean": {"use": f"test_service_live:{stage}", "inputs": {"frame": "source.frame"}}},
        "sinks": [{"use": "nexus", "fields": ["mean.mean", "mean.frames"]}],
        "engine": {"chunk_size": 2},
    })


def run_job(job_id: str, endpoint: str, output: Path, frames: int = FRAMES, stage: str = "RunningMean",
            failed: int = 0) -> LiveForwarder:
    """Run the test pipeline with a forwarder to ``endpoint``; the forwarder, closed (its counters kept)."""
    forwarder = LiveForwarder(endpoint, job_id, max_image_hz=0)
    try:
        with LocalEngine() as engine:
            report = engine.run(pipeline(frames, stage), output, hooks=[forwarder])
        assert report.scans[0].ledger.written == frames - failed
    finally:
        forwarder.close()
    return forwarder


# -- the service --------------------------------------------------------------------------------------------------

@dataclass
class Service:
    url: str
    hub: LiveHub


async def authorize(token: str, job_id: str) -> None:
    if job_id == "job-broken":
        raise RuntimeError("the database went away")
    if token not in TOKENS:
        raise HTTPException(401, "unknown token; log in again")
    if job_id not in JOBS:
        raise HTTPException(404, f"no job {job_id}")
    if job_id not in TOKENS[token]:
        raise HTTPException(403, f"job {job_id} belongs to another user")


@pytest.fixture()
def service() -> Iterator[Service]:
    """A real uvicorn on a free port serving a hub's websockets, in a thread of its own."""
    hub = LiveHub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(lifespan=lifespan)
    app.include_router(live_router(hub, authorize))
    sock = tcp_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio",
                                           ws_per_message_deflate=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Service(f"ws://127.0.0.1:{sock.getsockname()[1]}", hub)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Received:
    """What one websocket client got, in order, with the time each message arrived."""

    json: list[dict[str, Any]] = field(default_factory=list)
    images: list[tuple[dict[str, Any], np.ndarray, float]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.json if m["type"] == kind]


@contextlib.contextmanager
def open_live(service: Service, job_id: str, token: str | None, first_message: str | None = None,
              max_queue: int = 16) -> Iterator[ClientConnection]:
    """A websocket to a job's live channel, the token offered as subprotocol (or sent as ``first_message``).

    ``max_queue``: messages the client library takes off the socket before the test reads them.
    """
    protocols = [SUBPROTOCOL, f"bearer.{token}"] if token is not None else None
    with connect(f"{service.url}/api/v1/jobs/{job_id}/live", subprotocols=protocols,  # type: ignore[arg-type]
                 open_timeout=10, max_queue=max_queue) as ws:
        if first_message is not None:
            ws.send(first_message)
        yield ws


def read_all(ws: ClientConnection, into: Received, timeout: float = 30.0) -> Received:
    """Read until the server closes the socket."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = ws.recv(timeout=deadline - time.monotonic())
            now = time.time()
            if isinstance(message, bytes):
                header, image = unpack_image(message)
                into.images.append((header, image, now))
            else:
                into.json.append(json.loads(message))
    except ConnectionClosed:
        pass
    finally:
        into.close_code = ws.close_code
        into.close_reason = ws.close_reason or ""
        ws.close()
    return into


def reader(ws: ClientConnection) -> tuple[Received, threading.Thread]:
    received = Received()
    thread = threading.Thread(target=read_all, args=(ws, received), name="ws-reader")
    thread.start()
    return received, thread


# -- tests --------------------------------------------------------------------------------------------------------

def test_progress_and_images_of_a_real_run_reach_the_browser(service: Service, tmp_path: Path) -> None:
    with open_live(service, "job-1", "alice") as ws:
        assert ws.subprotocol == SUBPROTOCOL  # the token is never echoed back
        assert json.loads(ws.recv(timeout=10)) == {"type": "hello", "job": "job-1"}
        received, thread = reader(ws)
        forwarder = run_job("job-1", service.hub.endpoint, tmp_path)
        thread.join(30)
        assert not thread.is_alive()
    assert received.close_code == 1000

    [started] = received.of("scan_started")
    assert started["scan"] == "live" and started["events"] == FRAMES and started["streams"]["data"] == FRAMES
    progress = received.of("progress")
    written = [m["written"] for m in progress if "written" in m]
    assert written == sorted(written) and written[-1] == FRAMES and written[0] < FRAMES
    last = [m for m in progress if "written" in m][-1]
    assert last == {**last, "received": FRAMES, "failed": 0, "done": FRAMES, "total": FRAMES, "job": "job-1"}
    assert 0.0 <= last["buffer_fill"] <= 1.0 and last["events_per_s"] > 0
    [finished_scan] = received.of("scan_finished")
    assert finished_scan == {**finished_scan, "state": "completed", "written": FRAMES, "files": ["live.nxs"]}
    assert received.json[-1]["type"] == "finished"  # in order: the run's end comes last
    values = received.of("values")
    assert values and values[-1]["values"]["mean.frames"] == FRAMES - FRAMES % 2  # scalars go as values

    assert received.images, "no image arrived"
    header, image, _ = received.images[-1]
    expected = (SHAPE[0] // 3, SHAPE[1] // 2)  # 1100 x 600 averaged in 3 x 2 blocks: at most 512 per side
    assert header["name"] == "mean.mean" and header["shape"] == list(expected) and image.shape == expected
    assert header["dtype"] == "float32" and image.dtype == np.float32
    assert header["source_shape"] == list(SHAPE) and header["part"] == "value"
    assert header["min"] == pytest.approx(float(image.min())) and header["max"] == pytest.approx(float(image.max()))
    seqs = [h["seq"] for h, _, _ in received.images]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert forwarder.sent > 0
    assert service.hub.latest("job-1")["written"] == FRAMES  # type: ignore[index]
    assert service.hub.finished("job-1")


def test_a_submitted_solver_job_is_watched_live_until_it_ends(tmp_path: Path) -> None:
    # beam-spot: a solver (spot_fit) whose fit region and model are images after every chunk of 10 frames
    data = tmp_path / "data"
    write_nxmx(data / "visit1" / "beam_spot_master.h5",
               FrameSimParams(name="beam_spot", frames=60, darks=10, flats=20, shape=(256, 256), rings_px=[0.0],
                              beam_center=(141.3, 118.6), photons=200, seed=2), frames_per_file=30)
    service = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=data))
    try:
        service.register((REPO / "pipelines" / "beam-spot.yaml").read_text())
        user = service.token("jo")
        with service.client(user) as c:
            job = c.post("/jobs", json={"pipeline": "beam-spot", "dataset": "visit1/beam_spot_master.h5"}).json()
        url = service.url.replace("http://", "ws://") + f"/api/v1/jobs/{job['id']}/live"
        with connect(url, subprotocols=[SUBPROTOCOL, f"bearer.{user}"], open_timeout=10) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == SUBPROTOCOL
            received = read_all(ws, Received(), timeout=60)
        done = service.wait(user, job["id"])
    finally:
        service.close()
    assert done["state"] == "completed", done["error"]
    assert received.close_code == 1000, (received.close_code, received.close_reason)
    assert received.json[0] == {"type": "hello", "job": job["id"]} and received.json[-1]["type"] == "finished"
    last = [m for m in received.of("progress") if "written" in m][-1]
    assert last["job"] == job["id"] and last["scan"] == "beam_spot" and last["failed"] == 0
    assert last["written"] == 10 + 20 + 60  # darks, flats and frames
    assert received.of("scan_finished")[0]["state"] == "completed"
    assert received.images, "no image arrived"
    header, image, _ = received.images[-1]
    assert header["name"] in ("spot.region", "spot.model") and header["scan"] == "beam_spot"
    assert image.shape == (40, 40) == tuple(header["shape"])  # the fitted region, y 98-138 and x 121-161
    assert np.isfinite(image).any()
    values = received.of("values")[-1]["values"]
    assert abs(values["spot.x_px"] - 141.3) < 1 and abs(values["spot.y_px"] - 118.6) < 1


def test_a_late_subscriber_gets_the_newest_at_once(service: Service, tmp_path: Path) -> None:
    run_job("job-2", service.hub.endpoint, tmp_path)
    deadline = time.monotonic() + 10
    while not service.hub.finished("job-2"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with open_live(service, "job-2", None, first_message=json.dumps({"token": "alice"})) as ws:
        assert ws.subprotocol is None
        received = read_all(ws, Received())
    assert received.json[0]["type"] == "hello"
    assert received.of("progress")[-1]["written"] == FRAMES
    assert len(received.images) == 1 and received.images[0][0]["name"] == "mean.mean"
    assert received.close_code == 1000


def test_a_slow_client_does_not_hold_back_a_fast_one(service: Service, tmp_path: Path) -> None:
    frames = 60
    # the slow client's library holds 2 messages, then the socket's buffers fill and the server must hold back
    with open_live(service, "job-1", "alice", max_queue=2) as slow, open_live(service, "job-1", "alice") as fast:
        for ws in (slow, fast):
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        fast_received, fast_thread = reader(fast)
        started = time.monotonic()
        run_job("job-1", service.hub.endpoint, tmp_path, frames=frames)
        fast_thread.join(30)
        fast_done = time.monotonic() - started
        assert fast_received.of("finished") and fast_received.of("progress")[-1]["written"] == frames
        # the slow client has not read a message yet; now it reads what is left for it
        slow_received = read_all(slow, Received())
    assert slow_received.of("finished") and slow_received.close_code == 1000
    assert slow_received.of("progress")[-1]["written"] == frames
    newest = fast_received.images[-1][0]["seq"]
    assert slow_received.images[-1][0]["seq"] == newest  # it ends with the newest image ...
    assert len(slow_received.images) < len(fast_received.images)  # ... older ones were dropped while it slept
    assert len(fast_received.images) == frames // 2  # the fast one got every update (one per chunk of 2)
    assert fast_done < 30


@pytest.mark.parametrize(("job", "token", "code"), [("job-1", "mallory", 4401), ("job-3", "alice", 4403),
                                                    ("job-9", "alice", 4404)])
def test_a_wrong_token_is_refused(service: Service, job: str, token: str, code: int) -> None:
    for first_message in (None, json.dumps({"token": token})):
        with open_live(service, job, None if first_message else token, first_message) as ws:
            received = read_all(ws, Received(), timeout=10)
        assert received.close_code == code and received.json == [] and received.images == []
        assert job in received.close_reason or "token" in received.close_reason


def test_a_failed_event_is_reported(service: Service, tmp_path: Path) -> None:
    with open_live(service, "job-1", "alice") as ws:
        received, thread = reader(ws)
        run_job("job-1", service.hub.endpoint, tmp_path, stage="RefuseFifth", failed=1)
        thread.join(30)
    [failed] = received.of("failed")
    assert failed == {**failed, "index": 5, "stage": "mean", "scan": "live"} and "saturated" in failed["message"]
    assert received.of("progress")[-1]["failed"] == 1 and received.of("scan_finished")[0]["failed"] == 1


def test_a_token_that_cannot_be_checked(service: Service) -> None:
    with open_live(service, "job-broken", "alice") as ws:
        received = read_all(ws, Received(), timeout=10)
    assert received.close_code == 1011 and "try again" in received.close_reason
    assert "database" not in received.close_reason  # the cause goes to the log, not to the client


def test_no_token_in_time_is_refused(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "AUTH_TIMEOUT_S", 0.2)
    with open_live(service, "job-1", None) as ws:
        received = read_all(ws, Received(), timeout=10)
    assert received.close_code == 4408 and "token" in received.close_reason


@pytest.mark.slow
def test_the_latency_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "live_latency.py"), "--quick",
                           "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])  # one JSON object on the last line
    live_figures, raw = figures["lightpipe"], figures["raw"]
    assert live_figures["written"] == figures["frames"] and live_figures["failed"] == 0
    assert 0 < live_figures["images"] <= live_figures["updates"] == figures["frames"]
    assert 0 < live_figures["to_hub_p50_s"] <= live_figures["p50_s"] <= live_figures["p99_s"] <= live_figures["max_s"]
    assert raw["images"] == figures["frames"] and 0 < raw["p50_s"] <= raw["p99_s"]
    assert figures["meets_target"] == (live_figures["p99_s"] < figures["target_p99_s"])
    assert "Live latency" in done.stderr


def test_the_forwarder_never_waits_for_an_absent_hub() -> None:
    with zmq.Context.instance().socket(zmq.PULL) as unused:
        port = unused.bind_to_random_port("tcp://127.0.0.1")
    frame = np.random.default_rng(0).random((2048, 2048))
    forwarder = LiveForwarder(f"tcp://127.0.0.1:{port}", "job-x", max_image_hz=0)
    try:
        times = []
        for _ in range(30):
            start = time.perf_counter()
            forwarder.intermediate_result("scan", {"object": frame})
            times.append(time.perf_counter() - start)
    finally:
        start = time.perf_counter()
        forwarder.close()
        closing = time.perf_counter() - start
    assert max(times) < 0.5 and closing < 3.0
    assert forwarder.replaced > 0  # nobody read: newer images replaced the waiting ones


def test_live_image_reduces_to_a_browser_size() -> None:
    rng = np.random.default_rng(1)
    frame = rng.random((1100, 600))
    image, part = live_image(frame)  # type: ignore[misc]
    assert image.shape == (366, 300) and image.dtype == np.float32 and part == "value"
    assert image[5, 7] == pytest.approx(frame[15:18, 14:16].mean(), rel=1e-6)
    assert max(live_image(rng.random((5000, 10)))[0].shape) <= MAX_IMAGE_PX  # type: ignore[index]
    obj = np.exp(1j * np.linspace(-1, 1, 64 * 64)).reshape(64, 64)
    phase, part = live_image(obj)  # type: ignore[misc]
    assert part == "phase" and np.allclose(phase, np.angle(obj), atol=1e-6)
    stack, _ = live_image(rng.random((3, 20, 30)))  # type: ignore[misc]
    assert stack.shape == (20, 30)
    mask, _ = live_image(np.eye(4, dtype=bool))  # type: ignore[misc]
    assert mask.tolist() == np.eye(4).tolist()
    assert live_image(np.arange(5)) is None and live_image("text") is None and live_image(np.zeros((0, 3))) is None


def test_scalars_and_curves_go_as_values() -> None:
    assert json_value(np.float32(2.5)) == 2.5 and json_value(np.nan) is None  # a fit that found nothing: null
    assert json_value(np.array([1.0, np.inf, 3.0])) == [1.0, None, 3.0]
    assert len(json_value(np.arange(10_000.0))) == MAX_VALUES
    assert json_value(np.zeros((2, 2))) is NOT_VALUES and json_value("text") is NOT_VALUES


def test_image_messages_keep_pixels_aligned() -> None:
    for name in ("a", "ab", "abc", "abcd"):
        pixels = np.arange(6, dtype="<f4").reshape(2, 3)
        message = pack_image({"type": "image", "name": name, "shape": [2, 3]}, pixels.tobytes())
        length = int.from_bytes(message[:4], "little")
        assert (4 + length) % 4 == 0  # a browser's Float32Array needs the offset aligned
        header, image = unpack_image(message)
        assert header["name"] == name and np.array_equal(image, pixels)


def test_the_hub_ignores_a_malformed_message(service: Service) -> None:
    with zmq.Context.instance().socket(zmq.PUSH) as push:
        push.connect(service.hub.endpoint)
        push.send_multipart([b"job-1", b"json", b"{not json"])
        push.send_multipart([b"job-1", b"image", json.dumps({"name": "x", "shape": [2, 2]}).encode(), b"123"])
        push.send_multipart([b"job-1", b"json", json.dumps({"type": "progress", "written": 3}).encode()])
        deadline = time.monotonic() + 10
        while service.hub.latest("job-1") is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert service.hub.latest("job-1") == {"type": "progress", "written": 3}
