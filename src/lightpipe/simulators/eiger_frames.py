"""The frames the simulated EIGER streams: one stream of any lightpipe scan, read on demand and cycled.

Examples
--------
>>> frames = FrameSource.from_simulator("simulated_frames", {"frames": 4, "shape": [16, 24]})
>>> len(frames), frames.shape, frames.frame(5).dtype.name  # frame 5 is frame 1 again
(4, (16, 24), 'uint16')
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lightpipe.core.errors import SourceError
from lightpipe.core.source import ScanReader


class FrameSource:
    """Frames to stream, read on demand from one stream of a lightpipe scan and cycled.

    Parameters
    ----------
    reader
        A scan reader (of any lightpipe source) whose events have a ``frame`` field.
    stream
        The stream to take frames from (``data``; the first stream if there is none).

    Attributes
    ----------
    shape, dtype
        Shape ``(ny, nx)`` and pixel type of the frames, those of the first.
    metadata
        The scan's metadata, which gives the detector its geometry.
    """

    def __init__(self, reader: ScanReader, stream: str = "data") -> None:
        self.reader = reader
        streams = reader.scan.streams
        self.indices = streams[stream] if stream in streams else next(iter(streams.values()), range(0))
        if len(self.indices) == 0:
            raise SourceError(f"scan {reader.scan.name!r} has no frames to stream in {stream!r}")
        first = self.frame(0)
        self.shape: tuple[int, int] = (first.shape[0], first.shape[1])
        self.dtype = first.dtype
        self.metadata = reader.scan.metadata

    @classmethod
    def from_hdf5(cls, path: str, dataset: str | None = None) -> FrameSource:
        """The frames of a 3-D dataset (default: lightpipe's or DECTRIS's layout, as ``lightpipe run`` finds it)."""
        from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader, hdf5_defaults

        dataset = dataset or hdf5_defaults(path).get("dataset", "/entry/data/data")
        return cls(HDF5Reader(HDF5Params(path=path, dataset=dataset)))

    @classmethod
    def from_simulator(cls, name: str = "simulated_frames", params: Mapping[str, Any] | None = None) -> FrameSource:
        """The data frames of the first scan of a registered source, e.g. ``simulated_frames``."""
        from pydantic import ValidationError

        from lightpipe.core.registry import load

        source_cls = load("sources", name)
        try:
            source = source_cls(source_cls.Params(**dict(params or {})))
        except ValidationError as exc:
            raise SourceError(f"bad parameters for source {name!r}: {exc}") from exc
        return cls(next(iter(source.scans())))

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k``, cycling through the frames there are."""
        index = self.indices[k % len(self.indices)]
        event = self.reader.read(index, index + 1)[0]
        if event.error:
            raise SourceError(f"cannot read frame {index} to stream: {event.error}")
        frame = np.asarray(event.fields["frame"])
        if frame.ndim != 2:
            raise SourceError(f"frame {index} has shape {frame.shape}; a detector streams 2-D frames")
        return frame
