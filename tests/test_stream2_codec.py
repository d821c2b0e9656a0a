"""DECTRIS stream v2 (CBOR): typed arrays, compression tag, channels, rationals, bad messages."""
from __future__ import annotations

import struct
from datetime import datetime, timezone
from pathlib import Path

import bitshuffle
import cbor2
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
from cbor2 import CBORTag

from lightpipe.sources.dectris import EncodedFrame, Image, SeriesEnd, SeriesHeader, StreamError, simplon, stream2

SHAPE = (67, 91)


def _frame(dtype: type, seed: int = 0) -> np.ndarray:
    frame = np.random.default_rng(seed).poisson(3.0, SHAPE).astype(dtype)
    frame[1, 2] = np.iinfo(dtype).max
    return frame


# Messages built by hand as the DECTRIS documentation describes them, independent of the encoders.
def _bslz4(frame: np.ndarray) -> CBORTag:
    block = 8192 // frame.itemsize
    data = struct.pack(">QI", frame.nbytes, 8192) + bitshuffle.compress_lz4(frame.ravel(), block).tobytes()
    return CBORTag(56500, ["bslz4", frame.itemsize, data])


def _lz4(frame: np.ndarray) -> CBORTag:
    packed = lz4.block.compress(frame.tobytes(), store_size=False)
    data = struct.pack(">QI", frame.nbytes, frame.nbytes) + struct.pack(">I", len(packed)) + packed
    return CBORTag(56500, ["lz4", 0, data])


TYPED = {np.dtype("uint8"): 64, np.dtype("uint16"): 69, np.dtype("uint32"): 70, np.dtype("int32"): 78,
         np.dtype("float32"): 85, np.dtype(">u2"): 65}


def _array(frame: np.ndarray, compression: str = "none") -> CBORTag:
    payload = {"none": lambda f: f.tobytes(), "bslz4": _bslz4, "lz4": _lz4}[compression](frame)
    return CBORTag(40, [list(frame.shape), CBORTag(TYPED[frame.dtype], payload)])


def _image_message(data: dict[str, CBORTag], **extra: object) -> bytes:
    msg = {"type": "image", "series_id": 6, "series_unique_id": "abc-6", "image_id": 41, "data": data,
           "start_time": [1, 3], "stop_time": [2, 3], "real_time": [100_000_000, 100_000_000], **extra}
    return cbor2.dumps({k: v for k, v in msg.items() if v is not None})


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("compression", ["none", "bslz4", "lz4"])
def test_hand_built_image(dtype: type, compression: str) -> None:
    frame = _frame(dtype)
    image = stream2.decode_message(_image_message({"threshold_1": _array(frame, compression)}))
    assert isinstance(image, Image)
    assert (image.series, image.frame, image.unique_id, image.channel, image.shape) == (6, 41, "abc-6", "threshold_1", SHAPE)
    assert (image.start_time, image.stop_time, image.real_time) == (333_333_333, 666_666_666, 1_000_000_000)
    assert image.md5 is None and image.other_channels == {}
    decoded = image.decode()
    assert decoded.dtype == dtype and np.array_equal(decoded, frame)


@pytest.mark.parametrize("dtype", ["int32", "float32", ">u2"])
def test_typed_arrays_of_other_types(dtype: str) -> None:
    frame = _frame(np.uint16).astype(dtype)
    decoded = stream2.decode_message(_image_message({"t": _array(frame)})).decode()
    assert decoded.dtype == np.dtype(dtype).newbyteorder("=") and np.array_equal(decoded, frame)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("compression", ["none", "bslz4", "lz4"])
def test_encoder_round_trip(dtype: type, compression: str) -> None:
    frame = _frame(dtype)
    [message] = stream2.encode_image(frame, 3, 9, compression, unique_id="u-3", start_time=10, stop_time=1_000_010,
                                     real_time=1_000_000, appendix={"shutter": "open"})
    image = stream2.decode_message(message)
    assert (image.series, image.frame, image.unique_id, image.appendix) == (3, 9, "u-3", {"shutter": "open"})
    assert (image.start_time, image.stop_time, image.real_time) == (10, 1_000_010, 1_000_000)
    assert np.array_equal(image.decode(), frame)
    tagged = cbor2.loads(message)["data"]["threshold_1"]
    assert tagged.tag == 40 and list(tagged.value[0]) == list(SHAPE)
    if compression != "none":
        assert tagged.value[1].value.tag == 56500 and tagged.value[1].value.value[0] == compression


