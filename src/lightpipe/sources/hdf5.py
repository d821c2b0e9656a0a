"""HDF5 and NeXus frame stacks, including DECTRIS master files with external links.

Frames are read by the worker that processes them. Compressed data
(bitshuffle-LZ4, LZ4, Blosc, ...) is decoded through hdf5plugin. Files are
opened without HDF5 file locking, which fails on beamline NFS.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters with h5py)
import numpy as np
from pydantic import Field

from lightpipe.core.errors import SourceError
from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source, SourceParams

#: NXmx detector and beam fields copied into scan metadata, with the metadata key.
NXMX_METADATA = {
    "entry/instrument/detector/distance": "distance_m",
    "entry/instrument/detector/beam_center_x": "beam_center_x_px",
    "entry/instrument/detector/beam_center_y": "beam_center_y_px",
    "entry/instrument/detector/x_pixel_size": "x_pixel_size_m",
    "entry/instrument/detector/y_pixel_size": "y_pixel_size_m",
    "entry/instrument/detector/count_time": "count_time_s",
    "entry/instrument/beam/incident_wavelength": "wavelength_a",
    "entry/instrument/source/energy": "energy_ev",
}
_LINKED = re.compile(r"data_\d+$")
#: File-name suffixes of HDF5 and NeXus files.
HDF5_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi"})


class HDF5Params(SourceParams):
    """Parameters of the HDF5/NeXus source."""

    path: str = Field(description="HDF5/NeXus file (a DECTRIS *_master.h5 works)")
    dataset: str = Field(
        "/entry/data/data",
        description="Frame stack [n, y, x], or a group of data_NNNNNN links (DECTRIS master files)",
    )
    dark: str | None = Field(None, description="Dataset of dark frames, read as stream 'dark'")
    flat: str | None = Field(None, description="Dataset of flat-field frames, read as stream 'flat'")
    scalars: dict[str, str] = Field(default_factory=dict, description="Per-event field name -> 1-D dataset")


def hdf5_defaults(path: str) -> dict[str, Any]:
    """Parameters of the ``hdf5`` source for a file laid out as lightpipe or DECTRIS write them."""
    params: dict[str, Any] = {"path": path}
    try:
        with h5py.File(path, "r", locking=False) as f:
            data = f.get("entry/data")
            if isinstance(data, h5py.Group) and "data" not in data and any(k.startswith("data_") for k in data):
                params["dataset"] = "/entry/data"
            for stream in ("dark", "flat"):
                if f"entry/{stream}/data" in f:
                    params[stream] = f"/entry/{stream}/data"
            if isinstance(data, h5py.Group) and "monitor" in data and data["monitor"].ndim == 1:
                params["scalars"] = {"monitor": "/entry/data/monitor"}
    except FileNotFoundError as exc:
        raise SourceError(f"input file not found: {path}; check the path given to --input") from exc
    except OSError as exc:
        raise SourceError(f"cannot open {path} as HDF5 ({exc}); the file may be truncated or not HDF5") from exc
    return params


def _open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError as exc:
        raise SourceError(f"input file not found: {path}; check the path given to --input or source.params.path") from exc
    except OSError as exc:
        raise SourceError(
            f"cannot open {path} as HDF5 ({exc}); the file may be truncated, still being written, "
            "or not HDF5: check it with h5ls or copy it again"
        ) from exc


def _stacks(f: h5py.File, path: str) -> list[h5py.Dataset]:
    """The dataset(s) that make up the frame stack at ``path``."""
    if path not in f:
        found: list[str] = []
        f.visititems(lambda n, o: found.append("/" + n) if isinstance(o, h5py.Dataset) and o.ndim == 3 else None)
        hint = f"3-D datasets in the file: {', '.join(found)}" if found else "the file has no 3-D dataset"
        raise SourceError(f"{f.filename} has no dataset {path!r}; {hint}; set source.params.dataset")
    obj = f[path]
    if isinstance(obj, h5py.Group):
        parts = sorted(k for k in obj if _LINKED.match(k))
        if not parts:
            raise SourceError(f"{f.filename}:{path} is a group without data_NNNNNN datasets; name the frame dataset")
        try:
            return [obj[k] for k in parts]
        except (KeyError, OSError) as exc:
            raise SourceError(f"{f.filename}:{path}: an external data file is missing ({exc}); copy it beside the master file") from exc
    if obj.ndim != 3:
        raise SourceError(f"{f.filename}:{path} has shape {obj.shape}; a frame stack [n, y, x] is expected")
    return [obj]


class HDF5Reader(ScanReader):
    """Reads frames of one HDF5 file by index range; reopens the file lazily on each worker."""

    def __init__(self, params: HDF5Params) -> None:
        # absolute, for workers that run in another directory
        self.params = params.model_copy(update={"path": str(Path(params.path).resolve())})
        self._file: h5py.File | None = None
        self._datasets: dict[str, list[h5py.Dataset]] = {}  # looked up once per process
        f = self._h5()
        params = self.params
        streams: dict[str, range] = {}
        self._parts: dict[str, list[tuple[int, int]]] = {}
        start = 0
        shape: tuple[int, ...] | None = None
        dtype = None
        for stream, path in (("dark", params.dark), ("flat", params.flat), ("data", params.dataset)):
            if path is None:
                continue
            stacks = _stacks(f, path)
            bounds, n = [], 0
            for ds in stacks:
                bounds.append((n, n + ds.shape[0]))
                n += ds.shape[0]
                shape, dtype = (ds.shape[1:], ds.dtype) if stream == "data" else (shape, dtype)
            self._parts[stream] = bounds
            streams[stream] = range(start, start + n)
            start += n
        meta: dict[str, Any] = {"source_file": str(Path(params.path).resolve()), "frame_shape": list(shape or ()),
                                "frame_dtype": str(dtype)}
        for h5path, key in NXMX_METADATA.items():
            if h5path in f and isinstance(f[h5path], h5py.Dataset) and f[h5path].ndim == 0:
                meta[key] = f[h5path][()].item()
        for name, path in params.scalars.items():
            if path not in f:
                raise SourceError(f"{params.path} has no dataset {path!r} for scalar {name!r}; fix source.params.scalars")
        name = Path(params.path).stem.removesuffix("_master")
        self.scan = Scan(name=name, streams=streams, metadata=meta)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_datasets"] = {}
        return state

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = _open(self.params.path)
        return self._file

    def _read_frames(self, stream: str, lo: int, hi: int) -> np.ndarray:
        """Frames ``lo:hi`` of a stream (indices within the stream), across linked parts."""
        if stream not in self._datasets:
            path = {"dark": self.params.dark, "flat": self.params.flat, "data": self.params.dataset}[stream]
            self._datasets[stream] = _stacks(self._h5(), str(path))
        parts = [(ds, a, b) for ds, (a, b) in zip(self._datasets[stream], self._parts[stream]) if a < hi and lo < b]
        # One uninitialised array, filled by HDF5 in place: h5py's ds[a:b] zero-fills the array it
        # makes first, a second pass over every frame's memory (twice the cost on uncompressed data).
        out = np.empty((hi - lo, *parts[0][0].shape[1:]), dtype=parts[0][0].dtype)
        for ds, a, b in parts:
            x0, x1 = max(lo, a), min(hi, b)
            ds.read_direct(out, np.s_[x0 - a : x1 - a], np.s_[x0 - lo : x1 - lo])
        return out

    def read(self, start: int, stop: int) -> list[Event]:
        events: list[Event] = []
        for r in self.scan.indices():  # a range may cross streams: read each part from its stack
            lo, hi = max(start, r.start), min(stop, r.stop)
            if lo < hi:
                events.extend(self._read_stream(lo, hi))
        return events

    def _read_stream(self, start: int, stop: int) -> list[Event]:
        """Events ``start`` to ``stop - 1``, all of one stream."""
        stream = self.scan.stream_of(start)
        first = self.scan.streams[stream].start
        lo, hi = start - first, stop - first
        try:
            frames: Any = self._read_frames(stream, lo, hi)
        except (OSError, ValueError, KeyError):
            frames = None  # one bad chunk: read frame by frame to isolate it
        events = []
        scalars = {name: self._h5()[path] for name, path in self.params.scalars.items()} if stream == "data" else {}
        for i in range(lo, hi):
            event = Event(index=first + i, stream=stream)
            try:
                frame = frames[i - lo] if frames is not None else self._read_frames(stream, i, i + 1)[0]
                event.fields["frame"] = frame
                for name, ds in scalars.items():
                    event.fields[name] = ds[i]
            except (OSError, ValueError, KeyError, IndexError) as exc:
                event.fail("source", f"cannot read frame {i} of stream {stream!r} from {self.params.path}: {exc}")
            events.append(event)
        return events

    def close(self) -> None:
        self._datasets.clear()
        if self._file is not None:
            self._file.close()
            self._file = None


def scalar_ports(outputs: dict[str, Port], scalars: dict[str, str]) -> dict[str, Port]:
    """``outputs`` plus one scalar port per per-event dataset of ``scalars`` (field name -> dataset path)."""
    ports = dict(outputs)
    for name, path in scalars.items():
        ports[name] = Port(ndim=0, dtype="number", description=f"Per-event value from {path}")
    return ports


class HDF5Source(Source):
    """Frames from an HDF5/NeXus file: one file, one scan."""

    name = "hdf5"
    Params = HDF5Params

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        return scalar_ports(cls.outputs, params.scalars)

    @classmethod
    def can_open(cls, path: str) -> int:
        """Any HDF5 file: 10 for an HDF5/NeXus suffix (or a missing file with one), 5 for HDF5 under another name."""
        p = Path(path)
        if p.suffix.lower() in HDF5_SUFFIXES:
            return 10
        return 5 if p.is_file() and h5py.is_hdf5(p) else 0

    @classmethod
    def params_for(cls, path: str) -> dict[str, Any]:
        """The stacks where lightpipe and DECTRIS write them (:func:`hdf5_defaults`)."""
        return hdf5_defaults(path)

    def scans(self) -> Iterator[ScanReader]:
        yield HDF5Reader(self.params)
