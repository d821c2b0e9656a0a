"""Bad stream input over real loopback sockets: each case is logged, counted, kept aside; scans go on."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from lightpipe import load_pipeline
from lightpipe.engines.local import LocalEngine
from lightpipe.sources.dectris import simplon
from lightpipe.sources.dectris.source import EigerParams, EigerStreamSource

SHAPE = (16, 12)
CONFIG = {"nimages": 10, "ntrigger": 1, "x_pixels_in_detector": SHAPE[1], "y_pixels_in_detector": SHAPE[0],
          "bit_depth_image": 16, "detector_distance": 0.15, "photon_energy": 12000.0}


def frame(series: int, k: int) -> np.ndarray:
    return np.full(SHAPE, 100 * series + k, dtype=np.uint16)


def _retype(parts: list[bytes], index: int, **changes: Any) -> list[bytes]:
    obj = json.loads(parts[index])
    obj.update(changes)
    return [*parts[:index], json.dumps(obj).encode(), *parts[index + 1 :]]


def _send_all(push: zmq.Socket, messages: list[list[bytes]], pause: float = 0.002) -> None:
    for parts in messages:
        push.send_multipart(parts)
        time.sleep(pause)


@pytest.fixture
def detector() -> Any:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    yield push, f"tcp://127.0.0.1:{port}"
    push.close()


def test_every_kind_of_bad_message(detector: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    push, endpoint = detector
    s1 = [simplon.encode_header(1, CONFIG)]
    good = {k: simplon.encode_image(frame(1, k), 1, k) for k in range(10)}
    s1 += [good[0], good[2], good[1]]                                    # out of order: fine
    s1 += [[b"\x00\xffgarbage"]]                                         # garbage bytes
    s1 += [b'{"htype": "dimage-1.0", "series": 1, "frame": 3, "hash"'.split(b"\0")]  # JSON that does not parse
    s1 += [good[3][:3]]                                                  # frame 3 again, a part missing
    s1 += [_retype(good[4], 1, size=999)]                                # size mismatch
    s1 += [_retype(good[5], 0, hash="0" * 32)]                           # hash mismatch
    s1 += [_retype(good[6], 1, encoding="zstd<")]                        # unknown encoding
    s1 += [good[7], good[7]]                                             # duplicate
    s1 += [good[9]]                                                      # frame 8 never comes
    s1 += [simplon.encode_image(frame(7, 0), 7, 0)]                      # image of a series not open
    # series 2 starts before series 1 ended; its last frame and its end never come
    s2 = [simplon.encode_header(2, {**CONFIG, "nimages": 5})] + [simplon.encode_image(frame(2, k), 2, k) for k in range(4)]
    s2 += [simplon.encode_end(1)]                                        # end of a series that is not open

    source = EigerStreamSource(EigerParams(endpoint=endpoint, end_timeout_s=0.6, max_scans=2))
    pipeline = load_pipeline({"version": 1, "name": "bad", "source": {"use": "eiger", "params": {"endpoint": endpoint}},
                              "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]})
    scans = source.scans()
    sender = threading.Thread(target=lambda: (time.sleep(0.3), _send_all(push, s1 + s2)), daemon=True)
    sender.start()
    reports = []
    with caplog.at_level(logging.ERROR), LocalEngine(chunk_size=3) as engine:
        for reader in scans:
            reports.append(engine.run_scan(pipeline, reader, tmp_path))
            reader.close()
    sender.join()
    first, second = reports
    receiver = source.receiver
    assert receiver is not None

    # series 1: the good frames are written, each bad one failed with its reason, nothing lost
    led = first.ledger
    assert led.received == 10 and led.written + len(led.failed) == 10
    reasons = {f.index: f.message for f in led.failed}
    assert sorted(reasons) == [3, 4, 5, 6, 8]
    assert "rejected" in reasons[3] and "parts" in reasons[3]
    assert "size" in reasons[4] and "hash" in reasons[5].lower() and "zstd" in reasons[6]
    assert "never arrived" in reasons[8] and "header of series 2 arrived before the end of series 1" in reasons[8]
    with h5py.File(first.files[0]) as f:
        totals = f["entry/s/total"][()]
        assert [totals[k] for k in (0, 1, 2, 7, 9)] == [float(frame(1, k).sum()) for k in (0, 1, 2, 7, 9)]
        assert sorted(f["entry/failed_events/index"][()].tolist()) == [3, 4, 5, 6, 8]

    # series 2 waited for its last frame until the end timeout, then was closed cleanly
    assert second.ledger.written == 4 and second.ledger.state == "completed"
    assert [(f.index, "series end never came" in f.message) for f in second.ledger.failed] == [(4, True)]

    # everything rejected was counted, logged and kept aside
    kept = [r.reason for r in receiver.rejected]
    assert receiver.counters["rejected"] == len(kept) == 9
    assert sum("is not JSON" in r for r in kept) == 2  # the garbage and the broken JSON
    assert any("arrived twice" in r for r in kept)
    assert any("image 0 of series 7 without its header" in r for r in kept)
    assert any("end of series 1, which is not open" in r for r in kept)
    assert receiver.counters["series interrupted"] == 1 and receiver.counters["series timed out"] == 1
    assert all(r.parts and r.sizes for r in receiver.rejected)
    assert sum("message rejected" in r.getMessage() for r in caplog.records) == 9


def test_stream_v2_garbage_and_wrong_framing(detector: Any, tmp_path: Path) -> None:
    """Stream v2: a message that is not CBOR, and an LZ4 blob in stream v1's raw framing, are rejected."""
    from lightpipe.sources.dectris import stream2
    from lightpipe.sources.dectris.compression import EncodedFrame

    push, endpoint = detector
    config = {**CONFIG, "nimages": 4}
    messages = [stream2.encode_header(5, config)]
    messages += [stream2.encode_image(frame(5, k), 5, k) for k in (0, 1)]
    messages += [[b"\x00not cbor at all"]]
    raw_block = EncodedFrame.encode(frame(5, 2), "lz4<")  # v1's raw LZ4 block, announced as v2 lz4
    wrong = EncodedFrame(raw_block.blob, raw_block.shape, raw_block.dtype, "lz4-hdf5<")
    messages += [stream2.encode_image(wrong, 5, 2, "lz4")]
    messages += [stream2.encode_image(frame(5, 3), 5, 3), stream2.encode_end(5)]
    source = EigerStreamSource(EigerParams(endpoint=endpoint, version="v2", max_scans=1))
    pipeline = load_pipeline({"version": 1, "name": "bad2", "source": {"use": "eiger", "params": {"endpoint": endpoint}},
                              "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]})
    scans = source.scans()
    threading.Thread(target=lambda: (time.sleep(0.3), _send_all(push, messages)), daemon=True).start()
    with LocalEngine() as engine:
        reader = next(scans)
        report = engine.run_scan(pipeline, reader, tmp_path)
    receiver = source.receiver
    scans.close()
    led = report.ledger
    assert led.written == 3 and [f.index for f in led.failed] == [2]
    assert "rejected" in led.failed[0].message and "not in the HDF5 filter framing" in led.failed[0].message
    assert receiver is not None and receiver.counters["rejected"] == 2
    assert "a stream v2 message is a CBOR map" in receiver.rejected[0].reason


def _v2_edit(message: list[bytes], edit: Any) -> list[bytes]:
    """A stream v2 message with its CBOR map changed by ``edit`` (tags kept as they are)."""
    import cbor2

    msg = cbor2.loads(message[0])
    edit(msg)
    return [cbor2.dumps(msg)]


def test_every_kind_of_bad_message_stream_v2(detector: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The stream v1 cases above, as stream v2 (CBOR) messages: same accounting, same reasons kept."""
    import cbor2

    from lightpipe.sources.dectris import stream2

    def wrong_dims(msg: dict[str, Any]) -> None:
        array = msg["data"]["threshold_1"]  # tag 40: [dimensions, typed array]
        msg["data"]["threshold_1"] = cbor2.CBORTag(40, [[SHAPE[0] + 1, SHAPE[1]], array.value[1]])

    def unknown_compression(msg: dict[str, Any]) -> None:
        array = msg["data"]["threshold_1"]
        typed = array.value[1]  # a typed array holding tag 56500: [algorithm, element size, bytes]
        compressed = cbor2.CBORTag(56500, ["zstd", *typed.value.value[1:]])
        msg["data"]["threshold_1"] = cbor2.CBORTag(40, [array.value[0], cbor2.CBORTag(typed.tag, compressed)])

    push, endpoint = detector
    s1 = [stream2.encode_header(1, CONFIG)]
    good = {k: stream2.encode_image(frame(1, k), 1, k) for k in range(10)}
    s1 += [good[0], good[2], good[1]]                                    # out of order: fine
    s1 += [[b"\x00\xffgarbage"]]                                         # garbage bytes
    s1 += [simplon.encode_image(frame(1, 3), 1, 3)[:1]]                  # a stream v1 (JSON) message
    s1 += [[good[3][0], b"an extra part"]]                               # frame 3 in two parts
    s1 += [stream2.encode_image(frame(1, 4), 1, 4, "none")]
    s1[-1] = _v2_edit(s1[-1], wrong_dims)                                # pixels do not fill the shape
    s1 += [_v2_edit(good[5], lambda m: m.update(data=[1, 2]))]           # 'data' is not a map of channels
    s1 += [_v2_edit(good[6], unknown_compression)]                       # unknown compression
    s1 += [good[7], good[7]]                                             # duplicate
    s1 += [[cbor2.dumps({"type": "status", "series_id": 1})]]            # unknown message type
    s1 += [good[9]]                                                      # frame 8 never comes
    s1 += [stream2.encode_image(frame(7, 0), 7, 0)]                      # image of a series not open
    s2 = [stream2.encode_header(2, {**CONFIG, "nimages": 5})] + [stream2.encode_image(frame(2, k), 2, k)
                                                                 for k in range(4)]
    s2 += [stream2.encode_end(1)]                                        # end of a series that is not open

    source = EigerStreamSource(EigerParams(endpoint=endpoint, version="v2", end_timeout_s=0.6, max_scans=2))
    pipeline = load_pipeline({"version": 1, "name": "bad2", "source": {"use": "eiger", "params": {"endpoint": endpoint}},
                              "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]})
    scans = source.scans()
    sender = threading.Thread(target=lambda: (time.sleep(0.3), _send_all(push, s1 + s2)), daemon=True)
    sender.start()
    reports = []
    readers = []
    with caplog.at_level(logging.ERROR), LocalEngine(chunk_size=3) as engine:
        for reader in scans:
            reports.append(engine.run_scan(pipeline, reader, tmp_path))
            readers.append(reader)
            reader.close()
    sender.join()
    first, second = reports
    receiver = source.receiver
    assert receiver is not None
    assert [r.scan.metadata["series_end"] for r in readers] == ["missing", "missing"]

    led = first.ledger
    assert led.state == "completed" and led.received == 10 and led.written + len(led.failed) == 10
    reasons = {f.index: f.message for f in led.failed}
    assert sorted(reasons) == [3, 4, 5, 6, 8]
    assert "rejected" in reasons[3] and "single part, got 2 parts" in reasons[3]
    assert "384 bytes but shape [17, 12] of uint16 needs 408" in reasons[4]
    assert "'data' must map channel names" in reasons[5] and "'zstd'" in reasons[6]
    assert "never arrived" in reasons[8] and "header of series 2 arrived before the end of series 1" in reasons[8]
    with h5py.File(first.files[0]) as f:
        totals = f["entry/s/total"][()]
        assert [totals[k] for k in (0, 1, 2, 7, 9)] == [float(frame(1, k).sum()) for k in (0, 1, 2, 7, 9)]
        assert sorted(f["entry/failed_events/index"][()].tolist()) == [3, 4, 5, 6, 8]

    assert second.ledger.written == 4 and second.ledger.state == "completed"
    assert [(f.index, "series end never came" in f.message) for f in second.ledger.failed] == [(4, True)]

    kept = [r.reason for r in receiver.rejected]
    assert receiver.counters["rejected"] == len(kept) == 10
    assert any("a stream v2 message is a CBOR map, got int" in r for r in kept)  # the garbage reads as CBOR 0
    assert any("not a CBOR message" in r and "looks like JSON" in r for r in kept)
    assert any("unknown message type 'status'" in r for r in kept)
    assert any("arrived twice" in r for r in kept)
    assert any("image 0 of series 7 without its header" in r for r in kept)
    assert any("end of series 1, which is not open" in r for r in kept)
    assert receiver.counters["series interrupted"] == 1 and receiver.counters["series timed out"] == 1
    assert sum("message rejected" in r.getMessage() for r in caplog.records) == 10


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("ending", ["end message", "timeout", "next header"])
def test_a_missing_series_end_is_recorded(detector: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          version: str, ending: str) -> None:
    """Every frame arrives but the end message does not: the scan completes, and its file says the end was missing."""
    from lightpipe.sources.dectris import stream2

    codec: Any = simplon if version == "v1" else stream2
    push, endpoint = detector
    config = {**CONFIG, "nimages": 6}
    messages = [codec.encode_header(3, config)] + [codec.encode_image(frame(3, k), 3, k) for k in range(6)]
    if ending == "end message":
        messages += [codec.encode_end(3)]
    elif ending == "next header":
        messages += [codec.encode_header(4, config)]
    source = EigerStreamSource(EigerParams(endpoint=endpoint, version=version, end_timeout_s=0.8, max_scans=1))
    pipeline = load_pipeline({"version": 1, "name": "end", "source": {"use": "eiger", "params": {"endpoint": endpoint}},
                              "stages": {"s": {"use": "frame_scalars"}}, "sinks": [{"use": "nexus"}]})
    scans = source.scans()
    threading.Thread(target=lambda: (time.sleep(0.3), _send_all(push, messages)), daemon=True).start()
    with caplog.at_level(logging.WARNING), LocalEngine(chunk_size=4) as engine:
        reader = next(scans)
        report = engine.run_scan(pipeline, reader, tmp_path)
        reader.close()
    scans.close()
    led = report.ledger
    assert led.state == "completed" and led.written == 6 and not led.failed  # every frame is there
    meta = reader.scan.metadata
    assert meta["series_end"] == ("received" if ending == "end message" else "missing")
    detail = meta.get("series_end_detail", "")
    with h5py.File(report.files[0]) as f:
        assert f["entry/process/state"][()].decode() == "completed" and int(f["entry/process"].attrs["written"]) == 6
        written = f["entry/process/scan_metadata"]  # the file says whether the end came, not only the log
        assert written["series_end"][()].decode() == meta["series_end"]
        assert ("series_end_detail" in written) == bool(detail)
    warned = [r.getMessage() for r in caplog.records if "without its end message" in r.getMessage()]
    if ending == "end message":
        assert not detail and not warned
    else:
        state = "timed out" if ending == "timeout" else "interrupted"
        assert detail.startswith(f"series 3 {state} without its end message")
        assert warned == [f"scan series_000003: {detail}"]
