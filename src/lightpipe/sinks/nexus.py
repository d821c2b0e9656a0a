"""One NeXus/HDF5 file per scan, laid out so that silx and h5web plot it as it is.

Layout of ``<output>/<scan>.nxs``::

    /entry                      NXentry, @default = the main result (see below)
      /<stage>                  NXdata per stage: per-event outputs [n, ...] on an ``index``
                                axis and the axes their ports name, per-scan results on theirs
      /instrument               NXinstrument: detector (distance, pixel size, beam centre,
                                frame shape, the window of each frame field), beam, source
      /sample                   NXsample: the scan positions, where the file holds them
      /events                   index, stream and status of every row (:data:`~lightpipe.core.output.STATUS_CODES`)
      /failed_events            index, stream, stage and message of each failed event
      /process                  NXprocess: program, version, date, pipeline, scan metadata,
                                the scan's state (completed, failed, aborted, interrupted)
      /process_<stage>          NXprocess per stage: plug-in, package version, parameters

Every field carries the ``@units`` its port declares. An output whose port is
``constant`` (the same for every event: a profile's bin centres) is stored
once, 1-D, as the axis it is. The file's default plot (``@default`` of the root
and the entry) is the sink's ``default`` field if given, otherwise the main
output (:attr:`~lightpipe.core.ports.Port.main`) of the last stage in the
pipeline that has one written (a powder pattern on its radius, a scan map on
its y and x, a reconstruction's phase on its axes in metres), otherwise the
richest per-scan result. Names that NeXus reserves inside NXdata
(:data:`RESERVED_NAMES`) are refused when the pipeline loads.

Per-event rows follow acquisition order; a row that was not written (its event
failed, or was never processed because the scan stopped first) holds NaN or 0
and says why in ``/entry/events/status``. On the Dask engine each worker writes
the per-event arrays it computed into one composite file
(``<scan>_parts/<worker>.h5``) and the scan file maps them with virtual
datasets: no file per event, and the driver never carries the frames.

One writer per result file: the sink claims ``<scan>.nxs`` with a lock file made
by ``O_CREAT|O_EXCL`` (:class:`~lightpipe.core.output.OutputClaim`, the one-writer
contract of every result file), writes ``.<scan>.nxs.partial`` in
the same folder and renames it to ``<scan>.nxs`` when the scan closes, so a file
under the final name is a closed one.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import Field

from lightpipe.core.bounds import ScanFileName
from lightpipe.core.event import Event, Scan
from lightpipe.core.hdf5 import Compression, compression_filters, write_provenance
from lightpipe.core.ledger import Ledger
# the status codes are the core's (one meaning in every result file); importing them from here keeps working
from lightpipe.core.output import (
    FAILED, NOT_PROCESSED, WRITTEN, OutputClaim, mark_failures, write_state, write_status_codes,
)
from lightpipe.core.ports import Port
from lightpipe.core.sink import ShardWriter, Sink, SinkParams
from lightpipe.sinks.nexus_layout import write_instrument, write_sample, write_stage_processes

log = logging.getLogger(__name__)

class NexusParams(SinkParams):
    """Parameters of the NeXus sink."""

    filename: ScanFileName = Field(
        "{scan}.nxs", description="File name in the output directory, no / or \\; {scan} is the scan name"
    )
    compression: Compression = Field(
        "none", description="Filter of arrays: none (every HDF5 reader opens it, fastest), gzip (level 1, readable "
        "everywhere) or bitshuffle (LZ4; readers need hdf5plugin); see docs/result-files.md")
    shards: bool = Field(True, description="On distributed engines, write per-event arrays on the workers")
    default: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w-]*\.[\w-]+$", max_length=200,
        description="Field (stage.output) the file's default plot shows; default the pipeline's main result")


#: Units as NeXus spells them, where lightpipe's ports spell them otherwise.
NEXUS_UNITS = {"px": "pixel"}
#: Names NeXus gives a meaning inside NXdata: ``errors`` and ``<field>_errors`` are the uncertainties of a field
#: (with its shape), ``signal`` and ``axes`` the attributes naming the plotted field and its axes.
RESERVED_NAMES = ("errors", "signal", "axes")


def reserved_problem(key: str, ports: dict[str, Port]) -> str | None:
    """Why the field ``key`` (``stage.output``) cannot be written into its stage's NXdata group, or ``None``.

    ``<name>_errors`` is allowed where it means what NeXus means: the stage also
    outputs ``<name>``, with as many dimensions.
    """
    group, _, name = key.partition(".")
    measured = ports.get(f"{group}.{name.removesuffix('_errors')}")
    if name.endswith("_errors") and name != "_errors" and measured is not None:
        if measured.ndim == ports[key].ndim and measured.scan == ports[key].scan:
            return None
    if name in RESERVED_NAMES or name.endswith("_errors"):
        return (f"NeXus reserves {name!r} inside NXdata for the uncertainties of a field of the same shape, or for "
                f"naming the plotted fields, so viewers would misread {key!r}; rename the stage's output")
    return None


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

    def __init__(self, directory: str, fields: list[str], filters: Compression, run: str) -> None:
        self.directory = directory
        self.fields = fields
        self.filters = filters
        self.run = run  # in the file name: a re-run of the scan never appends to the files an earlier result maps

    def write(self, events: list[Event]) -> dict[tuple[int, str], Any]:
        refs: dict[tuple[int, str], Any] = {}
        path = os.path.join(self.directory, f"{socket.gethostname()}-{os.getpid()}-{self.run}.h5")
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

    @classmethod
    def field_problems(cls, params: Any, fields: list[str], ports: dict[str, Port]) -> list[tuple[tuple[Any, ...], str]]:
        problems = [(("fields", i), why) for i, key in enumerate(fields) if key in ports
                    and (why := reserved_problem(key, ports)) is not None]
        if params.default is not None and params.default not in fields:
            problems.append((("params", "default"), f"the default plot {params.default!r} is not among the fields this "
                             f"sink writes ({', '.join(fields)}); add it to 'fields' or pick one of them"))
        return problems

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
        self.claim = OutputClaim(self.path, self.pipeline.name)
        self.claim.acquire()
        self.run = uuid.uuid4().hex[:8]
        try:
            self.file = h5py.File(self.claim.partial, "w", locking=False)
        except BaseException:
            self.claim.release()
            raise
        self.file.attrs["default"] = "entry"
        self.file.attrs["creator"] = "lightpipe"
        self.entry = self.file.create_group("entry")
        self.entry.attrs["NX_class"] = "NXentry"
        self.entry["start_time"] = datetime.now(timezone.utc).isoformat()
        self.entry["title"] = scan.name
        self.status = np.full(self.n_rows, NOT_PROCESSED, np.int8)
        self.streams_of = np.array([scan.stream_of(i) for i in self.rows] or [""], dtype="S16")[: self.n_rows]
        self.refs: dict[str, dict[int, ShardRef]] = {}
        self.datasets: dict[str, h5py.Dataset] = {}
        self.scalars: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.event_fields = [k for k in self.fields if not self.pipeline.port(k).scan]
        self.constant_fields = {k for k in self.event_fields if self.pipeline.port(k).constant}
        self._write_process()
        self.file.flush()  # a run killed from here on leaves a readable partial file that says "running"

    def shard_writer(self) -> ShardWriter | None:
        if not self.params.shards:
            return None
        arrays = [k for k in self.event_fields if k not in self.constant_fields]  # constants come to the driver
        return NexusShardWriter(str(self.parts_dir), arrays, self.params.compression, self.run)

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
                self.status[row] = FAILED
                continue
            self.status[row] = WRITTEN
            for key in self.event_fields:
                value = event.fields.get(key)
                if value is None:
                    continue
                if key in self.constant_fields:
                    self._keep_constant(key, value, event.index)
                elif isinstance(value, ShardRef):
                    self.refs.setdefault(key, {})[row] = value
                elif np.ndim(value) == 0:  # scalars are gathered and written once, at close
                    if key not in self.scalars:
                        dtype = np.asarray(value).dtype
                        self.scalars[key] = np.full(self.n_rows, _fill(dtype), dtype)
                    self.scalars[key][row] = value
                else:
                    self._dataset(key, value)[row] = value

    def _keep_constant(self, key: str, value: Any, index: int) -> None:
        """Keep the first value of a field declared the same for every event; refuse one that is not."""
        value = np.asarray(value)
        first = self.constants.setdefault(key, value)
        if first.shape != value.shape or not np.array_equal(first, value, equal_nan=first.dtype.kind in "fc"):
            raise ValueError(f"{key} is declared the same for every event (its port is constant) but event {index} "
                             f"has another value; the stage {key.split('.')[0]!r} breaks its own declaration")

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
        """Write what the scan gathered and its state, close the partial file and rename it to the result's name.

        If writing fails, the partial file stays (its name says it is not a
        result) and the lock is released.
        """
        with self.claim.completing(self.scan.name):
            try:
                self._finish(results, ledger)
            finally:
                self.file.close()
        self._remove_unmapped_parts()
        return [self.path]

    def _finish(self, results: dict[str, Any], ledger: Ledger) -> None:
        for key, refs in self.refs.items():
            self._virtual(key, refs)
        for key, values in self.scalars.items():
            group_name, name = _dataset_name(key)
            self.entry.require_group(group_name).create_dataset(name, data=values)
        for key, value in self.constants.items():
            group_name, name = _dataset_name(key)
            self.entry.require_group(group_name).create_dataset(name, data=value)
        index = np.array(sorted(self.rows, key=self.rows.get), dtype=np.int64)
        events = self.entry.create_group("events")
        events.attrs["NX_class"] = "NXcollection"
        events["index"] = index
        events["stream"] = self.streams_of
        write_status_codes(events.create_dataset("status", data=self.status),
                           "0 written; 1 failed (stage and message in /entry/failed_events); 2 not processed: never "
                           "received, or still in flight when the scan stopped. Rows not written hold NaN (0 for "
                           "integers)")
        self._write_scan_results(results)
        self._write_units()
        self._write_nxdata(index)
        self._write_failures(ledger)
        self._write_metadata()
        write_sample(self.entry, self.scan.metadata)
        self._write_state(ledger)
        self.entry["end_time"] = datetime.now(timezone.utc).isoformat()

    def _remove_unmapped_parts(self) -> None:
        """Delete composite files in ``<scan>_parts`` that the new result does not map (an earlier run's)."""
        if not self.parts_dir.is_dir():
            return
        mapped = {ref.file for refs in self.refs.values() for ref in refs.values()}
        for part in self.parts_dir.glob("*.h5"):
            if part.name not in mapped:
                part.unlink(missing_ok=True)
        if not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()

    def _write_scan_results(self, results: dict[str, Any]) -> None:
        for key in self.fields:
            if key in results:
                group_name, name = _dataset_name(key)
                group = self.entry.require_group(group_name)
                value = np.asarray(results[key])
                filters = compression_filters(self.params.compression) if value.ndim >= 2 else {}
                group.create_dataset(name, data=value, **filters)

    def _write_units(self) -> None:
        """``@units`` on every written field whose port declares a unit (NeXus readers label axes with it)."""
        for key in self.fields:
            port = self.pipeline.ports.get(key)
            group_name, name = _dataset_name(key)
            if port is not None and port.unit and f"{group_name}/{name}" in self.entry:
                self.entry[group_name][name].attrs["units"] = NEXUS_UNITS.get(port.unit, port.unit)

    def _write_nxdata(self, index: np.ndarray) -> None:
        """Mark each stage's group NXdata with its signal and axes, and point ``@default`` at the main result."""
        best: tuple[int, int, int] | None = None
        default = None
        order = {name: k for k, name in enumerate(self.pipeline.stages)}
        for group_name in sorted(dict.fromkeys(_dataset_name(k)[0] for k in self.fields), key=lambda g: order.get(g, -1)):
            if group_name not in self.entry:
                continue
            group = self.entry[group_name]
            names = [n for n in group if isinstance(group[n], h5py.Dataset)]
            ports = {n: self.pipeline.ports.get(f"{group_name}.{n}") or Port() for n in names}
            axis_names = {a for n in names for a in ports[n].axes}
            main = [n for n in names if ports[n].main]
            candidates = main or [n for n in names if n not in axis_names and not ports[n].constant] or names
            if not candidates:
                continue
            # a field called data is the signal, as NeXus means it
            signal = "data" if "data" in candidates else max(candidates, key=lambda n: group[n].ndim)
            wanted = self.params.default
            if wanted is not None and _dataset_name(wanted)[0] == group_name:
                signal = _dataset_name(wanted)[1]
            group.attrs["NX_class"] = "NXdata"
            group.attrs["signal"] = signal
            if "title" not in group:  # what viewers print above the plot: the stage (an element's map: Fe_K) and field
                description = ports[signal].description
                group["title"] = f"{group_name}.{signal}" + (f": {description}" if description else "")
            ds = group[signal]
            per_event = f"{group_name}.{signal}" in self.event_fields and signal not in self.constants
            axes = self._axes(group, ports[signal], ds.shape[1:] if per_event else ds.shape)
            if per_event:
                if "index" not in group:
                    group["index"] = index
                axes = ["index", *axes]
            if ds.ndim:
                group.attrs["axes"] = axes
            # a main result wins, the last stage's among several; otherwise per-scan over per-event, then the richest
            rank = (1, 0, 0) if ports[signal].main else (0, int(not per_event), ds.ndim)
            if best is None or rank >= best:  # ties: the later stage
                best, default = rank, group_name
        if self.params.default is not None and _dataset_name(self.params.default)[0] in self.entry:
            default = _dataset_name(self.params.default)[0]
        if default is not None:
            self.entry.attrs["default"] = default

    @staticmethod
    def _axes(group: h5py.Group, port: Port, shape: tuple[int, ...]) -> list[str]:
        """The names of the 1-D fields of ``group`` that the port says label each dimension of ``shape``; ``.`` for
        a dimension without one (a declared axis that was not written, or whose length does not match)."""
        axes = []
        for k, n in enumerate(shape):
            name = port.axes[k] if k < len(port.axes) else None
            fits = name is not None and isinstance(group.get(name), h5py.Dataset) and group[name].shape == (n,)
            axes.append(name if fits else ".")
        return axes

    def _write_failures(self, ledger: Ledger) -> None:
        failed = self.entry.create_group("failed_events")
        failed.attrs["NX_class"] = "NXcollection"
        rows = sorted(ledger.failed, key=lambda e: e.index)
        failed["index"] = np.array([e.index for e in rows], dtype=np.int64)
        text = h5py.string_dtype()
        failed.create_dataset("stream", data=[e.stream for e in rows], dtype=text)
        failed.create_dataset("stage", data=[e.stage for e in rows], dtype=text)
        failed.create_dataset("message", data=[e.message for e in rows], dtype=text)
        mark_failures(self.status, self.rows, ledger)
        self.entry["events/status"][...] = self.status

    def _write_process(self) -> None:
        """Provenance, parameters and scan metadata, with the state ``running`` until the scan closes."""
        proc = self.entry.create_group("process")
        proc.attrs["NX_class"] = "NXprocess"
        write_provenance(proc, self.pipeline.document)
        proc["pipeline_name"] = self.pipeline.name
        write_stage_processes(self.entry, self.pipeline)
        self._write_metadata()
        proc["state"] = "running"

    def _write_metadata(self) -> None:
        """The scan's metadata, and the instrument it describes; what a source learns while the scan runs (a missing
        series end) is added at close."""
        write_instrument(self.entry, self.pipeline, self.scan.metadata, self.fields)
        meta = self.entry["process"].require_group("scan_metadata")
        meta.attrs["NX_class"] = "NXcollection"
        for key, value in self.scan.metadata.items():
            if key not in meta:
                meta[key] = value if not isinstance(value, (dict, type(None))) else json.dumps(value)

    def _write_state(self, ledger: Ledger) -> None:
        """The scan's end state (``completed``, ``failed``, ``aborted``, ``interrupted``), error and counts."""
        write_state(self.entry["process"], ledger)
