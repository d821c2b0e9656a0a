"""A simulated rotation series on disk, as beamlines write it: an NXmx master file, or miniCBF files.

Both carry the geometry DIALS's dxtbx reads: wavelength, distance, beam
centre, pixel size, and the rotation (start and width of each image).

* :func:`write_nxmx`: one NXmx file, the frames in ``/entry/data/data``, the
  detector placed by NeXus transformations (translation along the beam, a
  module with fast and slow pixel directions), the goniometer as
  ``/entry/sample/transformations/omega`` with one start angle per image.
  NeXus vectors are in the McStas frame (``+z`` along the beam), DIALS's frame
  turned 180 degrees about ``y``. The flat fields lightpipe's ``hdf5`` source
  reads (``detector/distance``, ``beam_center_x``, ...) are there too.
* :func:`write_cbf_series`: one miniCBF file per image with the PILATUS header
  lines (``# Wavelength``, ``# Detector_distance``, ``# Beam_xy``,
  ``# Start_angle``, ``# Angle_increment``, ``# Pixel_size``, ...), written by
  fabio with byte-offset compression. The header convention is dxtbx's
  ``GENERIC_MINI`` (a pixel-array detector of any size): with ``PILATUS_1.2``
  dxtbx would insist on a PILATUS's module layout and mask its gaps.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from lightpipe.techniques.mx.simulate import RotationSimulation

__all__ = ["pilatus_header", "write_cbf_series", "write_nxmx"]

#: What the files say made them.
DETECTOR_NAME = "simulated pixel-array detector (lightpipe)"


def _attrs(ds: h5py.Dataset, **attrs: object) -> h5py.Dataset:
    for key, value in attrs.items():
        ds.attrs[key] = value
    return ds


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def write_nxmx(path: str | Path, sim: RotationSimulation) -> Path:
    """Write the simulated rotation as one NXmx file (frames int32, uncompressed); return its path."""
    p = sim.params
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ny, nx = p.shape
    bx, by = sim.beam_center
    pixel = p.pixel_size_m
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = _group(f, "entry", "NXentry")
        entry.attrs["default"] = "data"
        entry["definition"] = "NXmx"
        entry["start_time"] = "2024-01-01T00:00:00Z"
        entry["end_time"] = "2024-01-01T00:01:00Z"
        entry["end_time_estimated"] = "2024-01-01T00:01:00Z"
        data = _group(entry, "data", "NXdata")
        data.attrs["signal"] = "data"
        frames = data.create_dataset("data", (p.images, ny, nx), np.int32, chunks=(1, ny, nx))
        for k in range(p.images):
            frames[k] = sim.frame(k)
        instrument = _group(entry, "instrument", "NXinstrument")
        instrument["name"] = "lightpipe rotation simulator"
        beam = _group(instrument, "beam", "NXbeam")
        _attrs(beam.create_dataset("incident_wavelength", data=p.wavelength_a), units="angstrom")
        detector = _group(instrument, "detector", "NXdetector")
        detector["description"] = DETECTOR_NAME
        detector["sensor_material"] = "Silicon"
        _attrs(detector.create_dataset("sensor_thickness", data=450e-6), units="m")
        detector["depends_on"] = "/entry/instrument/detector/transformations/translation"
        for name, value, unit in (("distance", p.distance_m, "m"), ("beam_center_x", bx, "pixel"),
                                  ("beam_center_y", by, "pixel"), ("x_pixel_size", pixel, "m"),
                                  ("y_pixel_size", pixel, "m"), ("count_time", 0.1, "s")):
            _attrs(detector.create_dataset(name, data=value), units=unit)
        detector["saturation_value"] = np.int64(np.iinfo(np.int32).max)
        detector["underload_value"] = np.int64(-1)
        transformations = _group(detector, "transformations", "NXtransformations")
        _attrs(transformations.create_dataset("translation", data=p.distance_m), units="m",
               transformation_type="translation", vector=np.array([0.0, 0.0, 1.0]), depends_on=".")
        module = _group(detector, "module", "NXdetector_module")
        module["data_origin"] = np.array([0, 0], np.int64)
        module["data_size"] = np.array([ny, nx], np.int64)
        module["data_stride"] = np.array([1, 1], np.int64)
        # the first pixel's corner, seen from where the beam meets the detector: (bx, by) pixels (McStas x, y)
        corner = np.array([bx * pixel, by * pixel, 0.0])
        length = float(np.linalg.norm(corner))
        _attrs(module.create_dataset("module_offset", data=length), units="m", transformation_type="translation",
               vector=corner / length if length else np.array([1.0, 0.0, 0.0]),
               depends_on="/entry/instrument/detector/transformations/translation")
        offset = "/entry/instrument/detector/module/module_offset"
        for name, vector in (("fast_pixel_direction", [-1.0, 0.0, 0.0]), ("slow_pixel_direction", [0.0, -1.0, 0.0])):
            _attrs(module.create_dataset(name, data=pixel), units="m", transformation_type="translation",
                   vector=np.array(vector), offset=np.zeros(3), depends_on=offset)
        sample = _group(entry, "sample", "NXsample")
        sample["name"] = "simulated crystal"
        sample["depends_on"] = "/entry/sample/transformations/omega"
        goniometer = _group(sample, "transformations", "NXtransformations")
        starts = p.omega_start_deg + np.arange(p.images) * p.omega_increment_deg
        # DIALS's rotation axis +x is McStas -x
        _attrs(goniometer.create_dataset("omega", data=starts), units="deg", transformation_type="rotation",
               vector=np.array([-1.0, 0.0, 0.0]), depends_on=".")
        _attrs(goniometer.create_dataset("omega_increment_set", data=p.omega_increment_deg), units="deg")
    return path


def pilatus_header(sim: RotationSimulation, image: int) -> str:
    """The PILATUS header lines of ``image`` (0-based), as a miniCBF file's ``_array_data.header_contents``."""
    p = sim.params
    bx, by = sim.beam_center
    start, _ = sim.wedge(image)
    lines = [
        f"Detector: {DETECTOR_NAME}, S/N 00-0000",
        "2024-01-01T00:00:00.000",
        f"Pixel_size {p.pixel_size_m:.6g} m x {p.pixel_size_m:.6g} m",
        "Silicon sensor, thickness 0.000450 m",
        "Exposure_time 0.1 s",
        "Exposure_period 0.1 s",
        "Tau = 0 s",
        f"Count_cutoff {np.iinfo(np.int32).max} counts",
        "Threshold_setting: 6000 eV",
        "N_excluded_pixels = 0",
        f"Wavelength {p.wavelength_a:.6f} A",
        f"Detector_distance {p.distance_m:.6f} m",
        f"Beam_xy ({bx:.2f}, {by:.2f}) pixels",
        f"Start_angle {start:.4f} deg.",
        f"Angle_increment {p.omega_increment_deg:.4f} deg.",
        f"Phi {start:.4f} deg.",
        "Oscillation_axis X, CW",
        "N_oscillations 1",
    ]
    return "\r\n".join(f"# {line}" for line in lines)


def write_cbf_series(folder: str | Path, sim: RotationSimulation, template: str = "{name}_{image:05d}.cbf") -> list[Path]:
    """Write one miniCBF file per image (numbered from 1, as detectors number them); return their paths."""
    from fabio.cbfimage import CbfImage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(sim.params.images):
        path = folder / template.format(name=sim.params.name, image=k + 1)
        header = {"_array_data.header_convention": "GENERIC_MINI",
                  "_array_data.header_contents": pilatus_header(sim, k)}
        CbfImage(data=sim.frame(k), header=header).write(str(path))
        paths.append(path)
    return paths