def test_channels_keep_their_names_and_order() -> None:
    low, high = _frame(np.uint16, 1), _frame(np.uint32, 2)
    image = stream2.decode_message(_image_message({"threshold_2": _array(low, "bslz4"), "threshold_1": _array(high, "lz4")}))
    assert image.channel == "threshold_2" and list(image.other_channels) == ["threshold_1"]
    assert np.array_equal(image.decode(), low)
    channels = image.decode_channels()
    assert list(channels) == ["threshold_2", "threshold_1"]
    assert np.array_equal(channels["threshold_1"], high) and channels["threshold_1"].dtype == np.uint32
    [message] = stream2.encode_image({"a": low, "b": EncodedFrame.encode(high, "<")}, 1, 0)
    assert list(stream2.decode_message(message).decode_channels()) == ["a", "b"]


START = {"nimages": 10, "ntrigger": 2, "count_time": 0.0099, "frame_time": 0.01, "photon_energy": 12398.4,
         "wavelength": 1.0, "beam_center_x": 45.5, "beam_center_y": 33.0, "x_pixel_size": 75e-6,
         "y_pixel_size": 75e-6, "x_pixels_in_detector": 91, "y_pixels_in_detector": 67, "detector_distance": 0.15,
         "omega_start": 5.0, "omega_increment": 0.25, "threshold_energy": 6200.0, "sensor_material": "Si",
         "sensor_thickness": 0.00045, "description": "EIGER2 X 1M", "detector_number": "E-32-0123",
         "bit_depth_image": 32}


def test_start_message_maps_to_simplon_names() -> None:
    rng = np.random.default_rng(4)
    flats = {"low": rng.uniform(0.9, 1.1, SHAPE).astype(np.float32), "high": np.ones(SHAPE, np.float32)}
    mask = (rng.random(SHAPE) < 0.02).astype(np.uint32)
    table = np.linspace(0, 1, 64).astype(np.float32)
    arm = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    [message] = stream2.encode_header(7, START, detail="all", channels=["low", "high"], unique_id="s7", flatfield=flats,
                                      pixel_mask=mask, countrate=table, appendix={"proposal": 1234}, arm_date=arm)
    raw = cbor2.loads(message)
    assert raw["incident_energy"] == 12398.4 and raw["number_of_images"] == 20
    assert raw["goniometer"] == {"omega": {"start": 5.0, "increment": 0.25}}
    assert raw["threshold_energy"] == {"low": 6200.0} and raw["image_dtype"] == "uint32"
    header = stream2.decode_message(message)
    assert isinstance(header, SeriesHeader)
    assert (header.series, header.unique_id, header.detail, header.channels) == (7, "s7", "all", ("low", "high"))
    expected = {k: v for k, v in START.items() if k not in ("nimages", "ntrigger")}
    assert {k: header.config[k] for k in expected} == expected
    assert header.config["nimages"] == 20 and header.config["ntrigger"] == 1 and header.total_images == 20
    assert header.config["data_collection_date"] == "2024-05-01T12:30:00+00:00"
    assert header.frame_shape == SHAPE and header.appendix == {"proposal": 1234}
    assert np.array_equal(header.flatfield, flats["low"])  # the first channel's
    assert np.array_equal(header.message["flatfield"]["high"], flats["high"])
    assert np.array_equal(header.pixel_mask, mask) and header.pixel_mask.dtype == np.uint32
    assert np.array_equal(header.countrate, table)
    assert header.message["arm_date"] == arm

    basic = stream2.decode_message(stream2.encode_header(8, START, detail="basic", flatfield=flats["low"]))
    assert basic.detail == "basic" and basic.flatfield is None and basic.unique_id


