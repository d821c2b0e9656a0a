"""XRD stages against raw pyFAI and the simulator's truth; bad calibrations, masks and pixels; conformance."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyFAI")

from lightpipe.core.errors import LightpipeError, PipelineError
from lightpipe.core.event import Scan
from lightpipe.core.pipeline import load_pipeline
from lightpipe.techniques.xrd import geometry
from lightpipe.techniques.xrd.geometry import read_poni
from lightpipe.techniques.xrd.simulate import PowderSimParams, PowderSimulation
from lightpipe.techniques.xrd.stages import AzimuthalIntegration, CakeIntegration
from lightpipe.testing import FRAME_SHAPE, check_stage, run_stage

#: A small generic detector (256 x 256 pixels of 172 um at 0.1 m, 0.7 angstrom): LaB6 rings from 9.7 to 17 deg.
SMALL = {"detector": None, "shape": (256, 256), "distance_m": 0.1, "frames": 3, "photons": 5000.0}


@pytest.fixture(scope="module")
def sim() -> PowderSimulation:
    return PowderSimulation(PowderSimParams(**SMALL))


@pytest.fixture(scope="module")
def poni(sim: PowderSimulation, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(sim.write_poni(tmp_path_factory.mktemp("xrd") / "small.poni"))


def _raw(poni: str) -> Any:
    """pyFAI's own integrator for the PONI file, as a user's script builds it."""
    import pyFAI

    return pyFAI.load(poni)


# -- quality ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1", "q_A^-1", "r_mm"])
def test_curve_equals_raw_pyfai(sim: PowderSimulation, poni: str, unit: str) -> None:
    frame = sim.frame(0)[1]
    [out] = run_stage(AzimuthalIntegration, {"poni": poni, "unit": unit, "npt": 800}, [frame])
    raw = _raw(poni).integrate1d(frame, 800, unit=unit, method=("bbox", "csr", "cython"), error_model="poisson")
    np.testing.assert_allclose(out["radial"], raw.radial, rtol=1e-12)
    assert np.max(np.abs(out["intensity"] - raw.intensity) / np.maximum(np.abs(raw.intensity), 1e-30)) <= 1e-6
    assert np.max(np.abs(out["intensity_errors"] - raw.sigma) / np.maximum(raw.sigma, 1e-30)) <= 1e-6
    assert (out["intensity"] > 0).sum() > 700  # a real curve, not zeros on both sides


def test_corrections_equal_raw_pyfai(sim: PowderSimulation, poni: str, tmp_path: Path) -> None:
    """Mask, dark and flat files, polarisation, no solid angle, a radial range and the azimuthal error model."""
    rng = np.random.default_rng(3)
    frame = sim.frame(1)[1]
    mask = rng.random(frame.shape) < 0.02
    dark = rng.uniform(0, 5, frame.shape).astype(np.float32)
    flat = rng.uniform(0.9, 1.1, frame.shape).astype(np.float32)
    for name, image in (("mask", mask.astype(np.uint8)), ("dark", dark), ("flat", flat)):
        np.save(tmp_path / f"{name}.npy", image)
    params = {"poni": poni, "npt": 500, "mask": str(tmp_path / "mask.npy"), "dark": str(tmp_path / "dark.npy"),
              "flat": str(tmp_path / "flat.npy"), "polarization_factor": 0.99, "correct_solid_angle": False,
              "radial_range": [9.0, 15.0], "error_model": "azimuthal", "method": ["full", "csr", "cython"]}
    [out] = run_stage(AzimuthalIntegration, params, [frame])
    raw = _raw(poni).integrate1d(frame, 500, unit="2th_deg", mask=mask, dark=dark, flat=flat,
                                 polarization_factor=0.99, correctSolidAngle=False, radial_range=(9.0, 15.0),
                                 error_model="azimuthal", method=("full", "csr", "cython"))
    assert out["radial"][0] >= 9.0 and out["radial"][-1] <= 15.0
    assert np.max(np.abs(out["intensity"] - raw.intensity) / np.maximum(np.abs(raw.intensity), 1e-30)) <= 1e-6
    np.testing.assert_allclose(out["intensity_errors"], raw.sigma, rtol=1e-6)


def test_rings_where_the_poni_and_d_spacings_put_them(sim: PowderSimulation, poni: str) -> None:
    frame = sim.frame(0)[1]
    for unit in ("2th_deg", "q_nm^-1"):
        [out] = run_stage(AzimuthalIntegration, {"poni": poni, "unit": unit, "npt": 1000}, [frame])
        radial, curve = out["radial"], out["intensity"]
        step = radial[1] - radial[0]
        rings = sim.ring_positions(unit)
        rings = rings[(rings > radial[0] + 5 * step) & (rings < radial[-1] - 5 * step)]
        # rings closer than 6 bins to a neighbour merge into one peak: check the separate ones
        separate = rings[np.diff(rings, prepend=-np.inf, append=np.inf)[:-1] > 6 * step]
        separate = separate[np.diff(np.append(separate, np.inf)) > 6 * step]
        assert len(separate) >= 3, rings
        for ring in separate:
            near = np.flatnonzero(np.abs(radial - ring) <= 3 * step)
            peak = radial[near[np.argmax(curve[near])]]
            assert abs(peak - ring) <= step, (unit, ring, peak)
            assert curve[near].max() > 3 * np.median(curve)  # a real peak above the background


def test_cake_equals_raw_integrate2d(sim: PowderSimulation, poni: str) -> None:
    frame = sim.frame(2)[1]
    [out] = run_stage(CakeIntegration, {"poni": poni, "npt_rad": 300, "npt_azim": 72, "unit": "q_nm^-1"}, [frame])
    raw = _raw(poni).integrate2d(frame, 300, 72, unit="q_nm^-1", method=("bbox", "csr", "cython"),
                                 error_model="poisson")
    assert out["cake"].shape == (72, 300) == raw.intensity.shape
    np.testing.assert_allclose(out["radial"], raw.radial, rtol=1e-12)
    np.testing.assert_allclose(out["azimuthal"], raw.azimuthal, rtol=1e-12)
    assert np.max(np.abs(out["cake"] - raw.intensity) / np.maximum(np.abs(raw.intensity), 1e-30)) <= 1e-6
    np.testing.assert_allclose(out["cake_errors"], raw.sigma, rtol=1e-6)


def test_no_error_model_gives_nan_errors(sim: PowderSimulation, poni: str) -> None:
    [out] = run_stage(AzimuthalIntegration, {"poni": poni, "npt": 100, "error_model": None}, [sim.frame(0)[1]])
    assert np.isnan(out["intensity_errors"]).all() and np.isfinite(out["intensity"]).all()


# -- one integrator per worker ----------------------------------------------------------------------


def test_the_integrator_is_built_once_not_per_frame(sim: PowderSimulation, poni: str) -> None:
    frames = [sim.frame(k)[1] for k in range(3)] * 4
    params = {"poni": poni, "npt": 321}  # bins no other test uses: a new integrator
    before = geometry.BUILT["count"]
    first = run_stage(AzimuthalIntegration, params, frames)
    assert geometry.BUILT["count"] == before + 1
    # a second scan (a fresh stage instance, set up again) on the same worker reuses it
    second = run_stage(AzimuthalIntegration, params, frames[:2])
    assert geometry.BUILT["count"] == before + 1
    np.testing.assert_array_equal(first[0]["intensity"], second[0]["intensity"])
    run_stage(AzimuthalIntegration, {**params, "npt": 322}, frames[:1])  # other bins: another integrator
    assert geometry.BUILT["count"] == before + 2


# -- bad input ----------------------------------------------------------------------------------------


def test_poni_of_another_detector_names_the_file_and_both_shapes(poni: str) -> None:
    frame = np.ones((100, 120), np.uint32)
    with pytest.raises(LightpipeError) as info:
        run_stage(AzimuthalIntegration, {"poni": poni}, [frame])
    message = str(info.value)
    assert poni in message and "256 x 256" in message and "100 x 120" in message and "pyFAI-calib2" in message


def test_pipeline_refuses_a_missing_or_unparsable_poni(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.poni"
    garbage.write_text("this is not a calibration\nColour: blue\n")
    unknown = tmp_path / "unknown_detector.poni"
    unknown.write_text("poni_version: 2\nDetector: NoSuchDetector\nDetector_config: {}\nDistance: 0.1\n"
                       "Poni1: 0.01\nPoni2: 0.01\n")
    for path, says in ((tmp_path / "missing.poni", "does not exist"), (garbage, "is not a PONI file: it has no "
                       "Distance, Poni1, Poni2"), (unknown, "pyFAI cannot read")):
        doc = {"version": 2, "name": "x", "source": {"use": "powder_sim", "params": {**SMALL, "shape": [256, 256]}},
               "stages": {"curve": {"use": "azimuthal_integration", "params": {"poni": str(path)}}},
               "sinks": [{"use": "nexus", "fields": ["curve.intensity"]}]}
        with pytest.raises(PipelineError) as info:
            load_pipeline(doc)
        assert str(path) in str(info.value) and says in str(info.value) and "pyFAI-calib2" in str(info.value)


def test_q_without_a_wavelength_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no_wavelength.poni"
    path.write_text("Detector: Pilatus1M\nDistance: 0.2\nPoni1: 0.09\nPoni2: 0.08\n")
    assert read_poni(path).wavelength_m is None
    with pytest.raises(ValueError, match="needs the wavelength.*no_wavelength.poni"):
        AzimuthalIntegration.Params(poni=str(path), unit="q_nm^-1")
    AzimuthalIntegration.Params(poni=str(path), unit="2th_deg")


def test_mask_of_the_wrong_shape_names_the_file(poni: str, tmp_path: Path) -> None:
    np.save(tmp_path / "mask.npy", np.zeros((10, 10), np.uint8))
    with pytest.raises(LightpipeError, match=r"the mask in '.*mask.npy' is 10 x 10 but the frames are 256 x 256"):
        run_stage(AzimuthalIntegration, {"poni": poni, "mask": str(tmp_path / "mask.npy")},
                  [np.ones((256, 256), np.uint32)])
    with pytest.raises(LightpipeError, match="mask file '.*nothere.npy' does not exist"):
        run_stage(AzimuthalIntegration, {"poni": poni, "mask": str(tmp_path / "nothere.npy")},
                  [np.ones((256, 256), np.uint32)])


def test_mask_from_an_hdf5_dataset(sim: PowderSimulation, poni: str, tmp_path: Path) -> None:
    import h5py

    mask = np.zeros((256, 256), np.uint32)
    mask[100:140, :] = 1  # an EIGER pixel_mask: non-zero bits mark bad pixels
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["entry/instrument/detector/pixel_mask"] = mask
    frame = sim.frame(0)[1]
    [out] = run_stage(AzimuthalIntegration, {"poni": poni, "npt": 300,
                                             "mask": f"{tmp_path / 'm.h5'}::/entry/instrument/detector/pixel_mask"},
                      [frame])
    raw = _raw(poni).integrate1d(frame, 300, unit="2th_deg", mask=mask, method=("bbox", "csr", "cython"),
                                 error_model="poisson")
    np.testing.assert_allclose(out["intensity"], raw.intensity, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["uint32", "int32", "float32"])
def test_saturated_negative_and_nan_pixels_are_left_out_of_their_frame(
        sim: PowderSimulation, poni: str, dtype: str) -> None:
    clean = sim.frame(0)[1].astype(dtype)
    bad = np.zeros(clean.shape, bool)
    bad[50:52, :] = True
    bad[:, 200] = True
    frame = clean.copy()
    if dtype == "uint32":
        frame[bad] = np.iinfo(np.uint32).max  # how DECTRIS detectors mark saturated and defective pixels
    elif dtype == "int32":
        frame[bad] = -1  # how a Pilatus marks gaps
    else:
        frame[50, :] = np.nan
        frame[51, :] = -3.0  # negative pixels in a frame that also holds NaN: both are found
        frame[:, 200] = np.inf
    [out] = run_stage(AzimuthalIntegration, {"poni": poni, "npt": 400}, [frame])
    raw = _raw(poni).integrate1d(clean, 400, unit="2th_deg", mask=bad, method=("bbox", "csr", "cython"),
                                 error_model="poisson")
    np.testing.assert_allclose(out["intensity"], raw.intensity, rtol=1e-5)
    np.testing.assert_allclose(out["intensity_errors"], raw.sigma, rtol=1e-5)


def test_min_and_max_valid_set_the_range(sim: PowderSimulation, poni: str) -> None:
    frame = sim.frame(0)[1]
    high = float(np.percentile(frame, 99))
    [out] = run_stage(AzimuthalIntegration, {"poni": poni, "npt": 300, "max_valid": high}, [frame])
    raw = _raw(poni).integrate1d(frame, 300, unit="2th_deg", mask=frame > high, method=("bbox", "csr", "cython"),
                                 error_model="poisson")
    np.testing.assert_allclose(out["intensity"], raw.intensity, rtol=1e-5)
    for dead in (np.full((256, 256), 2**32 - 1, np.uint32), np.full((256, 256), np.nan, np.float32)):
        with pytest.raises(ValueError, match="every pixel of this frame is left out"):
            run_stage(AzimuthalIntegration, {"poni": poni}, [dead])


def test_the_input_is_not_modified(sim: PowderSimulation, poni: str) -> None:
    frame = sim.frame(0)[1].astype(np.float32)
    frame[10, :] = np.nan
    frame[20, :] = -5
    saved = frame.copy()
    run_stage(AzimuthalIntegration, {"poni": poni, "npt": 100}, [frame])
    np.testing.assert_array_equal(frame, saved)


def test_without_a_poni_the_scan_metadata_must_carry_one(sim: PowderSimulation) -> None:
    frame = sim.frame(0)[1]
    with pytest.raises(LightpipeError, match="carries no calibration.*poni: calibration.poni"):
        run_stage(AzimuthalIntegration, None, [frame])
    scan = Scan("s", {"data": range(1)}, {"poni": sim.geometry.config})
    [out] = run_stage(AzimuthalIntegration, {"npt": 200}, [frame], scan)
    assert out["intensity"].shape == (200,)


def test_bad_parameters_are_refused(poni: str) -> None:
    with pytest.raises(ValueError, match="method 'fastest' is not one of"):
        AzimuthalIntegration.Params(poni=poni, method="fastest")
    with pytest.raises(ValueError, match="must be \\[splitting, algorithm, implementation\\]"):
        AzimuthalIntegration.Params(poni=poni, method=["full", "csr"])
    with pytest.raises(ValueError, match="radial_range \\[5.0, 1.0\\] is empty or reversed"):
        AzimuthalIntegration.Params(poni=poni, radial_range=[5, 1])
    with pytest.raises(ValueError, match="less than or equal to 1"):
        AzimuthalIntegration.Params(poni=poni, polarization_factor=1.5)


# -- the pattern and ROI stages -----------------------------------------------------------------------


def test_pattern_is_the_mean_with_the_error_of_a_mean() -> None:
    rng = np.random.default_rng(0)
    radial = np.linspace(1, 30, 50)
    curves = [rng.uniform(10, 20, 50) for _ in range(7)]
    sigmas = [rng.uniform(1, 2, 50) for _ in range(7)]
    events = [{"intensity": c, "intensity_errors": s, "radial": radial} for c, s in zip(curves, sigmas)]
    out = run_stage("xrd_pattern", None, events, chunk_size=3)
    np.testing.assert_allclose(out["intensity"], np.mean(curves, axis=0))
    np.testing.assert_allclose(out["intensity_errors"], np.sqrt(np.sum(np.square(sigmas), axis=0)) / 7)
    assert out["frames"] == 7 and np.array_equal(out["radial"], radial)


def test_roi_intensity_is_the_peak_area_above_a_linear_background() -> None:
    x = np.linspace(0, 20, 2001)
    curve = 5.0 + 0.2 * x + 300.0 * np.exp(-0.5 * ((x - 9.66) / 0.05) ** 2)
    [out] = run_stage("roi_intensity", {"range": [9.2, 10.1]}, [{"intensity": curve, "radial": x}])
    assert out["area"] == pytest.approx(300.0 * 0.05 * np.sqrt(2 * np.pi), rel=1e-3)
    assert out["position"] == pytest.approx(9.66, abs=1e-4)
    with pytest.raises(ValueError, match="covers 0 bin\\(s\\).*widen it"):
        run_stage("roi_intensity", {"range": [30, 31]}, [{"intensity": curve, "radial": x}])


# -- conformance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["azimuthal_integration", "azimuthal_integration_dark", "cake_integration",
                                  "cake_integration_dark", "xrd_pattern", "roi_intensity"])
def test_stages_conform(name: str, tmp_path: Path) -> None:
    """What tests/test_stage_conformance.py checks, with a PONI file of the generated frames' shape."""
    sim = PowderSimulation(PowderSimParams(detector=None, shape=(FRAME_SHAPE[0], FRAME_SHAPE[1]), distance_m=0.01))
    params = {"poni": str(sim.write_poni(tmp_path / "conformance.poni"))}
    if name in ("xrd_pattern",):
        params = {}
    if name == "roi_intensity":
        params = {"range": [0, 2000]}
    check_stage(name, params)
