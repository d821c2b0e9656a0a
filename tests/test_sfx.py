"""Serial crystallography: peak finding against the simulator's truth, geometry files, bad input, the CXI peak file."""
from __future__ import annotations

from pathlib import Path

import sys

import h5py
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lightpipe import load_pipeline
from lightpipe.core.errors import LightpipeError, PipelineError
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.sfx.geometry import GeometryError, read_crystfel_geom, read_poni, write_crystfel_geom
from lightpipe.techniques.sfx import kernels
from lightpipe.techniques.sfx.peakfinder import PeakLayout, PeakSettings, find_peaks
from lightpipe.techniques.sfx.quality import PeakScore, match_peaks
from lightpipe.techniques.sfx.simulate import SfxSimParams, SfxSimulation, write_sfx_nexus
from lightpipe.techniques.sfx.stages import HitPowder, HitRate, PeakFinder8, PeakFinderParams
from lightpipe.testing import run_stage

SIM = SfxSimParams(frames=24, hit_fraction=1.0, seed=3)


def _score(sim: SfxSimulation, layout: PeakLayout, settings: PeakSettings) -> PeakScore:
    total = PeakScore()
    for i in range(sim.params.frames):
        frame, truth = sim.frame(i), sim.truth(i)
        peaks = find_peaks(frame, layout, settings, low=0, high=np.iinfo(frame.dtype).max - 1)
        total = total.add(match_peaks(peaks.x, peaks.y, truth["x"], truth["y"], truth["snr"]))
    return total


@pytest.mark.parametrize("background", [1.0, 4.0, 30.0])
def test_peaks_at_snr_6_are_found_where_they_are(background: float) -> None:
    sim = SfxSimulation(SIM.model_copy(update={"background_photons": background,
                                               "mean_photons": 300.0 * max(1.0, background / 4) ** 0.5}))
    geometry = sim.geometry()
    layout = PeakLayout(geometry.radius_px(), geometry.mask(), geometry.panel_index())
    score = _score(sim, layout, PeakFinderParams().settings())
    assert score.true_strong > 300
    assert score.recall >= 0.98, score.as_dict()
    assert score.precision >= 0.95, score.as_dict()
    assert score.centroid_rms_px <= 0.3, score.as_dict()


def test_a_layout_without_the_gap_mask_finds_false_peaks_in_the_gaps() -> None:
    """The gaps hold the detector's flag value: the mask (or the valid range) is what keeps them out."""
    sim = SfxSimulation(SIM.model_copy(update={"frames": 4, "hot_pixels": 0}))
    geometry = sim.geometry()
    unmasked = PeakLayout(geometry.radius_px())
    frame = sim.frame(0)
    flagged = find_peaks(frame, unmasked, PeakSettings())  # no valid range: the flags look like a streak of signal
    kept_out = find_peaks(frame, unmasked, PeakSettings(), high=np.iinfo(frame.dtype).max - 1)
    masked = find_peaks(frame, PeakLayout(geometry.radius_px(), geometry.mask()), PeakSettings())
    assert flagged.bad_pixels == 0 and kept_out.bad_pixels == int(sim.gaps.sum())
    assert len(kept_out) == len(masked) > 30
    np.testing.assert_allclose(kept_out.x, masked.x, atol=0.05)


def test_resolution_limits_leave_peaks_out() -> None:
    sim = SfxSimulation(SIM.model_copy(update={"frames": 2}))
    geometry = sim.geometry()
    radius = geometry.radius_px()
    layout = PeakLayout(radius, geometry.mask(), geometry.panel_index(), min_res_px=40, max_res_px=90)
    peaks = find_peaks(sim.frame(0), layout, PeakSettings(), low=0, high=65534)
    r = radius[np.rint(peaks.y).astype(int), np.rint(peaks.x).astype(int)]
    assert len(peaks) > 5 and r.min() >= 39 and r.max() <= 91


def test_two_close_peaks_are_split_at_their_maxima() -> None:
    yy, xx = np.indices((40, 40))
    frame = np.random.default_rng(0).poisson(5, (40, 40)).astype(np.float32)
    for y, x in ((20, 17), (20, 22)):
        frame += 400 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.2**2))
    layout = PeakLayout(np.hypot(yy - 5.0, xx - 5.0).astype(np.float32))
    split = find_peaks(frame, layout, PeakSettings(min_separation_px=3))
    joined = find_peaks(frame, layout, PeakSettings(min_separation_px=0))
    assert len(split) == 2 and len(joined) == 1
    np.testing.assert_allclose(np.sort(split.x), [17, 22], atol=0.3)


