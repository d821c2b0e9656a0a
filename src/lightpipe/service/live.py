"""The live channel: progress and intermediate images of a running job, to browsers, newest first.

Three parts, one per process boundary::

    job process                       service process                          browsers
    LiveForwarder (a run hook) --PUSH/PULL (ZeroMQ)--> LiveHub --websocket--> /api/v1/jobs/{job}/live

:class:`LiveForwarder` runs in the job's process as one of its run hooks
(:mod:`lightpipe.core.hooks`). It turns chunk and scan hooks into small JSON
messages and every 2-D (or larger) array of a solver's intermediate result
(``intermediate_result``: an object as it converges) into a float32 image of
at most :data:`MAX_IMAGE_PX` pixels per side. The hooks only put the newest
message of each kind into a slot and wake a sender thread: the pipeline never
waits for the service, and a slow or absent service costs it nothing but the
messages it misses. A lost progress message is replaced by the next one; the
few messages that mark a change of state (a scan started or ended, the run
ended) wait in a short queue instead.

:class:`LiveHub` runs in the service. It binds the PULL socket that every
job's forwarder connects to, keeps per job the newest progress, the newest
image of each name and the newest values, and hands each websocket subscriber
what is new since it last sent. A subscriber whose browser reads slowly
finds, when it is ready again, only the newest image of each name: older
ones were replaced while it was busy. Subscribers never wait for each other.

:func:`live_router` serves the websocket. The token travels as a
``Sec-WebSocket-Protocol`` entry ``bearer.<token>`` (offered beside
:data:`SUBPROTOCOL`) or as the first text message, ``{"token": "..."}``;
never in the URL.

Websocket messages
    Text messages are JSON objects with a ``type``: ``hello`` (once, after the
    token is accepted), ``progress``, ``values`` (scalars and 1-D results of a
    solver, such as an error curve), ``scan_started``, ``scan_finished``,
    ``failed`` (the newest failed event), ``finished`` (the run ended; the
    server then closes the socket), ``closed`` (the service is stopping). Binary messages are images: a 4-byte
    little-endian header length ``n``, ``n`` bytes of JSON header padded with
    spaces so that the pixels start at a multiple of 4 bytes, then
    ``shape[0] * shape[1]`` little-endian float32 pixels in C order (a
    JavaScript ``new Float32Array(buffer, 4 + n)``). The header holds
    ``type`` (``image``), ``name``, ``scan``, ``shape``, ``dtype``
    (``float32``), ``min`` and ``max`` (of the finite pixels, ``null`` if
    none), ``source_shape`` and ``source_dtype`` (the array before it was
    reduced), ``part`` (``phase`` for complex values, else ``value``), ``time``
    (when the result reached the hook, POSIX seconds) and ``seq``.

Closing codes
    4401 missing or wrong token, 4403 a token that may not read the job,
    4404 no such job, 4408 no token within :data:`AUTH_TIMEOUT_S`; 1000 once
    the run ended, 1001 when the service stops, 1011 when the token could not
    be checked (the database gone away).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq
import zmq.asyncio
from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect

from lightpipe.core.hooks import ChunkDone, RunHooks
from lightpipe.core.report import RunReport, ScanReport
from lightpipe.core.xp import to_numpy

if TYPE_CHECKING:
    from lightpipe.core.event import Scan

log = logging.getLogger(__name__)

#: Largest side of an image sent to browsers, in pixels; larger results are averaged down in blocks.
MAX_IMAGE_PX = 512
#: Longest 1-D result sent as values (an error curve); longer ones are sampled evenly down to this.
MAX_VALUES = 2048
#: Subprotocol the websocket answers with; the token comes as a second entry ``bearer.<token>``.
SUBPROTOCOL = "lightpipe.live"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."
#: Seconds a websocket may take to send its token as first message.
AUTH_TIMEOUT_S = 10.0
#: Messages that mark a change of state, kept per subscriber when it falls behind (older ones then dropped).
MAX_STATE_MESSAGES = 64
#: Jobs whose newest messages the hub keeps (least recently updated dropped first).
MAX_JOBS = 256
#: Image names kept per job (the first ones seen).
MAX_IMAGES_PER_JOB = 16
#: Messages the forwarder's socket holds for a hub that is not reading; more wait in the slots.
SEND_HWM = 8
#: How long the forwarder waits to hand over one message before it keeps it for later (ms).
SEND_TIMEOUT_MS = 200
#: How long closing waits to deliver what is left (the run's end) to the hub (ms).
CLOSE_LINGER_MS = 1000
#: Largest message the hub accepts (an image of MAX_IMAGE_PX squared float32 and its header, with room).
MAX_MESSAGE_BYTES = 4 * MAX_IMAGE_PX * MAX_IMAGE_PX + 64 * 1024
#: Kinds of message that must not be replaced by a newer one (state changes), as opposed to "newest wins".
STATE_TYPES = frozenset({"scan_started", "scan_finished", "finished"})


# -- images -------------------------------------------------------------------------------------------------------

def live_image(value: Any) -> tuple[np.ndarray, str] | None:
    """``value`` as a float32 image of at most :data:`MAX_IMAGE_PX` per side, or ``None`` if it is no image.

    Complex values become their phase (what a reconstruction's object shows
    best), booleans 0 and 1. An array of more than two dimensions (a stack of
    probe modes) shows its first 2-D slice. Each side is reduced by an integer
    factor, averaging the blocks, so the picture is not aliased.

    Returns
    -------
    (image, part)
        The image and what it shows of the value: ``phase`` or ``value``.
    """
    try:
        array = np.asarray(to_numpy(value))
    except (TypeError, ValueError):
        return None
    if array.ndim < 2 or array.size == 0 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        return None
    while array.ndim > 2:
        array = array[0]
    part = "value"
    if np.iscomplexobj(array):
        array, part = np.angle(array), "phase"
    elif array.dtype == np.bool_:
        array = array.view(np.uint8)
    ny, nx = array.shape
    fy, fx = math.ceil(ny / MAX_IMAGE_PX), math.ceil(nx / MAX_IMAGE_PX)
    if fy > 1 or fx > 1:
        oy, ox = ny // fy, nx // fx
        # rows of blocks first, then columns: two contiguous sums, twice as fast as one mean over both axes
        rows = array[: oy * fy, : ox * fx].reshape(oy, fy, ox * fx).sum(axis=1, dtype=np.float64)
        array = rows.reshape(oy, ox, fx).sum(axis=2) / (fy * fx)
    return np.ascontiguousarray(array, dtype="<f4"), part


def image_header(image: np.ndarray, **fields: Any) -> dict[str, Any]:
    """The JSON header of ``image``: its shape, dtype and the range of its finite pixels, plus ``fields``."""
    finite = image[np.isfinite(image)]
    return {"type": "image", **fields, "shape": list(image.shape), "dtype": "float32",
            "min": float(finite.min()) if finite.size else None, "max": float(finite.max()) if finite.size else None}


def pack_image(header: dict[str, Any], pixels: bytes) -> bytes:
    """One binary websocket message: header length, header (padded to 4 bytes), float32 pixels."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(4 + len(text)) % 4)
    return struct.pack("<I", len(text)) + text + pixels


