"""A live DECTRIS detector as a source: each series the detector sends is a scan.

Start the pipeline before the detector is armed: the source connects its one
receiver and waits. A scan starts at the series header, whose detector
configuration becomes scan metadata (energy, wavelength, distance, beam
centre, pixel size, count time, and with header detail ``all`` the pixel mask
and flat field); events flow through the same stages as frames from a file,
and the scan ends with the series. Frames are sent to workers still encoded
and decoded there. The source takes series until ``max_scans``, until none
came for ``idle_timeout_s``, or until the run is asked to stop (``lightpipe
stop``, a cancelled service job), which it sees within half a second.
"""
from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, Field

from lightpipe.core.bounds import MAX_COUNT, MAX_NAME_CHARS, MAX_SECONDS, Count, PathText, Seconds, TcpEndpoint, file_name
from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source, SourceParams
from lightpipe.sources.dectris.errors import StreamError
from lightpipe.sources.dectris.messages import Image
from lightpipe.sources.dectris.receiver import LiveSeries, Receiver

log = logging.getLogger(__name__)

#: Detector configuration keys copied into scan metadata, with lightpipe's name and a unit factor.
CONFIG_METADATA = {
    "photon_energy": ("energy_ev", 1.0),
    "wavelength": ("wavelength_a", 1.0),
    "detector_distance": ("distance_m", 1.0),
    "beam_center_x": ("beam_center_x_px", 1.0),
    "beam_center_y": ("beam_center_y_px", 1.0),
    "x_pixel_size": ("x_pixel_size_m", 1.0),
    "y_pixel_size": ("y_pixel_size_m", 1.0),
    "count_time": ("count_time_s", 1.0),
    "frame_time": ("frame_time_s", 1.0),
    "nimages": ("nimages", 1),
    "ntrigger": ("ntrigger", 1),
    "omega_start": ("omega_start_deg", 1.0),
    "omega_increment": ("omega_increment_deg", 1.0),
    "sensor_material": ("sensor_material", None),
    "sensor_thickness": ("sensor_thickness_m", 1.0),
    "description": ("detector", None),
    "detector_number": ("detector_number", None),
}


#: Most memory for encoded frames of one series, in MB: 1 TiB, more than any receiving computer has.
MAX_MEMORY_MB = 1024 * 1024


def _series_name(template: str) -> str:
    return file_name(template, series=1)


class EigerParams(SourceParams):
    """Parameters of the live DECTRIS stream source."""

    endpoint: TcpEndpoint = Field(
        "tcp://127.0.0.1:9999", description="The detector's stream, tcp://host:port, e.g. tcp://eiger-dcu:9999"
    )
    version: Literal["v1", "v2"] = Field("v1", description="Stream version: v1 (format legacy) or v2 (format cbor)")
    memory_mb: float = Field(
        1024.0, gt=0, le=MAX_MEMORY_MB, allow_inf_nan=False,
        description=f"Encoded frames held in memory per series before spilling to disk, MB; at most {MAX_MEMORY_MB}",
    )
    spill_dir: PathText | None = Field(None, description="Folder for spilled frames (default: a temporary folder)")
    end_timeout_s: Seconds = Field(
        10.0, description=f"Close a series after this long without a message; more than 0, at most {MAX_SECONDS} s"
    )
    idle_timeout_s: Seconds | None = Field(
        None, description=f"Stop when no new series came this long (at most {MAX_SECONDS} s); null: never"
    )
    max_scans: Count | None = Field(None, description=f"Stop after this many series (1 to {MAX_COUNT})")
    verify_hash: bool = Field(True, description="Check stream v1 MD5 hashes")
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_series_name)] = Field(
        "series_{series:06d}", description="Scan name, also the result file's; {series} is the detector's series "
        "number; no / or \\"
    )


def scan_metadata(series: LiveSeries) -> dict[str, Any]:
    """Scan metadata from a series header."""
    header = series.header
    meta: dict[str, Any] = {"series": header.series, "detail": header.detail}
    for key, (name, unit) in CONFIG_METADATA.items():
        value = header.config.get(key)
        if value is not None:
            meta[name] = value * unit if unit is not None and isinstance(value, (int, float)) else value
    shape = header.frame_shape
    if shape is not None:
        meta["frame_shape"] = list(shape)
    bits = header.config.get("bit_depth_image")
    if isinstance(bits, int) and bits in (8, 16, 32):
        meta["frame_dtype"] = f"uint{bits}"
    if header.pixel_mask is not None:
        meta["pixel_mask"] = header.pixel_mask
    if header.flatfield is not None:
        meta["flatfield"] = header.flatfield
    if header.unique_id:
        meta["series_unique_id"] = header.unique_id
    if header.appendix is not None:
        meta["header_appendix"] = header.appendix
    return meta


