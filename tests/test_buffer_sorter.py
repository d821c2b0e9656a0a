"""Pipeline buffer (bounded, fifo/lifo/priority) and data sorter."""
from __future__ import annotations

import threading
import time

import pytest

from lightpipe.core.buffer import PipelineBuffer
from lightpipe.core.ledger import Ledger
from lightpipe.core.sorter import Sorter


def test_full_buffer_makes_the_producer_wait() -> None:
    buf: PipelineBuffer[int] = PipelineBuffer(capacity=2)
    assert buf.put(1) and buf.put(2)
    assert buf.fill == 1.0
    assert not buf.put(3, timeout=0.05)  # full: the source waits, nothing is dropped
    got: list[int | None] = []
    threading.Timer(0.1, lambda: got.append(buf.get())).start()
    t0 = time.perf_counter()
    assert buf.put(3, timeout=2.0)
    assert time.perf_counter() - t0 >= 0.05
    assert got == [1] and len(buf) == 2 and buf.high_water == 2


@pytest.mark.parametrize(
    ("policy", "expected"), [("fifo", [0, 1, 2, 3]), ("lifo", [3, 2, 1, 0]), ("priority", [2, 0, 3, 1])]
)
def test_policies(policy: str, expected: list[int]) -> None:
    buf: PipelineBuffer[int] = PipelineBuffer(capacity=10, policy=policy)  # type: ignore[arg-type]
    for item, prio in zip(range(4), [1.0, 3.0, 0.0, 2.0]):
        buf.put(item, priority=prio)
    buf.close()
    assert [buf.get() for _ in range(4)] == expected
    assert buf.get() is None


def test_clear_drops_everything() -> None:
    buf: PipelineBuffer[int] = PipelineBuffer(capacity=4)
    buf.put(1)
    buf.put(2)
    assert buf.clear() == 2 and len(buf) == 0


def test_sorter_restores_order_and_refuses_duplicates() -> None:
    s: Sorter[str] = Sorter()
    assert list(s.add(2, "c")) == []
    assert list(s.add(0, "a")) == ["a"]
    assert s.held == 1
    assert list(s.add(1, "b")) == ["b", "c"]
    with pytest.raises(ValueError, match="replace, not add"):
        list(s.add(1, "b again"))


def test_ledger_counts_each_event_once() -> None:
    ledger = Ledger()
    ledger.receive(range(0, 3))
    assert ledger.in_flight == 3
    assert ledger.finish(0, "data")
    assert ledger.finish(1, "data", ("crop", "bad shape"))
    assert not ledger.finish(1, "data", ("crop", "bad shape"))
    assert (ledger.received, ledger.written, len(ledger.failed), ledger.in_flight) == (3, 1, 1, 1)
    ledger.close("source went away")
    assert ledger.state == "failed" and ledger.in_flight == 0
    assert [(f.index, f.stage) for f in ledger.failed] == [(1, "crop"), (2, "scan")]