def unpack_image(message: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The header and the image of a binary websocket message (what a Python client does with one)."""
    (length,) = struct.unpack_from("<I", message)
    header = json.loads(message[4: 4 + length])
    pixels = np.frombuffer(message, dtype="<f4", offset=4 + length)
    return header, pixels.reshape(header["shape"])


#: What :func:`json_value` returns for a value that is not a number or a 1-D array of numbers.
NOT_VALUES = object()


def json_value(value: Any) -> Any:
    """A scalar or 1-D result as JSON, non-finite numbers as ``None``; :data:`NOT_VALUES` for anything else."""
    try:
        array = np.asarray(to_numpy(value))
    except (TypeError, ValueError):
        return NOT_VALUES
    if array.ndim > 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        return NOT_VALUES
    if np.iscomplexobj(array):
        array = np.abs(array)
    if array.ndim == 1 and array.size > MAX_VALUES:
        array = array[np.linspace(0, array.size - 1, MAX_VALUES).round().astype(np.int64)]
    values = array.astype(np.float64).tolist()
    if isinstance(values, list):
        return [v if math.isfinite(v) else None for v in values]
    return values if math.isfinite(values) else None


# -- job side -----------------------------------------------------------------------------------------------------

class LiveForwarder(RunHooks):
    """A run hook that sends a job's progress and intermediate images to the service's :class:`LiveHub`.

    Never in the pipeline's way: each hook overwrites the newest message of
    its kind and returns; a thread sends them over a ZeroMQ PUSH socket that
    holds at most :data:`SEND_HWM` messages for a hub that does not read.

    Parameters
    ----------
    endpoint
        The hub's endpoint (:attr:`LiveHub.endpoint`).
    job_id
        The job these messages belong to.
    max_image_hz
        Images of one name reduced and sent per second at most; results that
        come faster are skipped (an eye does not follow more).

    Attributes
    ----------
    sent, replaced
        Messages handed to the socket, and messages overwritten by a newer
        one of their kind before they could be sent.
    images
        Images made from intermediate results (each sent, or replaced by a newer one).
    """

    def __init__(self, endpoint: str, job_id: str, max_image_hz: float = 20.0) -> None:
        self.endpoint = endpoint
        self.job_id = job_id
        self.min_image_interval = 1.0 / max_image_hz if max_image_hz > 0 else 0.0
        self.sent = 0
        self.replaced = 0
        self.images = 0
        # the newest message of each kind, and every state change, in the order they were made
        self._pending: OrderedDict[str, list[bytes]] = OrderedDict()
        self._state_seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._image_sent_at: dict[str, float] = {}
        self._rate = _Rate()
        self._progress: dict[str, Any] = {}
        self._seq = 0
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        self._socket.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self._socket.connect(endpoint)
        # the socket is used only by this thread from now on (starting a thread is a memory barrier)
        self._thread = threading.Thread(target=self._send_loop, name=f"lightpipe-live-{job_id}", daemon=True)
        self._thread.start()

    # the hooks: each builds a message and leaves it in its slot

    def scan_started(self, scan: Scan, passes: int) -> None:
        self._rate = _Rate()
        self._progress = {"scan": scan.name, "events": scan.size, "passes": passes}
        self._put_json("scan_started", {"scan": scan.name, "events": scan.size, "passes": passes,
                                        "streams": {s: len(r) for s, r in scan.streams.items()}})

    def events_submitted(self, scan: str, events: int, in_flight: int, window: int, source: dict[str, Any]) -> None:
        self._progress.update(scan=scan, in_flight=in_flight, window=window,
                              buffer_fill=in_flight / window if window else 0.0, lag_s=source.get("lag_s"),
                              held=source.get("held"), spilled=source.get("spilled"))
        self._put_json("progress", dict(self._progress))

    def chunk_done(self, chunk: ChunkDone) -> None:
        p = chunk.progress
        ledger = p.ledger
        self._progress.update(
            scan=p.scan, pass_number=p.pass_number, passes=p.passes, done=p.done, total=p.total,
            in_flight=p.in_flight, window=p.window, buffer_fill=p.buffer_fill, received=ledger.received,
            written=ledger.written, failed=len(ledger.failed), events_per_s=self._rate.add(ledger.written),
            lag_s=p.source.get("lag_s", self._progress.get("lag_s")), worker=chunk.worker)
        self._put_json("progress", dict(self._progress))

    def event_failed(self, scan: str, index: int, stream: str, stage: str, message: str) -> None:
        self._put_json("failed", {"scan": scan, "index": index, "stream": stream, "stage": stage,
                                  "message": message[:1000]})

    def intermediate_result(self, scan: str, results: dict[str, Any]) -> None:
        now = time.time()
        values = {}
        for name, value in results.items():
            as_values = json_value(value)
            if as_values is not NOT_VALUES:
                values[name] = as_values
                continue
            if now - self._image_sent_at.get(name, -math.inf) < self.min_image_interval:
                continue
            reduced = live_image(value)
            if reduced is None:
                continue
            image, part = reduced
            self._image_sent_at[name] = now
            self.images += 1
            self._seq += 1
            # shape and dtype as the array says them (NumPy, CuPy and PyTorch alike): no second copy from a GPU
            header = image_header(image, name=name, scan=scan, source_shape=[int(n) for n in value.shape],
                                  source_dtype=str(value.dtype), part=part, time=now, seq=self._seq)
            self._put(f"image:{name}", [b"image", json.dumps(header).encode(), image.tobytes()])
        if values:
            self._put_json("values", {"scan": scan, "values": values, "time": now})

    def scan_finished(self, report: ScanReport) -> None:
        ledger = report.ledger
        self._put_json("scan_finished", {"scan": report.scan, "state": ledger.state, "error": ledger.error,
                                         "received": ledger.received, "written": ledger.written,
                                         "failed": len(ledger.failed), "seconds": report.seconds,
                                         "files": [f.name for f in report.files]})

    def run_finished(self, report: RunReport) -> None:
        self._put_json("finished", {"scans": [s.scan for s in report.scans],
                                    "states": [s.ledger.state for s in report.scans]})

    # sending

    def _put_json(self, kind: str, message: dict[str, Any]) -> None:
        message = {"type": kind, "job": self.job_id, **message}
        if kind not in STATE_TYPES:
            message["time"] = message.get("time", time.time())
        self._put(kind, [b"json", json.dumps(message, default=str).encode()])

    def _put(self, slot: str, frames: list[bytes]) -> None:
        frames = [self.job_id.encode(), *frames]
        with self._lock:
            if slot in STATE_TYPES:
                self._state_seq += 1
                slot = f"state:{self._state_seq}"  # never replaced: each state change is sent
                states = [k for k in self._pending if k.startswith("state:")]
                if len(states) >= MAX_STATE_MESSAGES:
                    del self._pending[states[0]]
            elif slot in self._pending:
                self.replaced += 1
                del self._pending[slot]  # re-inserted last: messages leave in the order they were made
            self._pending[slot] = frames
        self._wake.set()

    def _take(self) -> tuple[str, list[bytes]] | None:
        with self._lock:
            if self._pending:
                return self._pending.popitem(last=False)
            self._wake.clear()
            return None

    def _give_back(self, slot: str, frames: list[bytes]) -> None:
        """Return an unsent message to the front, unless a newer one of its kind took its place meanwhile."""
        with self._lock:
            if slot not in self._pending:
                self._pending[slot] = frames
                self._pending.move_to_end(slot, last=False)

    def _send_loop(self) -> None:
        try:
            while True:
                taken = self._take()
                if taken is None:
                    if self._closing.is_set():
                        return
                    self._wake.wait()
                    continue
                slot, frames = taken
                try:
                    self._socket.send_multipart(frames)  # copied: zero-copy would start pyzmq's garbage thread
                    self.sent += 1
                except zmq.Again:  # the hub is not reading: keep the message, unless something newer replaces it
                    self._give_back(slot, frames)
                    if self._closing.is_set():
                        return
                    self._wake.wait(SEND_TIMEOUT_MS / 1000)
                except zmq.ZMQError as exc:
                    log.warning("live view of job %s stopped: %s", self.job_id, exc)
                    return
        finally:
            self._socket.close(linger=CLOSE_LINGER_MS)

    def close(self) -> None:
        """Send what is waiting (within about a second), close the socket and end the thread."""
        self._closing.set()
        self._wake.set()
        self._thread.join()

    def __enter__(self) -> LiveForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Rate:
    """Events per second over the last few seconds, from a running count."""

    WINDOW_S = 5.0

    def __init__(self) -> None:
        self._points: deque[tuple[float, int]] = deque()

    def add(self, count: int) -> float:
        now = time.monotonic()
        self._points.append((now, count))
        while len(self._points) > 2 and now - self._points[0][0] > self.WINDOW_S:
            self._points.popleft()
        (t0, c0) = self._points[0]
        return (count - c0) / (now - t0) if now > t0 else 0.0


# -- service side -------------------------------------------------------------------------------------------------

@dataclass
class _JobState:
    """What the hub keeps of one job: the newest of each kind of message."""

    progress: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    states: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_STATE_MESSAGES))
    images: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    finished: bool = False


class _Subscriber:
    """One websocket's queue, in the order messages came: state changes all kept, the rest newest-only."""

    def __init__(self) -> None:
        self.pending: OrderedDict[str, str | bytes] = OrderedDict()
        self.ready = asyncio.Event()
        self.dropped = 0
        self._state_seq = 0

    def offer(self, key: str, message: str | bytes, state: bool = False) -> None:
        if state:
            self._state_seq += 1
            key = f"state:{self._state_seq}"
            states = [k for k in self.pending if k.startswith("state:")]
            if len(states) >= MAX_STATE_MESSAGES:
                del self.pending[states[0]]
                self.dropped += 1
        elif key in self.pending:
            self.dropped += 1
            del self.pending[key]
        self.pending[key] = message
        self.ready.set()

    def take(self) -> list[str | bytes]:
        out = list(self.pending.values())
        self.pending.clear()
        self.ready.clear()
        return out


class LiveHub:
    """The service's end of the live channel: receives every job's messages, fans them out to websockets.

    Parameters
    ----------
    endpoint
        ZeroMQ endpoint to bind the PULL socket to; ``None``: a free TCP port
        on the loopback interface (job processes run on this host). Bound at
        once, so :attr:`endpoint` can be given to jobs before :meth:`start`.

    Attributes
    ----------
    endpoint
        Where job processes connect their :class:`LiveForwarder`.
    received
        Messages taken from the socket.
    """

    def __init__(self, endpoint: str | None = None) -> None:
        self._socket: zmq.asyncio.Socket = zmq.asyncio.Context.instance().socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self._socket.bind(endpoint or "tcp://127.0.0.1:0")
        except zmq.ZMQError as exc:
            self._socket.close()
            from lightpipe.core.errors import LightpipeError

            raise LightpipeError(f"cannot bind the live channel to {endpoint!r}: {exc}; give a free endpoint "
                                 "such as tcp://127.0.0.1:0") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received = 0
        self._jobs: OrderedDict[str, _JobState] = OrderedDict()
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start taking messages (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._receive_loop(), name="lightpipe-live-hub")

    async def stop(self) -> None:
        """Stop taking messages, close the socket and wake every subscriber so that its websocket ends."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._socket.close(linger=0)
        for subscribers in self._subscribers.values():
            for sub in subscribers:
                sub.offer("closed", json.dumps({"type": "closed"}), state=True)

    def latest(self, job_id: str) -> dict[str, Any] | None:
        """The newest progress message of ``job_id``, or ``None`` if none came."""
        state = self._jobs.get(job_id)
        return dict(state.progress) if state is not None and state.progress is not None else None

    def finished(self, job_id: str) -> bool:
        """Whether ``job_id``'s run said it ended."""
        state = self._jobs.get(job_id)
        return state is not None and state.finished

    def forget(self, job_id: str) -> None:
        """Drop what is kept of ``job_id`` (a deleted job)."""
        self._jobs.pop(job_id, None)

    async def _receive_loop(self) -> None:
        while True:
            try:
                frames = await self._socket.recv_multipart()
            except zmq.ZMQError as exc:  # the socket was closed under us
                log.debug("live hub stops receiving: %s", exc)
                return
            self.received += 1
            try:
                self._take(frames)
            except (ValueError, KeyError, UnicodeDecodeError) as exc:  # a stray sender must not stop the hub
                log.warning("live hub ignored a malformed message: %s", exc)

    def _state(self, job_id: str) -> _JobState:
        state = self._jobs.get(job_id)
        if state is None:
            state = self._jobs[job_id] = _JobState()
            while len(self._jobs) > MAX_JOBS:
                self._jobs.popitem(last=False)
        else:
            self._jobs.move_to_end(job_id)
        return state

    def _take(self, frames: list[bytes]) -> None:
        job_id = frames[0].decode()
        kind = frames[1]
        state = self._state(job_id)
        subscribers = self._subscribers.get(job_id, ())
        if kind == b"json":
            text = frames[2].decode()
            message = json.loads(text)
            message_type = message["type"]
            if message_type in STATE_TYPES:
                state.states.append(message)
                state.finished |= message_type == "finished"
                for sub in subscribers:
                    sub.offer(message_type, text, state=True)
                return
            if message_type == "progress":
                state.progress = message
            elif message_type == "values":
                state.values = message
            elif message_type == "failed":
                state.failed = message
            for sub in subscribers:
                sub.offer(message_type, text)
        elif kind == b"image":
            header = json.loads(frames[2])
            name = str(header["name"])
            pixels = frames[3]
            if len(pixels) != 4 * int(np.prod(header["shape"])):
                raise ValueError(f"image {name!r} has {len(pixels)} bytes for shape {header['shape']}")
            if name not in state.images and len(state.images) >= MAX_IMAGES_PER_JOB:
                return
            header["received"] = time.time()
            packed = pack_image(header, pixels)
            state.images[name] = packed
            for sub in subscribers:
                sub.offer(f"image:{name}", packed)
        else:
            raise ValueError(f"unknown kind {kind!r}")

    def subscribe(self, job_id: str) -> _Subscriber:
        """A queue of ``job_id``'s messages, starting with the newest of each kind the hub keeps."""
        sub = _Subscriber()
        self._subscribers.setdefault(job_id, set()).add(sub)
        state = self._jobs.get(job_id)
        if state is not None:
            for message in state.states:
                sub.offer(message["type"], json.dumps(message), state=True)
            for key, kept in (("progress", state.progress), ("values", state.values), ("failed", state.failed)):
                if kept is not None:
                    sub.offer(key, json.dumps(kept))
            for name, packed in state.images.items():
                sub.offer(f"image:{name}", packed)
        return sub

    def unsubscribe(self, job_id: str, sub: _Subscriber) -> None:
        subscribers = self._subscribers.get(job_id)
        if subscribers is not None:
            subscribers.discard(sub)
            if not subscribers:
                del self._subscribers[job_id]


# -- websocket ----------------------------------------------------------------------------------------------------

#: Websocket close codes for the HTTP statuses ``authorize`` may raise.
CLOSE_CODES = {401: 4401, 403: 4403, 404: 4404}
#: Messages after which the server closes the websocket, with the code and reason.
ENDINGS = {"finished": (1000, "the job's run ended"), "closed": (1001, "the service is stopping")}


def live_router(hub: LiveHub, authorize: Callable[[str, str], Awaitable[None]]) -> APIRouter:
    """The websocket ``/api/v1/jobs/{job_id}/live`` that streams ``hub``'s messages of one job.

    Parameters
    ----------
    hub
        The live hub of the service.
    authorize
        ``await authorize(token, job_id)`` returns when the token may read
        the job and raises :class:`fastapi.HTTPException` (401, 403 or 404)
        otherwise; its ``detail`` becomes the close reason.
    """
    router = APIRouter()

    @router.websocket("/api/v1/jobs/{job_id}/live")
    async def live(websocket: WebSocket, job_id: str) -> None:
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        token = next((p[len(TOKEN_SUBPROTOCOL_PREFIX):] for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)),
                     None)
        # the token is never echoed back: the answer names only the plain subprotocol, if offered
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        try:
            if token is None:
                token = await _first_message_token(websocket)
                if token is None:
                    await websocket.close(4408, f"no token within {AUTH_TIMEOUT_S:g} s; send {{\"token\": ...}} "
                                                "as the first message or offer the subprotocol bearer.<token>")
                    return
            try:
                await authorize(token, job_id)
            except HTTPException as exc:
                await websocket.close(CLOSE_CODES.get(exc.status_code, 4403), _reason(exc.detail))
                return
            except Exception:  # the database gone away: the client gets a reason, the log the traceback
                log.exception("authorizing a live websocket of job %s failed", job_id)
                await websocket.close(1011, "the service cannot check the token now; try again later")
                return
            await websocket.send_text(json.dumps({"type": "hello", "job": job_id}))
            await _stream(websocket, hub, job_id)
        except WebSocketDisconnect:
            return

    return router


