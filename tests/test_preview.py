"""PNG and TIFF previews: size, orientation, grey-level ordering, chosen events, failed events."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import fabio
import h5py
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from lightpipe import load_pipeline
from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.engines import get_engine
from lightpipe.sinks.preview import PreviewParams, PreviewSink, grey

SHAPE = (24, 40)  # not square: swapped axes change the image size
DARKS, FRAMES = 2, 9


def _run(tmp_path: Path, engine: Any = None, **params: object) -> tuple[list[Path], Path]:
    doc = {
        "version": 1,
        "name": "preview",
        "source": {"use": "simulated_frames", "params": {"name": "pv", "frames": FRAMES, "darks": DARKS, "flats": 0,
                                                         "shape": list(SHAPE), "seed": 4}},
        "stages": {"copy": {"use": "identity"}, "float": {"use": "threshold", "params": {"threshold": 0}},
                   "sum": {"use": "sum_frames"}},
        # shards off: on the dask engine the nexus sink would otherwise keep per-event arrays on the workers
        "sinks": [{"use": "nexus", "fields": ["copy.frame", "float.frame", "sum.sum"], "params": {"shards": False}},
                  {"use": "preview", "fields": ["copy.frame", "float.frame", "sum.sum", "sum.count"], "params": params}],
        "engine": {"chunk_size": 2},
    }
    with engine or get_engine("local") as running:
        report = running.run(load_pipeline(doc), tmp_path)
    nexus, *previews = report.files
    return previews, nexus


def _assert_ordered(values: np.ndarray, grey_levels: np.ndarray) -> None:
    """Grey levels never decrease as the values increase, and span black to white."""
    order = np.argsort(values, axis=None, kind="stable")
    assert np.all(np.diff(grey_levels.ravel()[order].astype(int)) >= 0)
    assert grey_levels.flat[np.argmax(values)] == 255 and grey_levels.flat[np.argmin(values)] == 0


def test_png_previews_of_chosen_events_and_scan_results(tmp_path: Path) -> None:
    previews, nexus = _run(tmp_path, every=4, percentile=[0, 100])
    names = sorted(p.name for p in previews)
    chosen = [DARKS + k for k in range(0, FRAMES, 4)]
    expected = [f"{key}_{i:06d}.png" for key in ("copy.frame", "float.frame") for i in chosen] + ["sum.sum.png"]
    assert names == sorted(expected)
    assert all(p.parent == tmp_path / "pv_previews" for p in previews)
    with h5py.File(nexus, "r") as f:
        frames = f["entry/copy/frame"][()]
        total = f["entry/sum/sum"][()]
    for i in chosen:
        with Image.open(tmp_path / "pv_previews" / f"copy.frame_{i:06d}.png") as png:
            assert png.mode == "L" and png.size == (SHAPE[1], SHAPE[0])
            _assert_ordered(frames[i - DARKS], np.asarray(png))
    with Image.open(tmp_path / "pv_previews" / "sum.sum.png") as png:
        _assert_ordered(total, np.asarray(png))


def test_tiff_previews_keep_the_values(tmp_path: Path) -> None:
    previews, nexus = _run(tmp_path, format="tiff", every=5, directory="tiff/{scan}")
    assert {p.suffix for p in previews} == {".tif"}
    with h5py.File(nexus, "r") as f:
        frames = f["entry/copy/frame"][()]
        floats = f["entry/float/frame"][()]
        total = f["entry/sum/sum"][()]
    folder = tmp_path / "tiff" / "pv"
    for i in (DARKS, DARKS + 5):
        copied = fabio.open(str(folder / f"copy.frame_{i:06d}.tif")).data
        assert copied.dtype == np.uint16
        np.testing.assert_array_equal(copied, frames[i - DARKS])
        as_float = fabio.open(str(folder / f"float.frame_{i:06d}.tif")).data
        assert as_float.dtype == np.float32
        np.testing.assert_array_equal(as_float, floats[i - DARKS])
    np.testing.assert_array_equal(fabio.open(str(folder / "sum.sum.tif")).data, total.astype(np.float32))


@pytest.mark.dask
def test_dask_engine_gives_the_same_previews(tmp_path: Path, dask_client: Any) -> None:
    from lightpipe.engines.dask import DaskEngine

    local, _ = _run(tmp_path / "local", every=3, scale="log")
    distributed, _ = _run(tmp_path / "dask", DaskEngine(client=dask_client), every=3, scale="log")
    assert [p.name for p in distributed] == [p.name for p in local] and local
    for a, b in zip(local, distributed):
        with Image.open(a) as png_a, Image.open(b) as png_b:
            np.testing.assert_array_equal(np.asarray(png_a), np.asarray(png_b), err_msg=a.name)


def test_grey_scales() -> None:
    values = np.array([[0.0, 1.0, 10.0], [100.0, 1000.0, np.nan]])
    assert grey(values, "log", (0, 100)).tolist() == [[0, 0, 85], [170, 255, 0]]
    assert grey(values, "linear", (0, 100))[1, 1] == 255
    ramp = np.arange(100.0).reshape(10, 10)
    clipped = grey(ramp, "linear", (10, 90))
    assert (clipped[ramp <= ramp.ravel()[int(0.1 * 99)]] == 0).all() and (clipped[ramp >= 90] == 255).all()
    assert grey(np.full((3, 3), 7.0), "linear", (1, 99)).max() == 0  # flat image: no division by zero
    assert grey(np.array([[1 + 1j, 3 + 4j]]), "linear", (0, 100)).tolist() == [[0, 255]]


def test_failed_events_have_no_preview(tmp_path: Path) -> None:
    doc = {"version": 1, "name": "p", "source": {"use": "simulated_frames"}, "stages": {"copy": {"use": "identity"}}}
    pipeline = load_pipeline(doc)
    sink = PreviewSink(PreviewParams(every=1), ["copy.frame"], frozenset({"data"}), {"pipeline": pipeline, "output_dir": tmp_path})
    sink.open(Scan("s", {"data": range(3)}))
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    sink.write([Event(0, fields={"copy.frame": frame}), Event(1).fail("copy", "broken"), Event(2, fields={"copy.frame": frame})])
    files = sink.close({}, Ledger())
    assert [p.name for p in files] == ["copy.frame_000000.png", "copy.frame_000002.png"]


@pytest.mark.parametrize("bad", [{"percentile": [99, 1]}, {"percentile": [0, 101]}, {"directory": "{run}"}, {"every": -1}])
def test_bad_params_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        PreviewParams(**bad)
