"""HDF5 and NeXus frame stacks, including DECTRIS master files with external links.

Frames are read by the worker that processes them. Compressed data
(bitshuffle-LZ4, LZ4, Blosc, ...) is decoded through hdf5plugin. Files are
opened without HDF5 file locking, which fails on beamline NFS.

External links are followed beside the master file only, never from the
current directory (:mod:`lightpipe.sources.external_links`); the frames of a
missing linked file fail with its name, the others are read.

Bitshuffle-LZ4 chunks carry no checksum: a chunk whose compressed body was
damaged (a bad disk, a partial copy) may decode without error into wrong
values, and nothing in the file can tell. A damage that breaks the LZ4 framing
does fail, frame by frame. Where data must be trusted, compare the files'
checksums with those taken at the beamline (``sha256sum``), or write with an
HDF5 filter pipeline that includes Fletcher32.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterator

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters with h5py)
import numpy as np
from pydantic import Field

from lightpipe.core.bounds import PathText
from lightpipe.core.errors import SourceError
from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source, SourceParams
from lightpipe.sources.external_links import MissingPart, exists, resolve
from lightpipe.sources.units import convert

log = logging.getLogger(__name__)

#: Scan metadata key -> (NXmx fields that may hold it, the first found wins; quantity; the key's unit in
#: lightpipe's unit of the quantity, e.g. 1e-10 m for ``wavelength_a``). Pixel sizes come before the beam
#: centre, which a file may give as a length.
NXMX_METADATA: dict[str, tuple[tuple[str, ...], str, float]] = {
    "distance_m": (("entry/instrument/detector/distance", "entry/instrument/detector/detector_distance"),
                   "length", 1.0),
    "x_pixel_size_m": (("entry/instrument/detector/x_pixel_size",), "length", 1.0),
    "y_pixel_size_m": (("entry/instrument/detector/y_pixel_size",), "length", 1.0),
    "beam_center_x_px": (("entry/instrument/detector/beam_center_x",), "pixel", 1.0),
    "beam_center_y_px": (("entry/instrument/detector/beam_center_y",), "pixel", 1.0),
    "count_time_s": (("entry/instrument/detector/count_time",), "time", 1.0),
    "wavelength_a": (("entry/instrument/beam/incident_wavelength",), "length", 1e-10),
    # NXsource/energy is the storage ring's particle energy, not the photons': never read as energy_ev
    "energy_ev": (("entry/instrument/beam/incident_energy", "entry/instrument/detector/detectorSpecific/photon_energy"),
                  "energy", 1.0),
}
#: The pixel size that turns a beam centre given as a length into pixels.
PIXEL_SIZE_OF = {"beam_center_x_px": "x_pixel_size_m", "beam_center_y_px": "y_pixel_size_m"}
#: Where the goniometer's angles are when ``/entry/sample/depends_on`` names no scanned rotation:
#: NXmx, then DECTRIS master files.
ROTATION_FIELDS = ("entry/sample/transformations/omega", "entry/sample/goniometer/omega")
#: Names beside a rotation ``<axis>`` that give its increment per image: NXmx, DECTRIS, others.
INCREMENT_SUFFIXES = ("_increment_set", "_range_average", "_increment")
#: Largest departure, as a fraction of the increment, of an image's angle from start + k * increment
#: for the angles to count as evenly spaced (encoder readings jitter a little).
ANGLE_TOLERANCE = 0.1
#: File-name suffixes of HDF5 and NeXus files.
HDF5_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi"})


class HDF5Params(SourceParams):
    """Parameters of the HDF5/NeXus source."""

    path: PathText = Field(description="HDF5/NeXus file (a DECTRIS *_master.h5 works)")
    dataset: PathText = Field(
        "/entry/data/data",
        description="Frame stack [n, y, x], a group of data_NNNNNN links, or their stem (the default finds "
        "/entry/data/data_000001, ... of DECTRIS master files)",
    )
    dark: PathText | None = Field(None, description="Dataset of dark frames, read as stream 'dark'")
    flat: PathText | None = Field(None, description="Dataset of flat-field frames, read as stream 'flat'")
    scalars: dict[str, PathText] = Field(default_factory=dict, description="Per-event field name -> 1-D dataset")


def _text(value: Any) -> str | None:
    """An HDF5 string attribute (str, bytes, or an array of one) as ``str``; ``None`` when absent."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else None
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else None


