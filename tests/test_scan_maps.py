"""Scan maps land on the scan's own grid, with axes in metres, or say that they were regridded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from scipy.spatial import Delaunay

from lightpipe import load_pipeline
from lightpipe.engines.dask import DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.stages.maps import ScanMap
from lightpipe.techniques.ptychography.scan_patterns import scan_pattern
from lightpipe.testing import run_stage

STEP_M = 2.5e-7
CORNER_M = np.array([1.0e-5, -3.0e-5])


def _events(yx: np.ndarray, values: np.ndarray) -> list[dict[str, float]]:
    return [{"value": float(v), "y": float(y), "x": float(x)} for (y, x), v in zip(yx, values)]


def _raster(rows: int, columns: int, snake: bool = False) -> np.ndarray:
    """Positions of a rows x columns raster, row after row; a snake runs every other row backwards."""
    row, column = np.divmod(np.arange(rows * columns), columns)
    if snake:
        column = np.where(row % 2 == 1, columns - 1 - column, column)
    return CORNER_M + STEP_M * np.stack([row, column], axis=1)


def _plane(yx: np.ndarray) -> np.ndarray:
    """A value that varies linearly with position (linear interpolation reproduces it exactly)."""
    return 3.0 + 2.0e6 * (yx[:, 0] - CORNER_M[0]) - 5.0e6 * (yx[:, 1] - CORNER_M[1])


@pytest.mark.parametrize("snake", [False, True], ids=["raster", "snake"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_raster_maps_onto_its_own_grid(snake: bool, chunk_size: int | None) -> None:
    yx = _raster(20, 20, snake)
    values = np.arange(400.0)
    out = run_stage(ScanMap, {}, _events(yx, values), chunk_size=chunk_size)
    assert isinstance(out, dict)
    assert out["map"].shape == (20, 20) and not np.isnan(out["map"]).any()
    np.testing.assert_array_equal(out["y"], CORNER_M[0] + STEP_M * np.arange(20))
    np.testing.assert_array_equal(out["x"], CORNER_M[1] + STEP_M * np.arange(20))
    row = np.searchsorted(out["y"], yx[:, 0])
    column = np.searchsorted(out["x"], yx[:, 1])
    np.testing.assert_array_equal(out["map"][row, column], values)  # each event in its own cell
    assert not out["regridded"]
    assert out["step"] == pytest.approx(STEP_M)
    np.testing.assert_array_equal(out["origin"], [out["y"][0], out["x"][0]])


def test_jittered_raster_snaps_to_its_rows_and_columns() -> None:
    yx = _raster(20, 20) + np.random.default_rng(3).normal(0.0, 0.04 * STEP_M, (400, 2))
    out = run_stage(ScanMap, {}, _events(yx, np.arange(400.0)))
    assert isinstance(out, dict)
    assert out["map"].shape == (20, 20) and not np.isnan(out["map"]).any()
    assert out["regridded"]
    np.testing.assert_allclose(out["y"], CORNER_M[0] + STEP_M * np.arange(20), atol=0.1 * STEP_M)
    np.testing.assert_array_equal(out["map"].ravel(), np.arange(400.0))


@pytest.mark.parametrize("pattern", ["fermat", "spiral"])
def test_spiral_is_regridded_with_no_hole_inside_the_scanned_area(pattern: str) -> None:
    yx = scan_pattern(pattern, 300, STEP_M) + CORNER_M
    out = run_stage(ScanMap, {}, _events(yx, _plane(yx)), chunk_size=16)
    assert isinstance(out, dict)
    assert out["regridded"]
    grid = np.stack([g.ravel() for g in np.meshgrid(out["y"], out["x"], indexing="ij")], axis=1)
    inside = (Delaunay(yx).find_simplex(grid) >= 0).reshape(out["map"].shape)
    assert inside.sum() > 200
    assert not np.isnan(out["map"][inside]).any()
    np.testing.assert_allclose(out["map"][inside], _plane(grid)[inside.ravel()], rtol=1e-9)
    assert np.isnan(out["map"][~inside]).all()  # nothing is made up outside the scan
    assert out["step"] == pytest.approx(STEP_M, rel=0.02)  # the pattern's median nearest-neighbour distance
    assert out["y"][0] == pytest.approx(yx[:, 0].min()) and out["x"][0] == pytest.approx(yx[:, 1].min())


def test_nearest_regrid_averages_the_events_of_each_grid_point() -> None:
    yx = scan_pattern("fermat", 200, STEP_M) + CORNER_M
    values = np.random.default_rng(5).random(200)
    out = run_stage(ScanMap, {"regrid": "nearest", "step_m": 2 * STEP_M}, _events(yx, values))
    assert isinstance(out, dict)
    assert out["regridded"] and out["step"] == pytest.approx(2 * STEP_M)
    cell = np.rint((yx - yx.min(axis=0)) / (2 * STEP_M)).astype(int)
    first = np.all(cell == cell[0], axis=1)
    assert out["map"][tuple(cell[0])] == pytest.approx(values[first].mean())
    assert np.isfinite(out["map"]).sum() == len(np.unique(cell, axis=0))


def test_one_position_gives_one_cell() -> None:
    out = run_stage(ScanMap, {}, _events(np.array([CORNER_M, CORNER_M]), np.array([2.0, 4.0])))
    assert isinstance(out, dict)
    np.testing.assert_array_equal(out["map"], [[3.0]])
    np.testing.assert_array_equal(out["y"], CORNER_M[:1]) and np.testing.assert_array_equal(out["x"], CORNER_M[1:])
    assert not out["regridded"] and np.isnan(out["step"])
    assert run_stage(ScanMap, {"step_m": 1e-6}, _events(CORNER_M[None], np.ones(1)))["step"] == 1e-6  # type: ignore[call-overload]


def test_one_row_gives_a_one_row_map() -> None:
    yx = _raster(1, 12)
    out = run_stage(ScanMap, {}, _events(yx, np.arange(12.0)))
    assert isinstance(out, dict)
    np.testing.assert_array_equal(out["map"], [np.arange(12.0)])
    np.testing.assert_array_equal(out["x"], yx[:, 1])
    np.testing.assert_array_equal(out["y"], yx[:1, 0])
    assert not out["regridded"]


def test_positions_on_a_slanted_line_are_averaged_not_refused() -> None:
    yx = CORNER_M + STEP_M * np.arange(5.0)[:, None] * [[1.0, 0.5]]
    out = run_stage(ScanMap, {}, _events(yx, np.arange(5.0)))
    assert isinstance(out, dict)
    assert out["regridded"] and np.isfinite(out["map"]).sum() == 5
    np.testing.assert_array_equal(np.sort(out["map"][np.isfinite(out["map"])]), np.arange(5.0))


def test_missing_position_is_a_clear_error() -> None:
    yx = _raster(2, 2)
    yx[1, 0] = np.nan
    with pytest.raises(ValueError, match="1 of 4 events have a non-finite scan position"):
        run_stage(ScanMap, {}, _events(yx, np.ones(4)))
    with pytest.raises(ValueError, match="set a larger step_m"):
        run_stage(ScanMap, {"step_m": 1e-12}, _events(scan_pattern("fermat", 10, 1e-3), np.ones(10)))
    with pytest.raises(ValueError, match="no event arrived"):
        ScanMap().finish(None)


def _doc(scan: str) -> dict[str, Any]:
    return {
        "version": 2,
        "name": "maps",
        "source": {"use": "ptycho_sim", "params": {"name": f"map_{scan}", "scan": scan, "n_positions": 49,
                                                  "frame_shape": [32, 32], "distance_m": 0.5, "defocus_m": 1.0e-4, "darks": 0, "rate_hz": 0}},
        "stages": {
            "stxm": {"use": "transmission_dpc", "inputs": {"frame": "source.frame"}},
            "stxm_map": {"use": "scan_map",
                         "inputs": {"value": "stxm.transmission", "y": "source.position_y_m",
                                    "x": "source.position_x_m"}},
        },
        "sinks": [{"use": "nexus", "fields": ["stxm.transmission", "stxm_map.map", "stxm_map.y", "stxm_map.x",
                                              "stxm_map.regridded"]}],
        "engine": {"chunk_size": 5},
    }


@pytest.mark.parametrize("scan", ["raster", "fermat"])
def test_maps_are_the_same_on_local_and_dask(scan: str, tmp_path: Path, dask_client: Any) -> None:
    maps = []
    for name, engine in [("local", LocalEngine()), ("dask", DaskEngine(client=dask_client))]:
        with engine:
            (report,) = engine.run(load_pipeline(_doc(scan)), tmp_path / name).scans
        assert report.ledger.state == "completed" and report.ledger.failed == []
        with h5py.File(tmp_path / name / f"map_{scan}.nxs") as f:
            group = f["entry/stxm_map"]
            maps.append({k: group[k][()] for k in ("map", "y", "x", "regridded")})
            # a viewer plots the map on its axes in metres (NXdata: signal, axes, units)
            assert group.attrs["signal"] == "map" and list(group.attrs["axes"]) == ["y", "x"]
            assert group["y"].attrs["units"] == group["x"].attrs["units"] == "m"
    local, dask = maps
    for key in local:
        np.testing.assert_array_equal(local[key], dask[key], err_msg=key)
    assert local["regridded"]  # the simulator jitters its positions, raster or not
    if scan == "raster":  # 7 x 7 positions, snapped to their rows and columns
        assert local["map"].shape == (7, 7) and not np.isnan(local["map"]).any()
    else:
        assert np.isfinite(local["map"]).sum() > 20
