"""One NeXus/HDF5 file per scan, laid out so that silx and h5web plot it as it is.

Layout of ``<output>/<scan>.nxs``::

    /entry                      NXentry, @default = the last stage written
      /<stage>                  NXdata per stage: per-event outputs [n, ...] with an
                                ``index`` axis, or the stage's per-scan results
      /events                   index, stream and status (0 ok, 1 failed) of every row
      /failed_events            index, stream, stage and message of each failed event
      /process                  NXprocess: program, version, date, pipeline, parameters

Per-event rows follow acquisition order; a failed event keeps its row (filled
with NaN or 0) and is flagged in ``/entry/events/status``. On the Dask engine
each worker writes the per-event arrays it computed into one composite file
(``<scan>_parts/<worker>.h5``) and the scan file maps them with virtual
datasets: no file per event, and the driver never carries the frames.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import Field

from lightpipe.core.event import Event, Scan
from lightpipe.core.hdf5 import Compression, compression_filters, write_provenance
from lightpipe.core.ledger import Ledger
from lightpipe.core.sink import ShardWriter, Sink, SinkParams


class NexusParams(SinkParams):
    """Parameters of the NeXus sink."""

    filename: str = Field("{scan}.nxs", description="File name in the output directory; {scan} is the scan name")
    compression: Compression = Field(
        "bitshuffle", description="Filter for per-event arrays (bitshuffle-LZ4 needs hdf5plugin to read)"
    )
    shards: bool = Field(True, description="On distributed engines, write per-event arrays on the workers")


@dataclass(frozen=True)
class ShardRef:
    """Where a worker stored one event's array: file, dataset and row."""

    file: str
    dataset: str
    row: int


def _dataset_name(key: str) -> tuple[str, str]:
    """``stage.field`` -> (group, dataset)."""
    group, _, name = key.partition(".")
    return group, name


def _fill(dtype: np.dtype) -> Any:
    return np.nan if dtype.kind in "fc" else 0


_SHARD_FILES: dict[str, h5py.File] = {}
_SHARD_LOCK = threading.Lock()


class NexusShardWriter(ShardWriter):
    """Appends a worker's per-event arrays to that worker's composite file."""

    def __init__(self, directory: str, fields: list[str], filters: Compression) -> None:
        self.directory = directory
        self.fields = fields
        self.filters = filters

    def write(self, events: list[Event]) -> dict[tuple[int, str], Any]:
        refs: dict[tuple[int, str], Any] = {}
        path = os.path.join(self.directory, f"{socket.gethostname()}-{os.getpid()}.h5")
        with _SHARD_LOCK:
            f = _SHARD_FILES.get(path)
            if f is None:
                os.makedirs(self.directory, exist_ok=True)
                f = _SHARD_FILES[path] = h5py.File(path, "a", locking=False)
            for event in events:
                for key in self.fields:
                    value = event.fields.get(key)
                    if not isinstance(value, np.ndarray) or value.ndim == 0:
                        continue
                    name = key.replace(".", "/")
                    if name not in f:
                        f.create_dataset(name, (0, *value.shape), value.dtype, maxshape=(None, *value.shape),
                                         chunks=(1, *value.shape), **compression_filters(self.filters))
                    ds = f[name]
                    row = ds.shape[0]
                    ds.resize(row + 1, axis=0)
                    ds[row] = value
                    refs[event.index, key] = ShardRef(os.path.basename(path), name, row)
            f.flush()
        return refs

    @staticmethod
    def close_all() -> None:
        with _SHARD_LOCK:
            for f in _SHARD_FILES.values():
                f.close()
            _SHARD_FILES.clear()


