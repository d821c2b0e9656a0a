"""The ``cxi_peaks`` sink: one CXI file per scan with the hits' frames and peak lists, as CrystFEL and Cheetah read them.

Layout of ``<output>/<scan>_hits.cxi``::

    /cxi_version                           160
    /entry_1                               NXentry, @default = image_1 (data_1 without a powder)
      /data_1/data                         frames of the hits [rows, ss, fs] (every frame with hits_only: false)
      /data_1/frame_index                  acquisition index of each row (lightpipe)
      /result_1/nPeaks                     peaks of each row (int32)
      /result_1/peakXPosRaw, peakYPosRaw   peak centroids along fs and ss, slab pixels, the first pixel's
                                           centre at 0 (Cheetah's convention; CrystFEL adds 0.5 unless
                                           --no-half-pixel-shift), 0 past nPeaks  [rows, max_peaks]
      /result_1/peakTotalIntensity         integrated intensities, 0 past nPeaks
      /result_1/peakSNR, peakNPixels       signal-to-noise ratio and pixels of each peak (lightpipe)
      /image_1/data                        the powder sum of the hits, where the sink writes one (NXdata)
      /instrument_1/detector_1             distance, pixel size, beam centre (from the scan's metadata)
      /process_1                           NXprocess: pipeline, state, and per event of the scan:
                                           event_index, event_status (0 written, 1 failed, 2 not processed),
                                           event_hit and event_row (its row in data_1, -1 for none)

With CrystFEL: ``indexamajig -i files.lst -g detector.geom --peaks=cxi
--hdf5-peaks=/entry_1/result_1`` with ``data = /entry_1/data_1/data`` and
``dim0 = %`` in the geometry file.

The sink takes its file as every result file is taken
(:mod:`lightpipe.core.output`): a lock beside it, one writer, the rows written
to ``.<name>.partial`` as events arrive, the scan's state at close, then
renamed. A killed run leaves a partial file that says ``running``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import Field

from lightpipe.core.bounds import ScanFileName
from lightpipe.core.event import Event, Scan
from lightpipe.core.hdf5 import Compression, compression_filters, write_provenance
from lightpipe.core.ledger import Ledger
from lightpipe.core.output import (
    FAILED, NOT_PROCESSED, WRITTEN, OutputClaim, mark_failures, write_state, write_status_codes,
)
from lightpipe.core.sink import Sink, SinkParams
from lightpipe.core.xp import to_numpy

__all__ = ["CXI_PEAK_FIELDS", "PeakCXISink", "PeakCXISinkParams"]

log = logging.getLogger(__name__)

#: CXI version written.
CXI_VERSION = 160
#: Dataset under /entry_1/result_1 -> (output of the peak finding stage, dtype, value past nPeaks).
CXI_PEAK_FIELDS = {
    "peakXPosRaw": ("peak_x_px", "float32", 0),
    "peakYPosRaw": ("peak_y_px", "float32", 0),
    "peakTotalIntensity": ("peak_intensity", "float32", 0),
    "peakSNR": ("peak_snr", "float32", 0),
    "peakNPixels": ("peak_pixels", "int32", 0),
}
NEXUS_CLASSES = {"entry_1": "NXentry", "entry_1/data_1": "NXdata", "entry_1/result_1": "NXcollection",
                 "entry_1/image_1": "NXdata", "entry_1/instrument_1": "NXinstrument",
                 "entry_1/instrument_1/detector_1": "NXdetector", "entry_1/process_1": "NXprocess"}


class PeakCXISinkParams(SinkParams):
    """Parameters of the ``cxi_peaks`` sink."""

    filename: ScanFileName = Field("{scan}_hits.cxi", description="File name in the output directory, no / or \\; "
                                   "{scan} is the scan name")
    hits_only: bool = Field(True, description="Write the hits only (true), or every frame with its peaks (false)")
    frame: str | None = Field(None, description="Field of the frames to write; default the last per-event 2-D field")
    peaks: str | None = Field(None, pattern=r"^[A-Za-z_]\w*$", max_length=200,
                              description="Stage whose peaks are written; default the one whose n_peaks is a field")
    compression: Compression = Field("none", description="Filter of the frames: none, gzip or bitshuffle (readers "
                                     "need hdf5plugin)")


class PeakCXISink(Sink):
    """Write one CXI file per scan: the hits' frames and their peak lists, for CrystFEL."""

    name = "cxi_peaks"
    Params = PeakCXISinkParams

    def open(self, scan: Scan) -> None:
        p = self.params
        self.scan = scan
        ports = self.pipeline.port
        event_fields = [k for k in self.fields if not ports(k).scan]
        frames = [k for k in event_fields if ports(k).ndim == 2]
        self.frame_key = p.frame or (frames[-1] if frames else None)
        stages = [k.split(".", 1)[0] for k in event_fields if k.endswith(".n_peaks")]
        self.stage = p.peaks or (stages[-1] if stages else None)
        if self.stage is None:
            log.warning("the cxi_peaks sink of scan %s has no peak lists among its fields (add peakfinder8's "
                        "n_peaks, hit and peak_* outputs); it writes every frame with no peaks", scan.name)
        self.powder_key = next((k for k in self.fields if k.endswith(".powder_hits")), None)
        self.path = self.output_dir / p.filename.format(scan=scan.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        streams = {"data"} & set(self.streams) or set(self.streams)
        self.events = {index: k for k, index in enumerate(i for r in scan.indices(streams) for i in r)}
        self.status = np.full(len(self.events), NOT_PROCESSED, np.int8)
        self.hit = np.zeros(len(self.events), bool)
        self.row_of = np.full(len(self.events), -1, np.int64)
        self.claim = OutputClaim(self.path, self.pipeline.name)
        self.claim.acquire()
        try:
            self.file = h5py.File(self.claim.partial, "w", locking=False)
        except BaseException:
            self.claim.release()
            raise
        f = self.file
        f["cxi_version"] = CXI_VERSION
        process = f.create_group("entry_1/process_1")
        write_provenance(process, self.pipeline.document)
        process["state"] = "running"
        process["event_index"] = np.fromiter(self.events, np.int64, len(self.events))
        self.status_ds = process.create_dataset("event_status", data=self.status)
        write_status_codes(self.status_ds, "0 written (a hit has a row in data_1: event_row); 1 failed (see the NeXus "
                           "file's /entry/failed_events); 2 not processed: never received, or in flight when the scan "
                           "stopped")
        self.rows = 0
        self.data: h5py.Dataset | None = None
        self.peaks: dict[str, h5py.Dataset] = {}
        f.flush()  # a run killed from here on leaves a readable partial file that says "running"

    def _append(self, frame: np.ndarray, index: int, fields: dict[str, Any]) -> None:
        f = self.file
        if self.data is None:
            chunks = (1, *frame.shape)
            self.data = f.create_dataset("entry_1/data_1/data", (0, *frame.shape), frame.dtype,
                                         maxshape=(None, *frame.shape), chunks=chunks,
                                         **compression_filters(self.params.compression))
            self.data.attrs["units"] = "counts"
            self.index_ds = f.create_dataset("entry_1/data_1/frame_index", (0,), np.int64, maxshape=(None,))
            self.n_peaks = f.create_dataset("entry_1/result_1/nPeaks", (0,), np.int32, maxshape=(None,))
        if frame.shape != self.data.shape[1:]:
            raise ValueError(f"its frame is {frame.shape}, unlike the first frame's {self.data.shape[1:]}")
        row = self.rows
        for ds in (self.data, self.index_ds, self.n_peaks, *self.peaks.values()):
            ds.resize(row + 1, axis=0)
        self.data[row] = frame
        self.index_ds[row] = index
        n = int(fields.get(f"{self.stage}.n_peaks", 0)) if self.stage else 0
        self.n_peaks[row] = n
        for name, (output, dtype, fill) in CXI_PEAK_FIELDS.items():
            value = fields.get(f"{self.stage}.{output}") if self.stage else None
            if value is None:
                continue
            value = np.asarray(to_numpy(value))
            if name not in self.peaks:
                self.peaks[name] = f.create_dataset(f"entry_1/result_1/{name}", (row + 1, len(value)), dtype,
                                                    maxshape=(None, len(value)), fillvalue=fill)
            padded = np.full(self.peaks[name].shape[1], fill, dtype)
            padded[:n] = value[:n]
            self.peaks[name][row] = padded
        self.rows += 1

    def write(self, events: list[Event]) -> None:
        for event in events:
            k = self.events.get(event.index)
            if k is None:
                continue
            if event.error is not None:
                self.status[k] = FAILED
                continue
            hit = bool(event.fields.get(f"{self.stage}.hit", True)) if self.stage else True
            self.hit[k] = hit
            self.status[k] = WRITTEN
            if self.params.hits_only and not hit:
                continue
            value = event.fields.get(self.frame_key) if self.frame_key else None
            if value is None or not hasattr(value, "shape"):
                log.warning("the cxi_peaks sink of scan %s has no frame for event %d (%s); set shards: false on the "
                            "nexus sink on a Dask engine, or name the frame field", self.scan.name, event.index,
                            self.frame_key)
                self.status[k] = FAILED
                continue
            try:
                self._append(np.asarray(to_numpy(value)), event.index, event.fields)
            except ValueError as exc:
                log.warning("the cxi_peaks sink of scan %s leaves out event %d: %s", self.scan.name, event.index, exc)
                self.status[k] = FAILED
                continue
            self.row_of[k] = self.rows - 1
        self.status_ds[...] = self.status
        self.file.flush()  # what a killed run leaves says which events it had written

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        """Write the statuses, the instrument, the powder and the state, then rename the partial file."""
        with self.claim.completing(self.scan.name):
            try:
                self._finish(results, ledger)
            finally:
                self.file.close()
        return [self.path]

    def _finish(self, results: dict[str, Any], ledger: Ledger) -> None:
        f = self.file
        if self.data is None:  # no row: the datasets are there, empty
            f.create_dataset("entry_1/data_1/data", (0, 0, 0), np.float32, maxshape=(None, None, None))
            f.create_dataset("entry_1/data_1/frame_index", (0,), np.int64)
            f.create_dataset("entry_1/result_1/nPeaks", (0,), np.int32)
        f["entry_1/data_1"].attrs.update(signal="data", axes=["."] * 3)
        if self.powder_key is not None and self.powder_key in results:
            image = f.create_group("entry_1/image_1")
            image["data"] = np.asarray(to_numpy(results[self.powder_key]))
            image["data"].attrs["units"] = "counts"
            image.attrs.update(signal="data", axes=[".", "."])
        meta = self.scan.metadata
        detector = f.require_group("entry_1/instrument_1/detector_1")
        for key, name, unit in (("distance_m", "distance", "m"), ("x_pixel_size_m", "x_pixel_size", "m"),
                                ("y_pixel_size_m", "y_pixel_size", "m"), ("beam_center_x_px", "beam_center_x", "pixel"),
                                ("beam_center_y_px", "beam_center_y", "pixel")):
            if meta.get(key) is not None:
                detector[name] = float(meta[key])
                detector[name].attrs["units"] = unit
        mark_failures(self.status, self.events, ledger)
        self.status_ds[...] = self.status
        process = f["entry_1/process_1"]
        process["event_hit"] = self.hit
        process["event_row"] = self.row_of
        write_state(process, ledger)
        for name, nx_class in NEXUS_CLASSES.items():
            if name in f:
                f[name].attrs["NX_class"] = nx_class
        f.attrs["default"] = "entry_1"
        f["entry_1"].attrs["default"] = "image_1" if "entry_1/image_1" in f else "data_1"
