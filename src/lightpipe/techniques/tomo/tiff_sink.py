"""The ``tiff_slices`` sink: a reconstructed volume as one 32-bit float TIFF per slice.

Many tomography tools (ImageJ/Fiji, Avizo, Dragonfly) read a volume as a folder
of TIFF slices. When the scan closes, each 3-D scan-level field given to the
sink is written slice by slice (along its first axis) to
``<output>/<directory>/<stage>.<field>_<k>.tif``, ``k`` counted from 0 with
as many digits as the last needs.

Examples
--------
::

    sinks:
      - use: tiff_slices
        fields: [recon.volume]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from lightpipe.core.bounds import ScanSubfolder
from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.core.ports import Port
from lightpipe.core.sink import Sink, SinkParams
from lightpipe.core.xp import to_numpy

__all__ = ["TiffSlices", "TiffSlicesParams"]


class TiffSlicesParams(SinkParams):
    """Parameters of the ``tiff_slices`` sink."""

    directory: ScanSubfolder = Field("{scan}_slices", description="Folder in the output directory (subfolders "
                                     "allowed, no ..); {scan} is the scan name")


class TiffSlices(Sink):
    """Write each slice of 3-D scan results (a reconstructed volume) as a 32-bit float TIFF."""

    name = "tiff_slices"
    Params = TiffSlicesParams

    @classmethod
    def field_problems(cls, params: Any, fields: list[str], ports: dict[str, Port]) -> list[tuple[tuple[Any, ...], str]]:
        return [(("fields", k), f"{key} is not a 3-D per-scan result (a volume); tiff_slices writes volumes slice by "
                 "slice") for k, key in enumerate(fields) if not ports[key].scan or ports[key].ndim not in (3, None)]

    def open(self, scan: Scan) -> None:
        self.directory = self.output_dir / self.params.directory.format(scan=scan.name)

    def write(self, events: list[Event]) -> None:
        """Per-event fields are not this sink's: nothing to write."""

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        written = []
        for key in self.fields:
            if key not in results:
                continue
            volume = np.asarray(to_numpy(results[key]), np.float32)
            if volume.ndim != 3:
                continue
            self.directory.mkdir(parents=True, exist_ok=True)
            digits = len(str(max(len(volume) - 1, 0)))
            for k, image in enumerate(volume):
                path = self.directory / f"{key}_{k:0{digits}d}.tif"
                Image.fromarray(image).save(path)
                written.append(path)
        return written
