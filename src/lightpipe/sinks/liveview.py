"""A live view for Lavue (DESY): results published as images on a ZeroMQ socket.

Lavue's "ZMQ Stream" source connects to ``host:port/topic`` and shows the
images published on that topic. Each chosen field gets one topic (by default
its key, e.g. ``normalised.frame``); the list of topics is announced on the
``datasources`` topic when a scan opens and every ``announce_s`` seconds, so a
viewer that connects late still finds it. Per-event fields are published as
the events arrive, per-scan results (a powder sum, a dark mean) when the scan
closes.

Messages
    ``[topic, raw bytes, metadata JSON, b"JSON"]``, as Lavue's ZMQ source
    reads them: it reshapes the raw bytes to the metadata's ``shape``
    (C order, NumPy's ``dtype`` name) and takes the result as ``[x, y]``,
    x the horizontal axis, which is the transpose of a frame's
    ``[row, column]``. So a frame of R rows and C columns is sent transposed,
    ``shape`` ``[C, R]``, and the pixel at row 13, column 7 shows at x = 7,
    y = 13, where the NeXus file, silx and ``roi_sum``'s ``y``/``x`` put it
    (other clients: ``reshape(shape).T`` gives the frame back). The metadata
    also has ``name`` (the title Lavue shows), ``field`` (the key), ``scan``,
    ``index`` and ``stream`` of the event (``null`` for a per-scan result) and
    ``ndim``, the dimensions of the value before it became an image.
    Topics are announced as ``[b"datasources", {"datasources": [...]}, b"JSON"]``,
    the message Lavue takes its list of topics from; Lavue shows that list
    only with its setting "Automatic datasources" (Configuration, ZMQ Stream).

What becomes an image
    Lavue shows 2-D arrays, so a 2-D field is sent as it is, a 1-D profile of
    length N as a 1 x N image and a scalar as a 1 x 1 image (``ndim`` tells
    other clients to undo this). Complex values are sent as their modulus,
    booleans as uint8. Fields of more than two dimensions, non-numeric and
    empty values are skipped and counted.

Never in the way of the results
    The live view drops, it never waits. At most ``max_rate_hz`` messages per
    field leave per second (the first event of each interval; the others are
    counted as throttled), since an eye does not follow a kHz detector. The
    fields of one event, or of one solver update, are one *update*, sent back
    to back. A subscriber queues at most ``hwm`` updates: the socket's
    high-water mark is ``hwm`` times the number of fields of the first scan's
    sink, plus one (the announcement), so a viewer subscribed to every topic
    has room for every field of an update. What does not fit is refused without blocking
    (``XPUB`` with ``ZMQ_XPUB_NODROP``, sent with ``NOBLOCK``) and counted;
    once one field of an update is refused the rest of that update is dropped
    too, so a viewer never gets a later field of an update without the
    earlier ones. A small ``hwm`` keeps a slow viewer's picture recent.
    ZeroMQ applies this per socket, not per subscriber: a viewer that stops
    reading but stays connected makes every subscriber miss updates once its
    queue is full, until it reads again or disconnects; the drop counter
    shows it. Nothing reaches the subscribers that is not also in the
    result files, and nothing here fails a scan: a port that cannot be bound
    is logged as an error and the scan runs without a live view.

One socket across scans
    The engine makes a new sink for every scan, but a viewer should stay
    connected for a whole run (with ``port: 0`` a new socket would even get a
    new port). So sockets belong to a registry of this module, one
    :class:`Publisher` per ``(host, port)``: made on first use, kept between
    scans and runs of the same process, closed by :func:`release` or at
    interpreter exit. A publisher's queue length (``hwm`` and the number of
    fields) is fixed when it is made: ZeroMQ gives every new connection the
    high-water mark the socket had when it was bound.

Dask engine
    The live view runs on the driver and publishes what the driver receives.
    Per-event arrays that the ``nexus`` sink stores on the workers arrive as
    references, not arrays: they are skipped and counted (set ``shards:
    false`` on the ``nexus`` sink to bring the arrays to the driver).
    Scalars and per-scan results always arrive.

Examples
--------
::

    sinks:
      - use: nexus
      - use: lavue
        fields: [normalised.frame, profile.profile, powder.sum]
        params: {port: 5600, max_rate_hz: 5}

Then in Lavue choose the source "ZMQ Stream" with the server
``<this host>:5600/normalised.frame``; or turn on "Automatic datasources"
(Lavue's Configuration, ZMQ Stream) and pick the topic from the list that
the announcements fill once Lavue is connected.
"""
from __future__ import annotations

