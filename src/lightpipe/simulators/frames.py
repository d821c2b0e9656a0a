"""An area-detector simulator with known ground truth: darks, flats and powder-ring frames.

Every frame is a pure function of ``(seed, index)``, so any worker can make any
range of events and two runs give the same data. The truth (dark offset, gain,
signal, monitor, bad pixels, beam centre) is available from
:meth:`FrameSimulation.truth` for tests and benchmarks.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Iterator

import h5py
import numpy as np
from pydantic import Field

from lightpipe.core.bounds import MAX_COUNT, MAX_FRAME_PX, EventCount, PixelCoordinate, Seed
from lightpipe.core.event import Event, Scan
from lightpipe.core.hdf5 import Compression, compression_filters
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source, SourceParams


#: Pixels along one axis of a simulated frame.
SimulatedPx = Annotated[int, Field(ge=1, le=4096)]


#: The simulated detector's geometry and beam, in lightpipe's metadata names: an EIGER-like
#: 75 um pixel at 0.2 m, 1 angstrom X-rays (12.398 keV).
DETECTOR_METADATA: dict[str, float] = {
    "distance_m": 0.2,
    "x_pixel_size_m": 75e-6,
    "y_pixel_size_m": 75e-6,
    "wavelength_a": 1.0,
    "energy_ev": 12398.42,
    "count_time_s": 0.01,
}


class FrameSimParams(SourceParams):
    """Parameters of the frame simulator."""

    name: str = Field("simulated", min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$",
                      description="Scan name (the output file is <name>.nxs)")
    frames: EventCount = Field(100, description="Data frames")
    darks: EventCount = Field(10, description="Dark frames, acquired first")
    flats: EventCount = Field(10, description="Flat-field frames, acquired after the darks")
    # each frame is made whole in memory, with several maps of its size: 4096 x 4096 keeps them under 1 GB
    shape: tuple[SimulatedPx, SimulatedPx] = Field((256, 256), description="Detector shape (y, x) in pixels")
    photons: float = Field(200.0, gt=0, le=1e9, description="Mean counts per pixel on the brightest ring")
    flat_photons: float = Field(1000.0, gt=0, le=1e9, description="Mean counts per pixel in a flat frame")
    dark_level: float = Field(100.0, ge=0, le=1e6, description="Mean dark offset in counts")
    read_noise: float = Field(2.0, ge=0, le=1e6, description="Gaussian read noise in counts")
    rings_px: list[Annotated[float, Field(ge=0, le=MAX_FRAME_PX)]] = Field(
        [30.0, 60.0, 95.0], max_length=100, description="Powder ring radii in pixels")
    beam_center: tuple[PixelCoordinate, PixelCoordinate] | None = Field(
        None, description="Beam centre (x, y) in pixels; default the middle")
    bad_pixels: int = Field(20, ge=0, le=MAX_COUNT, description="Dead and hot pixels")
    seed: Seed = Field(0, description="Random seed")
    scans: int = Field(1, ge=1, le=10_000, description="Scans to produce (named <name>_NNN when more than one)")

    def known_frame_shape(self) -> tuple[int, int]:
        """The simulated frames' shape (ny, nx): boxes on them are checked when the pipeline loads."""
        return self.shape


class FrameSimulation:
    """The simulated detector and sample for one set of parameters."""

    def __init__(self, params: FrameSimParams) -> None:
        self.params = params

    @cached_property
    def _maps(self) -> dict[str, np.ndarray]:
        p = self.params
        ny, nx = p.shape
        rng = np.random.default_rng([p.seed, 2**31])
        cx, cy = p.beam_center if p.beam_center is not None else ((nx - 1) / 2, (ny - 1) / 2)
        y, x = np.mgrid[0:ny, 0:nx]
        r = np.hypot(x - cx, y - cy)
        signal = 0.05 * p.photons * np.exp(-r / (0.6 * max(ny, nx)))
        for k, radius in enumerate(p.rings_px):
            signal += p.photons / (k + 1) * np.exp(-0.5 * ((r - radius) / 1.5) ** 2)
        bad = np.zeros((ny, nx), bool)
        flat_idx = rng.choice(ny * nx, size=min(p.bad_pixels, ny * nx), replace=False)
        bad.flat[flat_idx] = True
        return {
            "dark": p.dark_level + rng.normal(0.0, 3.0, (ny, nx)),
            "gain": 1.0 + rng.normal(0.0, 0.05, (ny, nx)),
            "signal": signal,
            "bad": bad,
            "hot": bad & (rng.random((ny, nx)) < 0.5),
            "radius": r,
        }

    def truth(self) -> dict[str, Any]:
        """Ground truth: dark offset, gain, signal (counts per monitor unit), bad-pixel mask, beam centre."""
        p = self.params
        m = self._maps
        ny, nx = p.shape
        centre = p.beam_center if p.beam_center is not None else ((nx - 1) / 2, (ny - 1) / 2)
        return {
            "dark": m["dark"],
            "gain": m["gain"],
            "signal": m["signal"],
            "bad_pixels": m["bad"],
            "monitor": self.monitor(np.arange(p.frames)),
            "beam_center": centre,
            "rings_px": list(p.rings_px),
        }

    @property
    def streams(self) -> dict[str, range]:
        p = self.params
        return {
            "dark": range(0, p.darks),
            "flat": range(p.darks, p.darks + p.flats),
            "data": range(p.darks + p.flats, p.darks + p.flats + p.frames),
        }

    @staticmethod
    def monitor(data_index: np.ndarray) -> np.ndarray:
        """Incident intensity of each data frame (a slow, known oscillation)."""
        return 1.0 + 0.1 * np.sin(np.asarray(data_index) / 7.0)

    def frame(self, index: int) -> tuple[str, np.ndarray, float]:
        """Stream, frame and monitor value of acquisition ``index``."""
        p = self.params
        m = self._maps
        rng = np.random.default_rng([p.seed, index])
        streams = self.streams
        stream = next(s for s, r in streams.items() if index in r)
        monitor = 1.0
        if stream == "dark":
            photons = np.zeros(p.shape)
        elif stream == "flat":
            photons = rng.poisson(m["gain"] * p.flat_photons)
        else:
            monitor = float(self.monitor(index - streams["data"].start))
            photons = rng.poisson(m["gain"] * m["signal"] * monitor)
        counts = photons + m["dark"] + rng.normal(0.0, p.read_noise, p.shape)
        info = np.iinfo(np.uint16)
        counts[m["bad"]] = 0
        counts[m["hot"]] = info.max
        return stream, np.clip(np.rint(counts), 0, info.max).astype(np.uint16), monitor