def _numbers(f: h5py.File, path: str) -> tuple[np.ndarray, str | None] | None:
    """The numbers of a numeric dataset, flattened to float64, and its ``@units``; ``None`` when there is none."""
    if not exists(f, path):
        return None
    ds = f.get(path)
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "iuf" or ds.size == 0:
        return None
    return np.asarray(ds[()], np.float64).reshape(-1), _text(ds.attrs.get("units"))


def nxmx_metadata(f: h5py.File) -> dict[str, Any]:
    """Detector, beam and rotation of an NXmx (or DECTRIS) file, in lightpipe's names and units.

    Each field is converted from its ``@units`` (a beam centre in m or mm
    through the pixel size); a field without ``@units`` is taken to be in
    lightpipe's unit already. A field whose unit is unknown or of the wrong kind
    is left out with a warning. The rotation is :func:`rotation_metadata`.
    """
    meta: dict[str, Any] = {}
    for key, (paths, quantity, scale) in NXMX_METADATA.items():
        for path in paths:
            found = _numbers(f, path)
            if found is None or found[0].size != 1:
                continue
            value, unit = float(found[0][0]), found[1]
            try:
                meta[key] = convert(value, unit, quantity, scale, meta.get(PIXEL_SIZE_OF.get(key, "")))
            except ValueError as exc:
                log.warning("%s: /%s = %g %s is left out of the scan metadata: %s", f.filename, path, value, unit, exc)
            break
    return {**meta, **rotation_metadata(f)}


def _rotation_axis(f: h5py.File) -> str | None:
    """Path of the goniometer axis that rotates during the scan.

    The first rotation whose angles change along ``/entry/sample/depends_on``'s
    chain of NeXus transformations (``phi``, ``chi``, ``omega``, ...); else the
    first of :data:`ROTATION_FIELDS` in the file.
    """
    path = _text(f["entry/sample/depends_on"][()]) if exists(f, "entry/sample/depends_on") else None
    seen: set[str] = set()
    while path and path != "." and path not in seen and exists(f, path):
        seen.add(path)
        ds = f[path]
        if not isinstance(ds, h5py.Dataset):
            break
        found = _numbers(f, path)
        if _text(ds.attrs.get("transformation_type")) == "rotation" and found is not None \
                and np.ptp(found[0]) > 0:
            return ds.name
        following = _text(ds.attrs.get("depends_on"))
        # a relative depends_on names a sibling of the transformation
        path = following if not following or following.startswith("/") or following == "." \
            else f"{ds.parent.name}/{following}"
    return next((f"/{p}" for p in ROTATION_FIELDS if _numbers(f, p) is not None), None)


