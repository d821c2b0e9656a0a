"""The one receiver of a DECTRIS detector stream, and the series it assembles.

Several PULL sockets on one detector would each get a round-robin share of the
frames, so lightpipe connects exactly one: :class:`Receiver` pulls every
message on a thread of its own, checks it against the protocol and the series
it belongs to, and files the images of each series in a :class:`LiveSeries`.
Images stay encoded (the worker that processes a frame decodes it) and are
held in a :class:`~lightpipe.core.spill.SpillBuffer`: in memory up to a bound,
then on local disk, so a detector faster than the pipeline loses nothing.

What does not fit is counted, logged with its reason and kept aside in
:attr:`Receiver.rejected` (the raw parts, up to a bound): garbage, a message
that breaks the protocol, an image of no open series, a duplicate frame, an end
of another series. What goes wrong within a series is settled there: a frame
that never arrives fails at the end of the series; a new header before the end
closes the open series as interrupted; no message for ``end_timeout_s`` closes
it as timed out. The receiver keeps running between series.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import cbor2
import zmq

from lightpipe.core.spill import SpillBuffer
from lightpipe.core.topology import Component
from lightpipe.sources.dectris import simplon, stream2
from lightpipe.sources.dectris.errors import StreamError
from lightpipe.sources.dectris.messages import Image, Message, SeriesEnd, SeriesHeader

log = logging.getLogger(__name__)

StreamVersion = Literal["v1", "v2"]


@dataclass
class RejectedMessage:
    """A message kept aside: when, why, and its raw parts (truncated to ``keep_bytes`` each)."""

    time: float
    reason: str
    parts: list[bytes]
    sizes: list[int]


@dataclass
class _Settled:
    """The fate of one frame of a series: arrived (held in the spill buffer) or failed."""

    arrived: bool
    reason: str = ""


@dataclass
class LiveSeries:
    """The frames of one detector series as they arrive.

    Frames may arrive in any order; readers wait for the frames they need with
    :meth:`ready`. ``total`` comes from the header (``nimages * ntrigger``);
    without it (header detail ``none``) it is fixed when the series ends.
    """

    header: SeriesHeader
    buffer: SpillBuffer
    total: int | None
    started: float = field(default_factory=time.monotonic)
    state: str = "open"
    reason: str = ""
    arrived: int = 0
    released: int = 0
    out_of_order: int = 0
    _settled: dict[int, _Settled] = field(default_factory=dict)
    _arrival: dict[int, float] = field(default_factory=dict)
    _next: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def series(self) -> int:
        return self.header.series

    @property
    def ended(self) -> bool:
        return self.state != "open"

    def add(self, image: Image) -> str | None:
        """File an image; return why it is refused, or ``None``."""
        with self._cond:
            if self.ended:
                return f"image {image.frame} of series {self.series} arrived after the series was {self.state}"
            if self.total is not None and image.frame >= self.total:
                return f"frame {image.frame} is beyond the {self.total} images series {self.series} announced"
            if image.frame in self._settled:
                return f"frame {image.frame} of series {self.series} arrived twice"
            if image.frame != self._next:
                self.out_of_order += 1
            self._next = image.frame + 1
            size = len(image.blob) + sum(len(c.blob) for c in image.other_channels.values())
            self.buffer.put(image.frame, image, size)
            self._settled[image.frame] = _Settled(True)
            self._arrival[image.frame] = time.monotonic()
            self.arrived += 1
            self._cond.notify_all()
            return None

    def fail_frame(self, frame: int, reason: str) -> None:
        """Record that ``frame`` came but could not be read (a corrupt message)."""
        with self._cond:
            if frame not in self._settled and not self.ended:
                self._settled[frame] = _Settled(False, reason)
                self._cond.notify_all()

    def end(self, state: str, reason: str = "") -> None:
        """Close the series: ``completed``, ``interrupted``, ``timed out`` or ``aborted``.

        Frames that never arrived are failed with the reason; a series of unknown
        length ends after its last frame.
        """
        with self._cond:
            if self.ended:
                return
            self.state, self.reason = state, reason
            if self.total is None:
                self.total = max(self._settled, default=-1) + 1
            why = reason or "the series ended without it"
            for frame in range(self.total):
                if frame not in self._settled:
                    self._settled[frame] = _Settled(False, f"frame {frame} never arrived: {why}")
            self._cond.notify_all()

    def ready(self, start: int, stop: int, timeout: float | None) -> int:
        """Wait until frames ``start`` to ``stop - 1`` are settled, at most ``timeout`` seconds.

        Returns the end of the settled run from ``start`` (``start`` itself if
        nothing is settled yet), so the caller can check for an abort and ask again.
        The last frame of the series is held back until the series has ended, so
        that a scan is closed only once it is known whether its end message came.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                end = start
                while end < stop and end in self._settled:
                    end += 1
                last = not self.ended and end == self.total
                if (end == stop and not last) or self.ended:  # once ended, every frame of the series is settled
                    return end
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return max(start, end - 1) if last else end
                self._cond.wait(left)

    @property
    def end_missing(self) -> str | None:
        """Why the series ended without its end message, or ``None`` (it came, or the series is open)."""
        if self.state in ("open", "completed"):
            return None
        return f"series {self.series} {self.state} without its end message: {self.reason}"

    def frame(self, index: int) -> Image | str:
        """The image of frame ``index``, or why it failed."""
        with self._cond:
            settled = self._settled[index]
        return self.buffer.get(index) if settled.arrived else settled.reason

    def release(self, start: int, stop: int) -> None:
        """Forget frames ``start`` to ``stop - 1``: they are processed."""
        for index in range(start, stop):
            self.buffer.release(index)
            with self._cond:
                self._arrival.pop(index, None)
                self.released += 1

    def lag_s(self) -> float:
        """Age of the oldest frame held but not yet processed, in seconds."""
        with self._cond:
            oldest = min(self._arrival.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest


class Receiver:
    """Pull one detector's stream on a background thread and assemble series.

    Parameters
    ----------
    endpoint
        The detector's stream address, e.g. ``tcp://eiger-dcu:9999``.
    version
        ``v1`` (format ``legacy``, multipart JSON) or ``v2`` (format ``cbor``).
    memory_bytes
        Bytes of encoded frames held in memory per series before spilling to disk.
    spill_dir
        Where spilled frames go (default: a temporary directory per series).
    end_timeout_s
        Close an open series after this long without a message.
    verify_hash
        Check stream v1 MD5 hashes (about 2 ms per MB).
    keep_rejected
        Rejected messages kept aside (the oldest are forgotten beyond this).
    keep_bytes
        Bytes kept of each part of a rejected message.
    on_series
        Called on the receiver thread with each new :class:`LiveSeries`;
        by default series are queued for :meth:`next_series`.
    component
        The receiver's entry in the run's topology: it beats every 100 ms,
        counts images in and messages rejected, and shows the open series.
    """

    def __init__(
        self,
        endpoint: str,
        version: StreamVersion = "v1",
        *,
        memory_bytes: int = 1 << 30,
        spill_dir: str | None = None,
        end_timeout_s: float = 10.0,
        verify_hash: bool = True,
        keep_rejected: int = 100,
        keep_bytes: int = 4096,
        on_series: Callable[[LiveSeries], None] | None = None,
        component: Component | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.version = version
        self.memory_bytes = memory_bytes
        self.spill_dir = spill_dir
        self.end_timeout_s = end_timeout_s
        self.verify_hash = verify_hash
        self.keep_bytes = keep_bytes
        self.rejected: deque[RejectedMessage] = deque(maxlen=keep_rejected)
        self.counters: Counter[str] = Counter()
        self.current: LiveSeries | None = None
        self._series: queue.Queue[LiveSeries] = queue.Queue()
        self._on_series = on_series or self._series.put
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_message = time.monotonic()
        self.component = component

    def start(self) -> Receiver:
        """Connect and start pulling."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="lightpipe-receiver", daemon=True)
        self._thread.start()
        ready.wait(5.0)
        return self

    def stop(self) -> None:
        """Stop pulling and close the socket; an open series is closed as interrupted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self.current is not None:
            self.current.end("interrupted", "the receiver stopped")

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_series(self, timeout: float | None = None) -> LiveSeries | None:
        """The next series whose header arrived, or ``None`` after ``timeout`` seconds."""
        try:
            return self._series.get(timeout=timeout)
        except queue.Empty:
            return None

    def _run(self, ready: threading.Event) -> None:
        sock = zmq.Context.instance().socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # take everything the detector sends; the spill buffer bounds memory
        sock.connect(self.endpoint)
        ready.set()
        try:
            if self.component is not None:
                self.component.set_state("idle", "waiting for a series header")
            while not self._stop.is_set():
                if self.component is not None:
                    self.component.beat()
                if sock.poll(100):
                    parts = sock.recv_multipart(copy=True)
                    self._last_message = time.monotonic()
                    self._handle(parts)
                elif self.current is not None and not self.current.ended:
                    idle = time.monotonic() - self._last_message
                    if idle > self.end_timeout_s:
                        self._close_current("timed out", f"no message for {idle:.1f} s; the series end never came")
        except Exception as exc:  # shown in the topology; an abort of the scan still works
            log.exception("the receiver of %s stopped", self.endpoint)
            if self.component is not None:
                self.component.set_state("failed", f"{type(exc).__name__}: {exc}")
        else:
            if self.component is not None:
                self.component.set_state("stopped")
        finally:
            sock.close()

    def _decode(self, parts: list[bytes]) -> Message:
        if self.version == "v1":
            return simplon.decode_message(parts, verify_hash=self.verify_hash)
        return stream2.decode_message(parts)

    def _handle(self, parts: list[bytes]) -> None:
        self.counters["messages"] += 1
        self.counters["bytes"] += sum(len(p) for p in parts)
        try:
            message = self._decode(parts)
            if isinstance(message, Image):
                message.check()
        except StreamError as exc:
            self._reject(parts, str(exc), frame=self._frame_of(parts))
            return
        if isinstance(message, SeriesHeader):
            self._header(message)
        elif isinstance(message, Image):
            self._image(message, parts)
        else:
            self._end(message, parts)

    def _header(self, header: SeriesHeader) -> None:
        self.counters["series"] += 1
        if self.current is not None and not self.current.ended:
            self._close_current(
                "interrupted", f"the header of series {header.series} arrived before the end of series {self.current.series}"
            )
        spill = SpillBuffer(memory_bytes=self.memory_bytes, directory=self.spill_dir)
        self.current = LiveSeries(header, spill, header.total_images)
        if self.component is not None:
            self.component.set_state("running", f"series {header.series}")
        log.info("series %d: header (%s images)", header.series, header.total_images or "unknown number of")
        self._on_series(self.current)

    def _image(self, image: Image, parts: list[bytes]) -> None:
        current = self.current
        if current is None or current.series != image.series:
            open_one = f"series {current.series} is open" if current is not None else "no series is open"
            self._reject(parts, f"image {image.frame} of series {image.series} without its header ({open_one})")
            return
        refused = current.add(image)
        if refused:
            self._reject(parts, refused)
        else:
            self.counters["images"] += 1
            if self.component is not None:
                self.component.add_in(1)

    def _end(self, end: SeriesEnd, parts: list[bytes]) -> None:
        if self.current is None or self.current.series != end.series or self.current.ended:
            self._reject(parts, f"end of series {end.series}, which is not open")
            return
        self._close_current("completed")

    def _close_current(self, state: str, reason: str = "") -> None:
        assert self.current is not None
        if state != "completed":
            self.counters[f"series {state}"] += 1
            log.error("series %d %s: %s", self.current.series, state, reason)
        self.current.end(state, reason)
        if self.component is not None:
            self.component.set_state("idle", f"series {self.current.series} {state}")

    def _frame_of(self, parts: list[bytes]) -> int | None:
        """Frame number of a broken image message of the open series, if the message still says it."""
        if self.current is None or not parts:
            return None
        try:
            if self.version == "v1":
                head = json.loads(bytes(parts[0]))
                series, frame = head.get("series"), head.get("frame")
            else:  # decode the CBOR map leniently: unknown tags stay opaque
                head = cbor2.loads(bytes(parts[0]))
                series, frame = head.get("series_id"), head.get("image_id")
        except Exception:  # garbage: no frame to blame
            return None
        return frame if series == self.current.series and isinstance(frame, int) else None

    def _reject(self, parts: list[bytes], reason: str, frame: int | None = None) -> None:
        self.counters["rejected"] += 1
        if self.component is not None:
            self.component.add_failed(1)
        log.error("stream %s: message rejected: %s", self.endpoint, reason)
        kept = [bytes(p[: self.keep_bytes]) for p in parts]
        self.rejected.append(RejectedMessage(time.time(), reason, kept, [len(p) for p in parts]))
        if frame is not None and self.current is not None:
            self.current.fail_frame(frame, f"frame {frame} was rejected: {reason}")

    def status(self) -> dict[str, Any]:
        """Counters, the open series and the lag, for the topology."""
        current = self.current
        return {
            "endpoint": self.endpoint,
            "version": self.version,
            "counters": dict(self.counters),
            "series": None if current is None else current.series,
            "series_state": None if current is None else current.state,
            "held": 0 if current is None else current.buffer.held,
            "spilled": 0 if current is None else current.buffer.spilled,
            "lag_s": 0.0 if current is None else current.lag_s(),
        }
