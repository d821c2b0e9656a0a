"""A simulated EIGER detector that speaks the real protocols: its series and its stream.

Control is the SIMPLON REST API (:mod:`~lightpipe.simulators.eiger_api`, served
by :mod:`~lightpipe.simulators.eiger_rest`); frames go out on a ZeroMQ PUSH
socket as DECTRIS stream v1 (multipart JSON + binary, format ``legacy``) or
stream v2 (CBOR, format ``cbor``). The frames come from a
:class:`~lightpipe.simulators.eiger_frames.FrameSource`: an HDF5 file or a
registered simulator source, cycled when a series needs more frames than there
are. The configuration rules are those of :mod:`~lightpipe.simulators.eiger_config`.

A series is what a beamline control system does: ``arm`` sends the series
header and answers the sequence id, each ``trigger`` streams ``nimages`` frames
at the configured rate (on a monotonic-clock schedule, so the rate does not
drift), and ``disarm`` sends the end of the series; ``abort`` and ``cancel``
stop the frames and end the series at once. With no receiver connected, the
PUSH socket holds messages back, so a series waits for its receiver.

The REST server needs the ``server`` extra (FastAPI and uvicorn);
:meth:`EigerSimulator.start` says so when it is missing.

Examples
--------
>>> import zmq
>>> from lightpipe.sources.dectris import simplon
>>> with EigerSimulator(stream_port=0, rest_port=0) as eiger:  # doctest: +SKIP
...     pull = zmq.Context.instance().socket(zmq.PULL)
...     pull.connect(eiger.stream_endpoint)
...     series = eiger.acquire(nimages=10)
...     header = simplon.decode_message(pull.recv_multipart())
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from lightpipe.core.errors import LightpipeError, SourceError
from lightpipe.simulators import eiger_config
from lightpipe.simulators.eiger_config import (
    COMMANDS,
    FORMAT_NAMES,
    STREAM_CONFIG,
    STREAM_PORTS,
    SimplonError,
    StreamFormat,
    compression_setting,
    initial_config,
)
from lightpipe.simulators.eiger_frames import FrameSource
from lightpipe.sources.dectris import simplon, stream2
from lightpipe.sources.dectris.compression import EncodedFrame
from lightpipe.sources.dectris.errors import StreamError

if TYPE_CHECKING:
    from lightpipe.simulators.eiger_rest import RestServer

#: The packages of the ``server`` extra, as an import names them.
SERVER_PACKAGES = ("fastapi", "uvicorn", "starlette")


@dataclass
class _Series:
    """What ``arm`` fixed for one series."""

    id: int
    unique_id: str
    format: StreamFormat
    encoding: str
    nimages: int
    ntrigger: int
    count_time_ns: int
    image_appendix: Any
    armed_ns: int
    triggers: int = 0
    frames: int = 0


class EigerSimulator:
    """A simulated EIGER: SIMPLON REST control and a DECTRIS ZeroMQ stream.

    Parameters
    ----------
    frames
        Where frames come from; default the ``simulated_frames`` source.
    host
        Interface to bind the REST server and the stream to.
    stream_port
        ZeroMQ PUSH port; default 9999 (v1) or 31001 (v2); 0 picks a free port
        (read it from :attr:`stream_port`). Switching the format over REST keeps
        the port.
    rest_port
        SIMPLON REST port; 0 picks a free port (read it from :attr:`rest_port`).
    format
        ``v1`` (stream config format ``legacy``) or ``v2`` (``cbor``).
    encoding
        ``bs16-lz4<`` / ``bs32-lz4<`` (bitshuffle-LZ4, the default), ``lz4<`` or
        ``<``; or the v2 names ``bslz4``, ``lz4``, ``none``. Sets the detector's
        ``compression``; stream v2 sends the same choice in its own framing.
    header_detail
        ``all``, ``basic`` or ``none``.
    rate_hz
        Frames per second; 0 streams as fast as possible. Sets ``frame_time``.
    api_version
        The version in the REST paths the simulator prints; any version is answered.
    cache_bytes
        Encoded frames kept in memory (each source frame is encoded once while
        they fit), so that high rates are not limited by compression.

    Attributes
    ----------
    pixel_mask
        The detector's pixel mask (uint32 flag bits, 0 for a good pixel) sent in
        the series header with ``header_detail`` ``all``; ``None`` sends all zeros.
    """

    def __init__(
        self,
        frames: FrameSource | None = None,
        *,
        host: str = "127.0.0.1",
        stream_port: int | None = None,
        rest_port: int = 8089,
        format: StreamFormat = "v1",
        encoding: str | None = None,
        header_detail: str = "basic",
        rate_hz: float = 0.0,
        api_version: str = "1.8.0",
        cache_bytes: int = 256 << 20,
    ) -> None:
        if format not in STREAM_PORTS:
            raise StreamError(f"unknown stream format {format!r}; use v1 or v2")
        self.frames = frames if frames is not None else FrameSource.from_simulator()
        if self.frames.dtype.name not in simplon.IMAGE_TYPES:
            raise SourceError(f"the frames are {self.frames.dtype}; an EIGER streams {', '.join(simplon.IMAGE_TYPES)}: "
                              "convert the file or choose another dataset")
        self.host = host
        self.api_version = api_version
        self.cache_bytes = cache_bytes
        self._requested_ports = (STREAM_PORTS[format] if stream_port is None else stream_port, rest_port)
        self.config = initial_config(self.frames.shape, self.frames.dtype, self.frames.metadata)
        self.stream_config = dict(STREAM_CONFIG, format=FORMAT_NAMES[format])
        self.set_config("compression", compression_setting(encoding, self.frames.dtype))
        self.set_stream_config("header_detail", header_detail)
        self.rate_hz = rate_hz
        self.pixel_mask: np.ndarray | None = None
        self._lock = threading.RLock()
        self._abort = threading.Event()
        self._closing = threading.Event()
        self._sequence_id = 0
        self._series: _Series | None = None
        self._state = "idle"
        self._cache: dict[tuple[int, str], EncodedFrame] = {}
        self._cache_used = 0
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._stream_port = 0
        self._rest: RestServer | None = None

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> EigerSimulator:
        """Bind the stream and start the REST server; returns ``self``.

        Raises
        ------
        LightpipeError
            When FastAPI or uvicorn (the ``server`` extra) is not installed.
        SourceError
            When a port cannot be bound, or the REST server does not start.
        """
        try:
            from lightpipe.simulators.eiger_rest import RestServer
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in SERVER_PACKAGES:
                raise
            raise LightpipeError(f"the EIGER simulator's SIMPLON REST API needs FastAPI and uvicorn, and {exc.name} "
                                 "is not installed; install them with: pip install 'lightpipe[server]'") from exc

        stream_port, rest_port = self._requested_ports
        self._closing.clear()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        try:
            self._socket.bind(f"tcp://{self.host}:{stream_port or '*'}")
        except zmq.ZMQError as exc:
            self._context.destroy(linger=0)
            self._socket = self._context = None
            raise SourceError(f"cannot bind the stream to {self.host}:{stream_port} ({exc}); choose another "
                              "--port, or 0 for any free port") from exc
        self._stream_port = int(self._socket.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        try:
            self._rest = RestServer(self, self.host, rest_port).start()
        except SourceError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End any series, stop the REST server and close the stream (pending messages get 1 s to leave)."""
        self._closing.set()
        self._abort.set()
        with self._lock:  # a trigger in progress sees the abort and returns
            self._series = None
            self._state = "idle"
        if self._rest is not None:
            self._rest.stop()
        if self._socket is not None:
            self._socket.close(linger=1000)
        if self._context is not None:
            self._context.term()
        self._rest = self._socket = self._context = None

    def __enter__(self) -> EigerSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stream_port(self) -> int:
        """The bound ZeroMQ stream port."""
        return self._stream_port

    @property
    def rest_port(self) -> int:
        """The bound REST port."""
        return self._rest.port if self._rest is not None else 0

    @property
    def _address(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "*") else self.host

    @property
    def stream_endpoint(self) -> str:
        """Where a receiver connects its PULL socket, e.g. ``tcp://127.0.0.1:9999``."""
        return f"tcp://{self._address}:{self.stream_port}"

    @property
    def rest_url(self) -> str:
        """Base URL of the REST server, e.g. ``http://127.0.0.1:8089``."""
        return f"http://{self._address}:{self.rest_port}"

    @property
    def state(self) -> str:
        """``idle``, ``ready`` (armed) or ``acquire`` (a trigger in progress)."""
        return self._state

    @property
    def format(self) -> StreamFormat:
        """The stream version the next series is sent in."""
        return "v2" if self.stream_config["format"] == "cbor" else "v1"

    # -- configuration ----------------------------------------------------------------------------------------

    @property
    def rate_hz(self) -> float:
        """Frames per second of a trigger (``1 / frame_time``); 0 streams as fast as possible."""
        return self._rate_hz

    @rate_hz.setter
    def rate_hz(self, value: float) -> None:
        if not value >= 0:
            raise SimplonError(f"rate must be a frame rate in Hz >= 0 (0: as fast as possible), got {value}")
        self._rate_hz = float(value)
        if value > 0:
            self.config["frame_time"] = 1.0 / value
            self.config["count_time"] = min(self.config["count_time"], 1.0 / value)

    def get_config(self, name: str) -> dict[str, Any]:
        """A detector configuration value as SIMPLON answers it: value, value_type, access_mode."""
        return eiger_config.detector_config_answer(self.config, name)

    def set_config(self, name: str, value: Any) -> list[str]:
        """Set a detector configuration value; returns the names it changed (SIMPLON's answer)."""
        changed = eiger_config.set_detector_config(self.config, name, value)
        if name == "frame_time":
            self._rate_hz = 1.0 / self.config["frame_time"]
        return changed

    def get_stream_config(self, name: str) -> dict[str, Any]:
        """A stream configuration value as SIMPLON answers it: value, access_mode."""
        return eiger_config.stream_config_answer(self.stream_config, name)

    def set_stream_config(self, name: str, value: Any) -> list[str]:
        """Set a stream configuration value (``mode``, ``format``, ``header_detail``, appendices)."""
        return eiger_config.set_stream_config(self.stream_config, name, value)

    def _encoding(self, format: StreamFormat) -> str:
        compression = self.config["compression"]
        if format == "v2":
            return stream2.frame_encoding(compression, self.frames.dtype)
        return {"bslz4": f"bs{8 * self.frames.dtype.itemsize}-lz4<", "lz4": "lz4<", "none": "<"}[compression]

    def _encoded(self, k: int, encoding: str) -> EncodedFrame:
        key = (k % len(self.frames), encoding)
        encoded = self._cache.get(key)
        if encoded is None:
            encoded = EncodedFrame.encode(self.frames.frame(k), encoding)
            if self._cache_used + len(encoded.blob) <= self.cache_bytes:
                self._cache[key] = encoded
                self._cache_used += len(encoded.blob)
        return encoded

    # -- commands ---------------------------------------------------------------------------------------------

    def command(self, name: str) -> dict[str, Any]:
        """Run a SIMPLON command by name; answers ``{"sequence id": N}``."""
        if name not in COMMANDS:
            raise SimplonError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}", 404)
        getattr(self, name)()
        return {"sequence id": self._sequence_id}

    def arm(self) -> int:
        """Start a series: send its header; returns the sequence id (the ``series`` of every message)."""
        with self._lock:
            if self._series is not None:
                raise SimplonError(f"the detector is armed with series {self._series.id}; disarm or abort first", 409)
            self._abort.clear()
            fmt = self.format
            self._sequence_id += 1
            series = _Series(self._sequence_id, uuid.uuid4().hex, fmt, self._encoding(fmt), self.config["nimages"],
                             self.config["ntrigger"], round(self.config["count_time"] * 1e9),
                             self.stream_config["image_appendix"] or None, time.monotonic_ns())
            for k in range(min(series.nimages * series.ntrigger, len(self.frames))):
                if self._cache_used >= self.cache_bytes:
                    break
                self._encoded(k, series.encoding)  # encode now: a real arm takes time too
            self._send(self._header(series))
            self._series = series
            self._state = "ready"
            return series.id

    def _header(self, series: _Series) -> list[bytes]:
        detail = self.stream_config["header_detail"]
        arrays: dict[str, Any] = {}
        if detail == "all":
            arrays = {"flatfield": np.ones(self.frames.shape, np.float32),
                      "pixel_mask": (np.zeros(self.frames.shape, np.uint32) if self.pixel_mask is None
                                     else np.asarray(self.pixel_mask, np.uint32)),
                      "countrate": np.stack([np.arange(1000, dtype=np.float32) * 1e3,
                                             np.arange(1000, dtype=np.float32) * 1e3 * 0.98])}
        appendix = self.stream_config["header_appendix"] or None
        if series.format == "v2":
            return stream2.encode_header(series.id, self.config, detail=detail, unique_id=series.unique_id,
                                         appendix=appendix, **arrays)
        return simplon.encode_header(series.id, self.config, detail=detail, appendix=appendix, **arrays)

    def trigger(self) -> int:
        """Stream the ``nimages`` frames of one trigger at the frame rate; returns the frames sent."""
        with self._lock:
            series = self._series
            if series is None:
                raise SimplonError("the detector is not armed; arm first", 409)
            if series.triggers >= series.ntrigger:
                raise SimplonError(f"all {series.ntrigger} triggers of series {series.id} are done; disarm", 409)
            series.triggers += 1
            self._state = "acquire"
            try:
                return self._stream(series)
            finally:
                self._state = "ready" if self._series is not None else "idle"

    def _stream(self, series: _Series) -> int:
        period = 1.0 / self._rate_hz if self._rate_hz > 0 else 0.0
        t0 = time.monotonic()
        for k in range(series.nimages):
            if period:  # a schedule from t0, not sleeps that add up
                delay = t0 + k * period - time.monotonic()
                if delay > 0 and self._abort.wait(delay):
                    return k
            if self._abort.is_set():
                return k
            start = time.monotonic_ns() - series.armed_ns
            frame = self._encoded(series.frames, series.encoding)
            times = {"start_time": start, "stop_time": start + series.count_time_ns, "real_time": series.count_time_ns}
            if series.format == "v2":
                parts = stream2.encode_image(frame, series.id, series.frames, unique_id=series.unique_id,
                                             appendix=series.image_appendix, **times)
            else:
                parts = simplon.encode_image(frame, series.id, series.frames, appendix=series.image_appendix, **times)
            if not self._send(parts):
                return k
            series.frames += 1
        return series.nimages

    def disarm(self) -> int:
        """End the series: send the end message; returns the sequence id. Disarming when idle does nothing."""
        with self._lock:
            if self._series is not None:
                self._send(self._end(self._series))
                self._series = None
            self._state = "idle"
            return self._sequence_id

    def _end(self, series: _Series) -> list[bytes]:
        if series.format == "v2":
            return stream2.encode_end(series.id, series.unique_id)
        return simplon.encode_end(series.id)

    def abort(self) -> None:
        """Stop streaming at once and end the series."""
        self._abort.set()
        with self._lock:  # waits for the trigger loop, which has seen the abort
            if self._series is not None:
                self._send(self._end(self._series), abortable=False, timeout=1.0)
                self._series = None
            self._state = "idle"

    def cancel(self) -> None:
        """Stop after the current frame and end the series (as :meth:`abort` in this simulator)."""
        self.abort()

    def initialize(self) -> None:
        """Bring the detector to ``idle``, ending any series."""
        self.abort()

    def acquire(self, nimages: int, ntrigger: int = 1) -> int:
        """Arm, trigger ``ntrigger`` times ``nimages`` frames, disarm; returns the series id."""
        self.set_config("nimages", nimages)
        self.set_config("ntrigger", ntrigger)
        series = self.arm()
        for _ in range(ntrigger):
            self.trigger()
        self.disarm()
        return series

    def _send(self, parts: list[bytes], *, abortable: bool = True, timeout: float | None = None) -> bool:
        """Send one message, waiting while no receiver takes it; ``False`` if aborted, closing or timed out."""
        if self.stream_config["mode"] != "enabled":
            return True
        if self._socket is None:
            raise SimplonError("the simulator is not started; call start() first", 409)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if (abortable and self._abort.is_set()) or self._closing.is_set():
                    return False
                if deadline is not None and time.monotonic() > deadline:
                    return False
                self._socket.poll(50, zmq.POLLOUT)


