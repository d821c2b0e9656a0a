"""Bounded parameter types shared by plug-ins: frame shapes, pixel ranges, counts, seeds, times, ports, paths.

A parameter that a run would choke on (a negative shape, ``frames: 2**63``, a reversed
region of interest) is refused when the pipeline is loaded, with a message that says what
is expected. The maxima are far above any real detector or scan, and low enough that
NumPy, HDF5 and Python's C integers never overflow.

Two small protocols let the pipeline check boxes on the frame (a crop, a region of
interest) against the frame's shape: at load time when the source's parameters give the
shape (:class:`KnowsFrameShape`), and otherwise when each scan starts (:class:`FrameBox`).

Example
-------
>>> from pydantic import BaseModel
>>> class Params(BaseModel):
...     shape: FrameShape = (256, 256)
...     y: PixelRange = (0, 16)
>>> Params(y=(16, 0))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for Params
...
"""
from __future__ import annotations

import re
import string
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import AfterValidator, Field

#: Most pixels along one axis of a frame: ten times the largest detectors built.
MAX_FRAME_PX = 65_536
#: Most events (frames) a scan parameter may ask for.
MAX_EVENTS = 100_000_000
#: Most iterations, bins, workers and other counts a parameter may ask for.
MAX_COUNT = 1_000_000
#: Largest random seed (NumPy takes any non-negative integer; 32 bits are plenty).
MAX_SEED = 2**32 - 1
#: Longest wait, timeout or interval a parameter may set, in seconds: a week, longer than any beamtime block.
MAX_SECONDS = 7 * 24 * 3600
#: Most events held in flight at once (a buffer, a window, a chunk): each holds a frame in memory.
MAX_IN_FLIGHT = 100_000
#: Most threads, worker processes or batch jobs one run may ask for.
MAX_WORKERS = 10_000
#: Longest path, in characters (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096
#: Longest file name, in characters (the limit of ext4, XFS, GPFS and NFS).
MAX_NAME_CHARS = 255

#: Pixels along one axis of a frame: 1 to :data:`MAX_FRAME_PX`.
FramePx = Annotated[int, Field(ge=1, le=MAX_FRAME_PX)]
#: A position on the frame, in pixels: 0 to :data:`MAX_FRAME_PX`.
PixelIndex = Annotated[int, Field(ge=0, le=MAX_FRAME_PX)]
#: A coordinate on the frame in (fractional) pixels, anywhere within ten frames of it.
PixelCoordinate = Annotated[float, Field(ge=-10 * MAX_FRAME_PX, le=10 * MAX_FRAME_PX, allow_inf_nan=False)]
#: Number of events: 0 to :data:`MAX_EVENTS`.
EventCount = Annotated[int, Field(ge=0, le=MAX_EVENTS)]
#: A random seed: 0 to :data:`MAX_SEED`.
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
#: A timeout or interval in seconds: more than 0, at most :data:`MAX_SECONDS` (a week), finite.
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
#: A wait in seconds that may be 0 (do not wait): 0 to :data:`MAX_SECONDS`, finite.
SecondsOrZero = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
#: Events in flight at once: 1 to :data:`MAX_IN_FLIGHT`.
InFlight = Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT)]
#: Threads, worker processes or batch jobs: 1 to :data:`MAX_WORKERS`.
Workers = Annotated[int, Field(ge=1, le=MAX_WORKERS)]
#: A number of scans, retries or other things counted: 1 to :data:`MAX_COUNT`.
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
#: A TCP port to bind: 0 (any free port) to 65535.
TcpPort = Annotated[int, Field(ge=0, le=65535)]


def _ordered(pair: tuple[int, int]) -> tuple[int, int]:
    if pair[0] >= pair[1]:
        raise ValueError(f"[{pair[0]}, {pair[1]}] is empty or reversed; give [first, one past the last] "
                         "with first < one past the last, e.g. [0, 64]")
    return pair


#: Frame shape (ny, nx), each 1 to :data:`MAX_FRAME_PX`.
FrameShape = tuple[FramePx, FramePx]
#: Rows or columns ``[first, one past the last]``, first < one past the last, both 0 to :data:`MAX_FRAME_PX`.
PixelRange = Annotated[tuple[PixelIndex, PixelIndex], AfterValidator(_ordered)]


def _path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character; give the path as plain text")
    return value


