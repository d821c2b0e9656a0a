"""DECTRIS stream v1: every encoding round trips, every bad message is named, framing matches HDF5's."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from lightpipe.core.errors import LightpipeError
from lightpipe.sources.dectris import EncodedFrame, Image, SeriesEnd, SeriesHeader, StreamError, simplon, stream2

ENCODINGS = ["<", "lz4<", "bs{bits}-lz4<"]
# odd sizes: several bitshuffle blocks, a partial block and elements left over
SHAPE = (101, 123)


def _frame(dtype: type, seed: int = 0, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = rng.poisson(4.0, shape).astype(dtype)
    frame[5, 7] = np.iinfo(dtype).max  # a saturated pixel uses every bit
    return frame


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_image_round_trip(dtype: type, encoding: str) -> None:
    frame = _frame(dtype)
    encoding = encoding.format(bits=8 * np.dtype(dtype).itemsize)
    parts = simplon.encode_image(frame, 4, 17, encoding, start_time=1_000, stop_time=11_000, real_time=10_000)
    assert len(parts) == 4
    head, info = json.loads(parts[0]), json.loads(parts[1])
    assert head == {"htype": "dimage-1.0", "series": 4, "frame": 17, "hash": hashlib.md5(parts[2]).hexdigest()}
    assert info["shape"] == [SHAPE[1], SHAPE[0]]  # [x, y] on the wire
    assert info["size"] == len(parts[2]) and info["type"] == np.dtype(dtype).name and info["encoding"] == encoding
    image = simplon.decode_message(parts)
    assert isinstance(image, Image)
    assert (image.series, image.frame, image.shape, image.encoding) == (4, 17, SHAPE, encoding)
    assert (image.start_time, image.stop_time, image.real_time) == (1_000, 11_000, 10_000)
    assert image.md5 == head["hash"] and image.appendix is None
    decoded = image.decode()
    assert decoded.dtype == dtype and np.array_equal(decoded, frame)
    decoded[0, 0] = 1  # a new, writable array: the blob stays as it came
    assert np.array_equal(image.decode(), frame)


def test_default_encoding_is_bitshuffle_on_the_frame_bit_depth() -> None:
    parts = simplon.encode_image(_frame(np.uint32), 0, 0)
    assert json.loads(parts[1])["encoding"] == "bs32-lz4<"


def test_compression_makes_frames_smaller() -> None:
    frame = _frame(np.uint32)
    sizes = {e: len(simplon.encode_image(frame, 0, 0, e)[2]) for e in ("<", "lz4<", "bs32-lz4<")}
    assert sizes["<"] == frame.nbytes
    assert sizes["bs32-lz4<"] < sizes["lz4<"] < sizes["<"]


def test_image_appendix_and_pre_encoded_frames() -> None:
    frame = _frame(np.uint16)
    encoded = EncodedFrame.encode(frame, "bs16-lz4<")
    for appendix, expected in (({"energy": 9.1, "ok": True}, {"energy": 9.1, "ok": True}), ("plain text", "plain text"),
                               (b"\xff\x00raw", b"\xff\x00raw")):
        image = simplon.decode_message(simplon.encode_image(encoded, 1, 2, appendix=appendix))
        assert image.appendix == expected and image.blob == encoded.blob
        assert np.array_equal(image.decode(), frame)
    with pytest.raises(StreamError, match="already encoded as 'bs16-lz4<', not '<'"):
        simplon.encode_image(encoded, 1, 2, "<")


CONFIG = {"nimages": 5, "ntrigger": 3, "count_time": 0.099, "frame_time": 0.1, "photon_energy": 12400.0,
          "x_pixels_in_detector": 123, "y_pixels_in_detector": 101, "omega_start": 10.0, "omega_increment": 0.1,
          "sensor_material": "CdTe", "description": "Dectris EIGER2 CdTe 16M"}


def test_header_details() -> None:
    none = simplon.decode_message(simplon.encode_header(9, CONFIG, detail="none"))
    assert isinstance(none, SeriesHeader) and (none.series, none.detail, none.config) == (9, "none", {})
    assert none.total_images is None and none.frame_shape is None

    parts = simplon.encode_header(9, CONFIG, detail="basic", appendix={"sample": "lysozyme", "run": 3})
    assert len(parts) == 3
    basic = simplon.decode_message(parts)
    assert basic.detail == "basic" and basic.config == CONFIG and basic.flatfield is None
    assert basic.appendix == {"sample": "lysozyme", "run": 3}
    assert basic.total_images == 15 and basic.frame_shape == (101, 123)

    rng = np.random.default_rng(1)
    flat = rng.uniform(0.9, 1.1, SHAPE).astype(np.float32)
    mask = (rng.random(SHAPE) < 0.01).astype(np.uint32) * 2
    table = np.stack([np.linspace(0, 1e6, 50), np.linspace(0, 9e5, 50)]).astype(np.float32)
    parts = simplon.encode_header(9, CONFIG, detail="all", flatfield=flat, pixel_mask=mask, countrate=table)
    assert len(parts) == 8
    assert json.loads(parts[2]) == {"htype": "dflatfield-1.0", "shape": [123, 101], "type": "float32"}
    assert json.loads(parts[4])["htype"] == "dpixelmask-1.0" and json.loads(parts[6])["shape"] == [50, 2]
    full = simplon.decode_message(parts + [b"user text"])
    assert full.detail == "all" and full.appendix == "user text"
    assert np.array_equal(full.flatfield, flat) and full.flatfield.dtype == np.float32
    assert np.array_equal(full.pixel_mask, mask) and full.pixel_mask.dtype == np.uint32
    assert np.array_equal(full.countrate, table)


def test_series_end() -> None:
    assert simplon.decode_message(simplon.encode_end(12)) == SeriesEnd(12)


def test_header_all_needs_the_arrays() -> None:
    with pytest.raises(StreamError, match="flatfield, pixel_mask and countrate.*pixel_mask is None"):
        simplon.encode_header(1, CONFIG, detail="all", flatfield=np.ones(SHAPE), countrate=np.ones((2, 3)))


def _image_parts(**changes: object) -> list[bytes]:
    """A valid image message with fields of its JSON parts replaced."""
    parts = simplon.encode_image(_frame(np.uint16), 3, 8, "bs16-lz4<")
    for key, value in changes.items():
        index, field = {"series": (0, "series"), "hash": (0, "hash"), "shape": (1, "shape"), "type": (1, "type"),
                        "encoding": (1, "encoding"), "size": (1, "size"), "start_time": (3, "start_time")}[key]
        obj = json.loads(parts[index])
        if value is None:
            del obj[field]
        else:
            obj[field] = value
        parts[index] = json.dumps(obj).encode()
    return parts


def _flip(parts: list[bytes], index: int, at: int) -> list[bytes]:
    blob = bytearray(parts[index])
    blob[at] ^= 0xFF
    return parts[:index] + [bytes(blob)] + parts[index + 1:]


BAD_MESSAGES = {
    "garbage bytes": ([b"\x00\x13garbage\xff"], r"part 1 is not JSON .*stream v1 port"),
    "CBOR on the v1 port": (stream2.encode_end(1), "looks like CBOR.*format 'cbor'.*stream2"),
    "JSON that is not an object": ([b"[1, 2]"], "part 1 must be a JSON object, got list"),
    "no message at all": ([], "empty message"),
    "no htype": ([b'{"series": 1}'], "part 1 has no 'htype' string"),
    "unknown htype": ([b'{"htype": "dstatus-1.0"}'], "unknown htype 'dstatus-1.0'"),
    "future version": ([b'{"htype": "dimage-2.0"}'], "version '2.0'"),
    "header parts for basic": (simplon.encode_header(1, CONFIG)[:1], r"header_detail 'basic' has 2 parts.*got 1"),
    "header parts for all": ([b'{"htype": "dheader-1.0", "series": 1, "header_detail": "all"}', b"{}", b"{}"],
                             r"header_detail 'all' has 8 parts \(one more with a header appendix\), got 3"),
    "unknown header detail": ([b'{"htype": "dheader-1.0", "series": 1, "header_detail": "most"}'],
                              "header_detail 'most'; expected none, basic or all"),
    "image parts": (_image_parts()[:3], r"image message has 4 parts \(5 with an image appendix\), got 3"),
    "series not a number": (_image_parts(series="one"), "non-negative integer 'series', got 'one'"),
    "size mismatch": (_image_parts(size=123), r"frame 8: dimage_d says size 123 bytes but the blob \(part 3\) has"),
    "md5 mismatch": (_flip(_image_parts(), 2, 40), "MD5 is .* but the dimage hash is .*corrupted on the way"),
    "unknown encoding": (_image_parts(encoding="zstd<"), "unknown encoding 'zstd<'; stream v1 encodings are"),
    "v2 encoding name on v1": (_image_parts(encoding="lz4-hdf5<"), "unknown encoding 'lz4-hdf5<'"),
    "unknown type": (_image_parts(type="float64"), "type 'float64'; stream v1 images are uint8, uint16, uint32"),
    "bad shape": (_image_parts(shape=[123]), r"needs 'shape' as \[width, height\] of positive integers, got \[123\]"),
    "shape larger than the data": (_image_parts(shape=[123, 202]),
                                   "header declares 24846 uncompressed bytes but the frame's shape and type need 49692"),
    "type wider than the data": (_image_parts(type="uint32"), "declares 24846 .* need 49692"),
    "missing times": (_image_parts(start_time=None), "dconfig needs a non-negative integer 'start_time'"),
    "dconfig htype": (_image_parts()[:3] + [b'{"htype": "dimage_d-1.0"}'], "part 4 .* must have htype dconfig-1.0"),
    "end with parts": (simplon.encode_end(1) + [b"x"], "dseries_end message has 1 part, got 2"),
    "flatfield size": (simplon.encode_header(1, CONFIG, detail="all", flatfield=np.ones((4, 5)), pixel_mask=np.ones((4, 5)),
                                             countrate=np.ones((2, 3)))[:3] + [b"\0" * 7] + [b"{}"] * 4,
                       r"part 4 \(flatfield\) is 7 bytes but shape \[5, 4\] of float32 needs 80"),
}


@pytest.mark.parametrize("case", BAD_MESSAGES)
def test_bad_message_is_named(case: str) -> None:
    parts, message = BAD_MESSAGES[case]
    with pytest.raises(StreamError, match=message) as info:
        simplon.decode_message(parts)
    assert isinstance(info.value, LightpipeError)


def test_corrupt_blob_without_hash_check_fails_on_decode() -> None:
    parts = simplon.encode_image(_frame(np.uint16), 3, 8, "bs16-lz4<")
    truncated = parts[:2] + [parts[2][:-9]] + parts[3:]
    info = json.loads(truncated[1])
    info["size"] = len(truncated[2])
    truncated[1] = json.dumps(info).encode()
    image = simplon.decode_message(truncated, verify_hash=False)
    with pytest.raises(StreamError, match="bitshuffle-LZ4 blocks add up to .* but the data has .*corrupt or truncated"):
        image.decode()


def test_raw_lz4_of_the_wrong_size_fails_on_decode() -> None:
    frame = _frame(np.uint16)
    parts = simplon.encode_image(frame[:50], 1, 0, "lz4<")  # a raw block carries no size
    head, info = json.loads(parts[0]), json.loads(parts[1])
    info["shape"] = [SHAPE[1], SHAPE[0]]
    image = simplon.decode_message([json.dumps(head).encode(), json.dumps(info).encode()] + parts[2:])
    with pytest.raises(StreamError, match="raw LZ4 block .* decompressed to 12300 bytes, but .* need 24846"):
        image.decode()


def test_v1_lz4_decoder_rejects_hdf5_framing() -> None:
    frame = _frame(np.uint16)
    v2_style = EncodedFrame.encode(frame, "lz4-hdf5<").blob
    image = Image(0, 0, v2_style, SHAPE, "uint16", "lz4<")
    with pytest.raises(StreamError, match="HDF5-framed LZ4 .*not the raw LZ4 block of stream v1"):
        image.decode()


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bitshuffle_framing_is_the_hdf5_filter_framing(tmp_path: Path, dtype: type) -> None:
    """What DECTRIS sends is what the HDF5 bitshuffle filter stores: decode its chunks, and it decodes ours."""
    frames = np.stack([_frame(dtype, seed) for seed in (1, 2)])
    path = tmp_path / "bslz4.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("theirs", data=frames, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4"))
        ours = f.create_dataset("ours", shape=frames.shape, dtype=dtype, chunks=(1, *SHAPE),
                                **hdf5plugin.Bitshuffle(cname="lz4"))
        for k, frame in enumerate(frames):
            ours.id.write_direct_chunk((k, 0, 0), simplon.encode_image(frame, 0, k)[2])
    encoding = f"bs{8 * np.dtype(dtype).itemsize}-lz4<"
    with h5py.File(path, "r") as f:
        for k, frame in enumerate(frames):
            _, chunk = f["theirs"].id.read_direct_chunk((k, 0, 0))
            assert np.array_equal(Image(0, k, bytes(chunk), SHAPE, np.dtype(dtype).name, encoding).decode(), frame)
        assert np.array_equal(f["ours"][()], frames)  # read through the HDF5 filter
