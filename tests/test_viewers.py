"""Every example pipeline's result files read right in tools lightpipe did not write (issue 10).

Each example runs once, small (:mod:`example_runs`), and its ``.nxs`` and
``.cxi`` files are opened as a user opens them:

- nexusformat's NeXus validator (the NXDL base classes it ships) finds no error;
- silx (``silx.io.nxdata``, what ``silx view`` plots) finds the default plot,
  valid, showing what the technique's scientist looks for first (the table
  :data:`DEFAULT_PLOT`, also in ``docs/result-files.md``), and finds every
  NXdata group valid, with no ``errors`` field that is not the signal's
  uncertainties;
- the geometry sits where NeXus tools look for it (``/entry/instrument``),
  with units, and each stage has its NXprocess;
- an h5grove server (what h5web talks to), installed as h5grove documents it,
  without hdf5plugin, serves the image datasets.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
from silx.io.nxdata import NXdata, get_default

from example_runs import PIPELINES, ExampleRun, run_small, validate_nexus
from lightpipe.sinks.nexus import NEXUS_UNITS


@dataclass(frozen=True)
class Plot:
    """What a result's default plot must show."""

    what: str
    ndim: int  # of the signal: 1 a curve, 2 an image
    axes: bool  # every dimension on a 1-D axis with @units
    unit: str | None = None  # the axes' unit, where the technique fixes it


#: The default plot of each example's results: what a scientist of the technique looks for first.
DEFAULT_PLOT = {
    "powder-profile": Plot("the powder pattern: mean intensity against the radial axis", 1, axes=True),
    "dark-flat-correction": Plot("the powder pattern of the corrected frames against the radial axis", 1, axes=True),
    "beam-spot": Plot("the beam spot: the mean frame in the fitted region on detector rows and columns", 2, axes=True),
    "live-monitor": Plot("the sum of the series' frames", 2, axes=False),
    "ptycho-stream": Plot("the reconstructed object's phase on sample y and x", 2, axes=True, unit="m"),
    "ptycho-distributed": Plot("the reconstructed object's phase on sample y and x", 2, axes=True, unit="m"),
    "xrd-integrate": Plot("the scan's mean integrated pattern against 2-theta", 1, axes=True, unit="deg"),
    "sfx-hitfinding": Plot("the powder sum of the hits (a virtual powder pattern of the crystals)", 2, axes=False),
    "mx-spotfinding": Plot("the spot count per image against the rotation angle", 1, axes=True, unit="deg"),
    "scanning-maps": Plot("the DPC phase of the sample on y and x", 2, axes=True, unit="m"),
    "xrf-maps": Plot("the scan's sum spectrum with its fit against energy", 1, axes=True, unit="keV"),
    "tomo-reconstruct": Plot("the middle slice of the reconstructed volume on y and x", 2, axes=True, unit="m"),
}

#: Scan metadata (lightpipe's names) -> where NeXus puts it in ``/entry/instrument``.
DETECTOR_FIELDS = {"distance_m": "distance", "x_pixel_size_m": "x_pixel_size", "y_pixel_size_m": "y_pixel_size",
                   "beam_center_x_px": "beam_center_x", "beam_center_y_px": "beam_center_y"}
BEAM_METADATA = ("energy_ev", "wavelength_a", "wavelength_m")
BEAM_FIELDS = ("incident_energy", "incident_wavelength")


def test_every_example_has_an_expected_default_plot() -> None:
    assert sorted(DEFAULT_PLOT) == sorted(p.stem for p in PIPELINES)


@pytest.fixture(scope="module", params=PIPELINES, ids=[p.stem for p in PIPELINES])
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ExampleRun:
    """One small run of an example, shared by the checks of this module."""
    path: Path = request.param
    run = run_small(path, tmp_path_factory.mktemp(path.stem))
    assert all(s.ledger.failed == [] for s in run.report.scans)
    return run


def result_files(run: ExampleRun) -> list[Path]:
    files = [f for f in run.report.files if f.suffix in (".nxs", ".cxi")]
    assert files, "the example wrote no NeXus or CXI file"
    return files


