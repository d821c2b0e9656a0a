"""The Lavue live view, over real loopback ZeroMQ sockets: messages, drops, rate, scans, a whole run."""
from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pytest
import zmq
from pydantic import ValidationError

from lightpipe import MapStage, Port, load_pipeline
from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.engines import get_engine
from lightpipe.sinks.liveview import LiveViewParams, LiveViewSink, lavue_image, publisher, release
from lightpipe.sinks.nexus import ShardRef

HOST = "127.0.0.1"
FAST = {"host": HOST, "port": 0, "announce_s": 0.05}
SHAPE = (12, 20)


class RowMeans(MapStage):
    """A 1-D profile and a scalar from a frame, for the live view to publish."""

    inputs = {"frame": Port(ndim=2)}
    outputs = {"profile": Port(ndim=1, dtype="float"), "total": Port(ndim=0, dtype="float")}

    def process(self, frame: Any) -> dict[str, Any]:
        return {"profile": frame.mean(axis=1), "total": float(frame.sum())}


def _doc(frames: int, params: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    return {
        "version": 1,
        "name": "liveview",
        "source": {"use": "simulated_frames", "params": {"name": "lv", "frames": frames, "darks": 0, "flats": 0,
                                                         "shape": list(SHAPE), "seed": 5}},
        "stages": {"copy": {"use": "identity"}, "rows": {"use": f"{__name__}:RowMeans"},
                   "sum": {"use": "sum_frames"}},
        "sinks": [{"use": "nexus", "fields": ["copy.frame", "sum.sum"]},
                  {"use": "lavue", "fields": fields, "params": params}],
        "engine": {"chunk_size": 2},
    }


def _sink(tmp_path: Path, fields: list[str], **params: Any) -> LiveViewSink:
    """A live-view sink as the engine makes it for a scan."""
    pipeline = load_pipeline(_doc(1, {**FAST, **params}, fields))
    node = pipeline.sinks[1]
    return node.cls(node.params, node.fields, node.streams, {"pipeline": pipeline, "output_dir": tmp_path})


def lavue_decode(parts: list[bytes]) -> tuple[str, dict[str, Any], np.ndarray]:
    """An image message decoded as Lavue's ZMQ source decodes it (lavuelib/imageSource.py, ZMQSource.getData).

    Lavue drops the trailing ``b"JSON"``, takes ``[topic, raw, metadata]``,
    reads the raw bytes with the metadata's ``dtype`` and reshapes them (C
    order) to its ``shape``. It then transposes twice, so the array it shows is
    that reshape as it is, and Lavue indexes its images ``[x, y]`` with x the
    horizontal axis (imageDisplayWidget.currentIntensity reads
    ``rawdata[x, y]``; its file sources hand over ``np.transpose(frame)``).
    """
    assert parts[-1] == b"JSON" and len(parts) == 4
    topic, raw, meta = parts[:3]
    metadata = json.loads(meta)
    return topic.decode(), metadata, np.frombuffer(raw, dtype=metadata["dtype"]).reshape(metadata["shape"])


class Viewer:
    """A subscriber that reads the way Lavue does: SUB to some topics (``""``: Lavue's ``**ALL**``) and to
    ``datasources``."""

    def __init__(self, endpoint: str, topics: list[str], queue: int = 1000) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, queue)
        self.socket.setsockopt(zmq.LINGER, 0)
        for topic in [*topics, "datasources"]:  # datasources last: once it arrives, the others are registered
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.socket.connect(endpoint)

    def receive(self, timeout_s: float) -> list[bytes] | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        return self.socket.recv_multipart()

    def datasources(self, timeout_s: float = 5.0) -> list[str]:
        """The topics of the first announcement to arrive."""
        deadline = time.monotonic() + timeout_s
        while (parts := self.receive(deadline - time.monotonic())) is not None:
            if parts[0] == b"datasources":
                assert parts[-1] == b"JSON" and len(parts) == 3
                return list(json.loads(parts[1])["datasources"])
        raise AssertionError(f"no datasources announcement within {timeout_s} s")

    def images(self, count: int, timeout_s: float = 5.0) -> list[tuple[str, dict[str, Any], np.ndarray]]:
        """``count`` image messages as (topic, metadata, image as [row, column]), announcements skipped.

        The image is Lavue's ``[x, y]`` array transposed back, to compare with what the file holds.
        """
        out: list[tuple[str, dict[str, Any], np.ndarray]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and (parts := self.receive(max(0.0, deadline - time.monotonic()))) is not None:
            if parts[0] == b"datasources":
                continue
            topic, metadata, xy = lavue_decode(parts)
            out.append((topic, metadata, xy.T))
        return out

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture(autouse=True)
def fresh_publisher() -> Iterator[None]:
    """Each test binds its own free port: publishers otherwise outlive the test."""
    release(HOST, 0)
    yield
    release(HOST, 0)


def _events(start: int, count: int, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    events = []
    for i in range(start, start + count):
        frame = rng.integers(0, 4000, SHAPE, dtype=np.uint16)
        events.append(Event(i, "data", {"copy.frame": frame, "rows.profile": frame.mean(axis=1),
                                        "rows.total": float(frame.sum())}))
    return events


def test_images_rebuild_the_arrays_and_scan_results_come_at_close(tmp_path: Path) -> None:
    fields = ["copy.frame", "rows.profile", "rows.total", "sum.sum"]
    sink = _sink(tmp_path, fields, max_rate_hz=0, hwm=50)
    scan = Scan("lv_000", {"data": range(0, 4)})
    sink.open(scan)
    assert sink.endpoint is not None and sink.endpoint.startswith(f"tcp://{HOST}:")
    viewer = Viewer(sink.endpoint, fields)
    try:
        assert sorted(viewer.datasources()) == sorted(fields)
        events = _events(0, 4, seed=1)
        events[2].fail("copy", "ValueError: broken frame")  # failed events are not shown
        sink.write(events)
        got = viewer.images(9)
        assert len(got) == 9 and viewer.images(1, timeout_s=0.2) == []  # scan results wait for close
        by_field = {(m["field"], m["index"]): (topic, m, a) for topic, m, a in got}
        assert {i for _, i in by_field} == {0, 1, 3}
        for event in (events[0], events[1], events[3]):
            topic, meta, frame = by_field["copy.frame", event.index]
            # Lavue's [x, y]: columns first
            assert topic == "copy.frame" and meta["dtype"] == "uint16" and meta["shape"] == [SHAPE[1], SHAPE[0]]
            assert meta["scan"] == "lv_000" and meta["stream"] == "data" and meta["ndim"] == 2
            assert meta["name"] == f"copy.frame lv_000 #{event.index}"
            np.testing.assert_array_equal(frame, event.fields["copy.frame"])
            _, meta, profile = by_field["rows.profile", event.index]
            assert meta["shape"] == [SHAPE[0], 1] and meta["ndim"] == 1 and meta["dtype"] == "float64"
            np.testing.assert_array_equal(profile[0], event.fields["rows.profile"])
            _, meta, total = by_field["rows.total", event.index]
            assert meta["shape"] == [1, 1] and meta["ndim"] == 0 and total[0, 0] == event.fields["rows.total"]
        powder = np.random.default_rng(2).random(SHAPE)
        files = sink.close({"sum.sum": powder, "sum.count": 3}, Ledger())
        assert files == []
        [(topic, meta, published)] = viewer.images(1)
        assert topic == "sum.sum" and meta["index"] is None and meta["stream"] is None
        np.testing.assert_array_equal(published, powder)
        assert (sink.counts.published, sink.counts.dropped, sink.counts.skipped) == (10, 0, 0)
    finally:
        viewer.close()


def test_values_become_images_or_are_skipped() -> None:
    assert lavue_image(np.array([3 + 4j, 0j]))[0].tolist() == [5.0, 0.0]
    assert lavue_image(np.array([[True, False]])).dtype == np.uint8
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    native = lavue_image(big_endian)
    assert native.dtype.isnative and native.dtype.name == "float32" and native.flags.c_contiguous
    np.testing.assert_array_equal(native, big_endian)
    assert lavue_image(np.arange(12).reshape(3, 4).T).flags.c_contiguous
    for nothing in (np.zeros((2, 2, 2)), np.zeros((0, 3)), ShardRef("w.h5", "copy/frame", 0), "text"):
        assert lavue_image(nothing) is None


def test_reference_fields_are_skipped_and_counted(tmp_path: Path) -> None:
    sink = _sink(tmp_path, ["copy.frame", "rows.total"], max_rate_hz=0)
    sink.open(Scan("lv_000", {"data": range(0, 3)}))
    # what the driver gets on the Dask engine when the nexus sink keeps the frames on the workers
    sink.write([Event(i, "data", {"copy.frame": ShardRef("w.h5", "copy/frame", i), "rows.total": 1.0})
                for i in range(3)])
    sink.close({}, Ledger())
    assert (sink.counts.skipped, sink.counts.published) == (3, 3)


def test_a_slow_subscriber_never_blocks_writes(tmp_path: Path) -> None:
    sink = _sink(tmp_path, ["copy.frame"], max_rate_hz=0, hwm=2)
    sink.open(Scan("lv_000", {"data": range(0, 1000)}))
    assert sink.endpoint is not None
    viewer = Viewer(sink.endpoint, ["copy.frame"], queue=2)  # Lavue's default queue, and it never reads
    try:
        viewer.datasources()
        frame = np.random.default_rng(3).random((1024, 1024), dtype=np.float32)  # 1 Mpixel, 4 MB
        seconds = []
        for start in range(0, 500, 100):
            t0 = time.perf_counter()
            for i in range(start, start + 100):
                sink.write([Event(i, "data", {"copy.frame": frame})])
            seconds.append(time.perf_counter() - t0)
        counts = sink.counts
        assert counts.published + counts.dropped == 500
        # the viewer holds a few frames (its queue, ours, the TCP buffers); the rest are refused
        assert counts.published < 50 and counts.dropped > 450
        # typically 0.03 s; a write that waited for the subscriber would wait for ever, so 2 s (60x) tells the
        # two apart even on a loaded CI machine
        assert max(seconds) < 2.0, f"100 writes took {max(seconds):.3f} s with a stalled subscriber"
    finally:
        viewer.close()


def test_rate_limit_publishes_at_most_max_rate_hz(tmp_path: Path) -> None:
    sink = _sink(tmp_path, ["copy.frame"], max_rate_hz=10, hwm=100)
    sink.open(Scan("lv_000", {"data": range(0, 51)}))
    assert sink.endpoint is not None
    viewer = Viewer(sink.endpoint, ["copy.frame"])
    try:
        viewer.datasources()
        events = _events(0, 51)
        t0 = time.monotonic()
        for event in events[:50]:
            sink.write([event])
        elapsed = time.monotonic() - t0
        allowed = 1 + int(elapsed * 10)  # one per started tenth of a second
        assert 1 <= sink.counts.published <= allowed
        assert sink.counts.published + sink.counts.throttled == 50
        received = viewer.images(sink.counts.published)
        assert [m["index"] for _, m, _ in received][0] == 0  # the first event of an interval is shown
        time.sleep(0.11)
        sink.write(events[50:])
        [(_, meta, _)] = viewer.images(1)
        assert meta["index"] == 50
    finally:
        viewer.close()


def test_one_socket_serves_every_scan_of_a_run(tmp_path: Path) -> None:
    first = _sink(tmp_path, ["copy.frame"], max_rate_hz=0, hwm=10)
    first.open(Scan("lv_000", {"data": range(0, 2)}))
    assert first.endpoint is not None
    viewer = Viewer(first.endpoint, ["copy.frame"])
    try:
        viewer.datasources()
        first.write(_events(0, 2))
        assert [m["scan"] for _, m, _ in viewer.images(2)] == ["lv_000", "lv_000"]
        first.close({}, Ledger())
        second = _sink(tmp_path, ["copy.frame"], max_rate_hz=0, hwm=10)  # the engine's sink for the next scan
        second.open(Scan("lv_001", {"data": range(0, 2)}))
        assert second.endpoint == first.endpoint
        events = _events(0, 2, seed=7)
        second.write(events)
        got = viewer.images(2)
        assert [m["scan"] for _, m, _ in got] == ["lv_001", "lv_001"]
        np.testing.assert_array_equal(got[1][2], events[1].fields["copy.frame"])
        second.close({}, Ledger())
    finally:
        viewer.close()


def test_a_pipeline_run_publishes_what_it_writes(tmp_path: Path) -> None:
    frames = 6
    shared = publisher(HOST, 0, hwm=100, announce_s=0.05)  # the port the run's sink will use
    viewer = Viewer(shared.endpoint, ["copy.frame", "sum.sum"])
    try:
        viewer.datasources()
        params = {**FAST, "hwm": 100, "max_rate_hz": 0, "summary": "{scan}_liveview.json"}
        with get_engine("local") as engine:
            report = engine.run(load_pipeline(_doc(frames, params, ["copy.frame", "sum.sum"])), tmp_path)
        got = viewer.images(frames + 1)
        nexus, summary = report.files
        with h5py.File(nexus, "r") as f:
            written, powder = f["entry/copy/frame"][()], f["entry/sum/sum"][()]
        assert [m["index"] for _, m, _ in got] == [*range(frames), None]
        for k in range(frames):
            np.testing.assert_array_equal(got[k][2], written[k])
        np.testing.assert_array_equal(got[-1][2], powder)
        record = json.loads(summary.read_text())
        assert record["endpoint"] == shared.endpoint and record["published"] == frames + 1
        assert record["topics"] == {"copy.frame": "copy.frame", "sum.sum": "sum.sum"}
    finally:
        viewer.close()


def test_a_port_in_use_leaves_the_scan_running_without_live_view(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        sink = _sink(tmp_path, ["copy.frame"], port=port, summary="{scan}.json")
        with caplog.at_level(logging.ERROR, logger="lightpipe.sinks.liveview"):
            sink.open(Scan("lv_000", {"data": range(0, 2)}))
        assert sink.endpoint is None
        assert f"tcp://{HOST}:{port}" in caplog.text and "port: 0" in caplog.text
        sink.write(_events(0, 2))
        [path] = sink.close({}, Ledger())
        assert json.loads(path.read_text())["published"] == 0


@pytest.mark.parametrize(("params", "message"), [
    ({"topic": "p10/{key}"}, "without '/'"),
    ({"topic": "{detector}"}, "placeholders {key} {stage} {field}"),
    ({"host": "tcp://host"}, "host must be *"),
    ({"port": 70000}, "less than or equal to 65535"),
])
def test_bad_parameters_say_what_to_write(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("*", r"\*")):
        LiveViewParams(**params)


def test_lavue_shows_a_hot_pixel_where_the_file_has_it(tmp_path: Path) -> None:
    sink = _sink(tmp_path, ["copy.frame", "rows.profile"], max_rate_hz=0, hwm=10)
    sink.open(Scan("lv_000", {"data": range(0, 1)}))
    assert sink.endpoint is not None
    viewer = Viewer(sink.endpoint, ["copy.frame", "rows.profile"])
    try:
        viewer.datasources()
        frame = np.zeros((24, 16), dtype=np.uint16)  # 24 rows, 16 columns: a transpose cannot go unseen
        frame[13, 7] = 4000  # row 13, column 7, as h5py, silx and roi_sum's y/x address it
        profile = np.arange(5.0)
        sink.write([Event(0, "data", {"copy.frame": frame, "rows.profile": profile})])
        decoded = {}
        while len(decoded) < 2 and (parts := viewer.receive(5.0)) is not None:
            if parts[0] != b"datasources":
                topic, _, image = lavue_decode(parts)
                decoded[topic] = image
        # Lavue's image is [x, y], x horizontal: the column of the frame is x, its row is y
        image = decoded["copy.frame"]
        assert image.shape == (16, 24)
        assert np.argwhere(image == 4000).tolist() == [[7, 13]]  # x = 7, y = 13
        # a profile runs along x, as a plot of it would
        assert decoded["rows.profile"].shape == (5, 1) and decoded["rows.profile"][:, 0].tolist() == profile.tolist()
    finally:
        viewer.close()


def _updates(images: list[tuple[str, dict[str, Any], np.ndarray]]) -> dict[int, list[str]]:
    """The fields each event's update brought, in the order they came."""
    by_index: dict[int, list[str]] = {}
    for _, meta, _ in images:
        by_index.setdefault(meta["index"], []).append(meta["field"])
    return by_index


def test_a_viewer_of_every_topic_gets_every_field_of_each_update(tmp_path: Path) -> None:
    fields = ["copy.frame", "rows.profile", "rows.total"]
    sink = _sink(tmp_path, fields, max_rate_hz=0)  # hwm 2, the default: two updates of three fields each
    sink.open(Scan("lv_000", {"data": range(0, 50)}))
    assert sink.endpoint is not None
    every = Viewer(sink.endpoint, [""])  # Lavue's **ALL**: subscribed to every topic
    slow = Viewer(sink.endpoint, ["copy.frame"], queue=2)  # Lavue's default queue; it reads nothing
    try:
        every.datasources()
        slow.datasources()
        for event in _events(0, 50, seed=4):
            sink.write([event])
            time.sleep(0.01)  # events at 100 Hz: ten times the default max_rate_hz
        got = every.images(150)
        assert len(got) == 150 and every.images(1, timeout_s=0.2) == []
        assert _updates(got) == {i: fields for i in range(50)}
        assert (sink.counts.published, sink.counts.dropped) == (150, 0)
    finally:
        every.close()
        slow.close()


def test_a_stalled_viewer_misses_updates_from_their_end_never_their_middle(tmp_path: Path) -> None:
    fields = ["rows.total", "rows.profile", "copy.frame"]
    sink = _sink(tmp_path, fields, max_rate_hz=0)
    sink.open(Scan("lv_000", {"data": range(0, 300)}))
    assert sink.endpoint is not None
    stalled = Viewer(sink.endpoint, [""], queue=2)
    try:
        stalled.datasources()
        frame = np.random.default_rng(6).random((1024, 1024), dtype=np.float32)  # 4 MB: the queues fill
        t0 = time.perf_counter()
        for i in range(300):
            sink.write([Event(i, "data", {"copy.frame": frame, "rows.profile": frame[0], "rows.total": 1.0})])
        seconds = time.perf_counter() - t0
        counts = sink.counts
        assert counts.published + counts.dropped == 900 and counts.dropped > 600
        assert seconds < 5.0, f"300 updates took {seconds:.1f} s with a stalled viewer"
        updates = _updates(stalled.images(counts.published, timeout_s=10.0))
        assert updates and sum(map(len, updates.values())) == counts.published
        for index, received in updates.items():  # every update that came is the start of the fields, in order
            assert received == fields[:len(received)], f"update {index} brought {received}"
    finally:
        stalled.close()
