"""The topology: components, counters, rate, heartbeats, abort requests, observers."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightpipe.core.topology import Component, Topology


def test_counters_and_snapshot_are_json() -> None:
    topology = Topology("powder")
    receiver = topology.add("receiver", "receiver", {"endpoint": "tcp://eiger:9999", "raw": Path("/data/raw"),
                                                      "threshold_ev": np.float32(8000.5), "shape": (512, 1024)})
    buffer = topology.add("buffer", "buffer", {"capacity": 256}, heartbeat_s=None)
    receiver.set_state("running", "series 7")
    receiver.add_in(40)
    receiver.add_out(32)
    receiver.add_failed(3)
    buffer.set_fill(0.25)
    snap = topology.snapshot()
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert snap["pipeline"] == "powder" and snap["pid"] == topology.pid and snap["host"] == topology.host
    assert snap["scan"] == {"name": None, "state": "waiting", "started_at": None, "scans_done": 0}
    r, b = snap["components"]
    assert (r["name"], r["kind"], r["state"], r["detail"]) == ("receiver", "receiver", "running", "series 7")
    assert (r["events_in"], r["events_out"], r["failed"], r["fill"]) == (40, 32, 3, None)
    assert r["config"] == {"endpoint": "tcp://eiger:9999", "raw": "/data/raw", "threshold_ev": 8000.5,
                           "shape": [512, 1024]}
    assert r["rate"] > 0 and 0 <= r["heartbeat_age_s"] < 1
    assert (b["kind"], b["fill"], b["heartbeat_s"], b["events_out"], b["rate"]) == ("buffer", 0.25, None, 0, 0.0)
    receiver.reset()
    again = receiver.snapshot()
    assert (again["events_in"], again["events_out"], again["failed"], again["rate"]) == (0, 0, 0, 0.0)
    assert again["state"] == "running"


def test_rate_counts_only_the_recent_window() -> None:
    window = 0.4
    sink = Component("nexus", "sink", rate_window_s=window, rate_buckets=20)
    stamps = []
    t_end = time.monotonic() + 1.0
    while (now := time.monotonic()) < t_end:  # a steady stream of about 1 kHz
        sink.add_out(1)
        stamps.append(now)
        time.sleep(0.001)
    now = time.monotonic()
    recent = sum(1 for t in stamps if t > now - window)
    rate = sink.snapshot(now=now)["rate"]
    assert recent / window * 0.8 < rate < recent / window * 1.2
    assert rate < len(stamps) / window * 0.7  # the older events are not in it
    time.sleep(window * 1.2)
    idle = sink.snapshot()
    assert idle["rate"] == 0.0 and idle["events_out"] == len(stamps)


def test_missed_heartbeats_are_reported_as_failed_until_it_beats_again() -> None:
    topology = Topology("live", missed=3)
    worker = topology.add("worker-0", "worker", heartbeat_s=0.05)
    done = topology.add("sink", "sink", heartbeat_s=0.05)
    passive = topology.add("buffer", "buffer", heartbeat_s=None)
    worker.set_state("running", "chunk 12")
    done.set_state("stopped")
    assert topology.snapshot()["components"][0]["state"] == "running"
    time.sleep(0.2)
    w, d, p = topology.snapshot()["components"]
    assert w["state"] == "failed" and w["heartbeat_age_s"] > 0.15
    assert re.fullmatch(r"missed heartbeats: last \d+\.\d s ago; was running: chunk 12", w["detail"])
    assert d["state"] == "stopped" and p["state"] == "starting"  # no beats expected of these
    assert worker.state == "running"  # only reported: the component may come back
    worker.beat()
    assert topology.snapshot()["components"][0]["state"] == "running"
    time.sleep(0.2)
    worker.add_out(1)  # progress is a heartbeat too
    assert topology.snapshot()["components"][0]["state"] == "running"


def test_counters_are_exact_under_threads() -> None:
    component = Component("stage:correct", "stage")
    n = 100_000

    def hammer() -> None:
        for _ in range(n):
            component.add_in(1)
            component.add_out(1)
        component.add_failed(7)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = component.snapshot()
    assert (snap["events_in"], snap["events_out"], snap["failed"]) == (2 * n, 2 * n, 14)


def test_abort_is_only_accepted_while_a_scan_runs() -> None:
    topology = Topology("ptycho")
    assert topology.request_abort("too early") is None
    assert not topology.abort_requested and topology.snapshot()["abort"]["requested"] is False
    topology.begin_scan("scan_0042")
    assert topology.scan == "scan_0042"
    assert topology.request_abort("sample moved") == "scan_0042"
    assert topology.abort_requested and topology.abort_event.wait(0) and topology.abort_reason == "sample moved"
    snap = topology.snapshot()
    assert snap["abort"]["requested"] and snap["abort"]["reason"] == "sample moved"
    assert snap["abort"]["at"] == pytest.approx(time.time(), abs=5)
    assert snap["scan"]["name"] == "scan_0042" and snap["scan"]["state"] == "running"
    topology.end_scan("aborted")
    assert not topology.abort_requested and topology.abort_reason == "" and topology.scan is None
    assert topology.snapshot()["scan"]["scans_done"] == 1
    topology.begin_scan("scan_0043")
    topology.request_abort("x")
    topology.clear_abort()
    assert not topology.abort_requested
    with pytest.raises(ValueError, match="'completed', 'failed' or 'aborted'"):
        topology.end_scan("done")


def test_observers_hear_structure_not_counters() -> None:
    topology = Topology("tomo")
    heard: list[dict[str, Any]] = []

    def broken(change: dict[str, Any]) -> None:
        raise RuntimeError("observer bug")

    topology.subscribe(broken)
    unsubscribe = topology.subscribe(heard.append)
    sink = topology.add("nexus", "sink")
    sink.add_out(100)
    sink.set_fill(0.5)
    sink.set_state("running")
    sink.set_state("running")  # no change, nothing to hear
    topology.begin_scan("s1")
    topology.request_abort("why")
    topology.end_scan("aborted")
    topology.remove("nexus")
    sink.set_state("stopped")  # removed: no longer heard
    unsubscribe()
    topology.add("late", "engine")
    assert [(c["type"], c.get("state")) for c in heard] == [
        ("added", None), ("state", "running"), ("scan", "running"), ("abort", None), ("scan", "aborted"),
        ("removed", None)]
    assert all(c["pipeline"] == "tomo" for c in heard)


def test_bad_input_is_refused_with_a_clear_message() -> None:
    topology = Topology("p")
    c = topology.add("a", "stage")
    with pytest.raises(ValueError, match="unknown kind 'detector'; use one of source, receiver"):
        topology.add("b", "detector")
    with pytest.raises(ValueError, match="'a' is already registered"):
        topology.add("a", "stage")
    with pytest.raises(ValueError, match="unknown state 'busy'"):
        c.set_state("busy")
    with pytest.raises(ValueError, match="fill must be between 0 and 1, got 1.5"):
        c.set_fill(1.5)
    with pytest.raises(ValueError, match="heartbeat_s must be positive"):
        topology.add("c", "sink", heartbeat_s=0)
    with pytest.raises(KeyError, match="no component 'zz'.*registered: a"):
        topology["zz"]
    assert "a" in topology and topology["a"] is c and topology.components == [c]
    assert topology.remove("a") is c and topology.remove("a") is None and "a" not in topology