#: A file, folder, glob or HDF5 dataset path: not empty, no NUL, at most :data:`MAX_PATH_CHARS` characters.
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_path)]


def file_name(template: str, nested: bool = False, **sample: Any) -> str:
    """``template`` when, its placeholders filled from ``sample``, it is one file name inside a folder.

    A result's name comes from the pipeline file, which may not be trusted: ``../x`` or
    ``/etc/x`` would write outside the output folder. With ``nested``, subfolders
    (``tiff/{scan}``) are allowed, still inside the folder.

    Raises
    ------
    ValueError
        Saying which placeholder is unknown, or that the name leaves the folder.
    """
    known = " ".join("{" + name + "}" for name in sample) or "none"
    example = "result_{" + next(iter(sample)) + "}" if sample else "result"
    try:
        # a width such as {scan:>999999999} would build a gigabyte string before the length is checked
        specs = [spec for _, _, spec, _ in string.Formatter().parse(template) if spec]
        if any(int(width) > MAX_NAME_CHARS for spec in specs for width in re.findall(r"[0-9]+", spec)):
            raise ValueError(f"a width in the format of a placeholder is over {MAX_NAME_CHARS}")
        name = template.format(**sample)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        detail = f"unknown placeholder {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{template!r} is not a usable name ({detail}); it may use only the placeholders {known}, "
                         "and a literal brace is written '{{' or '}}'") from exc
    parts = name.split("/") if nested else [name]
    if any(not part or part in (".", "..") or any(c in part for c in "/\\\x00") or len(part) > MAX_NAME_CHARS
           for part in parts):
        where = "a relative path inside the output folder, without .. or \\ and not starting with /" if nested \
            else "one file name in the output folder, without / or \\ and not . or .."
        raise ValueError(f"{template!r} must be {where}, each name at most {MAX_NAME_CHARS} characters, "
                         f"e.g. '{example}'")
    return template


def _scan_file_name(template: str) -> str:
    return file_name(template, scan="scan")


def _scan_subfolder(template: str) -> str:
    return file_name(template, nested=True, scan="scan")


#: A file or folder name in the output folder; ``{scan}`` is the scan name. No / or \\, not . or ..
ScanFileName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_scan_file_name)]
#: A folder inside the output folder, subfolders allowed (``tiff/{scan}``); no .., no leading /.
ScanSubfolder = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_scan_subfolder)]

_ENDPOINT = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


def split_endpoint(address: str) -> tuple[str | None, str, int] | None:
    """``(scheme, host, port)`` of ``[scheme://]host:port`` with a port 1 to 65535, or ``None``.

    Examples
    --------
    >>> split_endpoint("tcp://eiger-dcu:9999")
    ('tcp', 'eiger-dcu', 9999)
    >>> split_endpoint("tcp://eiger-dcu:99999") is None
    True
    """
    match = _ENDPOINT.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return None
    return match["scheme"], match["host"], int(match["port"])


def _tcp_endpoint(address: str) -> str:
    parts = split_endpoint(address)
    if parts is None or parts[0] != "tcp":
        raise ValueError(f"{address!r} is not a TCP endpoint; give tcp://host:port with a port from 1 to 65535, "
                         "e.g. tcp://eiger-dcu:9999")
    return address


#: A ZeroMQ TCP endpoint to connect to: ``tcp://host:port``, port 1 to 65535.
TcpEndpoint = Annotated[str, Field(max_length=MAX_PATH_CHARS), AfterValidator(_tcp_endpoint)]


def box_problem(axis: str, bounds: tuple[int, int] | None, size: int) -> str | None:
    """Why ``bounds`` (first, one past the last) do not fit an axis of ``size`` pixels, or ``None``."""
    if bounds is not None and bounds[1] > size:
        return f"{axis}={list(bounds)} reaches past the frame's {size} pixels along {axis}; keep it within [0, {size}]"
    return None


@runtime_checkable
class KnowsFrameShape(Protocol):
    """Source parameters that tell the shape of the frames before any is read (a simulator's)."""

    def known_frame_shape(self) -> tuple[int, int] | None:
        """Shape (ny, nx) of the source's frames, or ``None`` if only the data will tell."""


@runtime_checkable
class FrameBox(Protocol):
    """Stage parameters that describe a region of the stage's input ``frame`` (a crop, a region of interest)."""

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the region does not fit a frame of ``shape`` (ny, nx), or ``None`` when it does."""
