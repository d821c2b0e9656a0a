"""Series of image files, one frame per file: TIFF, CBF, EDF and the other formats fabio reads.

The source lists the files once; each worker opens only the files of its own
index range, so the reader pickles as a list of paths. Files are ordered
naturally by the numbers in their names (``scan_9.cbf`` before ``scan_10.cbf``).

Examples
--------
A pipeline's source block::

    source:
      use: image_series
      params: {path: "raw/scan_*.cbf", dark: "raw/dark_*.cbf"}
"""
from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

import fabio
import numpy as np
from pydantic import Field

from lightpipe.core.bounds import MAX_NAME_CHARS, PathText
from lightpipe.core.errors import SourceError
from lightpipe.core.event import Event, Scan
from lightpipe.core.source import ScanReader, Source, SourceParams
from lightpipe.sources.hdf5 import ANGLE_TOLERANCE, HDF5_SUFFIXES
from lightpipe.sources.units import convert

log = logging.getLogger(__name__)

#: Compressed variants fabio opens transparently (``frame_0001.cbf.gz``).
#: File-name suffixes of the image formats read through fabio.
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".cbf", ".edf", ".img", ".mccd", ".sfrm"})
COMPRESSED_SUFFIXES = {".gz", ".bz2"}

#: Header keys (lower case) that hold the exposure time in seconds in EDF, Lima and similar headers.
_EXPOSURE_KEYS = {"exposuretime", "exposure_time", "count_time", "acq_expo_time", "exptime"}
#: A decimal number as headers write it: ``-0.5``, ``172e-6``, ``.25``.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
#: One line of a PILATUS (miniCBF) header: ``# Key value...``.
_PILATUS_LINE = re.compile(r"^#\s*([A-Za-z_]+)[\s:=]+(.+?)\s*$", re.MULTILINE)
#: A number and its unit: ``0.1500 m``, ``0.5 deg.``.
_QUANTITY = re.compile(rf"^({_NUMBER})\s*([^\s,()]*)")
#: ``Pixel_size 172e-6 m x 172e-6 m``.
_PIXEL_SIZE = re.compile(rf"^({_NUMBER})\s*([^\s,()]*)\s*x\s*({_NUMBER})\s*([^\s,()]*)")
#: ``Beam_xy (1231.50, 1263.50) pixels``.
_BEAM_XY = re.compile(rf"^\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*([^\s,()]*)")
#: PILATUS header keys of one number -> (scan metadata key, quantity, the key's unit in lightpipe's unit of the
#: quantity, see :func:`lightpipe.sources.units.convert`). A number without a unit is in the key's unit.
PILATUS_METADATA: dict[str, tuple[str, str, float]] = {
    "Start_angle": ("omega_start_deg", "angle", 1.0),
    "Angle_increment": ("omega_increment_deg", "angle", 1.0),
    "Detector_distance": ("distance_m", "length", 1.0),
    "Wavelength": ("wavelength_a", "length", 1e-10),
    "Exposure_time": ("count_time_s", "time", 1.0),
}
_DIGITS = re.compile(r"(\d+)")


class ImageSeriesParams(SourceParams):
    """Parameters of the image-series source."""

    path: PathText = Field(
        description="Glob of image files (raw/scan_*.cbf) or a folder: every image file in it, in natural order"
    )
    dark: PathText | None = Field(None, description="Glob of dark frames, read as stream 'dark' before the data")
    flat: PathText | None = Field(None, description="Glob of flat-field frames, read as stream 'flat' before the data")
    name: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_CHARS - 4, pattern=r"^[^/\\\x00]+$",
        description="Scan name, without / or \\ (the output file is <name>.nxs); default the files' common prefix",
    )


def natural_key(path: str) -> list[Any]:
    """Sort key that orders the numbers in a path by value: ``img_9`` before ``img_10``."""
    # re.split with a group alternates text and digits, so positions never compare str with int
    return [int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(path))]


def _split_name(name: str) -> tuple[str, str]:
    """File name as (stem, lower-case suffix), a compression suffix dropped: ``a_1.cbf.gz`` -> (``a_1``, ``.cbf``)."""
    path = Path(name)
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        path = Path(path.stem)
    return path.stem, path.suffix.lower()


def is_image_file(name: str) -> bool:
    """Whether ``name`` has an image suffix fabio reads, possibly compressed."""
    return _split_name(name)[1] in IMAGE_SUFFIXES


