"""DECTRIS SIMPLON stream version 1: multipart ZeroMQ messages of JSON and binary parts.

A series header has 1 (``header_detail`` ``none``), 2 (``basic``) or 8
(``all``) parts, an image 4, the end of series 1; a header or an image may
carry one more part, the user's appendix. Shapes are written ``[x, y]``
(width, height) on the wire and are ``(y, x)`` here, as NumPy has them.

Examples
--------
>>> import numpy as np
>>> parts = encode_image(np.ones((2, 3), np.uint16), series=7, frame_number=0, encoding="lz4<")
>>> image = decode_message(parts)
>>> image.series, image.frame, image.shape, image.decode().sum()
(7, 0, (2, 3), np.uint64(6))
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightpipe.sources.dectris.compression import EncodedFrame, decode_frame, frame_dtype
from lightpipe.sources.dectris.errors import StreamError
from lightpipe.sources.dectris.messages import Image, Message, SeriesEnd, SeriesHeader

__all__ = ["HEADER_PARTS", "Image", "SeriesEnd", "SeriesHeader", "decode_message", "encode_end", "encode_header",
           "encode_image"]

#: Parts of a series header for each ``header_detail``, without the optional appendix.
HEADER_PARTS = {"none": 1, "basic": 2, "all": 8}
#: The arrays of a header with detail ``all``, in wire order: (htype, field, pixel type).
HEADER_ARRAYS = (("dflatfield", "flatfield", "float32"), ("dpixelmask", "pixel_mask", "uint32"),
                 ("dcountrate_table", "countrate", "float32"))
IMAGE_TYPES = ("uint8", "uint16", "uint32")
_V1_ENCODING = re.compile(r"(?:bs(?:8|16|32)-)?(?:lz4)?[<>]")

Part = bytes | bytearray | memoryview


def _bytes(part: Any) -> bytes:
    return part if type(part) is bytes else bytes(memoryview(part))


def _looks_like_cbor(data: bytes) -> bool:
    return data[:3] == b"\xd9\xd9\xf7" or (len(data) > 0 and 0xA0 <= data[0] <= 0xBF)


def _json(part: Any, where: str) -> Any:
    data = _bytes(part)
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        hint = ("; it looks like CBOR: the detector streams format 'cbor' (stream v2), decode it with "
                "lightpipe.sources.dectris.stream2" if _looks_like_cbor(data)
                else "; is this the detector's stream v1 port, and the message not truncated?")
        raise StreamError(f"{where} is not JSON ({exc}){hint}") from None


def _object(part: Any, where: str, htype: str | None = None) -> dict[str, Any]:
    obj = _json(part, where)
    if not isinstance(obj, dict):
        raise StreamError(f"{where} must be a JSON object, got {type(obj).__name__}")
    if htype is not None:
        found = obj.get("htype")
        if not isinstance(found, str) or found.partition("-")[0] != htype:
            raise StreamError(f"{where} must have htype {htype}-1.0, got {found!r}")
    return obj


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StreamError(f"{where} needs a non-negative integer {key!r}, got {value!r}")
    return value


def _shape(obj: Mapping[str, Any], where: str) -> tuple[int, int]:
    shape = obj.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise StreamError(f"{where} needs 'shape' as [width, height] of positive integers, got {shape!r}")
    return shape[1], shape[0]


def _appendix(part: Any) -> Any:
    """A user appendix: JSON if it parses, else text, else the raw bytes."""
    data = _bytes(part)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data
    try:
        return json.loads(text)
    except ValueError:
        return text


def decode_message(parts: Sequence[Part], *, verify_hash: bool = True) -> Message:
    """Decode one multipart stream v1 message.

    Parameters
    ----------
    parts
        The frames of one ZeroMQ multipart message (``socket.recv_multipart()``;
        bytes, or any buffer such as ``zmq.Frame``).
    verify_hash
        Check each image blob against its MD5 ``hash`` (costs about 2 ms per MB).

    Returns
    -------
    SeriesHeader | Image | SeriesEnd
        Images keep their encoded blob; call :meth:`Image.decode` for pixels.

    Raises
    ------
    StreamError
        Anything that does not follow the protocol, named in the message.
    """
    if len(parts) == 0:
        raise StreamError("empty message: a stream v1 message has at least one part")
    first = _object(parts[0], "part 1")
    htype = first.get("htype")
    if not isinstance(htype, str):
        raise StreamError(f"part 1 has no 'htype' string: {first!r:.200}")
    name, _, version = htype.partition("-")
    if name not in ("dheader", "dimage", "dseries_end"):
        raise StreamError(f"unknown htype {htype!r} in part 1; a message starts with dheader-1.0, dimage-1.0 or "
                          "dseries_end-1.0")
    if not version.startswith("1."):
        raise StreamError(f"htype {htype!r} has version {version!r}; lightpipe reads version 1.x of stream v1")
    if name == "dheader":
        return _header(first, parts)
    if name == "dimage":
        return _image(first, parts, verify_hash)
    if len(parts) != 1:
        raise StreamError(f"a dseries_end message has 1 part, got {len(parts)}")
    return SeriesEnd(_int(first, "series", "dseries_end"))


def _header(first: dict[str, Any], parts: Sequence[Part]) -> SeriesHeader:
    series = _int(first, "series", "dheader")
    detail = first.get("header_detail")
    if detail not in HEADER_PARTS:
        raise StreamError(f"dheader has header_detail {detail!r}; expected none, basic or all")
    n = HEADER_PARTS[detail]
    if len(parts) not in (n, n + 1):
        raise StreamError(f"a dheader message with header_detail {detail!r} has {n} parts (one more with a header "
                          f"appendix), got {len(parts)}")
    config = _object(parts[1], "part 2 (detector configuration)") if n >= 2 else {}
    arrays: dict[str, np.ndarray] = {}
    if detail == "all":
        for k, (htype, key, _) in enumerate(HEADER_ARRAYS):
            where = f"part {3 + 2 * k} ({htype})"
            info = _object(parts[2 + 2 * k], where, htype)
            shape = _shape(info, where)
            blob = _bytes(parts[3 + 2 * k])
            pixel_type = info.get("type")
            nbytes = shape[0] * shape[1] * frame_dtype(pixel_type).itemsize
            if len(blob) != nbytes:
                raise StreamError(f"part {4 + 2 * k} ({key}) is {len(blob)} bytes but shape {info['shape']} of "
                                  f"{pixel_type} needs {nbytes}")
            arrays[key] = decode_frame(blob, shape, pixel_type, "<")
    appendix = _appendix(parts[n]) if len(parts) == n + 1 else None
    return SeriesHeader(series, detail, config, arrays.get("flatfield"), arrays.get("pixel_mask"),
                        arrays.get("countrate"), appendix)


def _image(first: dict[str, Any], parts: Sequence[Part], verify_hash: bool) -> Image:
    if len(parts) not in (4, 5):
        raise StreamError(f"an image message has 4 parts (5 with an image appendix), got {len(parts)}")
    series, frame = _int(first, "series", "dimage"), _int(first, "frame", "dimage")
    md5 = first.get("hash")
    if md5 is not None and not isinstance(md5, str):
        raise StreamError(f"dimage 'hash' must be an MD5 hex string, got {md5!r}")
    where = f"frame {frame}: part 2 (dimage_d)"
    info = _object(parts[1], where, "dimage_d")
    shape = _shape(info, where)
    dtype, encoding = info.get("type"), info.get("encoding")
    if dtype not in IMAGE_TYPES:
        raise StreamError(f"{where} has type {dtype!r}; stream v1 images are {', '.join(IMAGE_TYPES)}")
    if not isinstance(encoding, str) or not _V1_ENCODING.fullmatch(encoding):
        raise StreamError(f"{where} has unknown encoding {encoding!r}; stream v1 encodings are '<', 'lz4<', "
                          "'bs8-lz4<', 'bs16-lz4<' and 'bs32-lz4<'")
    blob = _bytes(parts[2])
    size = _int(info, "size", where)
    if size != len(blob):
        raise StreamError(f"frame {frame}: dimage_d says size {size} bytes but the blob (part 3) has {len(blob)}")
    if verify_hash and md5:
        actual = hashlib.md5(blob).hexdigest()
        if actual != md5.lower():
            raise StreamError(f"frame {frame}: the blob's MD5 is {actual} but the dimage hash is {md5}: the frame "
                              "was corrupted on the way")
    times = _object(parts[3], f"frame {frame}: part 4 (dconfig)", "dconfig")
    start, stop, real = (_int(times, k, f"frame {frame}: dconfig") for k in ("start_time", "stop_time", "real_time"))
    appendix = _appendix(parts[4]) if len(parts) == 5 else None
    image = Image(series, frame, blob, shape, dtype, encoding, md5 or None, start, stop, real, appendix)
    image.check()
    return image


def _dumps(obj: Any) -> bytes:
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        return json.dumps(obj, default=plain).encode()
    except (TypeError, ValueError) as exc:
        raise StreamError(f"cannot write a stream v1 message: {exc}") from exc


def _appendix_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return value.encode() if isinstance(value, str) else _dumps(value)


def encode_header(
    series: int,
    config: Mapping[str, Any] | None = None,
    *,
    detail: str = "basic",
    flatfield: np.ndarray | None = None,
    pixel_mask: np.ndarray | None = None,
    countrate: np.ndarray | None = None,
    appendix: Any = None,
) -> list[bytes]:
    """The parts of a series header.

    Parameters
    ----------
    series
        Series number.
    config
        Detector configuration under SIMPLON names (sent with ``basic`` and ``all``).
    detail
        ``none``, ``basic`` or ``all``.
    flatfield, pixel_mask, countrate
        Arrays in NumPy order, required with ``all``; sent as float32, uint32 and float32.
    appendix
        Header appendix: bytes and text are sent as they are, anything else as JSON.
    """
    if detail not in HEADER_PARTS:
        raise StreamError(f"header_detail {detail!r} is not one of none, basic, all")
    parts = [_dumps({"htype": "dheader-1.0", "series": series, "header_detail": detail})]
    if detail != "none":
        parts.append(_dumps(dict(config or {})))
    if detail == "all":
        given = {"flatfield": flatfield, "pixel_mask": pixel_mask, "countrate": countrate}
        for htype, key, pixel_type in HEADER_ARRAYS:
            array = given[key]
            if array is None or np.ndim(array) != 2:
                raise StreamError(f"header_detail 'all' sends flatfield, pixel_mask and countrate as 2-D arrays; "
                                  f"{key} is {None if array is None else np.shape(array)}")
            array = np.ascontiguousarray(array, dtype=np.dtype(pixel_type).newbyteorder("<"))
            parts += [_dumps({"htype": f"{htype}-1.0", "shape": [array.shape[1], array.shape[0]], "type": pixel_type}),
                      array.tobytes()]
    if appendix is not None:
        parts.append(_appendix_bytes(appendix))
    return parts


def encode_image(
    frame: np.ndarray | EncodedFrame,
    series: int,
    frame_number: int,
    encoding: str | None = None,
    *,
    start_time: int = 0,
    stop_time: int = 0,
    real_time: int = 0,
    appendix: Any = None,
) -> list[bytes]:
    """The parts of one image message.

    Parameters
    ----------
    frame
        The frame ``(y, x)``, uint8, uint16 or uint32, or a frame already encoded
        (a simulator encodes each frame once and sends it many times).
    series, frame_number
        Series number and frame number in the series (from 0).
    encoding
        ``<``, ``lz4<``, ``bs8-lz4<``, ``bs16-lz4<`` or ``bs32-lz4<``; default
        bitshuffle-LZ4 on the frame's element size, as an EIGER sends.
    start_time, stop_time, real_time
        Exposure times in nanoseconds.
    appendix
        Image appendix: bytes and text are sent as they are, anything else as JSON.
    """
    if isinstance(frame, EncodedFrame):
        if encoding is not None and encoding != frame.encoding:
            raise StreamError(f"the frame is already encoded as {frame.encoding!r}, not {encoding!r}")
        encoded = frame
    else:
        array = np.asarray(frame)
        encoded = EncodedFrame.encode(array, encoding or f"bs{8 * array.itemsize}-lz4<")
    if encoded.dtype not in IMAGE_TYPES or len(encoded.shape) != 2:
        raise StreamError(f"stream v1 sends 2-D frames of {', '.join(IMAGE_TYPES)}; got {encoded.dtype} "
                          f"{list(encoded.shape)}: convert the frames first")
    if not _V1_ENCODING.fullmatch(encoded.encoding):
        raise StreamError(f"encoding {encoded.encoding!r} is not a stream v1 encoding; use '<', 'lz4<' or 'bsN-lz4<'")
    y, x = encoded.shape
    parts = [
        _dumps({"htype": "dimage-1.0", "series": series, "frame": frame_number, "hash": encoded.md5}),
        _dumps({"htype": "dimage_d-1.0", "shape": [x, y], "type": encoded.dtype, "encoding": encoded.encoding,
                "size": len(encoded.blob)}),
        encoded.blob,
        _dumps({"htype": "dconfig-1.0", "start_time": start_time, "stop_time": stop_time, "real_time": real_time}),
    ]
    if appendix is not None:
        parts.append(_appendix_bytes(appendix))
    return parts


def encode_end(series: int) -> list[bytes]:
    """The one part of an end-of-series message."""
    return [_dumps({"htype": "dseries_end-1.0", "series": series})]