import atexit
import json
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zmq
from pydantic import Field, field_validator

from lightpipe.core.bounds import MAX_SECONDS, ScanFileName, Seconds, TcpPort
from lightpipe.core.errors import LightpipeError
from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.core.xp import to_numpy
from lightpipe.core.sink import Sink, SinkParams

log = logging.getLogger(__name__)

#: Port the live view binds unless told otherwise.
DEFAULT_PORT = 5600
#: Most messages per second per field: more than a viewer can draw.
MAX_RATE_HZ = 1000.0
#: Most updates queued per subscriber: each holds frames, and a live view shows only the latest.
MAX_HWM = 1000
#: Topic on which Lavue expects the list of topics.
DATASOURCES = "datasources"
_TOPIC_SAMPLE = {"key": "stage.field", "stage": "stage", "field": "field"}


class LiveViewError(LightpipeError):
    """A live-view socket that cannot be bound."""


class LiveViewParams(SinkParams):
    """Parameters of the Lavue live-view sink."""

    host: str = Field("*", description="Interface to bind: * for all, or one address or host name")
    port: TcpPort = Field(DEFAULT_PORT, description="TCP port Lavue connects to, 1 to 65535; 0 = any free port (logged)")
    topic: str = Field("{key}", description="Topic of each field; placeholders {key} (stage.field), {stage}, {field}")
    max_rate_hz: float = Field(
        10.0, ge=0, le=MAX_RATE_HZ, allow_inf_nan=False,
        description=f"Most messages per second per field, at most {MAX_RATE_HZ:g}; 0 = every event",
    )
    hwm: int = Field(
        2, ge=1, le=MAX_HWM, description=f"Updates (every field of one event) queued per subscriber (1 to {MAX_HWM}); "
        "newer ones are dropped beyond it"
    )
    announce_s: Seconds = Field(
        1.0, description=f"Seconds between announcements of the topics; more than 0, at most {MAX_SECONDS}"
    )
    summary: ScanFileName | None = Field(
        None, description="JSON file in the output directory with the scan's counts, no / or \\; {scan} is the "
        "scan name"
    )

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value or any(c in value for c in "/: \t"):
            raise ValueError(f"host must be * or one IPv4 address or host name, e.g. 127.0.0.1; got {value!r}")
        return value

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        try:
            sample = value.format(**_TOPIC_SAMPLE)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"topic {value!r} may use only the placeholders {{key}} {{stage}} {{field}} ({exc})") from exc
        check_topic(sample)
        return value


def check_topic(topic: str) -> str:
    """Return ``topic`` if Lavue can subscribe to it, else raise ``ValueError`` saying why."""
    if not topic or topic == DATASOURCES or any(c in topic for c in "/ \t\n"):
        # Lavue reads its server setting as host:port/topic/hwm
        raise ValueError(f"a live-view topic must be non-empty, not {DATASOURCES!r}, and without '/' or spaces; "
                         f"got {topic!r}")
    return topic


