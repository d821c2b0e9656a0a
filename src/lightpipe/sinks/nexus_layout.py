"""The NeXus base classes around a scan's results: instrument, beam, source, sample and one process per stage.

Tools that know NeXus look for the experiment's geometry where NeXus puts it,
not in lightpipe's scan metadata: ``/entry/instrument/detector/distance``,
``x_pixel_size``, ``beam_center_x``, ``/entry/instrument/beam/incident_wavelength``.
:func:`write_instrument` writes them from the scan metadata, each with its
``@units``, together with the detector window of every frame field the file
holds (after crops, binning and FFT downsampling, as the pipeline follows them
through the stages). :func:`write_sample` links the scan positions into
``NXsample``; :func:`write_stage_processes` writes one ``NXprocess`` per stage:
its plug-in, the version of the package that provides it, its place in the
pipeline and its parameters with their units.

Metadata keys (lightpipe's names, the unit in the name) and where they go::

    distance_m              instrument/detector/distance              m
    x_pixel_size_m          instrument/detector/x_pixel_size          m
    beam_center_x_px        instrument/detector/beam_center_x         pixel
    energy_ev               instrument/beam/incident_energy           eV
    wavelength_a            instrument/beam/incident_wavelength       angstrom
    source_name             instrument/source/name

A quantity the metadata does not give is left out, never guessed; a beam with
only an energy or only a wavelength gets the other from ``E = hc / lambda``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    import h5py

    from lightpipe.core.pipeline import Pipeline

#: h c in eV angstrom: a photon of 12398.42 eV has a wavelength of 1 angstrom.
HC_EV_ANGSTROM = 12398.419843
#: Scan metadata key -> (NXdetector field, unit).
DETECTOR_FIELDS = {
    "distance_m": ("distance", "m"),
    "x_pixel_size_m": ("x_pixel_size", "m"),
    "y_pixel_size_m": ("y_pixel_size", "m"),
    "beam_center_x_px": ("beam_center_x", "pixel"),
    "beam_center_y_px": ("beam_center_y", "pixel"),
    "count_time_s": ("count_time", "s"),
    "frame_time_s": ("frame_time", "s"),
    "sensor_material": ("sensor_material", None),
    "sensor_thickness_m": ("sensor_thickness", "m"),
    "detector": ("description", None),
    "detector_number": ("serial_number", None),
}
#: Scan metadata key -> NXsource field.
SOURCE_FIELDS = {"source_name": "name", "source_type": "type", "source_probe": "probe"}
#: Per-event fields that are scan positions, by field name -> NXsample field.
POSITION_FIELDS = {"position_x_m": "x_translation", "position_y_m": "y_translation"}


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not one (a missing or textual entry)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value) if np.isfinite(value) else None


def _put(group: h5py.Group, name: str, value: Any, unit: str | None = None) -> None:
    group[name] = value
    if unit:
        group[name].attrs["units"] = unit


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _beam(metadata: Mapping[str, Any]) -> dict[str, float]:
    """Energy in eV and wavelength in angstrom, each from the other where only one is known."""
    energy = _number(metadata.get("energy_ev"))
    wavelength = _number(metadata.get("wavelength_a"))
    if wavelength is None and _number(metadata.get("wavelength_m")) is not None:
        wavelength = float(metadata["wavelength_m"]) * 1e10
    if energy is None and wavelength:
        energy = HC_EV_ANGSTROM / wavelength
    if wavelength is None and energy:
        wavelength = HC_EV_ANGSTROM / energy
    return {name: value for name, value in (("incident_energy", energy), ("incident_wavelength", wavelength))
            if value is not None}


def write_instrument(entry: h5py.Group, pipeline: Pipeline, metadata: Mapping[str, Any], fields: list[str]) -> None:
    """``/entry/instrument`` with NXdetector, NXbeam and (where the metadata names it) NXsource.

    Parameters
    ----------
    entry
        The NXentry.
    pipeline
        The running pipeline: it knows how each frame field's pixels map onto the detector.
    metadata
        The scan's metadata, in lightpipe's names.
    fields
        The fields the file holds, ``stage.output``.
    """
    instrument = _nx_group(entry, "instrument", "NXinstrument")
    detector = _nx_group(instrument, "detector", "NXdetector")
    for key, (name, unit) in DETECTOR_FIELDS.items():
        value = metadata.get(key)
        if name not in detector and (_number(value) is not None or (unit is None and isinstance(value, str))):
            _put(detector, name, value, unit)
    shape = metadata.get("frame_shape")
    if "frame_shape" not in detector and isinstance(shape, (list, tuple)) and len(shape) == 2:
        _put(detector, "frame_shape", np.asarray(shape, np.int64), "pixel")
        _write_windows(detector, pipeline, shape, fields, metadata)
    beam = _nx_group(instrument, "beam", "NXbeam")
    for name, value in _beam(metadata).items():
        if name not in beam:
            _put(beam, name, value, "eV" if name == "incident_energy" else "angstrom")
    known = {name: metadata[key] for key, name in SOURCE_FIELDS.items() if isinstance(metadata.get(key), str)}
    if known:
        source = _nx_group(instrument, "source", "NXsource")
        for name, value in known.items():
            if name not in source:
                source[name] = value


def _write_windows(detector: h5py.Group, pipeline: Pipeline, shape: Any, fields: list[str],
                   metadata: Mapping[str, Any]) -> None:
    """Per frame field: its shape, the detector window it covers and its pixel size (after crops and binning)."""
    pixel = (_number(metadata.get("y_pixel_size_m")), _number(metadata.get("x_pixel_size_m")))
    for key in fields:
        geometry = pipeline.frame_geometry(key, shape)
        if geometry is None:
            continue
        window = _nx_group(detector, key.replace(".", "_"), "NXcollection")
        window["field"] = key
        _put(window, "shape", np.asarray(geometry.shape, np.int64), "pixel")
        _put(window, "detector_window", np.asarray(geometry.window_px), "pixel")
        _put(window, "detector_pixels_per_pixel", np.asarray(geometry.scale))
        if None not in pixel:
            _put(window, "pixel_size", np.asarray(geometry.pixel_size((pixel[0], pixel[1]))), "m")


def write_sample(entry: h5py.Group, metadata: Mapping[str, Any]) -> None:
    """``/entry/sample`` (NXsample): its name where the metadata gives one, and links to the scan positions.

    Call after the per-event fields are written: a field called ``position_x_m``
    or ``position_y_m`` of any stage (the source's, usually) is linked as
    ``x_translation`` or ``y_translation``.
    """
    import h5py

    sample = _nx_group(entry, "sample", "NXsample")
    if isinstance(metadata.get("sample_name"), str) and "name" not in sample:
        sample["name"] = metadata["sample_name"]
    for group_name, group in entry.items():
        if not isinstance(group, h5py.Group) or group_name == "sample":
            continue
        for field, target in POSITION_FIELDS.items():
            if isinstance(group.get(field), h5py.Dataset) and target not in sample:
                sample[target] = h5py.SoftLink(group[field].name)


@lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    """Top-level package -> the installed distributions that provide it (a walk of every installed package: once)."""
    return packages_distributions()


@lru_cache(maxsize=None)
def package_version(module: str) -> tuple[str, str]:
    """``(distribution, version)`` of the installed package that provides ``module``."""
    top = module.split(".", 1)[0]
    for dist in _distributions().get(top, []):
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return top, "unknown"


def write_stage_processes(entry: h5py.Group, pipeline: Pipeline) -> None:
    """One NXprocess per stage, ``/entry/process_<stage>``, in pipeline order (``sequence_index`` 1, 2, ...).

    Each holds ``program`` (the stage's registered name, with the implementing
    class as ``@implementation``), ``version`` (of the package that provides
    it, named in ``@package``), ``wiring`` (NXnote: the stage's kind, streams
    and inputs as JSON), and ``parameters`` (NXparameters): one field per parameter,
    JSON text for lists, mappings and ``null``, with ``@units`` and
    ``@description`` from the stage's parameter declarations.
    """
    for index, (name, node) in enumerate(pipeline.stages.items(), start=1):
        process = _nx_group(entry, f"process_{name}", "NXprocess")
        process["program"] = node.cls.name or node.cls.__name__
        process["program"].attrs["implementation"] = f"{node.cls.__module__}:{node.cls.__qualname__}"
        package, package_ver = package_version(node.cls.__module__)
        process["version"] = package_ver
        process["version"].attrs["package"] = package
        process["sequence_index"] = np.int64(index)
        wiring = _nx_group(process, "wiring", "NXnote")
        wiring["type"] = "application/json"
        wiring["description"] = "The stage's kind (map, reduce, solver), the streams it runs on and its inputs"
        wiring["data"] = json.dumps({"kind": node.kind, "streams": sorted(node.streams) or "all", "inputs": node.inputs})
        parameters = _nx_group(process, "parameters", "NXparameters")
        fields = type(node.params).model_fields
        for param, value in node.params.model_dump(mode="json").items():
            scalar = isinstance(value, (bool, int, float, str))
            parameters[param] = value if scalar else json.dumps(value)
            info = fields[param]
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if isinstance(extra.get("unit"), str):
                parameters[param].attrs["units"] = extra["unit"]
            if info.description:
                parameters[param].attrs["description"] = info.description
