"""CXI files for ptychography: write a scan, read it back, store a reconstruction, and a ``cxi`` source.

Layout (CXI 1.6, Coherent X-ray Imaging Data Bank, with the NeXus classes CXI 1.6 allows)::

    /cxi_version                                   160
    /@default = entry_1
    /entry_1                                       NXentry, @default = image_1 (data_1 without a reconstruction)
    /entry_1/instrument_1                          NXinstrument
    /entry_1/instrument_1/source_1                 NXsource
    /entry_1/instrument_1/source_1/energy          photon energy, J
    /entry_1/instrument_1/source_1/wavelength      m
    /entry_1/instrument_1/source_1/illumination    probe [ny, nx] or modes [M, ny, nx], complex (optional):
                                                   the initial probe of a reconstruction
    /entry_1/instrument_1/detector_1               NXdetector
    /entry_1/instrument_1/detector_1/data          frames [N, ny, nx]
    /entry_1/instrument_1/detector_1/data_dark     dark frames [M, ny, nx] (lightpipe; optional)
    /entry_1/instrument_1/detector_1/frame_index   acquisition index of each frame row [N] (lightpipe; cxi sink)
    /entry_1/instrument_1/detector_1/frame_status  0 written, 1 failed, 2 not processed [N] (lightpipe; cxi sink)
    /entry_1/instrument_1/detector_1/distance      sample-detector distance, m
    /entry_1/instrument_1/detector_1/x_pixel_size  m (and y_pixel_size)
    /entry_1/sample_1                              NXsample
    /entry_1/sample_1/geometry_1                   NXcollection
    /entry_1/sample_1/geometry_1/translation       [N, 3] (x, y, z) probe position on the sample, m
    /entry_1/sample_1/simulation                   simulator parameters as JSON (simulated scans only)
    /entry_1/data_1                                NXdata, @signal = data, @axes = [., ., .]
    /entry_1/data_1/data         -> soft link to detector_1/data
    /entry_1/data_1/translation  -> soft link to geometry_1/translation
    /entry_1/image_1                               NXdata, @signal = phase, @axes = [y, x]
    /entry_1/image_1/data                          reconstructed object, complex [Hy, Hx]
    /entry_1/image_1/phase                         its phase, rad [Hy, Hx] (lightpipe; the default plot)
    /entry_1/image_1/y, x                          probe positions that centre the probe on each row and column, m
    /entry_1/image_1/probe                         reconstructed probe, complex [ny, nx]
    /entry_1/image_1/positions_px                  (refined) positions [N, 2] (y, x), object px
    /entry_1/image_1/origin                        (y, x) of the object's pixel (0, 0) as a window corner, in the
                                                   frame of the translations, m: translation = positions_px
                                                   * pixel size + origin (lightpipe)
    /entry_1/image_1/x_pixel_size, y_pixel_size    object pixel size, m
    /entry_1/image_1/process_1                     NXcollection (an NXdata holds no NXprocess)
    /entry_1/image_1/process_1/algorithm           e.g. "DM**100,ML**50"
    /entry_1/image_1/process_1/parameters          reconstruction parameters as JSON
    /entry_1/image_1/process_1/errors/<name>       one error value per iteration (errors: NXcollection)
    /entry_1/process_1                             NXprocess (cxi sink): provenance, the pipeline and
    /entry_1/process_1/state                       the scan's state: running, completed, failed, aborted,
                                                   interrupted

Every dataset with a unit has ``@units`` (SI, as CXI asks: the energy is in J).
The curves under ``image_1/process_1/errors`` are CXI's error history, a
group in an NXcollection, not the NeXus ``errors`` (uncertainties) dataset of
an NXdata signal.

A file with ``frame_status`` holds a row for every frame of the scan; only the
rows whose status is 0 (written) are frames: :func:`read_cxi` returns those
alone, and the ``cxi`` source fails the others as events, saying why.

CXI vectors are (x, y, z); lightpipe arrays are (y, x). A translation here is
the position of the probe window's top-left corner on the sample, so
``positions_px = (y, x) / object_pixel_size`` (exact for simulated scans; for
other files the origin is the file's, often the scan's centre: negative
positions are fine, the reconstruction places its object where they fall).
A probe in ``source_1/illumination`` (where CXI files of other programs keep
it) is read as :attr:`CXIData.probe`, and the ``cxi`` source names the file in
the scan's ``probe_file``, so the reconstruction stages start from it. Files
are opened without HDF5 file locking, which fails on beamline NFS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np
from pydantic import Field

from lightpipe.core.bounds import PathText
from lightpipe.core.errors import SourceError
from lightpipe.core.event import Event, Scan
from lightpipe.core.hdf5 import Compression, compression_filters, write_provenance
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source, SourceParams
from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader
from lightpipe.techniques.ptychography.optics import ELECTRON_VOLT_J, object_pixel_size_m, wavelength_m
from lightpipe.techniques.ptychography.ports import POSITION_PORTS
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, simulation

CXI_VERSION = 160
DETECTOR = "/entry_1/instrument_1/detector_1"
DATA = "/entry_1/data_1/data"
DARK = f"{DETECTOR}/data_dark"
ILLUMINATION = "/entry_1/instrument_1/source_1/illumination"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
IMAGE = "/entry_1/image_1"
SIMULATION = "/entry_1/sample_1/simulation"
FRAME_STATUS = f"{DETECTOR}/frame_status"
PROCESS = "/entry_1/process_1"

#: Units of the error curves that have one (the Fourier error is a ratio).
CURVE_UNITS = {"iteration_seconds": "s"}

#: The NeXus class of each CXI group. NXdata may hold no NXprocess, so the reconstruction's
#: ``process_1`` (CXI's place for it, inside ``image_1``) and its error curves are NXcollection;
#: the translations are too (NXgeometry is deprecated and no longer allowed in NXsample).
NEXUS_CLASSES = {
    "entry_1": "NXentry",
    "entry_1/instrument_1": "NXinstrument",
    "entry_1/instrument_1/source_1": "NXsource",
    "entry_1/instrument_1/detector_1": "NXdetector",
    "entry_1/sample_1": "NXsample",
    "entry_1/sample_1/geometry_1": "NXcollection",
    "entry_1/data_1": "NXdata",
    "entry_1/image_1": "NXdata",
    "entry_1/image_1/process_1": "NXcollection",
    "entry_1/image_1/process_1/errors": "NXcollection",
    "entry_1/process_1": "NXprocess",
}


@dataclass
class CXIReconstruction:
    """A reconstruction stored under ``/entry_1/image_1``."""

    object: np.ndarray
    probe: np.ndarray
    object_pixel_size_m: tuple[float, float]
    algorithm: str
    parameters: dict[str, Any]
    errors: dict[str, np.ndarray]
    positions_px: np.ndarray | None
    origin_m: np.ndarray | None = None


@dataclass
class CXIData:
    """What a ptychography CXI file holds.

    Attributes
    ----------
    path
        The file.
    energy_ev, distance_m
        Photon energy (eV) and sample-detector distance (m).
    pixel_size_m
        Detector pixel size (y, x), m.
    frame_shape
        (ny, nx) of a diffraction pattern.
    positions_m
        Probe positions (N, 2) as (y, x), m.
    data, darks
        Frames (N, ny, nx) and dark frames (M, ny, nx), if read (``None`` otherwise).
    reconstruction
        The reconstruction in ``/entry_1/image_1``, if any.
    simulation
        The simulator parameters of a simulated scan, if any.
    probe
        The probe the file holds for a reconstruction to start from
        (``source_1/illumination``), (ny, nx) or (M, ny, nx) complex, if any.
    """

    path: Path
    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]
    frame_shape: tuple[int, int]
    positions_m: np.ndarray
    data: np.ndarray | None = None
    darks: np.ndarray | None = None
    reconstruction: CXIReconstruction | None = None
    simulation: dict[str, Any] | None = field(default=None)
    probe: np.ndarray | None = None

    @property
    def wavelength_m(self) -> float:
        """Photon wavelength, m."""
        return wavelength_m(self.energy_ev)

    @property
    def object_pixel_size_m(self) -> tuple[float, float]:
        """Object-plane pixel size (y, x): wavelength * distance / (n * detector pixel)."""
        return object_pixel_size_m(self.energy_ev, self.distance_m, self.pixel_size_m, self.frame_shape)

    @property
    def positions_px(self) -> np.ndarray:
        """Positions (N, 2) as (y, x) in object pixels: ``positions_m / object_pixel_size_m``."""
        return self.positions_m / np.asarray(self.object_pixel_size_m)


def _stack(group: h5py.Group, name: str, frames: np.ndarray | Sequence[np.ndarray], compression: Compression) -> None:
    """Write frames one at a time, so a lazy sequence never sits in memory whole."""
    first = np.asarray(frames[0])
    ds = group.create_dataset(name, (len(frames), *first.shape), first.dtype, chunks=(1, *first.shape),
                              **compression_filters(compression))
    for k in range(len(frames)):
        ds[k] = frames[k]


def write_cxi(
    path: str | Path,
    data: np.ndarray | Sequence[np.ndarray],
    positions_m: np.ndarray,
    *,
    energy_ev: float,
    distance_m: float,
    pixel_size_m: float | tuple[float, float],
    darks: np.ndarray | Sequence[np.ndarray] | None = None,
    compression: Compression = "none",
    probe: np.ndarray | None = None,
) -> Path:
    """Write a ptychography scan as a CXI file (layout in the module docstring).

    Parameters
    ----------
    path
        The file to write (replaced if it exists).
    data
        Frames (N, ny, nx): an array, or any sequence of 2-D frames (written one by one).
    positions_m
        Probe positions (N, 2) as (y, x), m.
    energy_ev, distance_m
        Photon energy and sample-detector distance.
    pixel_size_m
        Detector pixel size, one value or (y, x).
    darks
        Dark frames (M, ny, nx), stored as ``detector_1/data_dark``.
    compression
        ``"bitshuffle"`` (needs hdf5plugin to read), ``"gzip"`` or ``"none"``.
    probe
        A probe (ny, nx) or modes (M, ny, nx) for a reconstruction to start from, stored
        as ``source_1/illumination``.
    """
    path = Path(path)
    positions = np.asarray(positions_m, dtype=np.float64)
    if len(data) == 0:
        raise ValueError("write_cxi: no frames to write")
    if positions.shape != (len(data), 2):
        raise ValueError(f"write_cxi: positions_m must be (N, 2) = ({len(data)}, 2) as (y, x) metres, "
                         f"got shape {positions.shape}")
    py, px = (pixel_size_m, pixel_size_m) if np.isscalar(pixel_size_m) else pixel_size_m  # type: ignore[misc]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", locking=False) as f:
        f["cxi_version"] = CXI_VERSION
        detector = f.create_group(DETECTOR)
        _stack(detector, "data", data, compression)
        detector["data"].attrs["units"] = "counts"
        if darks is not None and len(darks):
            _stack(detector, "data_dark", darks, compression)
            detector["data_dark"].attrs["units"] = "counts"
        write_geometry(f, energy_ev, wavelength_m(energy_ev), distance_m, (py, px), positions)
        if probe is not None:
            f[ILLUMINATION] = np.asarray(probe, dtype=np.complex64)
            f[ILLUMINATION].attrs["long_name"] = "probe for a reconstruction to start from"
    return path


def write_geometry(f: h5py.File, energy_ev: float | None, wavelength: float | None, distance_m: float | None,
                   pixel_size_m: Sequence[float], positions_m: Any) -> None:
    """Write the beam, the detector geometry and the translations of a CXI file whose frames are written.

    Also links ``entry_1/data_1`` to the frames and translations. Unknown values
    (``None``) are written as NaN.

    Parameters
    ----------
    f
        The open file; ``entry_1/instrument_1/detector_1/data`` must exist.
    energy_ev, wavelength, distance_m
        Photon energy (eV), wavelength (m) and sample-detector distance (m).
    pixel_size_m
        Detector pixel size (y, x), m.
    positions_m
        (N, 2) probe positions (y, x), m; CXI translations are (x, y, z).
    """
    source = f.require_group("entry_1/instrument_1/source_1")
    detector = f.require_group(DETECTOR)
    for group, name, value, unit in ((source, "energy", None if energy_ev is None else energy_ev * ELECTRON_VOLT_J, "J"),
                                     (source, "wavelength", wavelength, "m"),
                                     (detector, "distance", distance_m, "m"),
                                     (detector, "y_pixel_size", pixel_size_m[0], "m"),
                                     (detector, "x_pixel_size", pixel_size_m[1], "m")):
        group[name] = np.nan if value is None else float(value)
        group[name].attrs["units"] = unit
    yx = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
    translation = np.zeros((len(yx), 3))
    translation[:, 0], translation[:, 1] = yx[:, 1], yx[:, 0]
    f[TRANSLATION] = translation
    f[TRANSLATION].attrs["units"] = "m"
    f[DATA] = h5py.SoftLink(f"{DETECTOR}/data")
    f["entry_1/data_1/translation"] = h5py.SoftLink(TRANSLATION)
    f["entry_1/data_1"].attrs.update(signal="data", axes=["."] * f[DATA].ndim)
    write_nexus_classes(f)


def write_nexus_classes(f: h5py.File) -> None:
    """Give every CXI group of :data:`NEXUS_CLASSES` in ``f`` its class, and point ``@default`` at the main image.

    The default plot is the reconstruction's phase (``entry_1/image_1``) when
    the file has one, else the frames (``entry_1/data_1``).
    """
    for name, nx_class in NEXUS_CLASSES.items():
        if name in f:
            f[name].attrs["NX_class"] = nx_class
    f.attrs["default"] = "entry_1"
    f.attrs["creator"] = "lightpipe"
    if "entry_1" in f:
        f["entry_1"].attrs["default"] = "image_1" if IMAGE in f else "data_1"


def write_reconstruction(
    path: str | Path,
    obj: np.ndarray,
    probe: np.ndarray,
    *,
    object_pixel_size_m: tuple[float, float],
    algorithm: str,
    errors: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    parameters: Mapping[str, Any] | None = None,
    positions_px: np.ndarray | None = None,
    axes_m: tuple[np.ndarray, np.ndarray] | None = None,
    origin_m: Sequence[float] | None = None,
) -> Path:
    """Store a reconstruction under ``/entry_1/image_1`` of a CXI file (created if missing, replaced if present).

    ``image_1`` is an NXdata whose signal is the object's phase (``phase``,
    ``np.angle`` of the object, rad) on the axes ``y`` and ``x`` in metres,
    and the file's default plot.

    Parameters
    ----------
    path
        The CXI file, usually the scan's own.
    obj, probe
        Complex object (Hy, Hx) and probe (ny, nx).
    object_pixel_size_m
        Object pixel size (y, x), m.
    algorithm
        What ran, e.g. ``"DM**100,ML**50"``.
    errors
        Error curves by name (``fourier``, ``object``, ...), one value per iteration.
    parameters
        Reconstruction parameters, stored as JSON.
    positions_px
        The (refined) positions (N, 2) as (y, x), object pixels.
    axes_m
        Coordinates (y, x) in metres of the object's rows and columns (a
        reconstruction stage's ``object_y`` and ``object_x``); default the pixel
        index times the pixel size.
    origin_m
        Position (y, x) in metres, in the frame of the translations, of the object's pixel
        (0, 0) as a window corner (a reconstruction stage's ``object_origin_m``): the
        translation of a frame is ``positions_px * pixel size + origin``.
    """
    path = Path(path)
    obj = np.asarray(obj, dtype=np.complex64)
    if axes_m is None:
        axes_m = (np.arange(obj.shape[0]) * float(object_pixel_size_m[0]),
                  np.arange(obj.shape[1]) * float(object_pixel_size_m[1]))
    axes = [np.asarray(values, dtype=np.float64) for values in axes_m]
    for name, values, n in zip(("y", "x"), axes, obj.shape):
        if values.shape != (n,):  # checked before the file is touched: a refused call leaves it as it was
            raise ValueError(f"write_reconstruction: the object has {n} pixels along {name} but axes_m gives "
                             f"{values.shape} coordinates; give one per row and one per column")
    with h5py.File(path, "a", locking=False) as f:
        if "cxi_version" not in f:
            f["cxi_version"] = CXI_VERSION
        if IMAGE in f:  # a new reconstruction replaces the old one, never adds to it
            del f[IMAGE]
        image = f.create_group(IMAGE)
        image["data"] = obj
        image["data_type"] = "object"
        image["data_space"] = "real"
        image["phase"] = np.angle(obj).astype(np.float32)
        image["phase"].attrs.update(units="rad", interpretation="image", long_name="object phase")
        for name, values in zip(("y", "x"), axes):
            image[name] = values
            image[name].attrs["units"] = "m"
        image.attrs.update(signal="phase", axes=["y", "x"])
        image["probe"] = np.asarray(probe, dtype=np.complex64)
        image["y_pixel_size"], image["x_pixel_size"] = (float(v) for v in object_pixel_size_m)
        for name in ("y_pixel_size", "x_pixel_size"):
            image[name].attrs["units"] = "m"
        if positions_px is not None:
            image["positions_px"] = np.asarray(positions_px, dtype=np.float64)
            image["positions_px"].attrs["units"] = "px"
        if origin_m is not None:
            image["origin"] = np.asarray(origin_m, dtype=np.float64).reshape(2)
            image["origin"].attrs.update(units="m", long_name="(y, x) of the object's pixel (0, 0) as a probe-window "
                                         "corner, in the frame of the translations")
        process = image.create_group("process_1")
        write_provenance(process)
        process["algorithm"] = algorithm
        process["parameters"] = json.dumps(dict(parameters or {}), default=str)
        curves = process.create_group("errors")
        for name, values in (errors or {}).items():
            curves[name] = np.asarray(values, dtype=np.float64)
            if name in CURVE_UNITS:
                curves[name].attrs["units"] = CURVE_UNITS[name]
        write_nexus_classes(f)
    return path


def _open(path: str | Path) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError as exc:
        raise SourceError(f"CXI file not found: {path}; check the path") from exc
    except OSError as exc:
        raise SourceError(f"cannot open {path} as HDF5 ({exc}); the file may be truncated or not a CXI file") from exc


def _scalar(f: h5py.File, name: str) -> float:
    if name not in f:
        raise SourceError(f"{f.filename} is not a ptychography CXI file: it has no {name}; write it with write_cxi")
    return float(f[name][()])


def _geometry(f: h5py.File) -> dict[str, Any]:
    """Energy, distance, pixel size, frame shape and positions of a CXI file."""
    for name in (DATA, TRANSLATION):
        if name not in f:
            raise SourceError(f"{f.filename} is not a ptychography CXI file: it has no {name}; write it with write_cxi")
    data = f[DATA]
    translation = f[TRANSLATION][()]
    if data.ndim != 3 or translation.shape != (data.shape[0], 3):
        raise SourceError(f"{f.filename}: {DATA} {data.shape} and {TRANSLATION} {translation.shape} do not match; "
                          "expected [N, ny, nx] frames and [N, 3] translations")
    return {
        "energy_ev": _scalar(f, "entry_1/instrument_1/source_1/energy") / ELECTRON_VOLT_J,
        "distance_m": _scalar(f, f"{DETECTOR}/distance"),
        "pixel_size_m": (_scalar(f, f"{DETECTOR}/y_pixel_size"), _scalar(f, f"{DETECTOR}/x_pixel_size")),
        "frame_shape": (int(data.shape[1]), int(data.shape[2])),
        "positions_m": np.stack([translation[:, 1], translation[:, 0]], axis=1),
    }


def _written(f: h5py.File) -> np.ndarray | None:
    """Which frame rows hold a frame (status 0), or ``None`` when the file says nothing (every row does)."""
    if FRAME_STATUS not in f:
        return None
    return f[FRAME_STATUS][()] == 0


def _reconstruction(f: h5py.File) -> CXIReconstruction | None:
    if IMAGE not in f:
        return None
    image = f[IMAGE]
    process = image["process_1"]
    return CXIReconstruction(
        object=image["data"][()],
        probe=image["probe"][()],
        object_pixel_size_m=(float(image["y_pixel_size"][()]), float(image["x_pixel_size"][()])),
        algorithm=process["algorithm"].asstr()[()],
        parameters=json.loads(process["parameters"].asstr()[()]),
        errors={name: ds[()] for name, ds in process["errors"].items()},
        positions_px=image["positions_px"][()] if "positions_px" in image else None,
        origin_m=image["origin"][()] if "origin" in image else None,
    )


def read_cxi(path: str | Path, *, frames: bool = True) -> CXIData:
    """Read a ptychography CXI file.

    Parameters
    ----------
    path
        The file.
    frames
        Read the frames and darks into memory; ``False`` reads only the geometry,
        positions and reconstruction (the ``cxi`` source reads frames by range).

    Raises
    ------
    SourceError
        The file is missing, not HDF5, or lacks a field of the layout.
    """
    with _open(path) as f:
        geometry = _geometry(f)
        written = _written(f)
        if written is not None:
            geometry["positions_m"] = geometry["positions_m"][written]
        return CXIData(
            path=Path(path),
            data=(f[DATA][()] if written is None else f[DATA][()][written]) if frames else None,
            darks=f[DARK][()] if frames and DARK in f else None,
            reconstruction=_reconstruction(f),
            simulation=json.loads(f[SIMULATION].asstr()[()]) if SIMULATION in f else None,
            probe=f[ILLUMINATION][()].astype(np.complex64) if ILLUMINATION in f else None,
            **geometry,
        )


class _SimulatedFrames(Sequence[np.ndarray]):
    """The frames of one stream of a simulation, made when indexed."""

    def __init__(self, params: PtychoSimParams, stream: str) -> None:
        self.params, self.indices = params, simulation(params).streams[stream]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return simulation(self.params).frame(self.indices[k])[1]


def write_simulation_cxi(path: str | Path, params: PtychoSimParams | None = None, *,
                         compression: Compression = "none") -> Path:
    """Write a simulated scan (darks and frames) as a CXI file; its parameters go to ``/entry_1/sample_1/simulation``.

    The truth is :meth:`PtychoSimulation.truth` of the same parameters:
    ``PtychoSimulation(PtychoSimParams(**read_cxi(path).simulation)).truth()``.
    """
    params = params or PtychoSimParams()
    sim = simulation(params)
    positions_m = sim.recorded_positions_px * np.asarray(sim.object_pixel_size_m)
    write_cxi(path, _SimulatedFrames(params, "data"), positions_m, energy_ev=params.energy_ev,
              distance_m=params.distance_m, pixel_size_m=params.pixel_size_m,
              darks=_SimulatedFrames(params, "dark"), compression=compression)
    with h5py.File(path, "a", locking=False) as f:
        f[SIMULATION] = params.model_dump_json()
    return Path(path)


class CXIParams(SourceParams):
    """Parameters of the CXI source."""

    path: PathText = Field(description="Ptychography CXI file (frames in /entry_1/data_1/data)")
    darks: bool = Field(True, description="Read detector_1/data_dark, when the file has it, as stream 'dark'")


class CXIReader(ScanReader):
    """Reads frames and probe positions of one CXI file by index range; pickles without open files."""

    def __init__(self, params: CXIParams) -> None:
        with _open(params.path) as f:
            geometry = _geometry(f)
            has_dark = params.darks and DARK in f
            has_probe = ILLUMINATION in f
            self.written = _written(f)
        self._frames = HDF5Reader(HDF5Params(path=params.path, dataset=DATA, dark=DARK if has_dark else None))
        self.positions_m: np.ndarray = geometry["positions_m"]
        scan = self._frames.scan
        pixel = object_pixel_size_m(geometry["energy_ev"], geometry["distance_m"], geometry["pixel_size_m"],
                                    geometry["frame_shape"])
        metadata = {
            "source_file": scan.metadata["source_file"],
            "frame_shape": scan.metadata["frame_shape"],
            "frame_dtype": scan.metadata["frame_dtype"],
            "energy_ev": geometry["energy_ev"],
            "wavelength_m": wavelength_m(geometry["energy_ev"]),
            "distance_m": geometry["distance_m"],
            "y_pixel_size_m": geometry["pixel_size_m"][0],
            "x_pixel_size_m": geometry["pixel_size_m"][1],
            "object_pixel_size_m": list(pixel),
            "positions_px": (self.positions_m / np.asarray(pixel)).tolist(),
        }
        if has_probe:  # the reconstruction stages start from it (their probe_guess overrides it)
            metadata["probe_file"] = str(params.path)
        self.scan = Scan(name=scan.name, streams=scan.streams, metadata=metadata)

    def read(self, start: int, stop: int) -> list[Event]:
        events = self._frames.read(start, stop)
        first = self.scan.streams["data"].start
        for event in events:
            if event.error is not None:
                continue
            row = event.index - first
            if event.stream == "data" and self.written is not None and not self.written[row]:
                event.fail("source", f"{self._frames.scan.metadata['source_file']} holds no frame in row {row}: "
                                     "its frame_status says it was not written (failed or not processed) by the run "
                                     "that made the file")
                continue
            y, x = self.positions_m[event.index - first] if event.stream == "data" else (np.nan, np.nan)
            event.fields["position_y_m"], event.fields["position_x_m"] = np.float64(y), np.float64(x)
        return events

    def close(self) -> None:
        self._frames.close()


class CXISource(Source):
    """Ptychography frames and probe positions from a CXI file: one file, one scan."""

    name = "cxi"
    Params = CXIParams
    outputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame"), **POSITION_PORTS}

    @classmethod
    def can_open(cls, path: str) -> int:
        """A ``.cxi`` file, or an HDF5 file that says it is CXI (``/cxi_version``): 20, before the plain ``hdf5`` source."""
        p = Path(path)
        if p.suffix.lower() == ".cxi":
            return 20
        if not (p.is_file() and h5py.is_hdf5(p)):
            return 0
        try:
            with h5py.File(p, "r", locking=False) as f:
                return 20 if "cxi_version" in f else 0
        except OSError:
            return 0

    def scans(self) -> Iterator[ScanReader]:
        yield CXIReader(self.params)