class FrozenChunk(ScanReader):
    """Encoded frames of one chunk, sent to a worker that decodes them."""

    def __init__(self, scan: Scan, start: int, frames: list[Image | str]) -> None:
        self.scan = scan
        self.start = start
        self.frames = frames

    def read(self, start: int, stop: int) -> list[Event]:
        events = []
        for index in range(start, stop):
            item = self.frames[index - self.start]
            event = Event(index=index, stream="data")
            if isinstance(item, str):
                event.fail("source", item)
            else:
                try:
                    event.fields["frame"] = item.decode()
                except StreamError as exc:
                    event.fail("source", f"frame {index} of series {item.series} cannot be decoded: {exc}")
                event.metadata = {"start_time_ns": item.start_time, "stop_time_ns": item.stop_time}
            events.append(event)
        return events


class LiveScanReader(ScanReader):
    """The events of one live series, available as they arrive."""

    def __init__(self, series: LiveSeries, name: str) -> None:
        self.series = series
        assert series.total is not None
        self.scan = Scan(name=name, streams={"data": range(series.total)}, metadata=scan_metadata(series))

    def ready(self, start: int, stop: int, timeout: float | None) -> int:
        end = self.series.ready(start, stop, timeout)
        if self.series.ended and "series_end" not in self.scan.metadata:
            self._record_end()
        return end

    def _record_end(self) -> None:
        """Say in the scan metadata (written to the result file) whether the series end message came.

        A series whose end never came (the next header arrived, or nothing for
        ``end_timeout_s``) is still ``completed``: every frame is accounted for, those
        that never arrived failed. The missing end is a warning, kept with the scan.
        """
        missing = self.series.end_missing
        self.scan.metadata["series_end"] = "missing" if missing else "received"
        if missing:
            self.scan.metadata["series_end_detail"] = missing
            log.warning("scan %s: %s", self.scan.name, missing)

    def for_chunk(self, start: int, stop: int) -> ScanReader:
        return FrozenChunk(self.scan, start, [self.series.frame(i) for i in range(start, stop)])

    def read(self, start: int, stop: int) -> list[Event]:
        self.series.ready(start, stop, None)
        return self.for_chunk(start, stop).read(start, stop)

    def release(self, start: int, stop: int) -> None:
        self.series.release(start, stop)

    def status(self) -> dict[str, Any]:
        s = self.series
        return {"held": s.buffer.held, "spilled": s.buffer.spilled, "on_disk": s.buffer.on_disk,
                "lag_s": s.lag_s(), "arrived": s.arrived, "state": s.state}

    def close(self) -> None:
        # frames of this series that still come (after an abort) are refused and counted, not stored
        self.series.end("closed", "the pipeline closed the scan")
        self.series.buffer.close()


class EigerStreamSource(Source):
    """Live frames from a DECTRIS detector (EIGER, PILATUS4) over its ZeroMQ stream, one scan per series."""

    name = "eiger"
    Params = EigerParams
    outputs = {"frame": Port(ndim=2, dtype="uint", unit="counts", description="Detector frame")}

    def __init__(self, params: EigerParams | None = None) -> None:
        super().__init__(params)
        self.receiver: Receiver | None = None

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        component = None
        if self.topology is not None:
            if "receiver" in self.topology:
                self.topology.remove("receiver")
            component = self.topology.add("receiver", "receiver", {"endpoint": p.endpoint, "version": p.version},
                                          heartbeat_s=0.5)
        self.receiver = Receiver(p.endpoint, p.version, memory_bytes=int(p.memory_mb * 2**20), spill_dir=p.spill_dir,
                                 end_timeout_s=p.end_timeout_s, verify_hash=p.verify_hash, component=component).start()
        log.info("receiving %s stream from %s", p.version, p.endpoint)
        count = 0
        last = time.monotonic()
        try:
            while p.max_scans is None or count < p.max_scans:
                if self.stop_requested:  # seen within one wait for a header: half a second
                    log.info("the run was asked to stop: no more series are taken")
                    return
                series = self.receiver.next_series(timeout=0.5)
                if series is None:
                    if p.idle_timeout_s is not None and time.monotonic() - last > p.idle_timeout_s:
                        log.info("no new series for %.0f s: the watch ends", p.idle_timeout_s)
                        return
                    continue
                if series.total is None:  # header detail none: the length is known at the end
                    log.warning("series %d: no image count in the header (detail none); processing starts "
                                "when the series ends", series.series)
                    series.ready(0, 2**62, None)
                count += 1
                yield LiveScanReader(series, p.name.format(series=series.series))
                last = time.monotonic()
        finally:
            self.receiver.stop()
            if component is not None and self.topology is not None:
                self.topology.remove("receiver")

