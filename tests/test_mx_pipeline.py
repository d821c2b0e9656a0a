"""MX spot finding in a pipeline: one worker or a Dask cluster give the same table, a failing image, the result file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pytest

pytest.importorskip("scipy")

from lightpipe.core.event import Event
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.source import ScanReader
from lightpipe.engines.dask import DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.mx.sim_source import RotationSimReader, RotationSimSource
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation

#: 16 images of 192 x 192 pixels at 50 mm: about 20 spots each.
SOURCE = {"name": "rot", "images": 16, "shape": [192, 192], "distance_m": 0.05, "omega_start_deg": 30.0,
          "omega_increment_deg": 0.25}
TABLE = ["spot_count", "image", "rotation_angle", "spot_image", "spot_rotation_angle", "spot_x", "spot_y",
         "spot_intensity", "spot_pixels", "spot_bbox_x0", "spot_bbox_x1", "spot_bbox_y0", "spot_bbox_y1",
         "spot3d_x", "spot3d_y", "spot3d_z", "spot3d_rotation_angle", "spot3d_intensity", "spot3d_pixels",
         "spot3d_first_image", "spot3d_last_image", "spot3d_bbox_x0", "spot3d_bbox_x1", "spot3d_bbox_y0",
         "spot3d_bbox_y1"]


def _document(source: str = "rotation_sim") -> dict[str, Any]:
    return {"version": 2, "name": "mx", "source": {"use": source, "params": SOURCE},
            "stages": {"spots": {"use": "dispersion_spots"}, "table": {"use": "spot_table"}},
            "sinks": [{"use": "nexus", "fields": ["spots.spot_count", *(f"table.{k}" for k in TABLE)]}]}


def _table(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f["entry/table"][k][()] for k in TABLE}


@pytest.mark.dask
def test_a_dask_cluster_gives_the_table_of_one_worker_in_image_order(tmp_path: Path, dask_client: Any) -> None:
    pipeline = load_pipeline(_document())
    with LocalEngine() as engine:
        [local] = engine.run(pipeline, tmp_path / "local").scans
    with DaskEngine(client=dask_client, chunk_size=3) as engine:
        [spread] = engine.run(pipeline, tmp_path / "dask").scans
    one, many = _table(local.files[0]), _table(spread.files[0])
    for key in TABLE:
        assert one[key].dtype == many[key].dtype and one[key].tobytes() == many[key].tobytes(), key
    np.testing.assert_array_equal(one["image"], np.arange(1, 17))
    assert np.all(np.diff(one["spot_image"]) >= 0)  # rows image by image
    assert one["spot_count"].sum() == len(one["spot_x"]) > 16 * 10
    np.testing.assert_allclose(one["rotation_angle"], 30.0 + (np.arange(16) + 0.5) * 0.25)
    # 3-D spots: joined across the chunks' seams (images 3|4, 6|7, ...) as on one worker, fewer than the 2-D spots
    spans = one["spot3d_last_image"] - one["spot3d_first_image"]
    assert spans.max() >= 1 and np.any(one["spot3d_first_image"][spans > 0] % 3 == 0)
    assert 16 * 3 < len(one["spot3d_x"]) < one["spot_count"].sum()
    np.testing.assert_allclose(one["spot3d_rotation_angle"], 30.0 + (one["spot3d_z"] - 0.5) * 0.25)
    with h5py.File(local.files[0]) as f:
        np.testing.assert_array_equal(f["entry/spots/spot_count"][()], one["spot_count"])


def test_the_result_file_plots_spot_counts_against_the_rotation(tmp_path: Path) -> None:
    with LocalEngine() as engine:
        [scan] = engine.run(load_pipeline(_document()), tmp_path).scans
    with h5py.File(scan.files[0]) as f:
        entry = f["entry"]
        assert entry.attrs["default"] == "table"
        table = entry["table"]
        assert table.attrs["signal"] == "spot_count" and list(table.attrs["axes"]) == ["rotation_angle"]
        assert table["rotation_angle"].attrs["units"] == "deg" and table["spot_x"].attrs["units"] == "pixel"
        assert entry["instrument/beam/incident_wavelength"][()] == pytest.approx(0.9763)
    # the table against the truth: every image's count matches the spot finder run on the simulator's frames
    from lightpipe.techniques.mx.dispersion import find_spots

    sim = RotationSimulation(RotationSimParams(**SOURCE))
    counts = [len(find_spots(sim.frame(k), np.ones((192, 192), bool))) for k in range(16)]
    np.testing.assert_array_equal(_table(scan.files[0])["spot_count"], counts)


class OneBrightImageReader(RotationSimReader):
    """A rotation whose image 5 caught ice: a third of the detector is a speckle of bright pixels."""

    def read(self, start: int, stop: int) -> list[Event]:
        events = super().read(start, stop)
        for event in events:
            if event.index == 5:
                frame = event.fields["frame"].copy()
                frame[:, :64] += np.random.default_rng(5).integers(0, 5000, (192, 64), dtype=np.int32)
                event.fields["frame"] = frame
        return events


class OneBrightImageSource(RotationSimSource):
    """``rotation_sim`` with :class:`OneBrightImageReader` scans."""

    def scans(self) -> Iterator[ScanReader]:
        for reader in super().scans():
            assert isinstance(reader, RotationSimReader)
            yield OneBrightImageReader(reader.params)


def test_an_image_that_fails_is_recorded_and_the_scan_goes_on(tmp_path: Path) -> None:
    doc = _document("test_mx_pipeline:OneBrightImageSource")
    doc["stages"]["spots"]["params"] = {"max_strong_fraction": 0.05}
    with LocalEngine() as engine:
        [scan] = engine.run(load_pipeline(doc), tmp_path).scans
    assert [e.index for e in scan.ledger.failed] == [5]
    assert scan.ledger.written == 15
    with h5py.File(scan.files[0]) as f:
        entry = f["entry"]
        assert list(entry["failed_events/stage"].asstr()) == ["spots"]
        assert "more than max_strong_fraction=0.05" in entry["failed_events/message"].asstr()[0]
        images = entry["table/image"][()]
    np.testing.assert_array_equal(images, [k for k in range(1, 17) if k != 6])  # image 6 (index 5) has no point