class NexusSink(Sink):
    """Write one NeXus/HDF5 file per scan with per-event and per-scan results."""

    name = "nexus"
    Params = NexusParams

    def open(self, scan: Scan) -> None:
        self.scan = scan
        self.path = self.output_dir / self.params.filename.format(scan=scan.name)
        self.parts_dir = self.output_dir / f"{scan.name}_parts"
        self.rows = {}
        row = 0
        for r in scan.indices(set(self.streams)):
            for index in r:
                self.rows[index] = row
                row += 1
        self.n_rows = row
        self.file = h5py.File(self.path, "w", locking=False)
        self.file.attrs["default"] = "entry"
        self.file.attrs["creator"] = "lightpipe"
        self.entry = self.file.create_group("entry")
        self.entry.attrs["NX_class"] = "NXentry"
        self.entry["start_time"] = datetime.now(timezone.utc).isoformat()
        self.entry["title"] = scan.name
        self.status = np.zeros(self.n_rows, np.int8)
        self.streams_of = np.array([scan.stream_of(i) for i in self.rows] or [""], dtype="S16")[: self.n_rows]
        self.refs: dict[str, dict[int, ShardRef]] = {}
        self.datasets: dict[str, h5py.Dataset] = {}
        self.scalars: dict[str, np.ndarray] = {}
        self.event_fields = [k for k in self.fields if not self.pipeline.port(k).scan]

    def shard_writer(self) -> ShardWriter | None:
        if not self.params.shards:
            return None
        return NexusShardWriter(str(self.parts_dir), self.event_fields, self.params.compression)

    def _dataset(self, key: str, value: Any) -> h5py.Dataset:
        if key in self.datasets:
            return self.datasets[key]
        group_name, name = _dataset_name(key)
        group = self.entry.require_group(group_name)
        arr = np.asarray(value)
        chunks = (1, *arr.shape) if arr.ndim >= 1 else None
        filters = compression_filters(self.params.compression) if arr.ndim >= 1 else {}
        self.datasets[key] = group.create_dataset(name, (self.n_rows, *arr.shape), arr.dtype, chunks=chunks,
                                                  fillvalue=_fill(arr.dtype), **filters)
        return self.datasets[key]

    def write(self, events: list[Event]) -> None:
        for event in events:
            row = self.rows[event.index]
            if event.error is not None:
                self.status[row] = 1
                continue
            for key in self.event_fields:
                value = event.fields.get(key)
                if value is None:
                    continue
                if isinstance(value, ShardRef):
                    self.refs.setdefault(key, {})[row] = value
                elif np.ndim(value) == 0:  # scalars are gathered and written once, at close
                    if key not in self.scalars:
                        dtype = np.asarray(value).dtype
                        self.scalars[key] = np.full(self.n_rows, _fill(dtype), dtype)
                    self.scalars[key][row] = value
                else:
                    self._dataset(key, value)[row] = value

    def _virtual(self, key: str, refs: dict[int, ShardRef]) -> None:
        """Map rows stored in composite files with one virtual dataset, one mapping per run of rows."""
        sample = next(iter(refs.values()))
        with h5py.File(self.parts_dir / sample.file, "r", locking=False) as f:
            shape, dtype = f[sample.dataset].shape[1:], f[sample.dataset].dtype
        layout = h5py.VirtualLayout((self.n_rows, *shape), dtype)
        rows = sorted(refs)
        start = 0
        for k in range(1, len(rows) + 1):
            ref0 = refs[rows[start]]
            if k < len(rows):
                ref = refs[rows[k]]
                if ref.file == ref0.file and rows[k] - rows[start] == k - start and ref.row - ref0.row == k - start:
                    continue
            n = k - start
            src = h5py.VirtualSource(f"{self.parts_dir.name}/{ref0.file}", ref0.dataset, shape=(ref0.row + n, *shape))
            layout[rows[start] : rows[start] + n] = src[ref0.row : ref0.row + n]
            start = k
        group_name, name = _dataset_name(key)
        self.entry.require_group(group_name).create_virtual_dataset(name, layout, fillvalue=_fill(dtype))

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        for key, refs in self.refs.items():
            self._virtual(key, refs)
        for key, values in self.scalars.items():
            group_name, name = _dataset_name(key)
            self.entry.require_group(group_name).create_dataset(name, data=values)
        index = np.array(sorted(self.rows, key=self.rows.get), dtype=np.int64)
        events = self.entry.create_group("events")
        events.attrs["NX_class"] = "NXcollection"
        events["index"] = index
        events["stream"] = self.streams_of
        events["status"] = self.status
        self._write_scan_results(results)
        self._write_nxdata(index)
        self._write_failures(ledger)
        self._write_process(ledger)
        self.entry["end_time"] = datetime.now(timezone.utc).isoformat()
        self.file.close()
        return [self.path]

    def _write_scan_results(self, results: dict[str, Any]) -> None:
        for key in self.fields:
            if key in results:
                group_name, name = _dataset_name(key)
                group = self.entry.require_group(group_name)
                value = np.asarray(results[key])
                filters = compression_filters(self.params.compression) if value.ndim >= 2 else {}
                group.create_dataset(name, data=value, **filters)

    def _write_nxdata(self, index: np.ndarray) -> None:
        """Mark each stage's group NXdata; the default plot is the richest per-event result."""
        best: tuple[int, int] | None = None
        default = None
        for group_name in dict.fromkeys(_dataset_name(k)[0] for k in self.fields):
            if group_name not in self.entry:
                continue
            group = self.entry[group_name]
            names = [n for n in group if isinstance(group[n], h5py.Dataset)]
            if not names:
                continue
            group.attrs["NX_class"] = "NXdata"
            signal = max(names, key=lambda n: group[n].ndim)
            group.attrs["signal"] = signal
            ds = group[signal]
            per_event = ds.shape[:1] == (self.n_rows,) and f"{group_name}.{signal}" in self.event_fields
            if per_event and "index" not in group:
                group["index"] = index
            if per_event:
                group.attrs["axes"] = ["index"] + ["."] * (ds.ndim - 1)
            rank = (int(per_event), ds.ndim)
            if best is None or rank >= best:  # ties: the later stage
                best, default = rank, group_name
        if default is not None:
            self.entry.attrs["default"] = default

    def _write_failures(self, ledger: Ledger) -> None:
        failed = self.entry.create_group("failed_events")
        failed.attrs["NX_class"] = "NXcollection"
        rows = sorted(ledger.failed, key=lambda e: e.index)
        failed["index"] = np.array([e.index for e in rows], dtype=np.int64)
        text = h5py.string_dtype()
        failed.create_dataset("stream", data=[e.stream for e in rows], dtype=text)
        failed.create_dataset("stage", data=[e.stage for e in rows], dtype=text)
        failed.create_dataset("message", data=[e.message for e in rows], dtype=text)
        for row in (self.rows[e.index] for e in rows if e.index in self.rows):
            self.status[row] = 1
        self.entry["events/status"][...] = self.status

    def _write_process(self, ledger: Ledger) -> None:
        proc = self.entry.create_group("process")
        proc.attrs["NX_class"] = "NXprocess"
        write_provenance(proc, self.pipeline.document)
        proc["pipeline_name"] = self.pipeline.name
        for name, node in self.pipeline.stages.items():
            note = proc.create_group(name)
            note.attrs["NX_class"] = "NXparameters"
            note["stage"] = node.cls.name or node.cls.__name__
            note["params"] = node.params.model_dump_json()
        meta = proc.create_group("scan_metadata")
        meta.attrs["NX_class"] = "NXcollection"
        for key, value in self.scan.metadata.items():
            meta[key] = value if not isinstance(value, (dict, type(None))) else json.dumps(value)
        proc["state"] = ledger.state
        if ledger.error:
            proc["error"] = ledger.error
        proc.attrs["received"] = ledger.received
        proc.attrs["written"] = ledger.written
        proc.attrs["failed"] = len(ledger.failed)
