"""DECTRIS stream version 2: one single-part CBOR message per event (``start``, ``image``, ``end``).

Arrays are RFC 8746 typed arrays (tags 64-87) inside row-major
multi-dimensional arrays (tag 40); the bytes of a typed array may be wrapped
in the DECTRIS compression tag 56500 ``[algorithm, element size, bytes]``,
``bslz4`` (bitshuffle-LZ4) or ``lz4``, both in the HDF5 filter framings. Image
data maps channel (threshold) names to frames; the first channel is the
default frame.

Messages decode to the dataclasses that stream v1 decodes to. Start-message
fields that have a SIMPLON configuration name are put in
:attr:`SeriesHeader.config` under that name (:data:`V2_TO_SIMPLON`), so a
receiver reads both versions alike; the whole message is kept in
:attr:`SeriesHeader.message`. The encoders write what the simulator sends;
each returns a one-element list, a single-part ZeroMQ message, so that both
stream versions are sent and received the same way.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import cbor2
import numpy as np

from lightpipe.sources.dectris.compression import (
    EncodedFrame,
    bslz4_decompress,
    lz4_hdf5_decompress,
    parse_encoding,
)
from lightpipe.sources.dectris.errors import StreamError
from lightpipe.sources.dectris.messages import Image, Message, SeriesEnd, SeriesHeader

__all__ = ["V2_TO_SIMPLON", "Image", "SeriesEnd", "SeriesHeader", "decode_message", "encode_end", "encode_header",
           "encode_image"]

Compression = Literal["bslz4", "lz4", "none"]

MULTI_DIM_ROW_MAJOR, MULTI_DIM_COLUMN_MAJOR, DECTRIS_COMPRESSION = 40, 1040, 56500
#: Start-message fields and the SIMPLON configuration names they become.
V2_TO_SIMPLON = {
    "beam_center_x": "beam_center_x",
    "beam_center_y": "beam_center_y",
    "count_time": "count_time",
    "countrate_correction_enabled": "countrate_correction_applied",
    "detector_description": "description",
    "detector_serial_number": "detector_number",
    "flatfield_enabled": "flatfield_correction_applied",
    "frame_time": "frame_time",
    "image_size_x": "x_pixels_in_detector",
    "image_size_y": "y_pixels_in_detector",
    "incident_energy": "photon_energy",
    "incident_wavelength": "wavelength",
    "number_of_images": "nimages",
    "pixel_mask_enabled": "pixel_mask_applied",
    "pixel_size_x": "x_pixel_size",
    "pixel_size_y": "y_pixel_size",
    "saturation_value": "countrate_correction_count_cutoff",
    "sensor_material": "sensor_material",
    "sensor_thickness": "sensor_thickness",
    "virtual_pixel_interpolation_enabled": "virtual_pixel_correction_applied",
}
SIMPLON_TO_V2 = {v: k for k, v in V2_TO_SIMPLON.items()}
GONIOMETER_AXES = ("omega", "kappa", "phi", "chi", "two_theta")
_NS = 1_000_000_000


@dataclass(frozen=True)
class _Compressed:
    algorithm: str
    elem_size: int
    data: bytes


@dataclass(frozen=True)
class _TypedArray:
    dtype: str
    byteorder: str
    payload: bytes | _Compressed


@dataclass(frozen=True)
class _MultiDim:
    shape: tuple[int, ...]
    array: _TypedArray | tuple[Any, ...]
    column_major: bool


def _typed_array_type(tag: int) -> tuple[str, str]:
    """Pixel type name and byte order of an RFC 8746 typed-array tag (64-87)."""
    is_float, signed, little, size_code = (tag >> 4) & 1, (tag >> 3) & 1, (tag >> 2) & 1, tag & 3
    order = "<" if little else ">"
    if not is_float:
        if tag == 76:
            raise StreamError("typed-array tag 76 is reserved by RFC 8746")
        return f"{'int' if signed else 'uint'}{8 << size_code}", order
    if signed or size_code == 3:
        raise StreamError(f"typed-array tag {tag} ({'reserved' if signed else '128-bit float'}) is not supported")
    return f"float{16 << size_code}", order


def _typed_array_tag(dtype: np.dtype) -> int:
    """The RFC 8746 typed-array tag of a dtype."""
    if dtype.kind not in "uif" or dtype.itemsize > 8 or (dtype.kind == "f" and dtype.itemsize < 2):
        raise StreamError(f"stream v2 typed arrays hold integers and 16- to 64-bit floats, not {dtype}")
    size_code = dtype.itemsize.bit_length() - 1 - (dtype.kind == "f")  # floats start at 16 bits
    little = dtype.itemsize > 1 and dtype.str[0] == "<"
    return 64 | (dtype.kind == "f") << 4 | (dtype.kind == "i") << 3 | little << 2 | size_code


def _tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
    number, value = tag.tag, tag.value
    if number == DECTRIS_COMPRESSION:
        if (not isinstance(value, Sequence) or len(value) != 3 or not isinstance(value[0], str)
                or not isinstance(value[1], int) or not isinstance(value[2], bytes)):
            raise StreamError("tag 56500 (DECTRIS compression) must hold [algorithm, element size, bytes], "
                              f"got {value!r:.100}")
        return _Compressed(*value)
    if 64 <= number <= 87:
        if not isinstance(value, (bytes, _Compressed)):
            raise StreamError(f"typed-array tag {number} must hold a byte string, got {type(value).__name__}")
        return _TypedArray(*_typed_array_type(number), value)
    if number in (MULTI_DIM_ROW_MAJOR, MULTI_DIM_COLUMN_MAJOR):
        if (not isinstance(value, Sequence) or len(value) != 2 or not isinstance(value[0], Sequence)
                or not all(isinstance(n, int) and n >= 0 for n in value[0])
                or not isinstance(value[1], (_TypedArray, list, tuple))):
            raise StreamError(f"tag {number} (multi-dimensional array) must hold [dimensions, array], "
                              f"got {value!r:.100}")
        return _MultiDim(tuple(value[0]), value[1], number == MULTI_DIM_COLUMN_MAJOR)
    return tag


def _encoded(typed: _TypedArray, shape: tuple[int, ...], where: str) -> EncodedFrame:
    """The typed array's bytes as an encoded frame (still compressed); sizes checked."""
    payload = typed.payload
    if isinstance(payload, bytes):
        frame = EncodedFrame(payload, shape, typed.dtype, typed.byteorder)
    elif payload.algorithm == "bslz4":
        if payload.elem_size not in (1, 2, 4, 8):
            raise StreamError(f"{where}: bslz4 element size {payload.elem_size} is not 1, 2, 4 or 8")
        frame = EncodedFrame(payload.data, shape, typed.dtype, f"bs{8 * payload.elem_size}-lz4{typed.byteorder}")
    elif payload.algorithm == "lz4":
        frame = EncodedFrame(payload.data, shape, typed.dtype, f"lz4-hdf5{typed.byteorder}")
    else:
        raise StreamError(f"{where}: unknown compression algorithm {payload.algorithm!r}; stream v2 uses bslz4 or lz4")
    try:
        frame.check()
    except StreamError as exc:
        raise StreamError(f"{where}: {exc}") from None
    return frame


