"""Bounded parameter types shared by plug-ins: frame shapes, pixel ranges, counts, seeds.

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

from typing import Annotated, Protocol, runtime_checkable

from pydantic import AfterValidator, Field

#: Most pixels along one axis of a frame: ten times the largest detectors built.
MAX_FRAME_PX = 65_536
#: Most events (frames) a scan parameter may ask for.
MAX_EVENTS = 100_000_000
#: Most iterations, bins, workers and other counts a parameter may ask for.
MAX_COUNT = 1_000_000
#: Largest random seed (NumPy takes any non-negative integer; 32 bits are plenty).
MAX_SEED = 2**32 - 1

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


def _ordered(pair: tuple[int, int]) -> tuple[int, int]:
    if pair[0] >= pair[1]:
        raise ValueError(f"[{pair[0]}, {pair[1]}] is empty or reversed; give [first, one past the last] "
                         "with first < one past the last, e.g. [0, 64]")
    return pair


#: Frame shape (ny, nx), each 1 to :data:`MAX_FRAME_PX`.
FrameShape = tuple[FramePx, FramePx]
#: Rows or columns ``[first, one past the last]``, first < one past the last, both 0 to :data:`MAX_FRAME_PX`.
PixelRange = Annotated[tuple[PixelIndex, PixelIndex], AfterValidator(_ordered)]


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
