"""Frame encodings of DECTRIS streams: raw, LZ4 and bitshuffle-LZ4, each with its framing.

Encoding names follow stream v1's grammar ``[bs<BITS>-][lz4]<endianness>``, plus
one name for stream v2's LZ4, whose framing differs from v1's:

=============== ==================================================================
``<``           raw little-endian (``>``: big-endian)
``lz4<``        one raw LZ4 block without any header (stream v1)
``bs16-lz4<``   bitshuffle on 16-bit elements, then LZ4, in the framing of the
                HDF5 bitshuffle filter (stream v1; stream v2 ``bslz4``); also
                ``bs8-lz4<``, ``bs32-lz4<``, ``bs64-lz4<``
``lz4-hdf5<``   LZ4 blocks in the framing of the HDF5 LZ4 filter (stream v2 ``lz4``)
=============== ==================================================================

Both HDF5 framings start with the uncompressed size (8 bytes, big-endian) and
the block size in bytes (4 bytes, big-endian); each block then follows,
prefixed by its compressed length (4 bytes, big-endian). A raw LZ4 block has
no such header, so a decoder for one framing mistakes the other for corrupt
data: the decoders here recognise the other framing and say so.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

#: How bitshuffle's OpenMP threads wait for the next frame. libgomp's default lets a team's
#: threads spin for a while after each frame: beside the stream's receiver thread and the
#: engine's workers, those spinning threads take cores that have work to do (on 2 cores the
#: receiving process burned twice the CPU, and ingest fell to 0.30-0.75x the raw loop;
#: benchmarks/README.md). Passive threads sleep until the next frame. libgomp reads this when
#: it loads, with bitshuffle, so it is set before the import, unless the user chose a policy.
OPENMP_WAIT_POLICY = "PASSIVE"
if "bitshuffle" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)

import bitshuffle  # noqa: E402
import lz4.block  # noqa: E402
import numpy as np  # noqa: E402

from lightpipe.sources.dectris.errors import StreamError

Kind = Literal["raw", "lz4", "bslz4", "lz4-hdf5"]

_ENCODING = re.compile(r"(?:bs(?P<bits>8|16|32|64)-lz4|(?P<lz4>lz4)(?P<hdf5>-hdf5)?)?(?P<order>[<>])")
_HEADER = struct.Struct(">QI")
_BLOCK_LENGTH = struct.Struct(">I")
#: Bytes per bitshuffle block that the HDF5 bitshuffle filter uses by default (and DECTRIS too).
BSHUF_BLOCK_BYTES = 8192
#: Largest block of the HDF5 LZ4 filter (its default: one block per chunk up to 1 GiB).
LZ4_HDF5_BLOCK_BYTES = 1 << 30
KNOWN_ENCODINGS = ("<", "lz4<", "bs8-lz4<", "bs16-lz4<", "bs32-lz4<", "bs64-lz4<", "lz4-hdf5<")


@dataclass(frozen=True)
class Encoding:
    """A parsed encoding name.

    Attributes
    ----------
    name
        The name, e.g. ``bs16-lz4<``.
    kind
        ``raw``, ``lz4`` (one raw block), ``bslz4`` or ``lz4-hdf5``.
    elem_size
        Bytes per bitshuffle element (``bslz4`` only, else 0).
    byteorder
        ``<`` or ``>``.
    """

    name: str
    kind: Kind
    elem_size: int
    byteorder: str


def parse_encoding(name: str) -> Encoding:
    """Parse an encoding name; raise :class:`StreamError` for an unknown one."""
    match = _ENCODING.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise StreamError(f"unknown encoding {name!r}; known encodings: {', '.join(KNOWN_ENCODINGS)} "
                          "(or '>' for big-endian)")
    if match["bits"]:
        return Encoding(name, "bslz4", int(match["bits"]) // 8, match["order"])
    if match["lz4"]:
        return Encoding(name, "lz4-hdf5" if match["hdf5"] else "lz4", 0, match["order"])
    return Encoding(name, "raw", 0, match["order"])


def frame_dtype(name: str, byteorder: str = "<") -> np.dtype:
    """The NumPy dtype of a type name (``uint16``, ``float32``, ...) in the given byte order."""
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "uif" or not isinstance(name, str) or name[:1] in "<>=|":
        raise StreamError(f"unknown pixel type {name!r}; expected a numeric type name such as uint16, uint32 or "
                          "float32")
    return dtype.newbyteorder(byteorder)


def _read_header(blob: bytes, nbytes: int, framing: str) -> int:
    """Check an HDF5 framing header against the expected size; return the block size in bytes."""
    if len(blob) < _HEADER.size:
        raise StreamError(f"{framing} data is {len(blob)} bytes, shorter than the 12-byte HDF5 filter header")
    total, block = _HEADER.unpack_from(blob)
    if total != nbytes:
        raise StreamError(
            f"{framing} header declares {total} uncompressed bytes but the frame's shape and type need {nbytes}: "
            "the data is not in the HDF5 filter framing (a raw LZ4 block, as stream v1 sends for 'lz4<', has no "
            "size header) or the shape/type fields are wrong"
        )
    if nbytes and block == 0:
        raise StreamError(f"{framing} header declares a block size of 0 bytes for {nbytes} bytes of data")
    return block


def bslz4_compress(array: np.ndarray) -> bytes:
    """Bitshuffle-LZ4 in the HDF5 filter framing, blocks of :data:`BSHUF_BLOCK_BYTES` (as DECTRIS sends)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    block = max(8, BSHUF_BLOCK_BYTES // flat.itemsize)
    body = bitshuffle.compress_lz4(flat, block)
    return _HEADER.pack(flat.nbytes, block * flat.itemsize) + body.tobytes()


def bslz4_decompress(blob: bytes, nbytes: int, elem_size: int) -> np.ndarray:
    """Decode bitshuffle-LZ4 in the HDF5 filter framing to ``nbytes`` bytes (a uint8 array).

    The block structure is walked first, so that corrupt or truncated data is
    reported instead of being read past its end by the C decoder.
    """
    block_bytes = _read_header(blob, nbytes, "bitshuffle-LZ4")
    if nbytes % elem_size:
        raise StreamError(f"bitshuffle-LZ4: {nbytes} bytes is not a whole number of {elem_size}-byte elements")
    count = nbytes // elem_size
    if count == 0:
        return np.zeros(0, np.uint8)
    block, rest = divmod(block_bytes, elem_size)
    if rest or block % 8:
        raise StreamError(
            f"bitshuffle-LZ4 header declares blocks of {block_bytes} bytes, not a multiple of 8 "
            f"{elem_size}-byte elements: the element size (encoding bs{8 * elem_size}) does not match the data"
        )
    full, left = divmod(count, block)
    blocks = full + (1 if left - left % 8 else 0)
    pos, block_length = _HEADER.size, _BLOCK_LENGTH.unpack_from
    try:  # an Eiger 4M frame has 1085 blocks: no per-block bounds test, unpack_from raises past the end
        for _ in range(blocks):
            pos += 4 + block_length(blob, pos)[0]
    except struct.error:
        raise StreamError(f"bitshuffle-LZ4 data is truncated: {len(blob)} bytes end inside block framing") from None
    pos += (count % 8) * elem_size  # the last count % 8 elements are stored as they are
    if pos != len(blob):
        raise StreamError(
            f"bitshuffle-LZ4 blocks add up to {pos} bytes but the data has {len(blob)}: the framing is corrupt or "
            f"truncated, or the element size (encoding bs{8 * elem_size}) is not the one it was compressed with"
        )
    try:
        out = bitshuffle.decompress_lz4(np.frombuffer(blob, np.uint8, offset=_HEADER.size), (count,),
                                        np.dtype(f"u{elem_size}"), block)
    except RuntimeError as exc:
        raise StreamError(f"bitshuffle-LZ4 data is corrupt: a block does not decompress ({exc})") from exc
    return out.view(np.uint8)


def lz4_hdf5_compress(data: bytes | memoryview, block_bytes: int = LZ4_HDF5_BLOCK_BYTES) -> bytes:
    """LZ4 in the HDF5 LZ4 filter framing; a block that does not shrink is stored as it is."""
    view = memoryview(data).cast("B")
    block = min(len(view), block_bytes)
    parts = [_HEADER.pack(len(view), block)]
    for start in range(0, len(view), max(block, 1)):
        piece = view[start : start + block]
        packed = lz4.block.compress(piece, store_size=False)
        if len(packed) >= len(piece):
            packed = piece.tobytes()
        parts += [_BLOCK_LENGTH.pack(len(packed)), packed]
    return b"".join(parts)


def lz4_hdf5_decompress(blob: bytes, nbytes: int) -> bytearray:
    """Decode LZ4 in the HDF5 LZ4 filter framing to ``nbytes`` bytes."""
    block = _read_header(blob, nbytes, "HDF5-framed LZ4")
    view = memoryview(blob)
    pieces: list[bytes | bytearray | memoryview] = []
    pos, done = _HEADER.size, 0
    while done < nbytes:
        want = min(block, nbytes - done)
        if pos + 4 > len(blob):
            raise StreamError(f"HDF5-framed LZ4 data is truncated after {done} of {nbytes} bytes")
        length = _BLOCK_LENGTH.unpack_from(blob, pos)[0]
        pos += 4
        if pos + length > len(blob):
            raise StreamError(f"HDF5-framed LZ4 data is truncated: a block of {length} bytes runs past the end")
        piece: bytes | bytearray | memoryview = view[pos : pos + length]
        if length != want:  # a block as long as its output is stored uncompressed (the filter's convention)
            try:
                piece = lz4.block.decompress(piece, uncompressed_size=want, return_bytearray=True)
            except lz4.block.LZ4BlockError as exc:
                raise StreamError(f"HDF5-framed LZ4 data is corrupt: a block does not decompress ({exc})") from exc
            if len(piece) != want:
                raise StreamError(f"HDF5-framed LZ4 block decompressed to {len(piece)} bytes instead of {want}")
        pieces.append(piece)
        pos += length
        done += want
    if pos != len(blob):
        raise StreamError(f"HDF5-framed LZ4 data has {len(blob) - pos} bytes after its last block: the framing "
                          "is corrupt")
    if len(pieces) == 1 and isinstance(pieces[0], bytearray):
        return pieces[0]  # the usual single block: no second copy
    return bytearray().join(pieces)


def lz4_block_decompress(blob: bytes, nbytes: int) -> bytearray:
    """Decode one raw LZ4 block (stream v1 ``lz4<``) to exactly ``nbytes`` bytes."""
    if nbytes and len(blob) >= _HEADER.size and _HEADER.unpack_from(blob)[0] == nbytes:
        # A valid raw block cannot start with four zero bytes (a match at offset 0), so this is a header.
        raise StreamError(
            f"the 'lz4<' data starts with an HDF5 filter header declaring {nbytes} bytes: it is HDF5-framed LZ4 "
            "(stream v2 'lz4' or an HDF5 chunk), not the raw LZ4 block of stream v1"
        )
    try:
        out = lz4.block.decompress(blob, uncompressed_size=nbytes, return_bytearray=True)
    except lz4.block.LZ4BlockError as exc:
        raise StreamError(f"raw LZ4 block (encoding lz4<) is corrupt or holds more than the {nbytes} bytes "
                          f"its shape and type need: {exc}") from exc
    if len(out) != nbytes:
        raise StreamError(f"raw LZ4 block (encoding lz4<) decompressed to {len(out)} bytes, but the frame's shape "
                          f"and type need {nbytes}")
    return out


def encode_frame(frame: np.ndarray, encoding: str) -> bytes:
    """Encode an array with one of the encodings of this module."""
    enc = parse_encoding(encoding)
    array = np.ascontiguousarray(frame)
    frame_dtype(array.dtype.name)
    array = array.astype(array.dtype.newbyteorder(enc.byteorder), copy=False)
    if enc.kind == "raw":
        return array.tobytes()
    if enc.kind == "lz4":
        return lz4.block.compress(array, store_size=False)
    if enc.kind == "lz4-hdf5":
        return lz4_hdf5_compress(array.reshape(-1).view(np.uint8))
    if array.itemsize != enc.elem_size:
        raise StreamError(
            f"encoding {encoding} bitshuffles {8 * enc.elem_size}-bit elements but the frame is {array.dtype.name}; "
            f"use bs{8 * array.itemsize}-lz4{enc.byteorder}"
        )
    return bslz4_compress(array)


def check_frame(blob: bytes, shape: tuple[int, ...], dtype: str, encoding: str) -> None:
    """The checks that need no decompression: encoding, type, raw size, HDF5 framing header.

    A raw LZ4 block carries no size, so its size is checked when it is decoded.
    """
    enc = parse_encoding(encoding)
    nbytes = int(np.prod(shape, dtype=np.int64)) * frame_dtype(dtype).itemsize
    if enc.kind == "raw" and len(blob) != nbytes:
        raise StreamError(f"raw frame data is {len(blob)} bytes but shape {list(shape)} of {dtype} needs {nbytes}")
    if enc.kind == "bslz4":
        _read_header(blob, nbytes, "bitshuffle-LZ4")
    elif enc.kind == "lz4-hdf5":
        _read_header(blob, nbytes, "HDF5-framed LZ4")


def decode_frame(blob: bytes, shape: tuple[int, ...], dtype: str, encoding: str) -> np.ndarray:
    """Decode a frame to a new, writable array of ``shape`` in native byte order."""
    enc = parse_encoding(encoding)
    wire = frame_dtype(dtype, enc.byteorder)
    nbytes = int(np.prod(shape, dtype=np.int64)) * wire.itemsize
    data: bytes | bytearray | np.ndarray
    if enc.kind == "raw":
        check_frame(blob, shape, dtype, encoding)
        data = bytearray(blob)
    elif enc.kind == "lz4":
        data = lz4_block_decompress(blob, nbytes)
    elif enc.kind == "lz4-hdf5":
        data = lz4_hdf5_decompress(blob, nbytes)
    else:
        data = bslz4_decompress(blob, nbytes, enc.elem_size)
    array = np.frombuffer(data, wire).reshape(shape)
    return array if wire.isnative else array.astype(wire.newbyteorder("="))


@dataclass(frozen=True)
class EncodedFrame:
    """A frame as it travels: encoded bytes plus what is needed to decode them.

    Parameters
    ----------
    blob
        The encoded bytes.
    shape
        NumPy shape, ``(y, x)`` for a frame.
    dtype
        Pixel type name without byte order (``uint16``); the byte order is the
        encoding's.
    encoding
        One of the encodings of this module.

    Examples
    --------
    >>> f = EncodedFrame.encode(np.arange(6, dtype=np.uint16).reshape(2, 3), "bs16-lz4<")
    >>> f.decode().tolist()
    [[0, 1, 2], [3, 4, 5]]
    """

    blob: bytes
    shape: tuple[int, ...]
    dtype: str
    encoding: str

    @classmethod
    def encode(cls, frame: np.ndarray, encoding: str) -> EncodedFrame:
        """Encode ``frame`` with ``encoding``."""
        array = np.asarray(frame)
        return cls(encode_frame(array, encoding), tuple(array.shape), array.dtype.name, encoding)

    @cached_property
    def md5(self) -> str:
        """MD5 hex digest of the blob (stream v1 sends it as the image ``hash``)."""
        return hashlib.md5(self.blob).hexdigest()

    def check(self) -> None:
        """Raise :class:`StreamError` where the blob cannot match the shape, type and encoding."""
        check_frame(self.blob, self.shape, self.dtype, self.encoding)

    def decode(self) -> np.ndarray:
        """The frame as a new, writable array."""
        return decode_frame(self.blob, self.shape, self.dtype, self.encoding)
