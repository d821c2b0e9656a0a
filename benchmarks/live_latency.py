"""Live latency: from a frame's result in a running job to its image in a websocket client, at 10 Hz.

What it measures
    A job process runs a live pipeline the way the service's worker runs one:
    a simulated EIGER streams ``--frames`` frames of ``--shape`` pixels at
    ``--rate`` Hz (in the job's process, on its own thread), the ``eiger``
    source receives them, a solver stage (:class:`lightpipe.testing.RunningMean`, the mean of
    the frames so far: a powder sum as it grows) updates after every frame
    (``chunk_size: 1``), and a :class:`~lightpipe.service.live.LiveForwarder`
    among the run hooks reduces each update to at most 512 x 512 float32 and
    pushes it to the service. In this process a
    :class:`~lightpipe.service.live.LiveHub` behind a real uvicorn serves the
    job's websocket, and a websocket client (the browser's part, on its own
    thread) reads it. The websocket does not compress (uvicorn's
    ``ws_per_message_deflate=False``, as the service runs it): deflating a
    1 MB float32 image took about 30 ms and saved little (``--deflate`` to
    measure it). Each image's header carries the time its result reached
    the hook; the client notes when the image arrived. Reported: p50, p99 and
    the largest of those delays, images the client got against images the
    forwarder made (one per solver update; the live view drops, never
    delays: a missing image was replaced by a newer one), and the rate the
    job kept (frames over the whole run, start-up included). Diagnostic: the
    part of the delay up to the hub (``to_hub``: reduction, the job's sender
    thread, ZeroMQ); the rest is the hub, uvicorn and the client.

Reference (same run)
    The floor of one hop: the same number of 512 x 512 float32 images with
    their time pushed over a plain pyzmq PUSH socket from another process at
    the same rate and read from a PULL socket here, with no lightpipe code,
    no reduction and no websocket.

Target
    p99 below 250 ms at 10 Hz (the service issue).

Run ``python benchmarks/live_latency.py`` (about 40 s; ``--help`` for
options, ``--quick`` for a smoke run of a few seconds, ``--json`` for the
figures on stdout).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np


HERE = Path(__file__).resolve().parent
JOB_ID = "live-latency"
TOKEN = "benchmark-token"
#: The service issue's target for the delay from a result to its image in the client.
TARGET_P99_S = 0.25
RATE_HZ = 10.0
FRAMES = 300
SHAPE = (1024, 1024)
#: Seconds the client waits for the run to end after the last frame was due.
END_GRACE_S = 30.0


# -- the job (its own process) ------------------------------------------------------------------------------------

def run_job(endpoint: str, frames: int, rate_hz: float, shape: tuple[int, int], out: str) -> dict[str, Any]:
    """The live pipeline with a forwarder to ``endpoint``, fed by a simulated EIGER at ``rate_hz``."""
    from lightpipe import load_pipeline
    from lightpipe.engines.local import LocalEngine
    from lightpipe.service.live import LiveForwarder
    from lightpipe.simulators.eiger import EigerSimulator
    from lightpipe.simulators.eiger_frames import FrameSource

    frame_source = FrameSource.from_simulator(params={"frames": min(frames, 16), "darks": 0, "flats": 0,
                                                      "shape": list(shape)})
    simulator = EigerSimulator(frame_source, stream_port=0, rest_port=0, rate_hz=rate_hz).start()
    pipeline = load_pipeline({
        "version": 2, "name": "live-latency",
        "source": {"use": "eiger", "params": {"endpoint": simulator.stream_endpoint, "max_scans": 1}},
        "stages": {"mean": {"use": "lightpipe.testing:RunningMean", "inputs": {"frame": "source.frame"}}},
        "sinks": [{"use": "nexus", "fields": ["mean.frames"]}],
        "engine": {"chunk_size": 1},
    })
    forwarder = LiveForwarder(endpoint, JOB_ID, max_image_hz=0)
    acquisition = threading.Thread(target=simulator.acquire, args=(frames,), name="eiger-acquire")
    try:
        with LocalEngine() as engine:
            acquisition.start()
            started = time.perf_counter()
            report = engine.run(pipeline, out, hooks=[forwarder])
            seconds = time.perf_counter() - started
    finally:
        acquisition.join()
        forwarder.close()
        simulator.stop()
    ledger = report.scans[0].ledger
    return {"written": ledger.written, "failed": len(ledger.failed), "seconds": seconds,
            "updates": forwarder.images, "sent": forwarder.sent, "replaced": forwarder.replaced}


def push_raw(endpoint: str, frames: int, rate_hz: float) -> None:
    """The reference's sender: 512 x 512 float32 images and their time on a plain PUSH socket, at ``rate_hz``."""
    import zmq

    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.connect(endpoint)
        start = time.perf_counter()
        for i in range(frames):
            delay = start + i / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            push.send_multipart([json.dumps({"time": time.time(), "seq": i}).encode(), image.tobytes()])
        push.send_multipart([b"end", b""])