def rotation_metadata(f: h5py.File) -> dict[str, Any]:
    """The rotation of a scan: ``omega_start_deg``, ``omega_increment_deg``, ``rotation_axis``, maybe ``omega_deg``.

    The angles are those of the rotating axis (:func:`_rotation_axis`), one
    per image at its start, in their ``@units`` (degrees or radians). The
    increment is the file's own (NXmx ``<axis>_increment_set``, DECTRIS
    ``<axis>_range_average``) where it agrees with the angles, else their
    spacing. Angles that are not evenly spaced are kept whole as
    ``omega_deg`` (one per image) and no increment is given, rather than a
    wrong one; the names say ``omega`` whichever axis turns, as DECTRIS's
    ``omega_start`` and ``omega_increment`` do.
    """
    axis = _rotation_axis(f)
    found = _numbers(f, axis) if axis else None
    if axis is None or found is None:
        return {}
    values, unit = found
    try:
        angles = values * convert(1.0, unit or "deg", "angle")
    except ValueError as exc:
        log.warning("%s: the rotation %s is left out of the scan metadata: %s", f.filename, axis, exc)
        return {}
    meta: dict[str, Any] = {"rotation_axis": axis.rsplit("/", 1)[-1], "omega_start_deg": float(angles[0])}
    stated = None
    for suffix in INCREMENT_SUFFIXES:
        found = _numbers(f, axis + suffix)
        if found is not None and found[0].size >= 1:
            try:
                stated = convert(float(found[0][0]), found[1] or "deg", "angle")
            except ValueError as exc:
                log.warning("%s: %s%s is not used: %s", f.filename, axis, suffix, exc)
            break
    if angles.size == 1:
        if stated is not None:
            meta["omega_increment_deg"] = stated
        return meta
    steps = np.arange(angles.size)
    spacing = float(f"{(angles[-1] - angles[0]) / (angles.size - 1):.12g}")
    off = float(np.abs(angles - (angles[0] + steps * spacing)).max())
    if off > ANGLE_TOLERANCE * abs(spacing) + 1e-9:
        log.warning("%s: the angles of %s are not evenly spaced (an image is %.4g deg from start + k * %.6g deg): "
                    "kept per image as omega_deg, with no omega_increment_deg", f.filename, axis, off, spacing)
        meta["omega_deg"] = angles.tolist()
        return meta
    if stated is not None and abs(stated - spacing) <= ANGLE_TOLERANCE * abs(spacing) / max(angles.size - 1, 1):
        meta["omega_increment_deg"] = stated
    else:
        if stated is not None:
            log.warning("%s: the increment the file states for %s, %g deg, is not the spacing of its angles, %g deg; "
                        "the spacing is used", f.filename, axis, stated, spacing)
        meta["omega_increment_deg"] = spacing
    return meta


def hdf5_defaults(path: str) -> dict[str, Any]:
    """Parameters of the ``hdf5`` source for a file laid out as lightpipe or DECTRIS write them."""
    params: dict[str, Any] = {"path": path}
    try:
        with h5py.File(path, "r", locking=False) as f:
            if not exists(f, "entry/data/data") and _linked_parts(f, "/entry/data"):
                params["dataset"] = "/entry/data"
            for stream in ("dark", "flat"):
                if exists(f, f"entry/{stream}/data"):
                    params[stream] = f"/entry/{stream}/data"
            if exists(f, "entry/data/monitor") and isinstance(f["entry/data/monitor"], h5py.Dataset) \
                    and f["entry/data/monitor"].ndim == 1:
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


def _linked_parts(f: h5py.File, path: str, stem: str = "data") -> list[str]:
    """Paths of the ``<stem>_NNNNNN`` members of the group at ``path`` (DECTRIS data links), in order."""
    if not exists(f, path) or isinstance(f.get(path, getlink=True), h5py.ExternalLink):
        return []
    group = f[path]
    if not isinstance(group, h5py.Group):
        return []
    pattern = re.compile(rf"{re.escape(stem)}_\d+$")
    return [f"{group.name}/{k}" for k in sorted(k for k in group if pattern.match(k))]


def _frame_stacks_in(f: h5py.File) -> list[str]:
    """What in ``f`` could be a frame stack: 3-D datasets, and groups of DECTRIS data links."""
    found: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
            found.append("/" + name)
        elif isinstance(obj, h5py.Group) and _linked_parts(f, "/" + name):
            found.append(f"/{name} (linked data_NNNNNN files)")

    f.visititems(visit)  # does not follow external links, so no linked file is opened
    return found


Part = h5py.Dataset | MissingPart