def lavue_image(value: Any) -> np.ndarray | None:
    """``value`` as the 2-D, native-endian, C-ordered array Lavue shows, or ``None`` if it has no image.

    Examples
    --------
    >>> lavue_image(np.arange(3.0)).shape
    (1, 3)
    >>> lavue_image(2.5).tolist()
    [[2.5]]
    >>> lavue_image(np.zeros((2, 2, 2))) is None
    True
    """
    array = to_numpy(value)
    if array.dtype.kind == "c":
        array = np.abs(array)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iuf" or array.ndim > 2 or array.size == 0:
        return None
    if array.ndim < 2:
        array = array.reshape(1, -1)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def lavue_xy(image: np.ndarray) -> np.ndarray:
    """A ``[row, column]`` image in Lavue's ``[x, y]`` order: its transpose, C-ordered for sending.

    Examples
    --------
    >>> frame = np.zeros((20, 12)); frame[13, 7] = 1
    >>> lavue_xy(frame).shape, np.argwhere(lavue_xy(frame) == 1).tolist()
    ((12, 20), [[7, 13]])
    """
    return np.ascontiguousarray(image.T)


class Publisher:
    """One bound ZeroMQ socket that live-view sinks publish on, and its announcer thread.

    Get one with :func:`publisher`; sinks of later scans share it.

    Parameters
    ----------
    host, port
        Where to bind; port 0 takes any free port.
    hwm
        Updates queued per subscriber before new ones are dropped.
    fields
        Fields per update: the socket's high-water mark is ``hwm * fields + 1``
        messages (the one: an announcement).
    announce_s
        Seconds between announcements of :attr:`topics`.

    Attributes
    ----------
    endpoint
        The bound endpoint, e.g. ``tcp://0.0.0.0:5600``.
    port
        The bound port.
    sent, dropped
        Messages handed to ZeroMQ, and messages not sent because a subscriber's queue was full.
    """

    def __init__(self, host: str, port: int, hwm: int, announce_s: float, fields: int = 1) -> None:
        self.hwm = hwm
        self.fields = max(1, fields)
        self.queue = hwm * self.fields + 1
        self.announce_s = announce_s
        self.topics: set[str] = set()
        self.sent = 0
        self.dropped = 0
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, self.queue)  # before bind: connections take it from the listener
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue refuses the send: drops can be counted
        self._socket.setsockopt(zmq.LINGER, 0)
        address = f"tcp://{host}:{port or '*'}"
        try:
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self._socket.close()
            self._context.term()
            raise LiveViewError(f"cannot bind the live view to {address}: {exc}; choose another port, "
                                "or port: 0 for any free one") from exc
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self._lock = threading.Lock()  # ZeroMQ sockets are not thread-safe; the announcer shares this one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._announce_every, name=f"lightpipe-liveview-{self.port}",
                                        daemon=True)
        self._thread.start()
        log.info("live view publishing on %s; in Lavue choose ZMQ Stream %s:%d/<topic>",
                 self.endpoint, socket.gethostname(), self.port)

    def send(self, topic: str, image: np.ndarray, metadata: dict[str, Any]) -> bool:
        """Publish ``image`` on ``topic`` without waiting; return ``False`` if it was dropped."""
        return self.send_update([(topic, image, metadata)]) == 1

    def send_update(self, messages: list[tuple[str, np.ndarray, dict[str, Any]]]) -> int:
        """Publish the fields of one update in order, without waiting; return how many were sent.

        ``messages`` are ``(topic, image in [x, y] order, metadata)``. Once one
        is refused (a subscriber's queue is full) the rest are dropped too:
        a viewer misses the end of an update, never a field in its middle.
        """
        with self._lock:  # one lock for the whole update: the announcer cannot come between its fields
            for sent, (topic, image, metadata) in enumerate(messages):
                parts = [topic.encode(), image, json.dumps(metadata).encode(), b"JSON"]
                try:
                    self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
                except zmq.Again:
                    self.dropped += len(messages) - sent
                    return sent
                except zmq.ZMQError as exc:  # released while a sink still writes: lose the frame, not the scan
                    log.warning("live view on %s cannot send %s: %s", self.endpoint, topic, exc)
                    self.dropped += len(messages) - sent
                    return sent
                self.sent += 1
        return len(messages)

    def add_topics(self, topics: Iterable[str]) -> None:
        """Announce ``topics`` too, from now on."""
        with self._lock:
            self.topics.update(topics)

    def announce(self) -> None:
        """Publish the list of topics on ``datasources`` (dropped for a subscriber whose queue is full)."""
        with self._lock:
            if self._socket.closed:
                return
            message = json.dumps({DATASOURCES: sorted(self.topics)}).encode()
            try:
                # XPUB queues every new subscription for reading; read them so the queue stays empty
                while True:
                    self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                pass
            try:
                self._socket.send_multipart([DATASOURCES.encode(), message, b"JSON"], flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # a full subscriber gets the next announcement, announce_s later

    def _announce_every(self) -> None:
        while not self._stop.wait(self.announce_s):
            self.announce()

    def close(self) -> None:
        """Stop announcing and close the socket."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._socket.close(linger=0)
        self._context.term()


_PUBLISHERS: dict[tuple[str, int], Publisher] = {}
_REGISTRY_LOCK = threading.Lock()


def publisher(host: str = "*", port: int = DEFAULT_PORT, hwm: int = 2, announce_s: float = 1.0,
              fields: int = 1) -> Publisher:
    """The process's publisher for ``(host, port)``, bound on first use.

    A later call for the same ``(host, port)`` returns the same publisher
    (with ``port=0``: the same free port as the first time); ``announce_s``
    takes the new value, ``hwm`` and ``fields`` keep the first ones.

    Raises
    ------
    LiveViewError
        If the address cannot be bound (port in use, unknown host).
    """
    with _REGISTRY_LOCK:
        found = _PUBLISHERS.get((host, port))
        if found is None:
            found = _PUBLISHERS[host, port] = Publisher(host, port, hwm, announce_s, fields)
        else:
            if found.hwm != hwm:
                log.warning("live view on %s keeps hwm %d from its first use (asked for %d); "
                            "release it to change", found.endpoint, found.hwm, hwm)
            if found.queue < hwm * fields + 1:
                log.warning("live view on %s queues %d messages per subscriber, made for %d fields per update; "
                            "with %d fields a viewer of every topic may miss the last fields of an update; "
                            "release it to change", found.endpoint, found.queue, found.fields, fields)
            found.announce_s = announce_s
        return found


def release(host: str = "*", port: int = DEFAULT_PORT) -> None:
    """Close the publisher for ``(host, port)`` if there is one; the next use binds anew."""
    with _REGISTRY_LOCK:
        found = _PUBLISHERS.pop((host, port), None)
    if found is not None:
        found.close()


def release_all() -> None:
    """Close every publisher of this process (run at interpreter exit)."""
    with _REGISTRY_LOCK:
        found = list(_PUBLISHERS.values())
        _PUBLISHERS.clear()
    for p in found:
        p.close()


atexit.register(release_all)


@dataclass
class LiveViewCounts:
    """What happened to each (event, field) and scan result a live-view sink was given in one scan.

    Attributes
    ----------
    published
        Handed to ZeroMQ (a subscriber that is not connected still misses it).
    dropped
        Refused without waiting because a subscriber's queue was full.
    throttled
        Left out to keep within ``max_rate_hz``.
    skipped
        Not an image: more than two dimensions, non-numeric, empty, or a
        reference to an array kept on a worker.
    """

    published: int = 0
    dropped: int = 0
    throttled: int = 0
    skipped: int = 0


class LiveViewSink(Sink):
    """Publish results as images for Lavue's ZeroMQ source (see the module description).

    Attributes
    ----------
    endpoint
        The bound ZeroMQ endpoint, or ``None`` when the socket could not be bound.
    topics
        Topic of each field.
    counts
        This scan's :class:`LiveViewCounts`.
    """

    name = "lavue"
    Params = LiveViewParams

    def open(self, scan: Scan) -> None:
        p = self.params
        self.scan = scan
        self.counts = LiveViewCounts()
        self.topics = {key: self._topic(key) for key in self.fields}
        self.event_fields = [k for k in self.fields if not self.pipeline.port(k).scan]
        self.scan_fields = [k for k in self.fields if self.pipeline.port(k).scan]
        self._last: dict[str, float] = {}
        self._warned: set[str] = set()
        self.publisher: Publisher | None
        try:
            self.publisher = publisher(p.host, p.port, p.hwm, p.announce_s,
                                       max(len(self.event_fields), len(self.scan_fields)))
        except LiveViewError as exc:
            log.error("scan %s runs without a live view: %s", scan.name, exc)
            self.publisher = None
            self.endpoint: str | None = None
            return
        self.endpoint = self.publisher.endpoint
        self.publisher.add_topics(self.topics.values())
        self.publisher.announce()

    def _topic(self, key: str) -> str:
        stage, _, field = key.partition(".")
        return check_topic(self.params.topic.format(key=key, stage=stage, field=field))

    def _due(self, key: str, now: float) -> bool:
        """Whether field ``key`` may be published now under ``max_rate_hz``; if so, start its next interval."""
        rate = self.params.max_rate_hz
        last = self._last.get(key)
        if rate and last is not None and now - last < 1.0 / rate:
            return False
        self._last[key] = now
        return True

    def _message(self, key: str, value: Any, event: Event | None) -> tuple[str, np.ndarray, dict[str, Any]] | None:
        """The message of field ``key``, or ``None`` (counted as skipped) if ``value`` is no image."""
        image = lavue_image(value)
        if image is None:
            self.counts.skipped += 1
            if key not in self._warned:
                self._warned.add(key)
                log.warning("live view skips %s of scan %s: %s is not a 1-D or 2-D numeric array or a number%s",
                            key, self.scan.name, type(value).__name__,
                            " (on the Dask engine, set shards: false on the nexus sink to see it)"
                            if not hasattr(value, "shape") and not np.isscalar(value) else "")
            return None
        index = None if event is None else event.index
        title = f"{key} {self.scan.name}" + ("" if index is None else f" #{index}")
        xy = lavue_xy(image)
        metadata = {
            "shape": list(xy.shape), "dtype": xy.dtype.name, "name": title, "field": key,
            "scan": self.scan.name, "index": index, "stream": None if event is None else event.stream,
            "ndim": int(np.ndim(value)),
        }
        return self.topics[key], xy, metadata

    def _publish(self, fields: list[tuple[str, Any]], event: Event | None) -> None:
        """Send ``(key, value)`` fields as one update (see :meth:`Publisher.send_update`)."""
        assert self.publisher is not None
        messages = [m for key, value in fields if (m := self._message(key, value, event)) is not None]
        if messages:
            sent = self.publisher.send_update(messages)
            self.counts.published += sent
            self.counts.dropped += len(messages) - sent

    def write(self, events: list[Event]) -> None:
        if self.publisher is None:
            return
        for event in events:
            if event.error is not None:
                continue
            now = time.monotonic()  # one instant per event: its fields stay one update under max_rate_hz
            due = []
            for key in self.event_fields:
                value = event.fields.get(key)
                if value is None:
                    continue
                if self._due(key, now):
                    due.append((key, value))
                else:
                    self.counts.throttled += 1
            self._publish(due, event)

    def update(self, results: dict[str, Any]) -> None:
        """Publish a solver's intermediate results (an object and error curve while it iterates) as one update."""
        if self.publisher is None:
            return
        now = time.monotonic()
        self._publish([(key, results[key]) for key in self.scan_fields if key in results and self._due(key, now)],
                      None)

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        if self.publisher is not None:
            self._publish([(key, results[key]) for key in self.scan_fields if key in results], None)
        log.info("live view of scan %s on %s: %s", self.scan.name, self.endpoint, asdict(self.counts))
        if self.params.summary is None:
            return []
        path = self.output_dir / self.params.summary.format(scan=self.scan.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"scan": self.scan.name, "endpoint": self.endpoint, "topics": self.topics,
                                    **asdict(self.counts)}, indent=2) + "\n")
        return [path]
