"""Distributed ptychography: the k-means split, the phase-aligned merge, and reconstructions in process and on Dask."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightpipe import load_pipeline
from lightpipe.core.event import Scan
from lightpipe.core.geometry import FrameGeometry
from lightpipe.engines.dask import ActorPartRunner, DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.ptychography.distributed import merge_periods, reconstruct_distributed
from lightpipe.techniques.ptychography.merge import merge_objects, merge_probes
from lightpipe.techniques.ptychography.metrics import object_error
from lightpipe.techniques.ptychography.partition import extend_parts, kmeans_labels, split_positions
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation
from lightpipe.techniques.ptychography.stages.distributed import DistributedReconstruction
from lightpipe.testing import run_stage

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "ptycho-distributed.yaml"

CHAIN = "DM:25, ML:5"


def raster(rows: int, cols: int, step: float, seed: int = 0) -> np.ndarray:
    """A jittered raster of positions, (rows * cols, 2)."""
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2) * step
    return grid + np.random.default_rng(seed).uniform(-0.5, 0.5, grid.shape) + 1.0


@pytest.fixture(scope="module")
def sim() -> PtychoSimulation:
    """100 positions of 64 x 64 frames, the simulator's defocused zone-plate probe at 60 % overlap."""
    return PtychoSimulation(PtychoSimParams(frame_shape=(64, 64), distance_m=1.0, defocus_m=2e-4, n_positions=100))


@pytest.fixture(scope="module")
def data(sim: PtychoSimulation) -> dict[str, np.ndarray]:
    illumination = sim.illumination()
    return {"intensities": sim.intensities(), "lit": illumination >= 0.1 * illumination.max()}


def parts_left(client) -> int:
    """Actors and shipped part data still held by the workers, once Dask has had time to release them."""
    def held(dask_worker) -> int:
        actors = sum(str(k).startswith("PartReconstruction-") for k in dask_worker.state.actors)
        return actors + sum(type(v).__name__ == "PartData" for v in dask_worker.data.values())

    for _ in range(50):  # releasing is asynchronous
        left = sum(client.run(held).values())
        if left == 0:
            break
        time.sleep(0.1)
    return left


def error_on_truth(obj: np.ndarray, sim: PtychoSimulation, lit: np.ndarray) -> float:
    grid = np.ones(sim.object_shape, dtype=np.complex64)
    grid[: obj.shape[0], : obj.shape[1]] = obj
    return object_error(grid, sim.object, lit)


# ---------------------------------------------------------------- split
@pytest.mark.parametrize("parts", [2, 3, 4])
def test_split_covers_overlaps_and_balances(parts: int) -> None:
    pos = raster(12, 12, 8.0)
    margin = 10.0
    labels = kmeans_labels(pos, parts)
    split = split_positions(pos, parts, (32, 32), margin_px=margin)
    assert len(split) == parts
    assert set(np.concatenate(split).tolist()) == set(range(len(pos)))  # every position is somewhere
    sizes = np.bincount(labels, minlength=parts)
    assert sizes.min() >= 0.75 * len(pos) / parts and sizes.max() <= 1.25 * len(pos) / parts
    for k, members in enumerate(split):
        own = np.flatnonzero(labels == k)
        assert set(own) <= set(members)  # a part keeps its whole cluster
        borrowed = np.setdiff1d(members, own)
        assert len(borrowed) > 0  # and shares its neighbours' boundary positions
        nearest = np.min(np.linalg.norm(pos[borrowed, None] - pos[None, own], axis=-1), axis=1)
        assert nearest.max() <= margin
        others = np.setdiff1d(np.arange(len(pos)), members)
        if len(others):
            far = np.min(np.linalg.norm(pos[others, None] - pos[None, own], axis=-1), axis=1)
            assert far.min() > margin  # nothing beyond the margin is borrowed


def test_split_without_margin_is_a_partition_and_repeats() -> None:
    pos = raster(10, 10, 8.0, seed=1)
    split = extend_parts(pos, kmeans_labels(pos, 3), 0.0)
    assert sum(len(s) for s in split) == len(pos)
    assert set(np.concatenate(split).tolist()) == set(range(len(pos)))
    again = split_positions(pos, 3, (32, 32), margin_px=0)
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
    assert kmeans_labels(pos, 3)[0] == 0  # parts are numbered in scan order


def test_default_margin_is_a_quarter_of_the_window() -> None:
    pos = raster(10, 10, 8.0)
    assert [len(p) for p in split_positions(pos, 2, (32, 32))] == [len(p) for p in
                                                                   split_positions(pos, 2, (32, 32), margin_px=8.0)]


