"""The lightpipe command: run, validate, stages, simulate, demo."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from lightpipe.cli.main import main

ROOT = Path(__file__).parents[1]


def test_simulate_then_run_with_input_on_both_engines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "m_master.h5"
    assert main(["simulate", "frames", str(raw), "--frames", "24", "--darks", "4", "--flats", "4",
                 "--shape", "160", "170", "--frames-per-file", "10"]) == 0
    assert (tmp_path / "m_data_000003.h5").exists()
    pipeline = str(ROOT / "pipelines" / "dark-flat-correction.yaml")
    for engine in ("local", "dask"):
        out = tmp_path / engine
        args = ["run", pipeline, "--input", str(raw), "--output", str(out), "--engine", engine, "--quiet"]
        if engine == "dask":
            args += ["--workers", "1"]
        assert main(args) == 0
        with h5py.File(out / "m.nxs") as f:
            assert f["entry/normalised/frame"].shape == (24, 160, 170)
            assert f["entry/events/status"][()].sum() == 0
            assert f["entry"].attrs["default"] in f["entry"]
    printed = capsys.readouterr().out
    assert f"result: {tmp_path / 'local' / 'm.nxs'}" in printed


def test_validate_reports_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = ROOT / "pipelines" / "dark-flat-correction.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("params: {bins: 100}", "params: {bins: 0}"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    line = bad.read_text().splitlines().index("    params: {bins: 0}") + 1
    assert f"{bad}:{line}: stages.profile.params.bins: Input should be greater than or equal to 1" in " ".join(err.split())


def test_stages_lists_parameters_with_units_and_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stages"]) == 0
    text = capsys.readouterr().out
    for name in ("dark_statistics", "dark_correction", "threshold", "crop", "bin", "roi_sum", "radial_profile"):
        assert name in text
    assert main(["stages", "dark_statistics"]) == 0
    text = capsys.readouterr().out
    assert "max_std" in text and "counts" in text and ">0" in text and "(reduce)" in text
    assert main(["stages", "no_such_stage"]) == 2


def test_run_reports_a_missing_input_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = str(ROOT / "pipelines" / "dark-flat-correction.yaml")
    assert main(["run", pipeline, "--input", str(tmp_path / "absent.h5"), "--output", str(tmp_path)]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_demo_headless_runs_to_completion(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightpipe.cli.main", "demo", "--headless", "--frames", "20", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"NeXus result: {tmp_path / 'demo.nxs'}\n" in result.stdout
    with h5py.File(tmp_path / "demo.nxs") as f:
        assert f["entry/profile/profile"].shape == (20, 200)
        assert f["entry/powder/sum"].shape == (512, 512)
