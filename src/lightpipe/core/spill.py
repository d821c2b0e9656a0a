"""Events that cannot wait: kept in memory up to a bound, then spilled to local disk.

A live detector cannot be told to wait. When the pipeline is slower than the
detector, received messages queue here: in memory until ``memory_bytes`` is
used, then appended to segment files on local disk (one file per
``segment_bytes``, never one file per event). Nothing is dropped; the lag is
what :attr:`SpillBuffer.held` and :attr:`SpillBuffer.spilled` report.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class _OnDisk:
    segment: int
    offset: int
    length: int


class SpillBuffer:
    """A map from event index to a picklable item, bounded in memory, spilling to disk.

    Parameters
    ----------
    memory_bytes
        Bytes of items kept in memory before new items go to disk.
    directory
        Where segment files go (default: a new temporary directory).
    segment_bytes
        Size at which a new segment file is started.
    """

    def __init__(self, memory_bytes: int = 1 << 30, directory: str | None = None, segment_bytes: int = 256 << 20) -> None:
        self.memory_bytes = memory_bytes
        self.segment_bytes = segment_bytes
        self._dir = directory or tempfile.mkdtemp(prefix="lightpipe-spill-")
        self._own_dir = directory is None
        self._memory: dict[int, tuple[Any, int]] = {}
        self._disk: dict[int, _OnDisk] = {}
        self._segments: dict[int, int] = {}  # segment -> items still stored in it
        self._segment = -1
        self._segment_file: Any = None
        self._lock = threading.Lock()
        self.memory_used = 0
        self.spilled = 0

    @staticmethod
    def size_of(item: Any) -> int:
        """Bytes an item takes: the sum of its buffers for bytes or lists of bytes."""
        if isinstance(item, (bytes, bytearray, memoryview)):
            return len(item)
        if isinstance(item, (list, tuple)):
            return sum(SpillBuffer.size_of(x) for x in item)
        return getattr(item, "nbytes", 64)

    def _path(self, segment: int) -> str:
        return os.path.join(self._dir, f"segment-{segment:06d}.bin")

    def put(self, index: int, item: Any, size: int | None = None) -> None:
        """Store ``item`` under ``index``, on disk if memory is full; ``size`` in bytes if known."""
        size = self.size_of(item) if size is None else size
        with self._lock:
            if index in self._memory or index in self._disk:
                raise KeyError(f"event {index} is already held")
            if self.memory_used + size <= self.memory_bytes:
                self._memory[index] = (item, size)
                self.memory_used += size
                return
            data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            if self._segment_file is None or self._segment_file.tell() + len(data) > self.segment_bytes:
                if self._segment_file is not None:
                    self._segment_file.close()
                self._segment += 1
                self._segment_file = open(self._path(self._segment), "ab")
                self._segments[self._segment] = 0
            offset = self._segment_file.tell()
            self._segment_file.write(data)
            self._segment_file.flush()
            self._disk[index] = _OnDisk(self._segment, offset, len(data))
            self._segments[self._segment] += 1
            self.spilled += 1

    def get(self, index: int) -> Any:
        """The item stored under ``index`` (it stays held until :meth:`release`)."""
        with self._lock:
            if index in self._memory:
                return self._memory[index][0]
            where = self._disk[index]
        with open(self._path(where.segment), "rb") as f:
            f.seek(where.offset)
            return pickle.loads(f.read(where.length))

    def release(self, index: int) -> None:
        """Forget ``index``; a segment file is deleted once all its items are released."""
        with self._lock:
            if index in self._memory:
                self.memory_used -= self._memory.pop(index)[1]
                return
            where = self._disk.pop(index, None)
            if where is None:
                return
            self._segments[where.segment] -= 1
            if self._segments[where.segment] == 0 and where.segment != self._segment:
                del self._segments[where.segment]
                os.remove(self._path(where.segment))

    def __contains__(self, index: int) -> bool:
        return index in self._memory or index in self._disk

    @property
    def held(self) -> int:
        """Items held, in memory and on disk."""
        return len(self._memory) + len(self._disk)

    @property
    def on_disk(self) -> int:
        """Items currently on disk."""
        return len(self._disk)

    def close(self) -> None:
        """Drop everything and remove the segment files."""
        with self._lock:
            if self._segment_file is not None:
                self._segment_file.close()
                self._segment_file = None
            for segment in list(self._segments):
                if os.path.exists(self._path(segment)):
                    os.remove(self._path(segment))
            self._segments.clear()
            self._memory.clear()
            self._disk.clear()
            self.memory_used = 0
            if self._own_dir and os.path.isdir(self._dir):
                os.rmdir(self._dir)