def _reason(detail: Any) -> str:
    """A close reason fits in 123 bytes."""
    text = detail if isinstance(detail, str) else json.dumps(detail)
    encoded = text.encode()[:123]
    return encoded.decode("utf-8", "ignore")


async def _first_message_token(websocket: WebSocket) -> str | None:
    try:
        text = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
    except asyncio.TimeoutError:
        return None
    with contextlib.suppress(ValueError):
        message = json.loads(text)
        if isinstance(message, dict) and isinstance(message.get("token"), str):
            return message["token"]
    return text.strip() or None


async def _stream(websocket: WebSocket, hub: LiveHub, job_id: str) -> None:
    """Send the subscriber's messages until the run ends, the hub stops or the client goes away."""
    sub = hub.subscribe(job_id)

    async def watch_client() -> None:
        # a client's messages are not used after the token; reading them is how a disconnect is noticed
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return

    watcher = asyncio.ensure_future(watch_client())
    try:
        while not watcher.done():
            ready = asyncio.ensure_future(sub.ready.wait())
            await asyncio.wait({ready, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                break
            ending: tuple[int, str] | None = None
            for message in sub.take():
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
                    kind = json.loads(message)["type"]
                    if kind in ENDINGS:
                        ending = ENDINGS[kind]
            if ending is not None:
                await websocket.close(*ending)
                return
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await watcher
        hub.unsubscribe(job_id, sub)