def _stacks(f: h5py.File, path: str, opened: dict[Path, h5py.File]) -> list[Part]:
    """The dataset(s) that make up the frame stack at ``path``; a linked file that is not there is a MissingPart.

    ``path`` may name a frame stack, a group of ``data_NNNNNN`` links, or, as the default
    ``/entry/data/data`` does in a DECTRIS master file, the stem of such links.
    """
    parent, _, stem = path.rstrip("/").rpartition("/")
    if exists(f, path):
        obj = resolve(f, path, opened)
        parts = _linked_parts(f, path) if isinstance(obj, h5py.Group) else [path]
        if isinstance(obj, h5py.Group) and not parts:
            raise SourceError(f"{f.filename}:{path} is a group without data_NNNNNN datasets; name the frame dataset")
    elif _linked_parts(f, parent or "/", stem):
        parts = _linked_parts(f, parent or "/", stem)
    else:
        found = _frame_stacks_in(f)
        hint = f"frame stacks in the file: {', '.join(found)}" if found else "the file has no 3-D dataset"
        raise SourceError(f"{f.filename} has no dataset {path!r}; {hint}; set source.params.dataset")
    stacks: list[Part] = []
    for part in parts:
        obj = resolve(f, part, opened)
        if isinstance(obj, h5py.Dataset) and obj.ndim != 3:
            raise SourceError(f"{f.filename}:{part} has shape {obj.shape}; a frame stack [n, y, x] is expected")
        if not isinstance(obj, (h5py.Dataset, MissingPart)):
            raise SourceError(f"{f.filename}:{part} is not a dataset; name the frame dataset in source.params.dataset")
        stacks.append(obj)
    return stacks


def _frames_expected(f: h5py.File) -> int | None:
    """Frames the detector was asked for (DECTRIS ``nimages * ntrigger``), if the master file says."""
    spec = "entry/instrument/detector/detectorSpecific"
    counts = []
    for key in ("nimages", "ntrigger"):
        if not exists(f, f"{spec}/{key}"):
            return None
        counts.append(int(f[f"{spec}/{key}"][()]))
    return counts[0] * counts[1]


def _part_lengths(f: h5py.File, stream: str, stacks: list[Part]) -> list[int]:
    """Frames in each part; a missing part's count is inferred, or the scan cannot be read.

    Every part but the last holds the same number of frames (DECTRIS ``nimages_per_file``),
    so a missing part in the middle has as many as its neighbours, and a missing last part
    holds what the detector was asked for minus the others.
    """
    lengths: list[int | None] = [s.shape[0] if isinstance(s, h5py.Dataset) else None for s in stacks]
    full = {n for n in lengths[:-1] if n is not None}
    if len(full) == 1:
        lengths[:-1] = [full.pop() if n is None else n for n in lengths[:-1]]
    total = _frames_expected(f) if stream == "data" else None
    unknown = [k for k, n in enumerate(lengths) if n is None]
    if len(unknown) == 1 and total is not None:
        rest = total - sum(n for n in lengths if n is not None)
        if rest > 0:
            lengths[unknown[0]] = rest
    missing = "; ".join(s.reason for s in stacks if isinstance(s, MissingPart))
    if not any(isinstance(s, h5py.Dataset) for s in stacks):
        raise SourceError(f"no frame of stream {stream!r} can be read: {missing}")
    if None in lengths:
        raise SourceError(f"cannot tell how many frames of stream {stream!r} are missing: {missing}")
    return [n for n in lengths if n is not None]