def find_images(pattern: str, param: str) -> list[str]:
    """Files matched by a glob, or the image files of a folder, as absolute paths in natural order.

    Raises
    ------
    SourceError
        When nothing matches; the message names ``source.params.<param>``.
    """
    folder = Path(pattern).expanduser()
    if folder.is_dir():
        files = [str(f) for f in folder.iterdir() if f.is_file() and is_image_file(f.name)]
        if not files:
            known = ", ".join(sorted(IMAGE_SUFFIXES))
            raise SourceError(
                f"folder {folder} holds no image files ({known}); put the frames there or give a glob "
                f"such as '{folder}/*.tif' as source.params.{param}"
            )
    else:
        files = [f for f in glob.glob(str(folder)) if os.path.isfile(f)]
        if not files:
            raise SourceError(
                f"source.params.{param} {pattern!r} matched no file; check the folder and the pattern "
                "(a glob such as 'raw/scan_*.cbf', quoted on the command line so the shell leaves it alone)"
            )
    return sorted((os.path.abspath(f) for f in files), key=natural_key)


def _default_name(files: list[str]) -> str:
    """The files' common prefix without trailing frame numbers and separators."""
    prefix = os.path.commonprefix([_split_name(Path(f).name)[0] for f in files]).rstrip("0123456789_-. ")
    return prefix or Path(files[0]).parent.name or "images"


def _count_time(header: dict[str, Any]) -> float | None:
    """Exposure time in seconds from a fabio header's own keys (EDF, Lima), if it names one."""
    for key, value in header.items():
        if str(key).lower() not in _EXPOSURE_KEYS:
            continue
        try:
            return float(str(value).split()[0])
        except (ValueError, IndexError):
            continue
    return None


def pilatus_metadata(header: dict[str, Any], where: str = "the header") -> dict[str, Any]:
    """Scan metadata from the PILATUS lines of a miniCBF header (``# Start_angle 0.5 deg.``, ...), in lightpipe's units.

    Reads ``Start_angle``, ``Angle_increment``, ``Detector_distance``,
    ``Wavelength``, ``Exposure_time``, ``Pixel_size`` and ``Beam_xy``, each
    converted from the unit written after it (``m``, ``mm``, ``A``, ``nm``,
    ``deg``, ``rad``, ``s``, ``ms``; a beam centre in mm through the pixel
    size); a value whose unit is unknown is left out with a warning naming
    ``where``.

    Examples
    --------
    >>> pilatus_metadata({"_array_data.header_contents": "# Detector_distance 150.0 mm\\r\\n# Start_angle 10 deg."})
    {'omega_start_deg': 10.0, 'distance_m': 0.15}
    """
    lines: dict[str, str] = {}
    for value in header.values():
        if isinstance(value, str):
            lines.update((m.group(1), m.group(2)) for m in _PILATUS_LINE.finditer(value))
    meta: dict[str, Any] = {}

    def put(key: str, line: str, value: str, unit: str, quantity: str, scale: float = 1.0,
            pixel_size_m: float | None = None) -> None:
        try:
            meta[key] = convert(float(value), unit or None, quantity, scale, pixel_size_m)
        except ValueError as exc:
            log.warning("%s: '# %s %s' is left out of the scan metadata: %s", where, line, lines[line], exc)

    if "Pixel_size" in lines and (m := _PIXEL_SIZE.match(lines["Pixel_size"])):
        put("x_pixel_size_m", "Pixel_size", m.group(1), m.group(2), "length")
        put("y_pixel_size_m", "Pixel_size", m.group(3), m.group(4) or m.group(2), "length")
    if "Beam_xy" in lines and (m := _BEAM_XY.match(lines["Beam_xy"])):
        put("beam_center_x_px", "Beam_xy", m.group(1), m.group(3), "pixel", pixel_size_m=meta.get("x_pixel_size_m"))
        put("beam_center_y_px", "Beam_xy", m.group(2), m.group(3), "pixel", pixel_size_m=meta.get("y_pixel_size_m"))
    for line, (key, quantity, scale) in PILATUS_METADATA.items():
        if line in lines and (m := _QUANTITY.match(lines[line])):
            put(key, line, m.group(1), m.group(2), quantity, scale)
    return meta


