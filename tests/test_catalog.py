"""``lightpipe stages|sources|sinks|engines``: every plug-in described from its declarations, problems reported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightpipe.cli.main import main
from lightpipe.core import registry
from lightpipe.core.errors import PluginError


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("group", registry.GROUPS)
def test_json_describes_every_registered_plugin_with_its_parameter_schema(
    group: registry.Group, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _json(capsys, group)
    assert document["group"] == group
    assert document["problems"] == []
    assert set(document["plugins"]) == set(registry.names(group))
    for name, info in document["plugins"].items():
        cls = registry.load(group, name)
        assert info["class"] == f"{cls.__module__}:{cls.__qualname__}" and info["package"] == "lightpipe"
        assert info["summary"] and info["summary"] in cls.__doc__
        assert set(info["params"]["properties"]) == set(cls.Params.model_fields), name
        for prop in info["params"]["properties"].values():
            assert prop.get("description"), f"{group} {name}: a parameter without a description"
        if group == "stages":
            assert info["kind"] in ("map", "reduce", "solver")
            assert set(info["inputs"]) == set(cls.inputs) and set(info["outputs"]) == set(cls.outputs)
        if group == "sources":
            assert set(info["outputs"]) == set(cls.outputs)


def test_units_bounds_and_defaults_are_in_the_json(capsys: pytest.CaptureFixture[str]) -> None:
    dark = _json(capsys, "stages", "dark_statistics")["plugins"]["dark_statistics"]
    max_std = dark["params"]["properties"]["max_std"]
    assert (max_std["unit"], max_std["exclusiveMinimum"], max_std["default"]) == ("counts", 0, 50.0)
    assert dark["inputs"]["frame"] == {"ndim": 2, "dtype": "number", "unit": "counts",
                                       "description": "Frame to accumulate", "scan": False, "axes": [],
                                       "constant": False, "main": False, "optional": False}
    assert dark["outputs"]["mean"]["scan"] is True
    hdf5 = _json(capsys, "sources", "hdf5")["plugins"]["hdf5"]
    assert hdf5["outputs"]["frame"]["unit"] == "counts" and "path" in hdf5["params"]["required"]
    nexus = _json(capsys, "sinks", "nexus")["plugins"]["nexus"]
    assert nexus["params"]["properties"]["compression"]["enum"] == ["bitshuffle", "gzip", "none"]


@pytest.mark.parametrize(("group", "name", "shown"), [
    ("stages", "threshold", "(map)"),
    ("sources", "hdf5", "output frame: 2-D number [counts]"),
    ("sinks", "nexus", "compression"),
    ("engines", "dask", "threads_per_worker"),
])
def test_text_lists_each_group(group: str, name: str, shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 0
    assert name in capsys.readouterr().out
    assert main([group, name]) == 0
    assert shown in capsys.readouterr().out


def test_an_unknown_name_suggests_the_close_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stages", "dark_corection"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown stage 'dark_corection' (did you mean 'dark_correction'" in err
    assert "known stages: " in err and "threshold" in err
    with pytest.raises(PluginError, match=r"unknown sink 'nexsu' \(did you mean 'nexus'\?\); known sinks: "):
        registry.load("sinks", "nexsu")
    with pytest.raises(PluginError, match=r"unknown engine 'xyz'; known engines: dask, local$"):
        registry.load("engines", "xyz")


def test_a_class_named_by_module_describes_itself() -> None:
    info = registry.describe("stages", "lightpipe.stages.identity:Identity")
    assert (info["class"], info["package"], info["kind"]) == ("lightpipe.stages.identity:Identity", None, "map")


def test_a_name_registered_twice_and_a_broken_plugin_are_reported(tmp_path: Path) -> None:
    # a real installed distribution: a dist-info folder on sys.path, as pip leaves it
    dist = tmp_path / "aardvark_io-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aardvark-io\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[lightpipe.sources]\nhdf5 = aardvark_io.reader:Reader\nxrd_frames = aardvark_io.reader:XrdFrames\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "lightpipe.cli.main", "sources", "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    # lightpipe's own entry point wins, even though "aardvark-io" sorts first
    assert document["plugins"]["hdf5"]["class"] == "lightpipe.sources.hdf5:HDF5Source"
    assert "xrd_frames" not in document["plugins"]
    problems = {p["name"]: p for p in document["problems"]}
    assert set(problems) == {"hdf5", "xrd_frames"}
    duplicate = problems["hdf5"]
    assert duplicate["kind"] == "duplicate"
    assert ("lightpipe.sources.hdf5:HDF5Source (from lightpipe) is used, "
            "aardvark_io.reader:Reader (from aardvark-io) ignored") in duplicate["message"]
    assert duplicate["message"] in result.stderr  # logged as well
    assert problems["xrd_frames"]["kind"] == "broken"
    assert "No module named 'aardvark_io'" in problems["xrd_frames"]["message"]