def nexus_files(run: ExampleRun) -> list[tuple[Path, str]]:
    """The ``.nxs`` files of the run, with the scan each holds."""
    return [(f, s.scan) for s in run.report.scans for f in s.files if f.suffix == ".nxs"]


def nxdata_groups(f: h5py.File) -> list[h5py.Group]:
    found: list[h5py.Group] = []

    def visit(_name: str, item: object) -> None:
        if isinstance(item, h5py.Group) and item.attrs.get("NX_class") in ("NXdata", b"NXdata"):
            found.append(item)

    f.visititems(visit)
    return found


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_a_nexus_validator_finds_no_error(example: ExampleRun) -> None:
    for path in result_files(example):
        validation = validate_nexus(path)
        assert validation.errors == [], f"{path.name} ({validation.validator}): " + "; ".join(validation.errors)


def test_silx_plots_what_the_technique_shows_first(example: ExampleRun) -> None:
    expected = DEFAULT_PLOT[Path(example.pipeline.file or "").stem]
    for path in result_files(example):
        with h5py.File(path, "r") as f:
            default = get_default(f)
            assert default is not None, f"{path.name}: silx finds no default plot (@default on / and the NXentry)"
            assert default.is_valid, f"{path.name}: default {default.group.name}: {default.issues}"
            where = f"{path.name}: default {default.group.name} should be {expected.what}"
            signal = default.signal
            assert signal.ndim == expected.ndim, f"{where}, a {expected.ndim}-D signal; it is {signal.shape}"
            assert signal.dtype.kind in "fiu", f"{where}, real numbers; it is {signal.dtype}"
            if expected.ndim == 2:
                assert min(signal.shape) > 1, f"{where}, an image; it is {signal.shape}"
            if not expected.axes:
                continue
            axes = default.axes
            assert axes is not None and all(a is not None for a in axes), f"{where}, on axes; @axes is {axes}"
            for n, axis in zip(signal.shape, axes):
                assert axis.shape == (n,), f"{where}: axis {axis.name} is {axis.shape}, not 1-D of {n}"
                assert "units" in axis.attrs, f"{where}: axis {axis.name} has no @units"
                if expected.unit is not None:
                    assert text(axis.attrs["units"]) == expected.unit, f"{where}: axis {axis.name} not in {expected.unit}"


def test_every_nxdata_group_is_valid_for_silx(example: ExampleRun) -> None:
    for path in result_files(example):
        with h5py.File(path, "r") as f:
            for group in nxdata_groups(f):
                nxdata = NXdata(group)
                assert nxdata.is_valid, f"{path.name}: {group.name}: {nxdata.issues}"


def test_errors_fields_are_uncertainties_of_their_data(example: ExampleRun) -> None:
    """NeXus reserves ``errors`` for the signal's uncertainties and ``X_errors`` for those of field ``X``."""
    for path in result_files(example):
        with h5py.File(path, "r") as f:
            for group in nxdata_groups(f):
                signal = text(group.attrs.get("signal", ""))
                for name in group:
                    if name != "errors" and not name.endswith("_errors"):
                        continue
                    of = signal if name == "errors" else name[: -len("_errors")]
                    of = of if of in group else signal
                    assert of in group, f"{path.name}: {group.name}/{name}: uncertainties of nothing"
                    assert group[name].shape == group[of].shape, (
                        f"{path.name}: {group.name}/{name} {group[name].shape} is not the uncertainty of "
                        f"{of} {group[of].shape}: NeXus reserves the name for that")


def test_every_field_of_a_port_with_a_unit_carries_it(example: ExampleRun) -> None:
    for sink in example.pipeline.sinks:
        if sink.cls.name != "nexus":
            continue
        units = {key: example.pipeline.ports[key].unit for key in sink.fields if example.pipeline.ports[key].unit}
        for path, _scan in nexus_files(example):
            with h5py.File(path, "r") as f:
                for key, unit in units.items():
                    group, _, name = key.partition(".")
                    ds = f["entry"][group][name]
                    assert text(ds.attrs.get("units", "")) in (unit, NEXUS_UNITS.get(unit)), (
                        f"{path.name}: {ds.name} should be in {unit}")