def read_image(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The single frame of an image file (native byte order) and its header.

    Raises
    ------
    ValueError
        When the file holds more than one frame.
    """
    with fabio.open(path) as image:
        if image.nframes > 1:
            raise ValueError(f"it holds {image.nframes} frames; image_series reads files of one frame each")
        data = np.asarray(image.data)
        header = dict(image.header)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data, header


def _checked_rotation(meta: dict[str, Any], data: list[str], first: int) -> dict[str, Any]:
    """``meta`` with the rotation of image 1, after checking it against the last file's own start angle.

    ``meta`` holds the header values of ``data[first]``. A last file that does
    not start where ``start + k * increment`` puts it (files missing from the
    series, two sweeps in one glob) leaves the increment out with a warning:
    no rotation angle rather than a wrong one.
    """
    start, increment = meta.get("omega_start_deg"), meta.get("omega_increment_deg")
    if start is None:
        return meta
    if increment is None:
        if first:
            del meta["omega_start_deg"]  # the start of a later image; image 1's is not known
        return meta
    meta["omega_start_deg"] = float(f"{start - first * increment:.12g}")
    last = len(data) - 1
    if last == first:
        return meta
    try:
        ends = pilatus_metadata(read_image(data[last])[1], data[last]).get("omega_start_deg")
    except Exception:  # an unreadable last file fails its own event; the rotation stays unchecked
        return meta
    expected = meta["omega_start_deg"] + last * increment
    if ends is not None and abs(ends - expected) > ANGLE_TOLERANCE * abs(increment) + 1e-9:
        log.warning("%s starts at %g deg, but %d images of %g deg from %g deg put it at %g deg: files missing, or "
                    "files of another sweep in the series? omega_increment_deg is left out; give the rotation as "
                    "spot_table's parameters if it is known", data[last], ends, last, increment,
                    meta["omega_start_deg"], expected)
        del meta["omega_increment_deg"]
    return meta


class ImageSeriesReader(ScanReader):
    """Reads one scan of image files by index range; holds paths only, so it pickles cheaply."""

    def __init__(self, params: ImageSeriesParams) -> None:
        self.params = params
        dark = find_images(params.dark, "dark") if params.dark else []
        flat = find_images(params.flat, "flat") if params.flat else []
        taken = set(dark) | set(flat)
        data = [f for f in find_images(params.path, "path") if f not in taken]
        if not data:
            raise SourceError(
                f"every file matched by source.params.path {params.path!r} is also a dark or flat frame; "
                "give the data frames their own pattern"
            )
        self.files: list[str] = []
        streams: dict[str, range] = {}
        for stream, files in (("dark", dark), ("flat", flat), ("data", data)):
            if files:
                streams[stream] = range(len(self.files), len(self.files) + len(files))
                self.files.extend(files)
        metadata = {"source_path": os.path.abspath(os.path.expanduser(params.path)), **self._first_frame(data)}
        self.scan = Scan(name=params.name or _default_name(data), streams=streams, metadata=metadata)

    @staticmethod
    def _first_frame(data: list[str]) -> dict[str, Any]:
        """Frame shape, dtype and header values of the first readable data file, the rotation checked on the last.

        The rotation (``omega_start_deg``, ``omega_increment_deg``) is that of the
        first data file, each file saying where its own image starts: when
        the first files cannot be read, the start goes back by their images.
        """
        errors = []
        for first, path in enumerate(data):
            try:
                frame, header = read_image(path)
            except Exception as exc:  # fabio raises many types on corrupt files
                errors.append(f"{path}: {exc}")
                continue
            meta: dict[str, Any] = {"first_file": path, "frame_shape": list(frame.shape), "frame_dtype": str(frame.dtype)}
            count_time = _count_time(header)
            if count_time is not None:
                meta["count_time_s"] = count_time
            meta.update(pilatus_metadata(header, path))
            return _checked_rotation(meta, data, first)
        raise SourceError(f"fabio cannot read any of the {len(data)} data files ({errors[0]}); check their format")

    def read(self, start: int, stop: int) -> list[Event]:
        events = []
        for index in range(start, stop):
            event = Event(index=index, stream=self.scan.stream_of(index))
            path = self.files[index]
            try:
                event.fields["frame"] = read_image(path)[0]
            except Exception as exc:  # one unreadable file fails its event only
                event.fail("source", f"cannot read {path} as an image ({type(exc).__name__}: {exc})")
            events.append(event)
        return events


class ImageSeriesSource(Source):
    """Frames from a series of image files (TIFF, CBF, EDF, ...): one series, one scan."""

    name = "image_series"
    Params = ImageSeriesParams

    @classmethod
    def can_open(cls, path: str) -> int:
        """Image files or a glob of them (10); a folder of image files and no HDF5 files (15, before ``folder``)."""
        p = Path(path).expanduser()
        if p.is_dir():
            names = [f.name for f in p.iterdir() if f.is_file()]
            hdf5 = any(Path(n).suffix.lower() in HDF5_SUFFIXES for n in names)
            return 15 if any(is_image_file(n) for n in names) and not hdf5 else 0
        return 10 if is_image_file(p.name) or any(c in path for c in "*?[") else 0

    def scans(self) -> Iterator[ScanReader]:
        yield ImageSeriesReader(self.params)