def _materialize(obj: Any, where: str) -> Any:
    """Replace the lazy tag objects in a decoded message by NumPy arrays and bytes."""
    if isinstance(obj, _MultiDim):
        if isinstance(obj.array, _TypedArray):
            count = int(np.prod(obj.shape, dtype=np.int64))
            flat = _encoded(obj.array, (count,), where).decode()
        else:
            flat = np.asarray(obj.array)
            if flat.size != int(np.prod(obj.shape, dtype=np.int64)):
                raise StreamError(f"{where}: {flat.size} elements do not fill dimensions {list(obj.shape)}")
        return flat.reshape(obj.shape, order="F" if obj.column_major else "C")
    if isinstance(obj, _TypedArray):
        size = len(obj.payload) if isinstance(obj.payload, bytes) else _compressed_size(obj.payload, where)
        itemsize = np.dtype(obj.dtype).itemsize
        if size % itemsize:
            raise StreamError(f"{where}: {size} bytes are not a whole number of {obj.dtype} elements")
        return _encoded(obj, (size // itemsize,), where).decode()
    if isinstance(obj, _Compressed):
        size = _compressed_size(obj, where)
        if obj.algorithm == "bslz4":
            return bslz4_decompress(obj.data, size, obj.elem_size).tobytes()
        return bytes(lz4_hdf5_decompress(obj.data, size))
    if isinstance(obj, Mapping):
        return {k: _materialize(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_materialize(v, where) for v in obj]
    return obj


def _compressed_size(data: _Compressed, where: str) -> int:
    if data.algorithm not in ("bslz4", "lz4"):
        raise StreamError(f"{where}: unknown compression algorithm {data.algorithm!r}; stream v2 uses bslz4 or lz4")
    if data.algorithm == "bslz4" and data.elem_size not in (1, 2, 4, 8):
        raise StreamError(f"{where}: bslz4 element size {data.elem_size} is not 1, 2, 4 or 8")
    if len(data.data) < 12:
        raise StreamError(f"{where}: {data.algorithm} data is shorter than its 12-byte header")
    return int.from_bytes(data.data[:8], "big")


def _single_part(message: Any) -> bytes:
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if len(message) != 1:
        raise StreamError(f"a stream v2 message is a single part, got {len(message)} parts: the detector streams "
                          "format 'legacy' (stream v1)? decode it with lightpipe.sources.dectris.simplon")
    part = message[0]
    return part if type(part) is bytes else bytes(memoryview(part))


def _uint(msg: Mapping[str, Any], key: str, kind: str) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StreamError(f"{kind} message needs a non-negative integer {key!r}, got {value!r}")
    return value


def _unique_id(msg: Mapping[str, Any], kind: str) -> str | None:
    value = msg.get("series_unique_id")
    if value is not None and not isinstance(value, str):
        raise StreamError(f"{kind} message has a series_unique_id that is not text: {value!r}")
    return value


def _nanoseconds(msg: Mapping[str, Any], key: str, where: str) -> int:
    """A rational ``[numerator, denominator]`` of seconds, in nanoseconds."""
    value = msg.get(key)
    if value is None:
        return 0
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in value) or value[1] <= 0):
        raise StreamError(f"{where}: {key} must be a rational [numerator, denominator > 0], got {value!r}")
    return value[0] * _NS // value[1]


def decode_message(message: bytes | Sequence[bytes]) -> Message:
    """Decode one stream v2 message.

    Parameters
    ----------
    message
        The message bytes, or the parts of ``socket.recv_multipart()`` (one part).

    Returns
    -------
    SeriesHeader | Image | SeriesEnd
        Images keep their (compressed) bytes; call :meth:`Image.decode` for pixels.

    Raises
    ------
    StreamError
        Anything that does not follow the protocol, named in the message.
    """
    data = _single_part(message)
    try:
        msg = cbor2.loads(data, tag_hook=_tag_hook)
    except cbor2.CBORDecodeError as exc:
        if isinstance(exc.__cause__, StreamError):
            raise exc.__cause__ from None
        hint = ("; it looks like JSON: the detector streams format 'legacy' (stream v1)?" if data[:1] == b"{"
                else "; is this the detector's stream v2 port, and the message not truncated?")
        raise StreamError(f"not a CBOR message ({exc}){hint}") from None
    if not isinstance(msg, dict):
        raise StreamError(f"a stream v2 message is a CBOR map, got {type(msg).__name__}")
    kind = msg.get("type")
    if kind == "start":
        return _start(msg)
    if kind == "image":
        return _image(msg)
    if kind == "end":
        return SeriesEnd(_uint(msg, "series_id", "end"), _unique_id(msg, "end"))
    raise StreamError(f"unknown message type {kind!r}; stream v2 messages have type start, image or end")


def _per_channel(value: Any, channels: Sequence[str], key: str) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise StreamError(f"start message: {key} must map channel names to arrays, got {type(value).__name__}")
    array = value.get(channels[0]) if channels else None
    return array if array is not None else next(iter(value.values()))


def _config(msg: Mapping[str, Any], channels: Sequence[str]) -> dict[str, Any]:
    """The start message under SIMPLON configuration names."""
    config: dict[str, Any] = {name: msg[key] for key, name in V2_TO_SIMPLON.items() if key in msg}
    if "number_of_images" in msg:
        config["ntrigger"] = 1  # v2 counts all images of the series
    for axis, motion in (msg.get("goniometer") or {}).items():
        if isinstance(motion, Mapping):
            for what in ("start", "increment"):
                if what in motion:
                    config[f"{axis}_{what}"] = motion[what]
    threshold = msg.get("threshold_energy")
    if isinstance(threshold, Mapping) and threshold:
        first = channels[0] if channels and channels[0] in threshold else next(iter(threshold))
        config["threshold_energy"] = threshold[first]
    translation = msg.get("detector_translation")
    if isinstance(translation, list) and len(translation) == 3:
        config["detector_translation"] = translation
        config["detector_distance"] = translation[2]
    if isinstance(msg.get("image_dtype"), str):
        try:
            config["bit_depth_image"] = 8 * np.dtype(msg["image_dtype"]).itemsize
        except TypeError:
            raise StreamError(f"start message: unknown image_dtype {msg['image_dtype']!r}") from None
    if isinstance(msg.get("arm_date"), datetime):
        config["data_collection_date"] = msg["arm_date"].isoformat()
    return config


def _start(raw: dict[str, Any]) -> SeriesHeader:
    series = _uint(raw, "series_id", "start")
    msg = _materialize(raw, "start")
    channels = msg.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise StreamError(f"start message: channels must be a list of names, got {channels!r}")
    flatfield = _per_channel(msg.get("flatfield"), channels, "flatfield")
    pixel_mask = _per_channel(msg.get("pixel_mask"), channels, "pixel_mask")
    countrate = msg.get("countrate_correction_lookup_table")
    detail = "all" if any(a is not None for a in (flatfield, pixel_mask, countrate)) else "basic"
    return SeriesHeader(series, detail, _config(msg, channels), flatfield, pixel_mask, countrate,
                        msg.get("user_data"), tuple(channels), _unique_id(msg, "start"), msg)


def _image(msg: dict[str, Any]) -> Image:
    series, frame = _uint(msg, "series_id", "image"), _uint(msg, "image_id", "image")
    data = msg.get("data")
    if not isinstance(data, Mapping) or not data:
        raise StreamError(f"image {frame}: 'data' must map channel names to frames, got {type(data).__name__}")
    frames: dict[str, EncodedFrame] = {}
    for channel, array in data.items():
        where = f"image {frame}, channel {channel!r}"
        if not isinstance(array, _MultiDim) or not isinstance(array.array, _TypedArray) or len(array.shape) != 2:
            raise StreamError(f"{where}: a frame must be a 2-D typed array in a tag-40 multi-dimensional array")
        if array.column_major:
            raise StreamError(f"{where}: column-major frames (tag 1040) are not supported")
        frames[str(channel)] = _encoded(array.array, array.shape, where)
    (first, default), *others = frames.items()
    start, stop, real = (_nanoseconds(msg, key, f"image {frame}") for key in ("start_time", "stop_time", "real_time"))
    return Image(series, frame, default.blob, (default.shape[0], default.shape[1]), default.dtype, default.encoding,
                 start_time=start, stop_time=stop, real_time=real,
                 appendix=_materialize(msg.get("user_data"), "user_data"), channel=first, other_channels=dict(others),
                 unique_id=_unique_id(msg, "image"))


def _typed_item(array: np.ndarray | EncodedFrame) -> cbor2.CBORTag:
    """A typed array (its bytes compressed if the frame is)."""
    if isinstance(array, EncodedFrame):
        enc = parse_encoding(array.encoding)
        payload: Any = array.blob
        if enc.kind == "bslz4":
            payload = cbor2.CBORTag(DECTRIS_COMPRESSION, ["bslz4", enc.elem_size, array.blob])
        elif enc.kind == "lz4-hdf5":
            payload = cbor2.CBORTag(DECTRIS_COMPRESSION, ["lz4", 0, array.blob])
        elif enc.kind == "lz4":
            raise StreamError("stream v2 cannot carry a raw LZ4 block (stream v1 'lz4<'); encode with 'lz4-hdf5<'")
        return cbor2.CBORTag(_typed_array_tag(np.dtype(array.dtype).newbyteorder(enc.byteorder)), payload)
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == "=":
        a = a.astype(a.dtype.newbyteorder("<"))
    return cbor2.CBORTag(_typed_array_tag(a.dtype), a.tobytes())


def _array_item(array: np.ndarray | EncodedFrame) -> cbor2.CBORTag:
    """A tag-40 (row-major) multi-dimensional array."""
    return cbor2.CBORTag(MULTI_DIM_ROW_MAJOR, [list(np.shape(array) if isinstance(array, np.ndarray) else array.shape),
                                               _typed_item(array)])


def _plain(value: Any) -> Any:
    """Config values that cbor2 can write (NumPy scalars become Python numbers)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _array_item(value)
    return value


def _channel_map(value: np.ndarray | Mapping[str, np.ndarray], channels: Sequence[str]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {name: _array_item(np.asarray(a)) for name, a in value.items()}
    item = _array_item(np.asarray(value))
    return {name: item for name in channels}


def encode_header(
    series: int,
    config: Mapping[str, Any] | None = None,
    *,
    detail: str = "basic",
    channels: Sequence[str] = ("threshold_1",),
    unique_id: str | None = None,
    flatfield: np.ndarray | Mapping[str, np.ndarray] | None = None,
    pixel_mask: np.ndarray | Mapping[str, np.ndarray] | None = None,
    countrate: np.ndarray | None = None,
    appendix: Any = None,
    arm_date: datetime | None = None,
) -> list[bytes]:
    """A start message from a SIMPLON-named configuration.

    Parameters
    ----------
    series
        Series number (``series_id``).
    config
        Detector configuration under SIMPLON names; those with a v2 field
        (:data:`V2_TO_SIMPLON`, goniometer axes, threshold energy, distance)
        are written, the others are not part of stream v2.
    detail
        ``all`` sends the flatfield, pixel mask and count-rate table given;
        ``basic`` and ``none`` (the same in stream v2) send none of them.
    channels
        Channel names; image data is sent in this order.
    unique_id
        ``series_unique_id``; a new UUID by default.
    flatfield, pixel_mask
        One array for every channel, or a map of channel to array.
    countrate
        Count-rate correction lookup table.
    appendix
        ``user_data``.
    arm_date
        ``arm_date``; now by default.
    """
    if detail not in ("none", "basic", "all"):
        raise StreamError(f"header_detail {detail!r} is not one of none, basic, all")
    config = dict(config or {})
    channels = list(channels)
    msg: dict[str, Any] = {"type": "start", "series_id": series, "series_unique_id": unique_id or uuid.uuid4().hex,
                           "arm_date": arm_date or datetime.now(timezone.utc), "channels": channels}
    msg.update({SIMPLON_TO_V2[k]: _plain(v) for k, v in config.items() if k in SIMPLON_TO_V2})
    if "nimages" in config:
        msg["number_of_images"] = config["nimages"] * config.get("ntrigger", 1)
    goniometer: dict[str, dict[str, Any]] = {}
    for axis in GONIOMETER_AXES:
        for what in ("start", "increment"):
            if f"{axis}_{what}" in config:
                goniometer.setdefault(axis, {})[what] = _plain(config[f"{axis}_{what}"])
    if goniometer:
        msg["goniometer"] = goniometer
    if "threshold_energy" in config and channels:
        msg["threshold_energy"] = {channels[0]: _plain(config["threshold_energy"])}
    if "detector_distance" in config:
        msg["detector_translation"] = [0.0, 0.0, _plain(config["detector_distance"])]
    if "bit_depth_image" in config:
        msg["image_dtype"] = f"uint{config['bit_depth_image']}"
    if detail == "all":
        if flatfield is not None:
            msg["flatfield"] = _channel_map(flatfield, channels)
        if pixel_mask is not None:
            msg["pixel_mask"] = _channel_map(pixel_mask, channels)
        if countrate is not None:
            table = np.asarray(countrate)
            msg["countrate_correction_lookup_table"] = _typed_item(table) if table.ndim == 1 else _array_item(table)
    if appendix is not None:
        msg["user_data"] = appendix
    return [_dumps(msg)]


def _dumps(msg: dict[str, Any]) -> bytes:
    try:
        return cbor2.dumps(msg)
    except cbor2.CBOREncodeError as exc:
        raise StreamError(f"cannot write a stream v2 message: {exc}") from exc


def frame_encoding(compression: Compression, dtype: np.dtype | str) -> str:
    """The encoding name of a stream v2 compression for frames of ``dtype``."""
    if compression == "bslz4":
        return f"bs{8 * np.dtype(dtype).itemsize}-lz4<"
    if compression == "lz4":
        return "lz4-hdf5<"
    if compression == "none":
        return "<"
    raise StreamError(f"unknown stream v2 compression {compression!r}; use bslz4, lz4 or none")


def encode_image(
    frame: np.ndarray | EncodedFrame | Mapping[str, np.ndarray | EncodedFrame],
    series: int,
    frame_number: int,
    compression: Compression = "bslz4",
    *,
    channel: str = "threshold_1",
    unique_id: str | None = None,
    start_time: int = 0,
    stop_time: int = 0,
    real_time: int = 0,
    appendix: Any = None,
) -> list[bytes]:
    """An image message.

    Parameters
    ----------
    frame
        The frame ``(y, x)``, a frame already encoded (``<``, ``bsN-lz4<`` or
        ``lz4-hdf5<``), or a map of channel name to either, in channel order.
    series, frame_number
        ``series_id`` and ``image_id``.
    compression
        ``bslz4``, ``lz4`` or ``none``, for frames given as arrays.
    channel
        The channel name of a single frame.
    unique_id
        ``series_unique_id``.
    start_time, stop_time, real_time
        Exposure times in nanoseconds (sent as rationals of seconds).
    appendix
        ``user_data``.
    """
    frames = frame if isinstance(frame, Mapping) else {channel: frame}
    data: dict[str, Any] = {}
    for name, f in frames.items():
        if not isinstance(f, EncodedFrame):
            array = np.asarray(f)
            f = EncodedFrame.encode(array, frame_encoding(compression, array.dtype))
        if len(f.shape) != 2:
            raise StreamError(f"channel {name!r}: frames are 2-D, got shape {list(f.shape)}")
        data[name] = _array_item(f)
    msg: dict[str, Any] = {
        "type": "image", "series_id": series, "series_unique_id": unique_id or "", "image_id": frame_number,
        "data": data, "start_time": [start_time, _NS], "stop_time": [stop_time, _NS], "real_time": [real_time, _NS],
    }
    if appendix is not None:
        msg["user_data"] = appendix
    return [_dumps(msg)]


def encode_end(series: int, unique_id: str | None = None) -> list[bytes]:
    """An end message."""
    return [_dumps({"type": "end", "series_id": series, "series_unique_id": unique_id or ""})]