def test_hand_built_start_with_compressed_and_column_major_arrays() -> None:
    mask = np.arange(12, dtype=np.uint32).reshape(3, 4)
    msg = {"type": "start", "series_id": 2, "series_unique_id": "x", "channels": ["t1"],
           "pixel_mask": {"t1": CBORTag(40, [[3, 4], CBORTag(70, _bslz4(mask))])},
           "flatfield": {"t1": CBORTag(1040, [[4, 3], CBORTag(85, np.arange(12, dtype="<f4").tobytes())])},
           "countrate_correction_lookup_table": CBORTag(69, np.arange(5, dtype="<u2").tobytes()),
           "user_data": {"blob": _lz4(np.arange(4, dtype=np.uint8))}, "threshold_energy": {"t1": 4000}}
    header = stream2.decode_message(cbor2.dumps(msg))
    assert np.array_equal(header.pixel_mask, mask)
    assert np.array_equal(header.flatfield, np.arange(12, dtype=np.float32).reshape(4, 3, order="F"))
    assert header.countrate.tolist() == [0, 1, 2, 3, 4]
    assert header.appendix == {"blob": bytes([0, 1, 2, 3])} and header.config["threshold_energy"] == 4000


def test_end_message() -> None:
    assert stream2.decode_message(stream2.encode_end(5, "u5")) == SeriesEnd(5, "u5")
    assert stream2.decode_message(cbor2.dumps({"type": "end", "series_id": 5})) == SeriesEnd(5, None)


def test_lz4_framings_are_told_apart() -> None:
    """v1 'lz4<' is one raw block, v2 'lz4' the HDF5 framing: each decoder names the other framing."""
    frame = _frame(np.uint16)
    raw_block = lz4.block.compress(frame.tobytes(), store_size=False)
    message = _image_message({"t": CBORTag(40, [list(SHAPE), CBORTag(69, CBORTag(56500, ["lz4", 0, raw_block]))])})
    with pytest.raises(StreamError, match="channel 't'.*not in the HDF5 filter framing \\(a raw LZ4 block, as stream v1"):
        stream2.decode_message(message)
    framed = stream2.decode_message(_image_message({"t": _array(frame, "lz4")}))
    as_v1 = Image(0, 0, framed.blob, SHAPE, "uint16", "lz4<")
    with pytest.raises(StreamError, match="HDF5-framed LZ4 \\(stream v2 'lz4' or an HDF5 chunk\\), not the raw LZ4 block"):
        as_v1.decode()
    with pytest.raises(StreamError, match="cannot carry a raw LZ4 block"):
        stream2.encode_image(EncodedFrame.encode(frame, "lz4<"), 0, 0)


def _typed(tag: int, payload: object) -> CBORTag:
    return CBORTag(40, [list(SHAPE), CBORTag(tag, payload)])