@pytest.mark.parametrize("panels", [False, True])
def test_components_join_8_neighbours_on_one_panel_as_scipy_does(panels: bool) -> None:
    rng = np.random.default_rng(2)
    ny, nx = 60, 70
    pixels = np.flatnonzero(rng.random(ny * nx) < 0.3)  # dense enough for long, winding components
    panel = (np.arange(ny * nx) % nx >= 33).astype(np.int32) + 2 * (np.arange(ny * nx) // nx >= 20)
    labels = kernels.components(pixels, nx, panel if panels else np.empty(0, np.int32))
    y, x = np.divmod(pixels, nx)
    near = (np.abs(y[:, None] - y) <= 1) & (np.abs(x[:, None] - x) <= 1)
    if panels:
        near &= panel[pixels][:, None] == panel[pixels]
    expected = connected_components(coo_matrix(near), directed=False)[1]
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 20


def test_every_frame_dtype_gives_the_same_peaks() -> None:
    sim = SfxSimulation(SIM.model_copy(update={"frames": 1}))
    geometry = sim.geometry()
    layout = PeakLayout(geometry.radius_px(), geometry.mask(), geometry.panel_index())
    frame = np.minimum(np.where(sim.gaps, 0, sim.frame(0)), 2048)  # every value exact in float16
    reference = find_peaks(frame, layout, PeakSettings())
    assert len(reference) > 30
    for dtype in ("int32", "float32", "float64", "float16", ">u2", ">f4"):
        peaks = find_peaks(frame.astype(dtype), layout, PeakSettings())
        np.testing.assert_array_equal(peaks.x, reference.x, err_msg=dtype)
        np.testing.assert_array_equal(peaks.intensity, reference.intensity, err_msg=dtype)


def test_without_numba_peak_finding_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightpipe.techniques.sfx as sfx

    monkeypatch.setitem(sys.modules, "numba", None)  # what importing a package that is not installed does
    monkeypatch.delitem(sys.modules, "lightpipe.techniques.sfx.kernels")
    monkeypatch.delattr(sfx, "kernels")
    with pytest.raises(LightpipeError, match=r"pip install 'lightpipe\[sfx\]'"):
        find_peaks(np.zeros((8, 8), np.uint16), PeakLayout(np.ones((8, 8))), PeakSettings())


# -- stages ------------------------------------------------------------------------------------------


def test_hits_hit_rate_powder_and_strongest_hits() -> None:
    sim = SfxSimulation(SfxSimParams(frames=12, hit_fraction=0.25, seed=4))
    frames = [sim.frame(i) for i in range(12)]
    finder = PeakFinder8(PeakFinderParams(max_peaks=128))
    finder.metadata = sim.metadata()
    out = [finder.process(frame, index=i) for i, frame in enumerate(frames)]
    assert [bool(o["hit"]) for o in out] == [sim.is_hit(i) for i in range(12)]
    powder = run_stage(HitPowder, {"keep": 2}, [{"frame": f, "hit": o["hit"], "n_peaks": o["n_peaks"],
                                                 "peak_intensity": o["peak_intensity"],
                                                 "event_index": o["event_index"]} for f, o in zip(frames, out)],
                       chunk_size=5)
    assert powder["hits"] == 3 and powder["frames"] == 12
    hits = sorted(sim.hits)
    on_modules = ~sim.gaps
    np.testing.assert_array_equal(powder["powder_hits"][on_modules],
                                  np.sum([frames[i] for i in hits], axis=0)[on_modules])
    assert np.all(powder["powder_all"][sim.gaps] == 0)  # the gaps' flag value is not added
    ranked = sorted(hits, key=lambda i: (int(out[i]["n_peaks"]), float(np.nansum(out[i]["peak_intensity"]))),
                    reverse=True)
    assert list(powder["strongest_index"]) == ranked[:2]
    rate = run_stage(HitRate, {"window": 4}, [{"hit": o["hit"]} for o in out])
    assert rate["hit_rate"] == 0.25 and rate["hits"] == 3
    assert rate["recent_hit_rate"] == sum(sim.is_hit(i) for i in range(8, 12)) / 4


def test_a_pipeline_on_a_nexus_run_with_its_geom_file(tmp_path: Path) -> None:
    params = SfxSimParams(name="run", frames=10, hit_fraction=0.5, seed=6)
    run = write_sfx_nexus(tmp_path / "run.h5", params)
    doc = {
        "version": 2, "name": "sfx-test",
        "source": {"use": "hdf5", "params": {"path": str(run)}},
        "stages": {"peaks": {"use": "peakfinder8", "params": {
            "geometry": str(run.with_suffix(".geom")), "mask": f"{run}::/entry/instrument/detector/pixel_mask",
            "max_peaks": 128}}},
        "sinks": [{"use": "cxi_peaks", "fields": ["source.frame", "peaks.n_peaks", "peaks.hit", "peaks.peak_x_px",
                                                  "peaks.peak_y_px", "peaks.peak_intensity"]}],
    }
    with LocalEngine() as engine:
        report = engine.run(load_pipeline(doc), tmp_path / "out")
    sim = SfxSimulation(params)
    with h5py.File(tmp_path / "out" / "run_hits.cxi", "r") as f:
        rows = f["entry_1/data_1/frame_index"][()]
        assert list(rows) == sorted(sim.hits)
        np.testing.assert_array_equal(f["entry_1/data_1/data"][0], sim.frame(int(rows[0])))
        n = f["entry_1/result_1/nPeaks"][()]
        x, y = f["entry_1/result_1/peakXPosRaw"][()], f["entry_1/result_1/peakYPosRaw"][()]
        for row, index in enumerate(rows):
            truth = sim.truth(int(index))
            score = match_peaks(x[row, : n[row]], y[row, : n[row]], truth["x"], truth["y"], truth["snr"])
            assert score.recall >= 0.95 and score.precision >= 0.9
            assert np.all(x[row, n[row]:] == 0)
        process = f["entry_1/process_1"]
        assert process["state"][()] == b"completed"
        assert list(process["event_status"][()]) == [0] * 10
        assert list(process["event_hit"][()]) == [sim.is_hit(i) for i in range(10)]
    assert report.scans[0].ledger.failed == []


# -- geometry files ----------------------------------------------------------------------------------


def test_a_geom_file_round_trips_and_masks_the_gaps(tmp_path: Path) -> None:
    sim = SfxSimulation(SfxSimParams(frames=1))
    path = write_crystfel_geom(tmp_path / "d.geom", sim.geometry())
    geometry = read_crystfel_geom(path)
    assert geometry.shape == sim.frame_shape and len(geometry.panels) == 4
    np.testing.assert_array_equal(geometry.mask(), sim.gaps)
    cy, cx = sim.beam_center_px
    yy, xx = np.indices(sim.frame_shape)
    on = ~sim.gaps
    np.testing.assert_allclose(geometry.radius_px()[on], np.hypot(yy - cy, xx - cx)[on], atol=1e-3)


def test_a_geom_file_with_rotated_panels_and_bad_regions(tmp_path: Path) -> None:
    path = tmp_path / "r.geom"
    path.write_text("clen = 0.1\nres = 10000\n"
                    "q0/min_fs = 0\nq0/max_fs = 9\nq0/min_ss = 0\nq0/max_ss = 4\nq0/corner_x = 0\nq0/corner_y = 0\n"
                    "q0/fs = -1.0y\nq0/ss = +1.0x ; rotated by 90 degrees\n"
                    "badcorner/min_fs = 0\nbadcorner/max_fs = 1\nbadcorner/min_ss = 0\nbadcorner/max_ss = 0\n")
    geometry = read_crystfel_geom(path)
    assert geometry.panels[0].clen_m == 0.1 and geometry.panels[0].res == 10000
    r = geometry.radius_px()
    assert r[4, 0] == pytest.approx(np.hypot(4.5, -0.5))  # ss 4 along +x, fs 0 along -y
    assert geometry.mask()[0, :2].all() and not geometry.mask()[1:].any()


def test_an_unknown_geom_keyword_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.geom"
    path.write_text("clen = 0.1\np0/min_fs = 0\np0/max_fs = 9\np0/min_ss = 0\np0/max_ss = 9\np0/corner_x = -5\n"
                    "p0/corner_y = -5\np0/cornr_x = 1\n")
    with pytest.raises(GeometryError, match=r"bad\.geom:8: unknown keyword 'cornr_x' for panel 'p0'"):
        read_crystfel_geom(path)
    with pytest.raises(PipelineError, match=r"bad\.geom:8: unknown keyword 'cornr_x'"):
        load_pipeline({"version": 2, "name": "x", "source": {"use": "sfx_sim"},
                       "stages": {"peaks": {"use": "peakfinder8", "params": {"geometry": str(path)}}}, "sinks": []})


def test_a_poni_file_gives_pyfai_radii(tmp_path: Path) -> None:
    pyfai = pytest.importorskip("pyFAI")
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    ai = AzimuthalIntegrator(dist=0.1, poni1=0.005, poni2=0.004, detector=pyfai.detector_factory("Pilatus100k"))
    ai.save(str(tmp_path / "d.poni"))
    geometry = read_poni(tmp_path / "d.poni")
    assert geometry.shape == (195, 487)
    row, col = 0.005 / 172e-6 - 0.5, 0.004 / 172e-6 - 0.5
    y, x = np.unravel_index(np.argmin(geometry.radius_px()), geometry.shape)
    assert abs(y - row) <= 1 and abs(x - col) <= 1
    with pytest.raises(GeometryError, match="is for a 195 x 487 detector but the frames are 100 x 100"):
        read_poni(tmp_path / "d.poni", (100, 100))


# -- bad input ---------------------------------------------------------------------------------------


def _run(tmp_path: Path, params: dict, frames: list[np.ndarray]) -> list[dict]:
    stage = PeakFinder8(PeakFinderParams(max_peaks=64, **params))
    stage.metadata = {**SfxSimulation(SfxSimParams()).metadata(), "source_file": "/data/run.h5"}
    out = []
    for frame in frames:
        try:
            out.append(stage.process(frame))
        except Exception as exc:  # the engine fails this event and goes on with the next
            out.append({"error": str(exc)})
    return out


def test_bad_frames_fail_alone_with_what_to_change(tmp_path: Path) -> None:
    sim = SfxSimulation(SfxSimParams(frames=3, hit_fraction=1.0, frame_dtype="float32", seed=8))
    good = sim.frame(0)
    holes = good.copy()
    holes[10:20, 10:20] = np.nan  # a few NaN pixels are left out of that frame
    broken = np.full_like(good, np.nan)  # a readout error
    negative = np.full(good.shape, -1, np.int32)  # PILATUS's -1 everywhere
    out = _run(tmp_path, {}, [good, holes, broken, negative, good])
    assert "error" not in out[0] and "error" not in out[1] and "error" not in out[4]
    assert int(out[1]["bad_pixels"]) == 100 and abs(int(out[1]["n_peaks"]) - int(out[0]["n_peaks"])) <= 2
    assert "are NaN, infinite, below None or above None" in out[2]["error"] and "/data/run.h5" in out[2]["error"]
    assert "below 0.0" in out[3]["error"] and "min_valid" in out[3]["error"]


def test_saturated_pixels_are_left_out(tmp_path: Path) -> None:
    frame = SfxSimulation(SfxSimParams(frames=1, hit_fraction=1.0, seed=9)).frame(0)
    hot = frame.copy()
    hot[50:52, 60:63] = 65535  # the flag value: a saturated blob is not a peak
    plain, flagged = _run(tmp_path, {}, [frame, hot])
    assert int(flagged["bad_pixels"]) == int(plain["bad_pixels"]) + 6
    assert not np.any((np.abs(flagged["peak_x_px"] - 61) < 2) & (np.abs(flagged["peak_y_px"] - 50.5) < 2))


def test_a_mask_or_geometry_of_the_wrong_shape_names_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "mask.npy", np.zeros((10, 10), np.uint8))
    frame = SfxSimulation(SfxSimParams(frames=1)).frame(0)
    [out] = _run(tmp_path, {"mask": str(tmp_path / "mask.npy")}, [frame])
    assert "mask.npy is 10 x 10 but the frames are 198 x 262" in out["error"]
    geom = write_crystfel_geom(tmp_path / "small.geom", SfxSimulation(SfxSimParams(modules=(1, 1))).geometry())
    [out] = _run(tmp_path, {"geometry": str(geom)}, [frame])
    assert "small.geom describes 96 x 128 pixel frames but the frames are 198 x 262" in out["error"]
