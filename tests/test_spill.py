"""The spill buffer keeps everything: memory first, then segment files on disk."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lightpipe.core.spill import SpillBuffer


def test_spills_beyond_the_memory_bound_and_loses_nothing(tmp_path: Path) -> None:
    buf = SpillBuffer(memory_bytes=3000, directory=str(tmp_path), segment_bytes=5000)
    rng = np.random.default_rng(0)
    items = {i: [b"header", rng.integers(0, 255, 1000, dtype=np.uint8).tobytes()] for i in range(20)}
    for i, item in items.items():
        buf.put(i, item)
    assert buf.memory_used <= 3000 and buf.on_disk == buf.spilled > 0 and buf.held == 20
    segments = sorted(os.listdir(tmp_path))
    assert 1 < len(segments) < 20  # a few segment files, not one per event
    for i, item in items.items():
        assert buf.get(i) == item
    for i in range(20):
        buf.release(i)
    assert buf.held == 0 and len(os.listdir(tmp_path)) <= 1  # only the segment being written may stay
    buf.close()
    assert os.listdir(tmp_path) == []


def test_an_index_is_held_once() -> None:
    buf = SpillBuffer(memory_bytes=10)
    buf.put(1, b"x")
    with pytest.raises(KeyError, match="already held"):
        buf.put(1, b"y")
    buf.close()