GOOD = _array(_frame(np.uint16))
BAD_MESSAGES = {
    "garbage": (b"\xff\x00\x13 nothing", "not a CBOR message .*stream v2 port"),
    "JSON on the v2 port": (simplon.encode_end(3)[0], "looks like JSON.*format 'legacy'"),
    "multipart": (simplon.encode_end(3) * 2, "single part, got 2 parts.*simplon"),
    "not a map": (cbor2.dumps([1, 2]), "CBOR map, got list"),
    "unknown type": (cbor2.dumps({"type": "status"}), "unknown message type 'status'; .*start, image or end"),
    "missing series": (cbor2.dumps({"type": "end"}), "end message needs a non-negative integer 'series_id'"),
    "data not a map": (_image_message(None), "image 41: 'data' must map channel names to frames"),
    "empty data": (_image_message({}), "'data' must map channel names"),
    "1-D frame": (_image_message({"t": CBORTag(69, b"\0\0")}), "channel 't': a frame must be a 2-D typed array"),
    "wrong dimensions": (_image_message({"t": CBORTag(40, [[3, 3], CBORTag(69, b"\0" * 16)])}),
                         "raw frame data is 16 bytes but shape \\[3, 3\\] of uint16 needs 18"),
    "unknown algorithm": (_image_message({"t": _typed(69, CBORTag(56500, ["zstd", 0, b"\0" * 20]))}),
                          "unknown compression algorithm 'zstd'; stream v2 uses bslz4 or lz4"),
    "bad compression tag": (_image_message({"t": _typed(69, CBORTag(56500, ["lz4", b"x"]))}),
                            "tag 56500 \\(DECTRIS compression\\) must hold \\[algorithm, element size, bytes\\]"),
    "bad element size": (_image_message({"t": _typed(69, CBORTag(56500, ["bslz4", 3, b"\0" * 20]))}),
                         "bslz4 element size 3 is not 1, 2, 4 or 8"),
    "typed array of text": (_image_message({"t": _typed(69, "text")}), "typed-array tag 69 must hold a byte string"),
    "reserved tag": (_image_message({"t": _typed(76, b"\0")}), "tag 76 is reserved"),
    "128-bit float": (_image_message({"t": _typed(87, b"\0")}), "tag 87 \\(128-bit float\\) is not supported"),
    "bad multi-dim": (_image_message({"t": CBORTag(40, [SHAPE[0], b"x"])}),
                      "tag 40 \\(multi-dimensional array\\) must hold \\[dimensions, array\\]"),
    "column-major frame": (_image_message({"t": CBORTag(1040, [list(SHAPE), CBORTag(69, b"\0" * 2 * SHAPE[0] * SHAPE[1])])}),
                           "column-major frames \\(tag 1040\\) are not supported"),
    "bad rational": (_image_message({"t": GOOD}, start_time=[1, 0]),
                     "start_time must be a rational \\[numerator, denominator > 0\\]"),
    "truncated bslz4": (_image_message({"t": _typed(69, CBORTag(56500, ["bslz4", 2, b"\0" * 5]))}),
                        "bitshuffle-LZ4 data is 5 bytes, shorter than the 12-byte HDF5 filter header"),
    "bad bare compressed bytes": (cbor2.dumps({"type": "start", "series_id": 1,
                                               "user_data": CBORTag(56500, ["bslz4", 0, b"\0" * 20])}),
                                  "start.user_data: bslz4 element size 0 is not 1, 2, 4 or 8"),
    "bad channels": (cbor2.dumps({"type": "start", "series_id": 1, "channels": "t1"}), "channels must be a list of names"),
}


@pytest.mark.parametrize("case", BAD_MESSAGES)
def test_bad_message_is_named(case: str) -> None:
    message, pattern = BAD_MESSAGES[case]
    with pytest.raises(StreamError, match=pattern):
        stream2.decode_message(message)


def test_corrupt_lz4_block_fails_on_decode() -> None:
    frame = _frame(np.uint32)
    tagged = _lz4(frame)
    data = bytearray(tagged.value[2])
    data[16:40] = b"\xff" * 24  # inside the block: the framing is intact, the LZ4 sequence is not
    image = stream2.decode_message(_image_message({"t": _typed(70, CBORTag(56500, ["lz4", 0, bytes(data)]))}))
    with pytest.raises(StreamError, match="HDF5-framed LZ4 data is corrupt: a block does not decompress"):
        image.decode()


def test_lz4_framing_is_the_hdf5_lz4_filter_framing(tmp_path: Path) -> None:
    """Chunks of the HDF5 LZ4 filter, several blocks, some stored uncompressed, decode; ours read through HDF5."""
    rng = np.random.default_rng(8)
    frames = np.stack([_frame(np.uint32, 3), rng.integers(0, 2**32 - 1, SHAPE, dtype=np.uint32)])
    path = tmp_path / "lz4.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("theirs", data=frames, chunks=(1, *SHAPE), **hdf5plugin.LZ4(nbytes=4096))
        ours = f.create_dataset("ours", shape=frames.shape, dtype=np.uint32, chunks=(1, *SHAPE), **hdf5plugin.LZ4())
        for k, frame in enumerate(frames):
            ours.id.write_direct_chunk((k, 0, 0), EncodedFrame.encode(frame, "lz4-hdf5<").blob)
    with h5py.File(path, "r") as f:
        for k, frame in enumerate(frames):
            _, chunk = f["theirs"].id.read_direct_chunk((k, 0, 0))
            assert struct.unpack(">QI", chunk[:12]) == (frame.nbytes, 4096)
            tagged = CBORTag(40, [list(SHAPE), CBORTag(70, CBORTag(56500, ["lz4", 0, bytes(chunk)]))])
            assert np.array_equal(stream2.decode_message(_image_message({"t": tagged})).decode(), frame)
        assert np.array_equal(f["ours"][()], frames)