@pytest.mark.parametrize(("positions", "parts", "words"), [
    (raster(3, 3, 5.0), 0, "parts must be an integer from 1"),
    (raster(3, 3, 5.0), 10, "parts must be an integer from 1"),
    (np.full((4, 2), np.nan), 2, "NaN"),
    (np.zeros((4, 3)), 2, "(N, 2)"),
])
def test_split_refuses_bad_input(positions: np.ndarray, parts: int, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        split_positions(positions, parts, (32, 32))


# ---------------------------------------------------------------- merge
def _smooth_object(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    smooth = np.exp(-(ky**2 + kx**2) * 400)
    noise = [np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * smooth)) for _ in range(2)]
    return ((0.8 + 0.1 * noise[0] / noise[0].std()) * np.exp(1j * noise[1] / noise[1].std())).astype(np.complex64)


def test_merge_aligns_the_phase_of_each_part() -> None:
    truth = _smooth_object((60, 90), seed=2)
    boxes = [(slice(0, 60), slice(0, 50)), (slice(0, 60), slice(30, 90)), (slice(10, 50), slice(40, 80))]
    y, x = np.indices(truth.shape)
    factors = [1.0, 1.3 * np.exp(1j * 1.0), 0.7 * np.exp(-2j)]  # the complex factor each part chose on its own
    objects, lights = [], []
    for box, c in zip(boxes, factors):
        cy, cx = (box[0].start + box[0].stop) / 2, (box[1].start + box[1].stop) / 2
        lights.append(np.exp(-((y[box] - cy) ** 2 + (x[box] - cx) ** 2) / 300.0))
        objects.append(truth[box] * c)
    previous = np.ones(truth.shape, dtype=np.complex64)
    merged, found = merge_objects(objects, lights, boxes, previous)
    assert merged.dtype == np.complex64 and merged.shape == truth.shape
    np.testing.assert_allclose(found, 1.0 / np.asarray(factors), rtol=1e-5)
    weight = sum(np.pad(w, [(b[0].start, 60 - b[0].stop), (b[1].start, 90 - b[1].stop)]) for w, b in zip(lights, boxes))
    lit = weight >= 0.1 * weight.max()  # elsewhere the merge leans on the previous object, by design
    np.testing.assert_allclose(merged[lit], truth[lit], atol=2e-3)
    # without the alignment the parts' phases disagree and the merge is wrong: the test can fail
    naive = sum(np.pad(o * w, [(b[0].start, 60 - b[0].stop), (b[1].start, 90 - b[1].stop)])
                for o, w, b in zip(objects, lights, boxes))
    assert np.abs(naive / weight - truth)[lit].max() > 0.3


def test_merge_keeps_the_previous_object_where_no_part_lights() -> None:
    previous = np.full((20, 20), 0.5 + 0.5j, dtype=np.complex64)
    box = (slice(0, 10), slice(0, 10))
    merged, _ = merge_objects([np.full((10, 10), 2.0 + 0j)], [np.ones((10, 10))], [box], previous)
    assert np.allclose(merged[box], 2.0, atol=1e-3)
    assert np.array_equal(merged[10:, 10:], previous[10:, 10:])


def test_merge_probes_undoes_the_factors_and_mode_phases() -> None:
    rng = np.random.default_rng(3)
    probe = (rng.standard_normal((2, 16, 16)) + 1j * rng.standard_normal((2, 16, 16))).astype(np.complex64)
    factors = [1.0, 0.5 * np.exp(0.7j)]
    second = probe * factors[1]
    second[1] *= np.exp(2.5j)  # an incoherent mode's own phase
    merged = merge_probes([probe * factors[0], second], factors, [1.0, 3.0])
    np.testing.assert_allclose(merged, probe, atol=1e-5)


def test_merge_periods_cross_algorithms() -> None:
    assert merge_periods([("DM", 25), ("ML", 10)], 10) == [
        [("DM", 10)], [("DM", 10)], [("DM", 5), ("ML", 5)], [("ML", 5)]]
    with pytest.raises(ValueError, match="merge_every"):
        merge_periods([("DM", 5)], 0)


# ---------------------------------------------------------------- reconstruction
@pytest.fixture(scope="module")
def in_process(sim: PtychoSimulation, data: dict[str, np.ndarray]):
    return reconstruct_distributed(data["intensities"], sim.positions_px, sim.probe, chain=CHAIN, parts=2,
                                   merge_every=10)


def test_two_parts_reconstruct_as_well_as_one(sim: PtychoSimulation, data: dict[str, np.ndarray], in_process) -> None:
    whole = reconstruct_distributed(data["intensities"], sim.positions_px, sim.probe, chain=CHAIN, parts=1,
                                    merge_every=10)
    one = error_on_truth(whole.object, sim, data["lit"])
    two = error_on_truth(in_process.object, sim, data["lit"])
    blank = error_on_truth(np.ones_like(whole.object), sim, data["lit"])
    assert one < 0.2 * blank
    assert two < 1.5 * one + 0.005
    assert len(in_process.fourier_errors) == 30 and in_process.algorithms[-1] == "ML"
    assert in_process.fourier_errors[-1] < 0.2 * in_process.fourier_errors[0]
    assert in_process.probe.shape == (1, 64, 64)
    assert sorted(set(in_process.labels.tolist())) == [0, 1]
    assert in_process.part_seconds.shape == (3, 2) and (in_process.part_seconds > 0).all()
    assert in_process.workers == ["local", "local"]  # threads of this process


