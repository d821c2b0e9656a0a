"""The ptychography simulator: physics, photon statistics, detector effects, scan overlap, and its source."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from scipy import ndimage

from lightpipe import load_pipeline
from lightpipe.core import registry
from lightpipe.core.errors import LightpipeError
from lightpipe.engines.dask import DaskEngine
from lightpipe.engines.local import LocalEngine
from lightpipe.techniques.ptychography.optics import wavelength_m, zone_plate_probe
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation

#: 64 x 64 frames at 1 m: 25.8 nm object pixels, bright-field disc of radius 16.5 px.
SMALL = dict(frame_shape=(64, 64), distance_m=1.0, defocus_m=2e-4, n_positions=16, darks=6, seed=11)


def _sim(**changes: object) -> PtychoSimulation:
    return PtychoSimulation(PtychoSimParams(**{**SMALL, **changes}))


def test_diffraction_follows_the_shared_convention() -> None:
    """Intensities are fftshift(|fft2(probe * object_patch, ortho)|^2) at the truth's positions."""
    sim = _sim(step_px=7, jitter_px=0.0)
    truth = sim.truth()
    corners = truth["positions_px"]
    assert np.array_equal(corners, np.round(corners)) and corners.min() >= 0
    ny, nx = truth["probe"].shape
    for k, (y, x) in enumerate(corners.astype(int)):
        patch = truth["object"][y : y + ny, x : x + nx]
        expected = np.fft.fftshift(np.abs(np.fft.fft2(truth["probe"] * patch, norm="ortho")) ** 2)
        np.testing.assert_allclose(sim.diffraction(k), expected, rtol=1e-4, atol=1e-3 * expected.max())
    intensities = sim.intensities()
    assert intensities.dtype == np.float32 and intensities.shape == (16, 64, 64)


