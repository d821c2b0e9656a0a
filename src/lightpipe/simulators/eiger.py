"""An EIGER detector simulator that speaks the real protocols.

Control is the SIMPLON REST API (FastAPI served by uvicorn in a background
thread); frames go out on a ZeroMQ PUSH socket as DECTRIS stream v1 (multipart
JSON + binary, format ``legacy``) or stream v2 (CBOR, format ``cbor``). The
frames come from an HDF5 file or from a registered simulator source, cycled
when a series needs more frames than there are.

A series is what a beamline control system does: ``arm`` sends the series
header and answers the sequence id, each ``trigger`` streams ``nimages`` frames
at the configured rate (on a monotonic-clock schedule, so the rate does not
drift), and ``disarm`` sends the end of the series; ``abort`` and ``cancel``
stop the frames and end the series at once. With no receiver connected, the
PUSH socket holds messages back, so a series waits for its receiver.

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

import argparse
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

from lightpipe.core.errors import LightpipeError, SourceError
from lightpipe.core.source import ScanReader
from lightpipe.sources.dectris import simplon, stream2
from lightpipe.sources.dectris.compression import EncodedFrame, parse_encoding
from lightpipe.sources.dectris.errors import StreamError

StreamFormat = Literal["v1", "v2"]
#: Default ZeroMQ stream port of each stream version, as on a DECTRIS DCU.
STREAM_PORTS = {"v1": 9999, "v2": 31001}
#: Stream config ``format`` value of each stream version.
FORMAT_NAMES = {"v1": "legacy", "v2": "cbor"}
HC_EV_ANGSTROM = 12398.419843320026  # photon energy (eV) times wavelength (Å)

#: Detector configuration of a fresh simulator; the frame source fills in the size.
DETECTOR_CONFIG: dict[str, Any] = {
    "nimages": 1,
    "ntrigger": 1,
    "count_time": 0.01,
    "frame_time": 0.01,
    "photon_energy": HC_EV_ANGSTROM,
    "wavelength": 1.0,
    "threshold_energy": HC_EV_ANGSTROM / 2,
    "detector_distance": 0.2,
    "beam_center_x": 0.0,
    "beam_center_y": 0.0,
    "x_pixel_size": 75e-6,
    "y_pixel_size": 75e-6,
    "x_pixels_in_detector": 0,
    "y_pixels_in_detector": 0,
    "bit_depth_image": 16,
    "bit_depth_readout": 16,
    "compression": "bslz4",
    "sensor_material": "Si",
    "sensor_thickness": 450e-6,
    "description": "lightpipe simulated EIGER",
    "detector_number": "LP-SIM-0001",
    "omega_start": 0.0,
    "omega_increment": 0.1,
    "countrate_correction_applied": False,
    "flatfield_correction_applied": False,
    "pixel_mask_applied": False,
}
#: Configuration the detector reports but does not let a client change.
READ_ONLY = frozenset({"x_pixels_in_detector", "y_pixels_in_detector", "bit_depth_image", "bit_depth_readout",
                       "x_pixel_size", "y_pixel_size", "sensor_material", "sensor_thickness", "description",
                       "detector_number"})
CHOICES = {"compression": ("bslz4", "lz4", "none")}
STREAM_CONFIG: dict[str, Any] = {"mode": "enabled", "format": "legacy", "header_detail": "basic",
                                 "header_appendix": "", "image_appendix": ""}
STREAM_CHOICES = {"mode": ("enabled", "disabled"), "format": ("legacy", "cbor"),
                  "header_detail": ("all", "basic", "none")}
COMMANDS = ("initialize", "arm", "trigger", "disarm", "cancel", "abort")


class SimplonError(LightpipeError):
    """A SIMPLON request the detector refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FrameSource:
    """Frames to stream, read on demand from one stream of a lightpipe scan and cycled.

    Parameters
    ----------
    reader
        A scan reader (of any lightpipe source) whose events have a ``frame`` field.
    stream
        The stream to take frames from (``data``; the first stream if there is none).
    """

    def __init__(self, reader: ScanReader, stream: str = "data") -> None:
        self.reader = reader
        streams = reader.scan.streams
        self.indices = streams[stream] if stream in streams else next(iter(streams.values()), range(0))
        if len(self.indices) == 0:
            raise SourceError(f"scan {reader.scan.name!r} has no frames to stream in {stream!r}")
        first = self.frame(0)
        self.shape: tuple[int, int] = (first.shape[0], first.shape[1])
        self.dtype = first.dtype
        self.metadata = reader.scan.metadata

    @classmethod
    def from_hdf5(cls, path: str, dataset: str | None = None) -> FrameSource:
        """The frames of a 3-D dataset (default: lightpipe's or DECTRIS's layout, as ``lightpipe run`` finds it)."""
        from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader
        from lightpipe.sources.inputs import hdf5_defaults

        dataset = dataset or hdf5_defaults(path).get("dataset", "/entry/data/data")
        return cls(HDF5Reader(HDF5Params(path=path, dataset=dataset)))

    @classmethod
    def from_simulator(cls, name: str = "simulated_frames", params: Mapping[str, Any] | None = None) -> FrameSource:
        """The data frames of the first scan of a registered source, e.g. ``simulated_frames``."""
        from pydantic import ValidationError

        from lightpipe.core.registry import load

        source_cls = load("sources", name)
        try:
            source = source_cls(source_cls.Params(**dict(params or {})))
        except ValidationError as exc:
            raise SourceError(f"bad parameters for source {name!r}: {exc}") from exc
        return cls(next(iter(source.scans())))

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k``, cycling through the frames there are."""
        index = self.indices[k % len(self.indices)]
        event = self.reader.read(index, index + 1)[0]
        if event.error:
            raise SourceError(f"cannot read frame {index} to stream: {event.error}")
        frame = np.asarray(event.fields["frame"])
        if frame.ndim != 2:
            raise SourceError(f"frame {index} has shape {frame.shape}; a detector streams 2-D frames")
        return frame


def _compression(encoding: str | None, dtype: np.dtype) -> str:
    """The detector ``compression`` setting of an encoding name (v1 names or v2 names) for frames of ``dtype``."""
    if encoding is None or encoding in CHOICES["compression"]:
        return encoding or "bslz4"
    enc = parse_encoding(encoding)
    if enc.byteorder == ">" or enc.kind == "lz4-hdf5":
        raise StreamError(f"encoding {encoding!r} is not one a detector sends; use 'bs16-lz4<', 'lz4<' or '<'")
    if enc.kind == "bslz4" and enc.elem_size != dtype.itemsize:
        raise StreamError(f"encoding {encoding} bitshuffles {8 * enc.elem_size}-bit elements but the frames are "
                          f"{dtype}; use bs{8 * dtype.itemsize}-lz4<")
    return {"bslz4": "bslz4", "lz4": "lz4", "raw": "none"}[enc.kind]


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
        self.config = self._initial_config()
        self.stream_config = dict(STREAM_CONFIG, format=FORMAT_NAMES[format])
        self.set_config("compression", _compression(encoding, self.frames.dtype))
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
        self._rest_socket: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _initial_config(self) -> dict[str, Any]:
        ny, nx = self.frames.shape
        meta = self.frames.metadata
        config = dict(DETECTOR_CONFIG, x_pixels_in_detector=nx, y_pixels_in_detector=ny,
                      bit_depth_image=8 * self.frames.dtype.itemsize, bit_depth_readout=8 * self.frames.dtype.itemsize,
                      beam_center_x=nx / 2, beam_center_y=ny / 2)
        for key, name in (("beam_center_x_px", "beam_center_x"), ("beam_center_y_px", "beam_center_y"),
                          ("distance_m", "detector_distance"), ("x_pixel_size_m", "x_pixel_size"),
                          ("y_pixel_size_m", "y_pixel_size"), ("count_time_s", "count_time")):
            if isinstance(meta.get(key), (int, float)):
                config[name] = float(meta[key])
        if isinstance(meta.get("wavelength_a"), (int, float)) and meta["wavelength_a"] > 0:
            config["wavelength"] = float(meta["wavelength_a"])
            config["photon_energy"] = HC_EV_ANGSTROM / config["wavelength"]
            config["threshold_energy"] = config["photon_energy"] / 2
        return config

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> EigerSimulator:
        """Bind the stream and start the REST server; returns ``self``."""
        import uvicorn

        from lightpipe.simulators.eiger_api import create_app

        stream_port, rest_port = self._requested_ports
        self._closing.clear()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        try:
            self._socket.bind(f"tcp://{self.host}:{stream_port or '*'}")
        except zmq.ZMQError as exc:
            self._context.destroy(linger=0)
            raise SourceError(f"cannot bind the stream to {self.host}:{stream_port} ({exc}); choose another "
                              "--port, or 0 for any free port") from exc
        self._stream_port = int(self._socket.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        self._rest_socket = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        self._rest_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._rest_socket.bind((self.host, rest_port))
        except OSError as exc:
            self._rest_socket.close()
            self._context.destroy(linger=0)
            raise SourceError(f"cannot bind the REST server to {self.host}:{rest_port} ({exc}); choose another "
                              "--rest-port, or 0 for any free port") from exc
        config = uvicorn.Config(create_app(self), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._rest_socket]},
                                        name="eiger-rest", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SourceError("the simulator's REST server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """End any series, stop the REST server and close the stream (pending messages get 1 s to leave)."""
        self._closing.set()
        self._abort.set()
        with self._lock:  # a trigger in progress sees the abort and returns
            self._series = None
            self._state = "idle"
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._rest_socket is not None:
            self._rest_socket.close()
        if self._socket is not None:
            self._socket.close(linger=1000)
        if self._context is not None:
            self._context.term()
        self._server = self._thread = self._rest_socket = self._socket = self._context = None

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
        return self._rest_socket.getsockname()[1] if self._rest_socket is not None else 0

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
        if name not in self.config:
            raise SimplonError(f"unknown detector config {name!r}; known: {', '.join(sorted(self.config))}", 404)
        value = self.config[name]
        value_type = {bool: "bool", int: "int", float: "float"}.get(type(value), "string")
        return {"value": value, "value_type": value_type, "access_mode": "r" if name in READ_ONLY else "rw"}

    def set_config(self, name: str, value: Any) -> list[str]:
        """Set a detector configuration value; returns the names it changed (SIMPLON's answer)."""
        if name not in self.config:
            raise SimplonError(f"unknown detector config {name!r}; known: {', '.join(sorted(self.config))}", 404)
        if name in READ_ONLY:
            raise SimplonError(f"detector config {name!r} is read-only")
        current = self.config[name]
        if isinstance(current, bool) or isinstance(current, str):
            ok = isinstance(value, type(current))
        elif isinstance(current, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            kind = {bool: "true or false", str: "a string", int: "an integer"}.get(type(current), "a number")
            raise SimplonError(f"detector config {name!r} takes {kind}, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise SimplonError(f"detector config {name!r} is one of {', '.join(CHOICES[name])}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 and name in (
                "nimages", "ntrigger", "count_time", "frame_time", "photon_energy", "wavelength"):
            raise SimplonError(f"detector config {name!r} must be positive, got {value!r}")
        self.config[name] = float(value) if isinstance(current, float) else value
        changed = [name]
        if name == "photon_energy":
            self.config["wavelength"] = HC_EV_ANGSTROM / value
            self.config["threshold_energy"] = value / 2
            changed += ["threshold_energy", "wavelength"]
        elif name == "wavelength":
            self.config["photon_energy"] = HC_EV_ANGSTROM / value
            self.config["threshold_energy"] = self.config["photon_energy"] / 2
            changed += ["photon_energy", "threshold_energy"]
        elif name == "frame_time":
            self._rate_hz = 1.0 / value
        return changed

    def set_stream_config(self, name: str, value: Any) -> list[str]:
        """Set a stream configuration value (``mode``, ``format``, ``header_detail``, appendices)."""
        if name not in self.stream_config:
            raise SimplonError(f"unknown stream config {name!r}; known: {', '.join(sorted(self.stream_config))}", 404)
        if name in STREAM_CHOICES and value not in STREAM_CHOICES[name]:
            raise SimplonError(f"stream config {name!r} is one of {', '.join(STREAM_CHOICES[name])}, got {value!r}")
        self.stream_config[name] = value
        return [name]

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


def add_eiger_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lightpipe simulate eiger``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=None,
                        help="ZeroMQ stream port (default 9999 for v1, 31001 for v2; 0: any free port)")
    parser.add_argument("--rest-port", type=int, default=8089,
                        help="SIMPLON REST port (default 8089; 0: any free port)")
    parser.add_argument("--format", choices=["v1", "v2"], default="v1",
                        help="stream v1 (JSON + binary, 'legacy') or v2 (CBOR, 'cbor'); default v1")
    parser.add_argument("--encoding", default=None,
                        help="'bs16-lz4<' (bitshuffle-LZ4 on the frames' bit depth, the default), 'lz4<' or '<'; "
                             "v2 sends the same compression in its own framing")
    parser.add_argument("--header-detail", choices=["all", "basic", "none"], default="basic")
    parser.add_argument("--rate", type=float, default=0.0, metavar="HZ",
                        help="frames per second (default 0: as fast as possible)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_file", metavar="FILE.h5", help="stream the frames of an HDF5 file")
    source.add_argument("--simulator", default=None, metavar="NAME",
                        help="stream the data frames of a registered source (default simulated_frames)")
    parser.add_argument("--dataset", help="3-D dataset of --from (default /entry/data/data, or DECTRIS data links)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the --simulator source, value in YAML, e.g. shape=[512,512]")
    parser.add_argument("--nimages", type=int, default=100, help="frames per trigger (default 100)")
    parser.add_argument("--ntrigger", type=int, default=1, help="triggers per series (default 1)")
    parser.add_argument("--series", type=int, default=0,
                        help="acquire this many series at once, then exit (default 0: wait for REST commands)")


def _frames_from_args(args: argparse.Namespace) -> FrameSource:
    import yaml

    if args.from_file:
        if args.param:
            raise SourceError("--param sets parameters of a --simulator source, not of --from FILE")
        return FrameSource.from_hdf5(args.from_file, args.dataset)
    if args.dataset:
        raise SourceError("--dataset names a dataset of --from FILE.h5")
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SourceError(f"--param {item!r} is not KEY=VALUE")
        params[key] = yaml.safe_load(text)
    return FrameSource.from_simulator(args.simulator or "simulated_frames", params)


def run_eiger(args: argparse.Namespace) -> int:
    """Run ``lightpipe simulate eiger``: serve until Ctrl-C, or acquire ``--series`` series and exit."""
    simulator = EigerSimulator(_frames_from_args(args), host=args.host, stream_port=args.port,
                               rest_port=args.rest_port, format=args.format, encoding=args.encoding,
                               header_detail=args.header_detail, rate_hz=args.rate)
    simulator.set_config("nimages", args.nimages)
    simulator.set_config("ntrigger", args.ntrigger)
    with simulator:
        ny, nx = simulator.frames.shape
        rate = f"{simulator.rate_hz:g} Hz" if simulator.rate_hz else "as fast as possible"
        print(f"EIGER simulator: {len(simulator.frames)} frames of {ny}x{nx} {simulator.frames.dtype}, {rate}",
              flush=True)
        print(f"stream {args.format} on {simulator.stream_endpoint}", flush=True)
        print(f"SIMPLON REST on {simulator.rest_url}/detector/api/{simulator.api_version}/", flush=True)
        for _ in range(args.series):
            series = simulator.acquire(args.nimages, args.ntrigger)
            print(f"series {series}: {args.nimages * args.ntrigger} frames sent", flush=True)
        while args.series == 0:
            time.sleep(3600)
    return 0