@pytest.mark.dask
def test_dask_gives_the_in_process_result(sim: PtychoSimulation, data: dict[str, np.ndarray], in_process,
                                          dask_client) -> None:
    result = reconstruct_distributed(data["intensities"], sim.positions_px, sim.probe, chain=CHAIN, parts=2,
                                     merge_every=10, runner=ActorPartRunner(dask_client))
    assert len(set(result.workers)) == 2  # one part on each worker
    scale = np.abs(in_process.object).max()
    np.testing.assert_allclose(result.object, in_process.object, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(result.fourier_errors, in_process.fourier_errors, rtol=1e-5)
    assert parts_left(dask_client) == 0  # the parts' actors and their frames are gone from the workers


@pytest.mark.dask
def test_a_part_that_fails_on_its_worker_leaves_nothing_behind(sim: PtychoSimulation, data: dict[str, np.ndarray],
                                                               dask_client) -> None:
    frames = data["intensities"][:40].copy()
    frames[30, 5, 5] = np.nan  # the part holding frame 30 refuses it when its state is built on the worker
    with pytest.raises(ValueError, match="NaN"):
        reconstruct_distributed(frames, sim.positions_px[:40], sim.probe, chain="DM:2", parts=2, merge_every=1,
                                runner=ActorPartRunner(dask_client))
    assert parts_left(dask_client) == 0


def test_reconstruct_refuses_bad_input(sim: PtychoSimulation, data: dict[str, np.ndarray]) -> None:
    frames, pos = data["intensities"][:10], sim.positions_px[:10]
    with pytest.raises(ValueError, match="10 frames but 9 positions"):
        reconstruct_distributed(frames, pos[:9], sim.probe, chain="DM:1")
    with pytest.raises(ValueError, match="unknown algorithm"):
        reconstruct_distributed(frames, pos, sim.probe, chain="XX:3")
    with pytest.raises(ValueError, match="frame shape"):
        reconstruct_distributed(frames, pos, sim.probe[:32], chain="DM:1")
    with pytest.raises(ValueError, match="DM alpha"):
        reconstruct_distributed(frames, pos, sim.probe, chain="DM:1", algorithm_params={"DM": {"alpha": -1}})


def test_positions_in_any_origin_are_placed_on_the_object(sim: PtychoSimulation, data: dict[str, np.ndarray]) -> None:
    frames, pos = data["intensities"][:24], sim.positions_px[:24]
    here = reconstruct_distributed(frames, pos, sim.probe, chain="DM:2", parts=2)
    centred = reconstruct_distributed(frames, pos - 50, sim.probe, chain="DM:2", parts=2)
    assert tuple(here.origin_px) == (0, 0) and tuple(centred.origin_px) == tuple(np.rint(pos - 50).min(axis=0))
    oy, ox = np.rint(pos).min(axis=0).astype(int)  # positions near 0 keep the object at 0: its margin is unlit
    np.testing.assert_array_equal(centred.object, here.object[oy:, ox:])
    assert centred.probe_scale == here.probe_scale and here.probe_scale != 1.0 and not here.stalled


# ---------------------------------------------------------------- stage
def run_on_geometry(params: dict[str, Any], events: list[dict[str, Any]], scan: Scan,
                    geometry: FrameGeometry) -> dict[str, Any]:
    """Run ``ptycho_distributed`` as a pipeline does, telling it the geometry of its frames."""
    stage = DistributedReconstruction(DistributedReconstruction.Params(**params))
    stage.input_geometry["frame"] = geometry
    stage.setup(scan)
    for index, inputs in enumerate(events):
        stage.feed(index, **inputs)
    return stage.finish()


def test_stage_places_positions_in_metres_and_reconstructs(sim: PtychoSimulation,
                                                           data: dict[str, np.ndarray]) -> None:
    events = []
    for k, frame in enumerate(data["intensities"]):
        y, x = sim.position_m(k)
        events.append({"frame": frame, "position_y_m": np.float64(y), "position_x_m": np.float64(x)})
    scan = Scan("ptycho", {"data": range(len(events))}, sim.metadata())
    out = run_stage("ptycho_distributed", {"chain": "DM:20", "parts": 2, "merge_every": 10}, events, scan)
    assert isinstance(out, dict)
    recorded = sim.recorded_positions_px - sim.recorded_positions_px.min(axis=0)
    corners = np.rint(recorded).max(axis=0).astype(int)
    assert out["object"].shape == (corners[0] + 64, corners[1] + 64)  # metres became object pixels
    assert out["probe"].shape == (1, 64, 64) and out["object"].dtype == np.complex64
    assert out["fourier_error"].shape == (20,) and out["fourier_error"][-1] < out["fourier_error"][0]
    np.testing.assert_array_equal(out["iteration"], np.arange(1, 21))
    assert out["parts"].shape == (100,) and set(out["parts"].tolist()) == {0, 1}
    assert out["part_seconds"].shape == (2,)
    # frames that span 32 of the 64 detector pixels (as after a crop) see object pixels twice as large
    cropped = run_on_geometry({"chain": "DM:1"}, events, scan, FrameGeometry((64, 64), scale=(0.5, 0.5)))
    half = np.rint(recorded / 2).max(axis=0).astype(int)
    assert cropped["object"].shape == (half[0] + 64, half[1] + 64)


def test_stage_needs_the_object_pixel_size() -> None:
    frames = np.ones((3, 16, 16), dtype=np.float32)
    events = [{"frame": f, "position_y_m": np.float64(k * 1e-7), "position_x_m": np.float64(0.0)}
              for k, f in enumerate(frames)]
    with pytest.raises(ValueError, match="object_pixel_size_m"):
        run_stage("ptycho_distributed", {"chain": "DM:1"}, events)
    out = run_stage("ptycho_distributed", {"chain": "DM:1", "object_pixel_size_m": [5e-8, 5e-8]}, events)
    assert out["object"].shape == (4 + 16, 16)


def test_stage_leaves_the_beamstop_out_of_the_fit(sim: PtychoSimulation, data: dict[str, np.ndarray]) -> None:
    # a detector that marks the pixels behind its beamstop NaN: refused unless they are left out of the fit
    frames = data["intensities"][:40].copy()
    y, x = np.indices(frames.shape[1:])
    frames[:, np.hypot(y - 32, x - 32) <= 3] = np.nan
    events = [{"frame": f, "position_y_m": np.float64(sim.position_m(k)[0]),
               "position_x_m": np.float64(sim.position_m(k)[1])} for k, f in enumerate(frames)]
    scan = Scan("ptycho", {"data": range(len(events))}, sim.metadata())
    with pytest.raises(ValueError, match="NaN"):
        run_stage("ptycho_distributed", {"chain": "DM:2", "merge_every": 1}, events, scan)
    out = run_stage("ptycho_distributed", {"chain": "DM:4", "merge_every": 2, "beamstop_radius_px": 3.5}, events,
                    scan)
    assert np.isfinite(out["object"]).all() and np.isfinite(out["probe"]).all()
    assert np.isfinite(out["fourier_error"]).all() and out["fourier_error"][-1] < out["fourier_error"][0]


# ---------------------------------------------------------------- where the parts run
def tiny_pipeline() -> dict[str, Any]:
    """The example pipeline on 16 positions, two parts of two iterations."""
    doc = copy.deepcopy(load_pipeline(PIPELINE).document)
    doc["source"]["params"].update(n_positions=16, darks=2)
    doc["stages"]["recon"]["params"].update(chain="DM:2", merge_every=1)
    return doc


def part_tasks(stream: Any) -> list[dict[str, Any]]:
    """The tasks of a Dask task stream that started a part."""
    return [t for t in stream.data if str(t["key"]).startswith("PartReconstruction-")]


@pytest.mark.dask
def test_parts_run_on_the_engine_of_the_run_not_on_an_open_client(tmp_path: Path, dask_client: Any) -> None:
    from distributed import Client, get_task_stream

    # a client open in the process (the default one, as a notebook's would be) gets no part of a local run
    with Client(dask_client.scheduler.address) as bystander, get_task_stream(client=bystander) as stream:
        with LocalEngine() as engine:
            (local,) = engine.run(load_pipeline(tiny_pipeline()), tmp_path / "local").scans
    assert local.ledger.state == "completed"
    assert part_tasks(stream) == []
    # on the dask engine the parts are actors on the workers of the engine's own cluster, one per worker
    with get_task_stream(client=dask_client) as stream:
        with DaskEngine(client=dask_client) as engine:
            (dask,) = engine.run(load_pipeline(tiny_pipeline()), tmp_path / "dask").scans
    assert dask.ledger.state == "completed"
    workers = set(dask_client.scheduler_info()["workers"])
    assert len(part_tasks(stream)) == 2 and {t["worker"] for t in part_tasks(stream)} == workers
    assert parts_left(dask_client) == 0
    scale = np.abs(local.results["recon.object"]).max()  # the same reconstruction, wherever the parts ran
    np.testing.assert_allclose(dask.results["recon.object"], local.results["recon.object"], rtol=0, atol=1e-5 * scale)