def test_the_instrument_is_where_nexus_tools_look(example: ExampleRun) -> None:
    for path, scan in nexus_files(example):
        metadata = example.metadata[scan]
        with h5py.File(path, "r") as f:
            entry = f["entry"]
            wanted = [name for key, name in DETECTOR_FIELDS.items() if key in metadata]
            if wanted:
                detector = entry["instrument/detector"]
                assert text(detector.attrs.get("NX_class")) == "NXdetector"
                assert text(entry["instrument"].attrs.get("NX_class")) == "NXinstrument"
                for name in wanted:
                    assert name in detector, f"{path.name}: no {detector.name}/{name} though the scan gives it"
                    assert "units" in detector[name].attrs, f"{path.name}: {detector.name}/{name} has no @units"
            if any(key in metadata for key in BEAM_METADATA):
                beam = entry["instrument/beam"]
                assert text(beam.attrs.get("NX_class")) == "NXbeam"
                found = [name for name in BEAM_FIELDS if name in beam]
                assert found, f"{path.name}: {beam.name} has neither {' nor '.join(BEAM_FIELDS)}"
                assert all("units" in beam[name].attrs for name in found)


def test_each_stage_has_its_nxprocess(example: ExampleRun) -> None:
    """One NXprocess per stage in the NXentry, in pipeline order (``sequence_index``), naming its plug-in."""
    stages = [node.cls.name for node in example.pipeline.stages.values()]
    for path, _scan in nexus_files(example):
        with h5py.File(path, "r") as f:
            processes = [g for g in f["entry"].values() if isinstance(g, h5py.Group)
                         and text(g.attrs.get("NX_class")) == "NXprocess" and "sequence_index" in g]
            processes.sort(key=lambda g: int(g["sequence_index"][()]))
            assert [text(g["program"][()]) for g in processes] == stages, path.name
            assert all("version" in g for g in processes)


#: Run in a fresh Python: an h5grove app as ``pip install h5grove[fastapi]`` gives it (no hdf5plugin),
#: asked for each dataset of 2 dimensions or more; prints {path: [status, shape]}.
H5GROVE_CLIENT = """
import io, json, sys
sys.modules["hdf5plugin"] = None  # not installed: h5grove[fastapi] does not bring it
import h5py, numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from h5grove.fastapi_utils import router, settings
assert "hdf5plugin" not in sys.modules or sys.modules["hdf5plugin"] is None
path = sys.argv[1]
settings.base_dir = None
app = FastAPI()
app.include_router(router)
names = []
with h5py.File(path, "r") as f:
    f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) and o.ndim >= 2 else None)
answers = {}
with TestClient(app, raise_server_exceptions=False) as client:
    for name in names:
        r = client.get("/data/", params={"file": path, "path": name, "format": "npy"})
        shape = list(np.load(io.BytesIO(r.content)).shape) if r.status_code == 200 else r.text[:200]
        answers[name] = [r.status_code, shape]
print(json.dumps(answers))
"""


@pytest.mark.parametrize("stem", ["dark-flat-correction", "ptycho-stream"])
def test_an_h5grove_server_without_hdf5plugin_serves_the_images(stem: str, tmp_path: Path) -> None:
    pytest.importorskip("h5grove")
    (path,) = [p for p in PIPELINES if p.stem == stem]
    files = result_files(run_small(path, tmp_path))
    for result in files:
        with h5py.File(result, "r") as f:
            shapes: dict[str, tuple[int, ...]] = {}
            f.visititems(lambda n, o: shapes.update({"/" + n: o.shape}) if isinstance(o, h5py.Dataset)
                         and o.ndim >= 2 else None)
        assert shapes, f"{result.name} has no image"
        done = subprocess.run([sys.executable, "-c", H5GROVE_CLIENT, str(result)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        answers = json.loads(done.stdout.splitlines()[-1])
        refused = {name: answer for name, answer in answers.items() if answer[0] != 200}
        assert not refused, f"{result.name}: h5grove without hdf5plugin answers {refused}"
        assert {name: tuple(answer[1]) for name, answer in answers.items()} == shapes