class HDF5Reader(ScanReader):
    """Reads frames of one HDF5 file by index range; reopens the file lazily on each worker.

    External links (DECTRIS ``data_NNNNNN`` files) are followed beside the master file
    only (:mod:`lightpipe.sources.external_links`). The frames of a linked file that is
    missing fail with a message naming the file, the link and the master file; the
    other frames are read. :attr:`missing` lists those files.
    """

    def __init__(self, params: HDF5Params) -> None:
        # absolute, for workers that run in another directory
        self.params = params.model_copy(update={"path": str(Path(params.path).resolve())})
        self._file: h5py.File | None = None
        self._linked: dict[Path, h5py.File] = {}
        self._datasets: dict[str, list[Part]] = {}  # looked up once per process
        f = self._h5()
        params = self.params
        streams: dict[str, range] = {}
        self._parts: dict[str, list[tuple[int, int]]] = {}
        self.missing: list[MissingPart] = []
        start = 0
        shape: tuple[int, ...] | None = None
        dtype = None
        for stream, path in (("dark", params.dark), ("flat", params.flat), ("data", params.dataset)):
            if path is None:
                continue
            stacks = _stacks(f, path, self._linked)
            bounds, n = [], 0
            for ds, length in zip(stacks, _part_lengths(f, stream, stacks)):
                bounds.append((n, n + length))
                n += length
                if isinstance(ds, MissingPart):
                    self.missing.append(ds)
                elif stream == "data":
                    shape, dtype = ds.shape[1:], ds.dtype
            self._parts[stream] = bounds
            streams[stream] = range(start, start + n)
            start += n
        meta: dict[str, Any] = {"source_file": str(Path(params.path).resolve()), "frame_shape": list(shape or ()),
                                "frame_dtype": str(dtype)}
        meta.update(nxmx_metadata(f))
        if self.missing:
            meta["missing_files"] = [m.file for m in self.missing]
        frames = len(streams.get("data", ()))
        for name, path in params.scalars.items():
            if not exists(f, path):
                raise SourceError(f"{params.path} has no dataset {path!r} for scalar {name!r}; fix source.params.scalars")
            values = resolve(f, path, self._linked)
            if isinstance(values, h5py.Dataset) and (values.ndim != 1 or values.shape[0] < frames):
                raise SourceError(
                    f"{params.path}: {path} ({name}) has shape {values.shape} but the scan has {frames} data frames; "
                    f"a per-event value needs one entry per frame (positions or counters that do not match the "
                    f"frames): give a 1-D dataset of at least {frames} values in source.params.scalars")
        name = Path(params.path).stem.removesuffix("_master")
        self.scan = Scan(name=name, streams=streams, metadata=meta)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_linked"] = {}
        state["_datasets"] = {}
        return state

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = _open(self.params.path)
        return self._file

    def _read_frames(self, stream: str, lo: int, hi: int) -> np.ndarray:
        """Frames ``lo:hi`` of a stream (indices within the stream), across linked parts.

        Raises
        ------
        SourceError
            When a frame of the range is in a linked file that is missing.
        """
        if stream not in self._datasets:
            path = {"dark": self.params.dark, "flat": self.params.flat, "data": self.params.dataset}[stream]
            self._datasets[stream] = _stacks(self._h5(), str(path), self._linked)
        parts = [(ds, a, b) for ds, (a, b) in zip(self._datasets[stream], self._parts[stream]) if a < hi and lo < b]
        for ds, a, b in parts:
            if isinstance(ds, MissingPart):
                raise SourceError(f"frames {a} to {b - 1} of stream {stream!r} are in {Path(ds.file).name}: {ds.reason}")
        # One uninitialised array, filled by HDF5 in place: h5py's ds[a:b] zero-fills the array it
        # makes first, a second pass over every frame's memory (twice the cost on uncompressed data).
        first = parts[0][0]
        assert isinstance(first, h5py.Dataset)
        out = np.empty((hi - lo, *first.shape[1:]), dtype=first.dtype)
        for ds, a, b in parts:
            assert isinstance(ds, h5py.Dataset)
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
        except (OSError, ValueError, KeyError, SourceError):
            frames = None  # one bad chunk or a missing file: read frame by frame to isolate it
        events = []
        scalars = {name: resolve(self._h5(), path, self._linked)
                   for name, path in self.params.scalars.items()} if stream == "data" else {}
        for i in range(lo, hi):
            event = Event(index=first + i, stream=stream)
            try:
                frame = frames[i - lo] if frames is not None else self._read_frames(stream, i, i + 1)[0]
                event.fields["frame"] = frame
                for name, ds in scalars.items():
                    if isinstance(ds, MissingPart):
                        raise SourceError(f"scalar {name!r} is in {ds.file}: {ds.reason}")
                    event.fields[name] = ds[i]
            except (OSError, ValueError, KeyError, IndexError, SourceError) as exc:
                event.fail("source", f"cannot read frame {i} of stream {stream!r} from {self.params.path}: {exc}")
            events.append(event)
        return events

    def close(self) -> None:
        self._datasets.clear()
        for linked in self._linked.values():
            linked.close()
        self._linked.clear()
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
