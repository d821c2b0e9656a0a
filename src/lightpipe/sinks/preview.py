"""Quick-look images of 2-D results: PNG for eyes, TIFF for numbers.

Every ``every``-th event written by the sink (counted in acquisition order
over the sink's streams, from the first) gets one image per 2-D per-event
field, and every 2-D scan-level result (a dark mean, a powder sum, a
reconstruction) gets one when the scan closes. Files go to
``<output>/<directory>/``: ``<stage>.<field>_<index>.png`` per event and
``<stage>.<field>.png`` per scan.

PNG previews are 8-bit grey: values are optionally log-scaled, clipped to
the given percentiles and stretched to 0-255 (NaN is black). TIFF previews
keep the values: 8- and 16-bit unsigned frames as they are, everything else
as float32. Complex values are shown as their modulus.

Examples
--------
::

    sinks:
      - use: preview
        params: {format: png, every: 50, scale: log, percentile: [1, 99.5]}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from lightpipe.core.bounds import MAX_EVENTS, ScanSubfolder
from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.core.xp import to_numpy
from lightpipe.core.sink import ShardWriter, Sink, SinkParams


_EXTENSIONS = {"png": "png", "tiff": "tif"}


class PreviewParams(SinkParams):
    """Parameters of the preview sink."""

    format: Literal["png", "tiff"] = Field("png", description="png: 8-bit grey quick-looks; tiff: the values (float32)")
    every: int = Field(
        100, ge=0, le=MAX_EVENTS,
        description=f"Preview every N-th event (the first included), at most {MAX_EVENTS}; 0 = scan results only",
    )
    scale: Literal["linear", "log"] = Field("linear", description="Grey scale of PNG previews")
    percentile: tuple[float, float] = Field(
        (1.0, 99.5), description="PNG grey levels span these percentiles of the image's values"
    )
    directory: ScanSubfolder = Field(
        "{scan}_previews", description="Folder in the output directory (subfolders allowed, no ..); {scan} is the "
        "scan name"
    )

    @field_validator("percentile")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentile must be [low, high] with 0 <= low < high <= 100, e.g. [1, 99.5]; got {list(value)}")
        return value


def grey(image: np.ndarray, scale: str, percentile: tuple[float, float]) -> np.ndarray:
    """A 2-D array as 8-bit grey: optional log scale, percentile clipping, stretch to 0-255.

    Examples
    --------
    >>> grey(np.array([[0.0, 1.0], [2.0, 4.0]]), "linear", (0, 100)).tolist()
    [[0, 64], [128, 255]]
    """
    values = np.abs(image) if np.iscomplexobj(image) else image
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if scale == "log":
        positive = values[finite & (values > 0)]
        # zero and negative values show as the darkest positive value: log has no grey for them
        values = np.log10(np.clip(values, positive.min() if positive.size else 1.0, None))
    out = np.zeros(values.shape, np.uint8)
    if not finite.any():
        return out
    low, high = np.percentile(values[finite], percentile)
    if high > low:
        stretched = (np.clip(values, low, high) - low) / (high - low) * 255.0
        out[finite] = np.rint(stretched[finite]).astype(np.uint8)
    return out


def tiff_values(image: np.ndarray) -> np.ndarray:
    """The array a TIFF preview stores: uint8 and uint16 kept, bool as uint8, the rest float32."""
    if np.iscomplexobj(image):
        image = np.abs(image)
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if image.dtype in (np.uint8, np.uint16):
        return image
    return image.astype(np.float32)


def save_image(value: Any, path: Path, params: PreviewParams) -> bool:
    """Write a 2-D ``value`` as a preview at ``path``; return ``False`` for anything else."""
    if not hasattr(value, "ndim") or value.ndim != 2:
        return False
    image = to_numpy(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    if params.format == "png":
        Image.fromarray(grey(image, params.scale, params.percentile)).save(path)
    else:
        Image.fromarray(tiff_values(image)).save(path)
    return True


class Positions:
    """Position of each event among a sink's events, from the scan's stream ranges (small to pickle)."""

    def __init__(self, ranges: list[range]) -> None:
        self.ranges: list[tuple[range, int]] = []
        offset = 0
        for r in ranges:
            self.ranges.append((r, offset))
            offset += len(r)

    def __getitem__(self, index: int) -> int:
        for r, offset in self.ranges:
            if index in r:
                return offset + index - r.start
        raise KeyError(index)


class PreviewShardWriter(ShardWriter):
    """Writes the chosen events' previews on the worker that computed them."""

    def __init__(self, sink: PreviewSink) -> None:
        self.params = sink.params
        self.directory = sink.directory
        self.event_fields = sink.event_fields
        self.position = sink.position

    def write(self, events: list[Event]) -> dict[tuple[int, str], Any]:
        for event in chosen(events, self.position, self.params.every):
            for key in self.event_fields:
                save_image(event.fields.get(key), preview_path(self.directory, key, event.index, self.params), self.params)
        return {}


def chosen(events: list[Event], position: Positions, every: int) -> list[Event]:
    """The events that get a preview: not failed, and every ``every``-th by position."""
    if not every:
        return []
    return [e for e in events if e.error is None and position[e.index] % every == 0]


def preview_path(directory: Path, key: str, index: int | None, params: PreviewParams) -> Path:
    """File of the preview of field ``key`` (of event ``index``, or of the scan when ``None``)."""
    stem = key if index is None else f"{key}_{index:06d}"
    return directory / f"{stem}.{_EXTENSIONS[params.format]}"


class PreviewSink(Sink):
    """Write PNG or TIFF previews of 2-D per-event fields and scan results."""

    name = "preview"
    Params = PreviewParams

    def open(self, scan: Scan) -> None:
        self.directory = self.output_dir / self.params.directory.format(scan=scan.name)
        self.written: list[Path] = []
        self.on_workers = False
        # position of each event among the sink's events, so the choice of events is fixed by acquisition order
        self.position = Positions(scan.indices(set(self.streams)))
        self.event_fields = [k for k in self.fields if not self.pipeline.port(k).scan and self._may_be_2d(k)]
        self.scan_fields = [k for k in self.fields if self.pipeline.port(k).scan and self._may_be_2d(k)]

    def _may_be_2d(self, key: str) -> bool:
        ndim = self.pipeline.port(key).ndim
        return ndim is None or ndim == 2

    def shard_writer(self) -> ShardWriter | None:
        if not self.params.every or not self.event_fields:
            return None
        self.on_workers = True
        return PreviewShardWriter(self)

    def write(self, events: list[Event]) -> None:
        for event in chosen(events, self.position, self.params.every):
            for key in self.event_fields:
                path = preview_path(self.directory, key, event.index, self.params)
                if self.on_workers or save_image(event.fields.get(key), path, self.params):
                    self.written.append(path)

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        for key in self.scan_fields:
            path = preview_path(self.directory, key, None, self.params)
            if key in results and save_image(results[key], path, self.params):
                self.written.append(path)
        return [p for p in self.written if p.exists()]