def child(argv: list[str]) -> int:
    """Internal: ``--job`` or ``--push`` in this fresh process."""
    spec = json.loads(argv[1])
    if argv[0] == "--job":
        print(json.dumps(run_job(spec["endpoint"], spec["frames"], spec["rate_hz"], tuple(spec["shape"]),
                                 spec["out"])))
    else:
        push_raw(spec["endpoint"], spec["frames"], spec["rate_hz"])
    return 0


def spawn(flag: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), flag, json.dumps(spec)],
                            stdout=subprocess.PIPE, text=True, cwd=HERE)


# -- the service and the client (this process) --------------------------------------------------------------------

def lightpipe_series(frames: int, rate_hz: float, shape: tuple[int, int], workdir: str | None,
                     deflate: bool) -> dict[str, Any]:
    """The job through forwarder, hub, uvicorn and a websocket client; the delays the client saw."""
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from lightpipe.service.live import SUBPROTOCOL, LiveHub, live_router, unpack_image

    hub = LiveHub()

    async def authorize(token: str, job_id: str) -> None:
        if token != TOKEN or job_id != JOB_ID:
            raise HTTPException(403, "not this benchmark's job")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(lifespan=lifespan)
    app.include_router(live_router(hub, authorize))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP named: asyncio turns Nagle off
    sock.bind(("127.0.0.1", 0))
    # as lightpipe serve runs it: no per-message deflate, which costs ~30 ms per 1 MB image and saves nothing on floats
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio",
                                           ws_per_message_deflate=deflate))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn")
    thread.start()
    while not server.started:
        time.sleep(0.01)
    delays: list[float] = []
    forward: list[float] = []  # result -> hub: reduction, the job's sender thread, ZeroMQ
    images: list[int] = []
    try:
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/api/v1/jobs/{JOB_ID}/live"
        with tempfile.TemporaryDirectory(dir=workdir) as out, \
                connect(url, subprotocols=[SUBPROTOCOL, f"bearer.{TOKEN}"],  # type: ignore[list-item]
                        max_size=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            job = spawn("--job", {"endpoint": hub.endpoint, "frames": frames, "rate_hz": rate_hz,
                                  "shape": list(shape), "out": out})
            deadline = time.monotonic() + frames / rate_hz + END_GRACE_S + 30
            try:
                while time.monotonic() < deadline:
                    message = ws.recv(timeout=deadline - time.monotonic())
                    arrived = time.time()
                    if isinstance(message, bytes):
                        header, _ = unpack_image(message)
                        delays.append(arrived - header["time"])
                        forward.append(header["received"] - header["time"])
                        images.append(header["seq"])
            except ConnectionClosed:
                pass
            stdout, _ = job.communicate(timeout=END_GRACE_S)
            if job.returncode != 0:
                raise RuntimeError(f"the job process failed ({job.returncode})")
            result = json.loads(stdout.strip().splitlines()[-1])
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
    # frames over the whole run, start-up and the end of the scan included
    return {**result, "images": len(images), "delays_s": delays, "rate_kept_hz": result["written"] / result["seconds"],
            "to_hub_p50_s": float(np.percentile(forward, 50)) if forward else None,
            "to_hub_p99_s": float(np.percentile(forward, 99)) if forward else None}


def raw_series(frames: int, rate_hz: float) -> dict[str, Any]:
    """The reference: plain PUSH -> PULL of the same images at the same rate; the delays seen at PULL."""
    import zmq

    delays = []
    with zmq.Context() as context, context.socket(zmq.PULL) as pull:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        sender = spawn("--push", {"endpoint": f"tcp://127.0.0.1:{port}", "frames": frames, "rate_hz": rate_hz})
        pull.setsockopt(zmq.RCVTIMEO, int((frames / rate_hz + END_GRACE_S) * 1000))
        try:
            while True:
                header, _ = pull.recv_multipart()
                arrived = time.time()
                if header == b"end":
                    break
                delays.append(arrived - json.loads(header)["time"])
        finally:
            sender.wait(timeout=END_GRACE_S)
    return {"images": len(delays), "delays_s": delays}


def summary(delays: list[float]) -> dict[str, float | None]:
    if not delays:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    values = np.asarray(delays)
    return {"p50_s": float(np.percentile(values, 50)), "p99_s": float(np.percentile(values, 99)),
            "max_s": float(values.max())}


def run(frames: int, rate_hz: float, shape: tuple[int, int], workdir: str | None, deflate: bool) -> dict[str, Any]:
    load0 = os.getloadavg()
    live = lightpipe_series(frames, rate_hz, shape, workdir, deflate)
    raw = raw_series(frames, rate_hz)
    live_stats, raw_stats = summary(live.pop("delays_s")), summary(raw.pop("delays_s"))
    ratio = (live_stats["p99_s"] / raw_stats["p99_s"]
             if live_stats["p99_s"] is not None and raw_stats["p99_s"] else None)
    return {
        "frames": frames, "rate_hz": rate_hz, "shape": list(shape), "target_p99_s": TARGET_P99_S,
        "per_message_deflate": deflate,
        "lightpipe": {**live, **live_stats}, "raw": {**raw, **raw_stats}, "p99_vs_raw": ratio,
        "meets_target": live_stats["p99_s"] is not None and live_stats["p99_s"] < TARGET_P99_S,
        "cpu_count": os.cpu_count(), "load_average": [load0[0], os.getloadavg()[0]],
    }


def table(fig: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"Live latency: {fig['frames']} frames of {fig['shape'][0]} x {fig['shape'][1]} at "
                    f"{fig['rate_hz']:g} Hz, result -> websocket image"
                    f"{' (permessage-deflate)' if fig['per_message_deflate'] else ''}")
    for column in ("runner", "images", "p50 ms", "p99 ms", "max ms", "to hub p50 / p99 ms", "updates",
                   "rate kept Hz"):
        t.add_column(column, justify="right" if column != "runner" else "left")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f}"

    live, raw = fig["lightpipe"], fig["raw"]
    t.add_row("lightpipe (forwarder -> hub -> websocket)", str(live["images"]), ms(live["p50_s"]), ms(live["p99_s"]),
              ms(live["max_s"]), f"{ms(live['to_hub_p50_s'])} / {ms(live['to_hub_p99_s'])}", str(live["updates"]),
              f"{live['rate_kept_hz']:.1f}")
    t.add_row("raw pyzmq PUSH -> PULL (512 x 512 float32)", str(raw["images"]), ms(raw["p50_s"]), ms(raw["p99_s"]),
              ms(raw["max_s"]), "-", "-", "-")
    return t


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--job"], ["--push"]):
        return child(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=FRAMES, help=f"frames of the live scan (default {FRAMES})")
    parser.add_argument("--rate", type=float, default=RATE_HZ, help=f"frame rate in Hz (default {RATE_HZ:g})")
    parser.add_argument("--shape", type=int, nargs=2, default=SHAPE, metavar=("NY", "NX"),
                        help="frame shape (default 1024 1024: images are reduced to 512 x 512)")
    parser.add_argument("--deflate", action="store_true",
                        help="let the websocket compress messages (permessage-deflate), which the service turns off")
    parser.add_argument("--workdir", help="folder for result files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.rate, args.shape = 20, 20.0, (256, 256)
    if args.frames < 1 or args.rate <= 0 or min(args.shape) < 1:
        parser.error("--frames and the shape must be at least 1, --rate above 0")
    figures = run(args.frames, args.rate, tuple(args.shape), args.workdir, args.deflate)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 140)
    console.print(table(figures))
    p99 = figures["lightpipe"]["p99_s"]
    p99_text = "-" if p99 is None else f"{p99 * 1000:.1f}"
    console.print(f"target p99 < {TARGET_P99_S * 1000:.0f} ms: "
                  f"{'met' if figures['meets_target'] else 'NOT met'} ({p99_text} ms); "
                  f"load average {figures['load_average'][0]:.2f} -> {figures['load_average'][1]:.2f} on "
                  f"{figures['cpu_count']} CPUs", markup=False)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