def test_sub_pixel_positions_move_the_probe() -> None:
    sim = _sim(jitter_px=0.7)
    truth = sim.truth()
    corner = truth["positions_px"][5]
    start = np.floor(corner).astype(int)
    assert not np.allclose(corner, start)
    ny, nx = truth["probe"].shape
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(truth["probe"]), corner - start))
    patch = truth["object"][start[0] : start[0] + ny, start[1] : start[1] + nx]
    expected = np.fft.fftshift(np.abs(np.fft.fft2(moved * patch, norm="ortho")) ** 2)
    np.testing.assert_allclose(sim.diffraction(5), expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_photon_count_is_right_on_average() -> None:
    photons = 2e5
    sim = _sim(photons_per_frame=photons, background=0.2, beamstop_radius_px=0.0)
    truth = sim.truth()
    assert np.sum(np.abs(truth["probe"]) ** 2) == pytest.approx(photons, rel=1e-5)
    data = sim.streams["data"]
    measured, expected = [], []
    for k, index in enumerate(data):
        stream, frame = sim.frame(index)
        assert stream == "data" and frame.dtype == np.uint16
        measured.append(np.sum(frame - truth["dark"]))
        expected.append(np.sum(sim.expected_counts(k)))
    # what reaches the detector: the sample's transmission (0.6 to 1 in amplitude) times the incident photons
    signal = np.array(expected) - 0.2 * 64 * 64
    assert np.all((signal > 0.36 * photons) & (signal < photons))
    # Poisson: the mean difference vanishes within its standard error (shot and read noise)
    diff = np.array(measured) - np.array(expected)
    sigma = np.sqrt(np.mean(expected) + 64 * 64 * (sim.params.read_noise**2 + 1 / 12)) / np.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * sigma
    assert np.std(diff) == pytest.approx(sigma * np.sqrt(len(diff)), rel=0.6)


def test_beamstop_suppresses_the_centre() -> None:
    params = dict(central_stop_fraction=0.0, beamstop_radius_px=5.0, background=0.0, read_noise=0.0, dark_spread=0.0)
    open_ = _sim(**params, beamstop_transmission=1.0)
    stopped = _sim(**params, beamstop_transmission=0.0)
    y, x = np.indices((64, 64))
    centre = np.hypot(y - 32, x - 32) <= 5.0
    first = open_.streams["data"].start
    open_counts = np.mean([open_.frame(first + k)[1][centre].mean() for k in range(4)]) - open_.params.dark_level
    stopped_frames = [stopped.frame(first + k)[1] for k in range(4)]
    assert open_counts > 100  # without a central stop the direct beam is brightest at the centre
    assert all(np.all(f[centre] == stopped.params.dark_level) for f in stopped_frames)
    assert np.mean([f[~centre].mean() for f in stopped_frames]) > stopped.params.dark_level + 1
    semi = _sim(**params, beamstop_transmission=0.01)
    ratio = semi.expected_counts(2)[centre] / open_.expected_counts(2)[centre]
    np.testing.assert_allclose(ratio, 0.01, rtol=1e-5)


def test_darks_contain_no_signal() -> None:
    sim = _sim(photons_per_frame=1e6, read_noise=2.0)
    truth = sim.truth()
    darks = np.stack([sim.frame(i)[1] for i in sim.streams["dark"]]).astype(float) - truth["dark"]
    assert [sim.frame(i)[0] for i in sim.streams["dark"]] == ["dark"] * 6
    assert abs(darks.mean()) < 0.05
    assert darks.std() == pytest.approx(np.sqrt(2.0**2 + 1 / 12), rel=0.05)
    bright = sim.expected_counts(0) > 10 * sim.params.read_noise  # where the data frames have signal
    assert abs(darks[:, bright].mean() - darks[:, ~bright].mean()) < 0.1
    data = sim.frame(sim.streams["data"].start)[1].astype(float) - truth["dark"]
    assert data[bright].mean() > 100


def _support_diameter(probe: np.ndarray) -> float:
    """Diameter of the disc about the intensity centroid that holds 90 % of the probe's intensity."""
    intensity = np.abs(probe) ** 2
    y, x = np.indices(intensity.shape)
    cy, cx = np.average(y, weights=intensity), np.average(x, weights=intensity)
    r = np.hypot(y - cy, x - cx).ravel()
    order = np.argsort(r)
    held = np.cumsum(intensity.ravel()[order]) / intensity.sum()
    return 2 * r[order][np.argmax(held >= 0.9)]


def _shared_fraction(a: np.ndarray, b: np.ndarray, diameter: float) -> float:
    """Fraction of the disc at ``a`` also inside the disc at ``b``, counted on a grid of 1/8 px."""
    grid = np.arange(-diameter, diameter, 0.125)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    inside_a = np.hypot(gy, gx) <= diameter / 2
    inside_b = np.hypot(gy + a[0] - b[0], gx + a[1] - b[1]) <= diameter / 2
    return float((inside_a & inside_b).sum() / inside_a.sum())


@pytest.mark.parametrize(("scan", "overlap"), [("raster", 0.6), ("fermat", 0.6), ("spiral", 0.4)])
def test_overlap_is_as_requested(scan: str, overlap: float) -> None:
    sim = _sim(scan=scan, overlap=overlap, jitter_px=0.0, n_positions=49)
    truth = sim.truth()
    diameter = _support_diameter(truth["probe"])
    positions = truth["positions_px"]
    shared = []
    for k, p in enumerate(positions):
        distance = np.hypot(*(positions - p).T)
        distance[k] = np.inf
        shared.append(_shared_fraction(p, positions[np.argmin(distance)], diameter))
    assert np.median(shared) == pytest.approx(overlap, abs=0.03)
    # the support of a defocused zone plate is its geometric cone: defocus * wavelength / outer zone width
    geometric = 2e-4 * wavelength_m(1e4) / 50e-9 / truth["object_pixel_size_m"][1]
    assert diameter == pytest.approx(geometric, rel=0.3)


def test_position_jitter_has_the_requested_spread() -> None:
    still = _sim(jitter_px=0.0, n_positions=400).truth()["positions_px"]
    shaken = _sim(jitter_px=1.5, n_positions=400).truth()["positions_px"]
    moved = (shaken - shaken.mean(0)) - (still - still.mean(0))
    assert moved.std(axis=0) == pytest.approx([1.5, 1.5], rel=0.15)


def test_zone_plate_focus_is_a_spot_and_defocus_a_ring() -> None:
    pixel = (20e-9, 20e-9)
    focus = np.abs(zone_plate_probe((128, 128), pixel, 1e4, 50e-9, 0.4, 0.0)) ** 2
    ring = np.abs(zone_plate_probe((128, 128), pixel, 1e4, 50e-9, 0.4, 3e-4)) ** 2
    assert np.unravel_index(np.argmax(focus), focus.shape) == (64, 64)
    half = focus > focus.max() / 2
    assert 1 <= half.sum() <= 16  # about 1.2 outer-zone widths (60 nm = 3 px) across
    radius = 3e-4 * wavelength_m(1e4) / (2 * 50e-9) / pixel[0]  # geometric cone, 18.6 px
    r = np.hypot(*(np.indices(ring.shape) - 64))
    shadow, cone = ring[r < 0.3 * radius].mean(), ring[(r > 0.5 * radius) & (r < radius)].mean()
    assert shadow < 0.5 * cone  # the central stop's shadow (with an Arago spot on the axis)
    assert ring[r < 1.1 * radius].sum() > 0.8  # the defocused beam stays inside its geometric cone
    assert focus.sum() == pytest.approx(1.0) and ring.sum() == pytest.approx(1.0)


def test_frames_depend_only_on_seed_and_index() -> None:
    a, b, c = _sim(), _sim(), _sim(seed=12)
    index = a.streams["data"].start + 3
    assert np.array_equal(a.frame(index)[1], b.frame(index)[1])
    assert not np.array_equal(a.frame(index)[1], c.frame(index)[1])
    assert not np.array_equal(a.frame(index)[1], a.frame(index + 1)[1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"frame_shape": (64, 80)}, "frame_shape must be square"),
        ({"distance_m": 3.0}, "bright-field disc .* does not fit"),
        ({"defocus_m": 2e-3}, "defocused probe .* does not fit"),
        ({"overlap": 1.0}, "overlap"),
        ({"scan": "zigzag"}, "scan"),
    ],
)
def test_bad_parameters_say_what_to_change(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PtychoSimParams(**{**SMALL, **changes})


def test_counts_that_overflow_the_dtype_are_refused() -> None:
    with pytest.raises(LightpipeError, match="frame_dtype='uint32'"):
        _sim(photons_per_frame=1e9)
    frame = _sim(photons_per_frame=1e9, frame_dtype="uint32").frame(SMALL["darks"])[1]
    assert frame.dtype == np.uint32 and frame.max() > np.iinfo(np.uint16).max


def test_source_events_carry_positions_in_metres() -> None:
    cls = registry.load("sources", "ptycho_sim")
    params = cls.Params(**SMALL)
    reader = next(cls(params).scans())
    sim = PtychoSimulation(params)
    truth = sim.truth()
    meta = reader.scan.metadata
    assert meta["object_pixel_size_m"] == pytest.approx(list(truth["object_pixel_size_m"]))
    assert meta["object_pixel_size_m"][0] == pytest.approx(wavelength_m(1e4) * 1.0 / (64 * 75e-6))
    np.testing.assert_allclose(meta["positions_px"], truth["positions_px"])
    assert meta["energy_ev"] == 1e4 and meta["distance_m"] == 1.0 and meta["x_pixel_size_m"] == 75e-6
    events = reader.read(0, reader.scan.size)
    darks = [e for e in events if e.stream == "dark"]
    data = [e for e in events if e.stream == "data"]
    assert len(darks) == 6 and len(data) == 16
    assert all(np.isnan(e.fields["position_y_m"]) and np.isnan(e.fields["position_x_m"]) for e in darks)
    metres = np.array([[e.fields["position_y_m"], e.fields["position_x_m"]] for e in data])
    np.testing.assert_allclose(metres / np.array(truth["object_pixel_size_m"]), truth["positions_px"], rtol=1e-12)
    assert np.array_equal(data[2].fields["frame"], sim.frame(data[2].index)[1])
    # what goes to a worker is the parameters, not the sample and probe arrays
    assert len(pickle.dumps(reader)) < 20_000


def test_recorded_positions_carry_the_encoder_error() -> None:
    params = PtychoSimParams(**{**SMALL, "n_positions": 100, "position_error_px": 0.8})
    truth = PtychoSimulation(params).truth()
    reader = next(registry.load("sources", "ptycho_sim")(params).scans())
    indices = reader.scan.streams["data"]
    data = reader.read(indices.start, indices.stop)
    metres = np.array([[e.fields["position_y_m"], e.fields["position_x_m"]] for e in data])
    recorded = metres / np.array(truth["object_pixel_size_m"])
    np.testing.assert_allclose(recorded, truth["recorded_positions_px"], rtol=1e-12)
    np.testing.assert_allclose(reader.scan.metadata["positions_px"], recorded, rtol=1e-12)
    assert (recorded - truth["positions_px"]).std(axis=0) == pytest.approx([0.8, 0.8], rel=0.2)
    # the frames are made at the real positions, not the recorded ones
    exact = PtychoSimulation(params.model_copy(update={"position_error_px": 0.0}))
    assert np.array_equal(exact.frame(data[3].index)[1], data[3].fields["frame"])


@pytest.mark.dask
def test_simulated_scan_runs_the_same_on_local_and_dask(tmp_path: Path, dask_client: Any) -> None:
    doc = {
        "version": 1,
        "name": "ptycho-scalars",
        "source": {"use": "ptycho_sim", "params": {**SMALL, "frame_shape": [64, 64]}},
        "stages": {"s": {"use": "frame_scalars"}},
        "sinks": [{"use": "nexus", "fields": ["s.total", "source.position_x_m"]}],
    }
    totals = []
    for name, engine in (("local", LocalEngine(chunk_size=5)), ("dask", DaskEngine(client=dask_client, chunk_size=5))):
        with engine:
            report = engine.run(load_pipeline(doc), tmp_path / name).scans[0]
        assert report.ledger.written == 16 and not report.ledger.failed
        with h5py.File(report.files[0], "r", locking=False) as f:
            totals.append(f["entry/s/total"][()])
            x_m = f["entry/source/position_x_m"][()]
    sim = PtychoSimulation(PtychoSimParams(**SMALL))
    expected = [sim.frame(i)[1].astype(float).sum() for i in sim.streams["data"]]
    np.testing.assert_array_equal(totals[0], expected)
    np.testing.assert_array_equal(totals[1], expected)
    np.testing.assert_allclose(x_m, sim.positions_px[:, 1] * sim.object_pixel_size_m[1])
