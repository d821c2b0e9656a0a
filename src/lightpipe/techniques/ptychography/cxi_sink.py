"""The ``cxi`` sink: one CXI file per ptychography scan with the frames, their positions and the reconstruction.

The file has the layout of :mod:`~lightpipe.techniques.ptychography.cxi` and
reads back with :func:`~lightpipe.techniques.ptychography.cxi.read_cxi`:

* ``detector_1/data``: the sink's ``frame`` field, one row per event of the
  scan's ``data`` stream in acquisition order, written as the events arrive
  (default: the last per-event 2-D field among the sink's fields, e.g. the
  downsampled frame), with ``detector_1/frame_index`` (lightpipe) holding each
  row's acquisition index and ``detector_1/frame_status`` its status
  (:data:`~lightpipe.core.output.STATUS_CODES`: 0 written, 1 failed, 2 not
  processed, also its attributes). A row that is not written holds NaN (0 for
  integer frames) and its translation NaN: :func:`~lightpipe.techniques.ptychography.cxi.read_cxi`
  and the ``cxi`` source read only the written rows;
* ``geometry_1/translation``: from the ``position_y`` and ``position_x`` fields
  (default: the fields called ``position_y_m`` and ``position_x_m``), NaN when
  the sink has none;
* energy and distance from the scan's metadata, and the detector pixel size
  *of the written frames*: a crop keeps the pixel size, FFT downsampling and
  binning enlarge it. It comes from the frame geometry the pipeline follows
  through the stages that made the frames from the source's, each of which
  declares what it does to a frame (:meth:`~lightpipe.core.stage.Stage.frame_geometry`);
  ``pixel_size_m`` overrides it;
* ``image_1``: the reconstruction of the solver whose ``object`` is among the
  sink's fields (its probe, error curves, positions, object pixel size,
  ``object_y``/``object_x`` axes and ``object_origin_m`` come with it) and, as
  its parameters, the whole pipeline document with whether the solver
  ``diverged`` or ``stalled`` and its ``probe_scale``. It is an NXdata whose signal is the object's
  phase on ``y`` and ``x`` in metres, and the file's default plot; without a
  reconstruction the default is ``data_1``, the frames. Every group has its
  NeXus class (:data:`~lightpipe.techniques.ptychography.cxi.NEXUS_CLASSES`).

A pipeline without a reconstruction still gets the frames, positions and
geometry, and the pipeline document in ``/entry_1/process_1/pipeline``.

``/entry_1/process_1/state`` is the scan's state: ``running`` while the scan
runs, then ``completed``, ``failed``, ``aborted`` or ``interrupted`` (with
``error`` and the ``received``/``written``/``failed`` counts as attributes).
The sink takes its file as every result file is taken
(:mod:`lightpipe.core.output`): a lock beside it, one writer, the results in
``.<name>.partial`` until the scan closes, then renamed.

Examples
--------
::

    sinks:
      - use: cxi
        fields: [downsampled.frame, source.position_y_m, source.position_x_m, recon.object]
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

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
from lightpipe.core.xp import to_numpy
from lightpipe.core.sink import Sink, SinkParams
from lightpipe.techniques.ptychography.cxi import (
    CXI_VERSION,
    DETECTOR,
    FRAME_STATUS,
    PROCESS,
    write_geometry,
    write_reconstruction,
)
from lightpipe.techniques.ptychography.geometry import scan_wavelength

log = logging.getLogger(__name__)

#: Relative disagreement between the frames' geometry and a reconstruction's pixel size that is reported.
PIXEL_TOLERANCE = 0.01


#: A detector pixel's size in metres: more than 0, at most 1 m (a typo in the units, not a detector, beyond).
PixelSizeM = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class CXISinkParams(SinkParams):
    """Parameters of the CXI sink."""

    filename: ScanFileName = Field(
        "{scan}.cxi", description="File name in the output directory, no / or \\; {scan} is the scan name"
    )
    frame: str | None = Field(None, description="Field of the frames to write; default the last per-event 2-D field")
    position_y: str | None = Field(None, description="Field of the vertical position, m; default *.position_y_m")
    position_x: str | None = Field(None, description="Field of the horizontal position, m; default *.position_x_m")
    pixel_size_m: tuple[PixelSizeM, PixelSizeM] | None = Field(
        None, description="Detector pixel size (y, x) of the written frames, m, each more than 0 and at most 1; "
        "default followed from the scan")
    compression: Compression = Field(
        "none", description="Filter of the frames: none (every HDF5 reader opens it, fastest), gzip (level 1, "
        "readable everywhere) or bitshuffle (LZ4; readers need hdf5plugin); see docs/result-files.md")


def _run_lengths(algorithms: Any) -> str:
    """``"DM**100,ML**50"`` from the algorithm of each iteration."""
    names = [e.decode() if isinstance(e, bytes) else str(e) for e in np.asarray(algorithms).tolist()]
    runs: list[list[Any]] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return ",".join(f"{name}**{count}" for name, count in runs)


class CXISink(Sink):
    """Write one CXI file per scan: pre-processed frames, positions, geometry and the reconstruction."""

    name = "cxi"
    Params = CXISinkParams

    def open(self, scan: Scan) -> None:
        p = self.params
        self.scan = scan
        event_fields = [k for k in self.fields if not self.pipeline.port(k).scan]
        frames = [k for k in event_fields if self.pipeline.port(k).ndim == 2]
        self.frame_key = p.frame or (frames[-1] if frames else None)
        self.y_key = p.position_y or next((k for k in event_fields if k.endswith(".position_y_m")), None)
        self.x_key = p.position_x or next((k for k in event_fields if k.endswith(".position_x_m")), None)
        for key in (p.frame, p.position_y, p.position_x):
            if key is not None and key not in self.fields:
                log.warning("the cxi sink of scan %s is to write %s but it is not among the sink's fields, so no event "
                            "brings it; add it to fields", scan.name, key)
        if self.frame_key is None:
            log.warning("the cxi sink of scan %s has no per-event 2-D field to write as frames; add one to its fields "
                        "(e.g. the downsampled frame)", scan.name)
        if self.y_key is None or self.x_key is None:
            log.warning("the cxi sink of scan %s has no position fields; translations are written as NaN: add "
                        "source.position_y_m and source.position_x_m to its fields", scan.name)
        objects = [k for k in self.fields if k.endswith(".object") and self.pipeline.port(k).scan]
        self.solver = objects[-1].split(".", 1)[0] if objects else None
        self.path = self.output_dir / p.filename.format(scan=scan.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one row per frame the scan brings (its data stream), so that a frame never received has a row that says so
        streams = {"data"} & set(self.streams) or set(self.streams)
        self.rows = {index: row for row, index in enumerate(i for r in scan.indices(streams) for i in r)}
        self.status = np.full(len(self.rows), NOT_PROCESSED, np.int8)
        self.positions = np.full((len(self.rows), 2), np.nan)
        self.claim = OutputClaim(self.path, self.pipeline.name)
        self.claim.acquire()
        try:
            self.file = h5py.File(self.claim.partial, "w", locking=False)
        except BaseException:
            self.claim.release()
            raise
        self.file["cxi_version"] = CXI_VERSION
        self.file[f"{DETECTOR}/frame_index"] = np.fromiter(self.rows, np.int64, len(self.rows))
        self.status_ds = self.file.create_dataset(FRAME_STATUS, data=self.status)
        write_status_codes(self.status_ds, "0 written; 1 failed (in a stage: see the NeXus file's "
                           "/entry/failed_events; or its frame could not be written: /entry_1/process_1/left_out); "
                           "2 not processed: never received, or still in flight when the scan stopped. A row not "
                           "written holds NaN (0 for integer frames) and a NaN translation")
        process = self.file.create_group(PROCESS)
        write_provenance(process, self.pipeline.document)
        process["state"] = "running"
        self.file.flush()  # a run killed from here on leaves a readable partial file that says "running"
        self.data: h5py.Dataset | None = None
        self.shape: tuple[int, ...] | None = None  # of the written frames
        self.skipped: dict[str, int] = {}

    def _skip(self, why: str, event: Event) -> None:
        self.status[self.rows[event.index]] = FAILED
        if why not in self.skipped:
            log.warning("the cxi sink of scan %s leaves out event %d: %s", self.scan.name, event.index, why)
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def write(self, events: list[Event]) -> None:
        for event in events:
            if event.index not in self.rows:  # another stream's event (darks): the frames are the data stream's
                continue
            if event.error is not None:
                self.status[self.rows[event.index]] = FAILED
                continue
            if self.frame_key is None:
                self._skip("the sink has no frame field", event)
                continue
            value = event.fields.get(self.frame_key)
            if value is None:
                self._skip(f"it has no {self.frame_key}", event)
                continue
            if not hasattr(value, "shape"):
                self._skip(f"its {self.frame_key} is kept on a worker (on the Dask engine, set shards: false on the "
                           "nexus sink if it writes this field too)", event)
                continue
            frame = np.asarray(to_numpy(value))
            if self.data is None:
                self.data = self._frames(frame.shape, frame.dtype)
                self.shape = frame.shape
            if frame.shape != self.shape:
                self._skip(f"its frame is {frame.shape}, unlike the first frame's {self.shape}", event)
                continue
            row = self.rows[event.index]
            self.data[row] = frame
            self.status[row] = WRITTEN
            y = event.fields.get(self.y_key, np.nan) if self.y_key else np.nan
            x = event.fields.get(self.x_key, np.nan) if self.x_key else np.nan
            self.positions[row] = float(y), float(x)
        self.status_ds[...] = self.status
        self.file.flush()  # what a killed run leaves says which frames it had written

    def _frames(self, shape: tuple[int, ...], dtype: np.dtype) -> h5py.Dataset:
        """The frame rows, all holding the fill value (NaN, 0 for integers) until a frame is written."""
        fill = np.nan if dtype.kind in "fc" else 0
        chunks = (1, *shape) if all(shape) else None
        filters = compression_filters(self.params.compression) if chunks else {}
        data = self.file.create_dataset(f"{DETECTOR}/data", (len(self.rows), *shape), dtype, chunks=chunks,
                                        fillvalue=fill, **filters)
        port = self.pipeline.ports.get(self.frame_key) if self.frame_key else None
        if port is not None and port.unit:
            data.attrs["units"] = port.unit
        return data

    # -------------------------------------------------------------- close
    def _pixel_size(self, results: dict[str, Any]) -> tuple[float, float]:
        """Detector pixel size (y, x) of the written frames (see the module description)."""
        if self.params.pixel_size_m is not None:
            return self.params.pixel_size_m
        meta = self.scan.metadata
        py, px = meta.get("y_pixel_size_m"), meta.get("x_pixel_size_m")
        shape = self.shape
        geometry = self.pipeline.frame_geometry(self.frame_key, meta.get("frame_shape")) if self.frame_key else None
        if geometry is not None and geometry.shape == shape and py is not None and px is not None:
            return geometry.pixel_size((float(py), float(px)))
        recon_pixel = results.get(f"{self.solver}.object_pixel_size_m")
        lam, distance = scan_wavelength(meta), meta.get("distance_m")
        if recon_pixel is not None and shape is not None and lam and distance:
            return (lam * float(distance) / (shape[0] * float(recon_pixel[0])),
                    lam * float(distance) / (shape[1] * float(recon_pixel[1])))
        log.warning("the cxi sink of scan %s cannot tell the pixel size of %s frames %s; it writes the scan's "
                    "(%s, %s): set the sink's pixel_size_m", self.scan.name, self.frame_key, shape, py, px)
        return (np.nan if py is None else float(py)), (np.nan if px is None else float(px))

    def _check_reconstruction_pixel(self, pixel: tuple[float, float], results: dict[str, Any]) -> None:
        """Warn when the reconstruction's object pixel size does not follow from the frames' geometry."""
        recon_pixel = results.get(f"{self.solver}.object_pixel_size_m")
        lam, distance = scan_wavelength(self.scan.metadata), self.scan.metadata.get("distance_m")
        if recon_pixel is None or self.shape is None or not lam or not distance or not np.all(np.isfinite(pixel)):
            return
        expected = np.array([lam * float(distance) / (n * p) for n, p in zip(self.shape, pixel)])
        if np.any(np.abs(np.asarray(recon_pixel) / expected - 1) > PIXEL_TOLERANCE):
            log.warning("scan %s: %s reconstructed with object pixels of %s m, but %s frames of detector pixels %s m "
                        "give %s m; check its object_pixel_size_m, and that each stage that crops or resamples the "
                        "frames declares it (Stage.frame_geometry)",
                        self.scan.name, self.solver, list(np.asarray(recon_pixel)), self.frame_key, list(pixel),
                        expected.tolist())

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        """Write the geometry, the statuses, the state and the reconstruction, then rename the partial file.

        If writing fails, the partial file stays (its name says it is not a
        result) and the lock is released.
        """
        with self.claim.completing(self.scan.name):
            try:
                pixel = self._finish(results, ledger)
            finally:
                self.file.close()
            if self.solver is not None and f"{self.solver}.object" in results:
                self._check_reconstruction_pixel(pixel, results)
                self._write_reconstruction(results)
        return [self.path]

    def _finish(self, results: dict[str, Any], ledger: Ledger) -> tuple[float, float]:
        meta = self.scan.metadata
        f = self.file
        if self.data is None:  # no frame was written: the rows are there, empty
            self.data = self._frames((0, 0), np.dtype(np.float32))
        energy, pixel = meta.get("energy_ev"), self._pixel_size(results)
        write_geometry(f, None if energy is None else float(energy), scan_wavelength(meta), meta.get("distance_m"),
                       pixel, self.positions)
        mark_failures(self.status, self.rows, ledger)
        self.status_ds[...] = self.status
        process = f[PROCESS]
        write_state(process, ledger)
        if self.skipped:
            process["left_out"] = json.dumps(self.skipped)
            log.info("the cxi sink of scan %s left out %s", self.scan.name, self.skipped)
        return pixel

    def _write_reconstruction(self, results: dict[str, Any]) -> None:
        name = self.solver
        node = self.pipeline.stages[name]

        def get(field: str) -> Any:
            return results.get(f"{name}.{field}")

        probe = get("probe_modes") if get("probe_modes") is not None else get("probe")
        pixel = get("object_pixel_size_m")
        engines = get("engines")
        # CXI's names for the curves: "fourier" for the stage's fourier_error
        curves = {key: get(field) for key, field in (("fourier", "fourier_error"), ("iteration_seconds", "seconds"))
                  if get(field) is not None}
        axes = (get("object_y"), get("object_x"))
        parameters = {
            "stage": name,
            "use": node.cls.name or node.cls.__name__,
            "params": node.params.model_dump(mode="json"),
            "scan": self.scan.name,
            "frames": None if get("frames") is None else int(get("frames")),
            "diverged": None if get("diverged") is None else bool(get("diverged")),
            "stalled": None if get("stalled") is None else bool(get("stalled")),
            "probe_scale": None if get("probe_scale") is None else float(get("probe_scale")),
            "pipeline": self.pipeline.document,
        }
        write_reconstruction(
            self.claim.partial, np.asarray(to_numpy(get("object"))), np.asarray(to_numpy(probe)),
            object_pixel_size_m=(np.nan, np.nan) if pixel is None else (float(pixel[0]), float(pixel[1])),
            algorithm=_run_lengths(engines) if engines is not None and len(engines) else getattr(node.params, "chain", ""),
            errors=curves, parameters=parameters,
            positions_px=None if get("positions_px") is None else np.asarray(get("positions_px")),
            axes_m=None if axes[0] is None or axes[1] is None else (np.asarray(axes[0]), np.asarray(axes[1])),
            origin_m=None if get("object_origin_m") is None else np.asarray(get("object_origin_m")),
        )


__all__ = ["CXISink", "CXISinkParams"]