class SimulatedReader(ScanReader):
    """Makes the events of one simulated scan on demand."""

    def __init__(self, params: FrameSimParams, name: str) -> None:
        self.sim = FrameSimulation(params)
        ny, nx = params.shape
        meta = {
            "frame_shape": [ny, nx],
            "frame_dtype": "uint16",
            "beam_center_x_px": self.sim.truth()["beam_center"][0],
            "beam_center_y_px": self.sim.truth()["beam_center"][1],
            **DETECTOR_METADATA,
            "simulator": "simulated_frames",
            "seed": params.seed,
        }
        self.scan = Scan(name=name, streams=self.sim.streams, metadata=meta)

    def read(self, start: int, stop: int) -> list[Event]:
        events = []
        for index in range(start, stop):
            stream, frame, monitor = self.sim.frame(index)
            events.append(Event(index=index, stream=stream, fields={"frame": frame, "monitor": monitor}))
        return events


class SimulatedFrames(Source):
    """Simulated area-detector scans: darks, flats, then frames of powder rings."""

    name = "simulated_frames"
    Params = FrameSimParams
    outputs = {
        "frame": Port(ndim=2, dtype="uint16", unit="counts", description="Detector frame"),
        "monitor": Port(ndim=0, dtype="float", description="Incident intensity (relative)"),
    }

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        for k in range(p.scans):
            if p.scans == 1:
                yield SimulatedReader(p, p.name)
            else:
                yield SimulatedReader(p.model_copy(update={"seed": p.seed + k}), f"{p.name}_{k:03d}")


def write_nxmx(
    path: str | Path,
    params: FrameSimParams | None = None,
    *,
    compression: Compression = "bitshuffle",
    frames_per_file: int | None = None,
) -> Path:
    """Write a simulated scan as an NXmx-style file, DECTRIS style when ``frames_per_file`` is set.

    Data frames go to ``/entry/data/data`` (or, with ``frames_per_file``, to
    ``data_000001.h5``, ... linked from ``/entry/data/data_000001`` of the
    master file), darks to ``/entry/dark/data``, flats to ``/entry/flat/data``,
    the monitor to ``/entry/data/monitor``.

    Parameters
    ----------
    path
        The (master) file to write.
    params
        Simulator parameters.
    compression
        ``"bitshuffle"`` (bitshuffle-LZ4, as DECTRIS detectors write), ``"gzip"`` or ``"none"``.
    frames_per_file
        Split data frames into external files of this many frames.
    """
    params = params or FrameSimParams()
    sim = FrameSimulation(params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ny, nx = params.shape
    filters = compression_filters(compression)

    def stack(group: h5py.Group, name: str, indices: range) -> None:
        ds = group.create_dataset(name, (len(indices), ny, nx), np.uint16, chunks=(1, ny, nx), **filters)
        for k, index in enumerate(indices):
            ds[k] = sim.frame(index)[1]

    streams = sim.streams
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXmx"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        centre = sim.truth()["beam_center"]
        geometry = DETECTOR_METADATA
        for name, value, unit in (("beam_center_x", centre[0], "pixel"), ("beam_center_y", centre[1], "pixel"),
                                  ("distance", geometry["distance_m"], "m"),
                                  ("x_pixel_size", geometry["x_pixel_size_m"], "m"),
                                  ("y_pixel_size", geometry["y_pixel_size_m"], "m"),
                                  ("count_time", geometry["count_time_s"], "s")):
            det[name] = value
            det[name].attrs["units"] = unit
        beam = entry.create_group("instrument/beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam["incident_wavelength"] = geometry["wavelength_a"]
        beam["incident_wavelength"].attrs["units"] = "angstrom"
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        for stream in ("dark", "flat"):
            if len(streams[stream]):
                stack(entry.require_group(stream), "data", streams[stream])
        data["monitor"] = sim.monitor(np.arange(params.frames))
        frames = streams["data"]
        if frames_per_file is None:
            stack(data, "data", frames)
            return path
        stem = path.name.removesuffix("_master.h5").removesuffix(".h5")
        for part, lo in enumerate(range(0, len(frames), frames_per_file), start=1):
            name = f"{stem}_data_{part:06d}.h5"
            with h5py.File(path.parent / name, "w") as df:
                stack(df.require_group("entry/data"), "data", frames[lo : lo + frames_per_file])
            data[f"data_{part:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return path
