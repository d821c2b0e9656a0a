"""XRF fitting: the same areas as PyMca's FastXRFLinearFit, the simulated composition recovered, bad input refused."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("PyMca5")
pytest.importorskip("xraylib")

from PyMca5 import PyMcaDataDir  # noqa: E402
from PyMca5.PyMcaIO import ConfigDict, specfilewrapper  # noqa: E402
from PyMca5.PyMcaPhysics.xrf import FastXRFLinearFit  # noqa: E402

from lightpipe import load_pipeline  # noqa: E402
from lightpipe.core.errors import PipelineError  # noqa: E402
from lightpipe.engines.local import LocalEngine  # noqa: E402
from lightpipe.techniques.xrf.config import XrfConfigError, from_dict, read_config  # noqa: E402
from lightpipe.techniques.xrf.linear_fit import XrfModel, peak_groups  # noqa: E402
from lightpipe.techniques.xrf.simulate import XrfSimParams, XrfSimulation  # noqa: E402
from lightpipe.techniques.xrf.stages import XrfFit, XrfMap, XrfNormalise, XrfSumSpectrum  # noqa: E402
from lightpipe.testing import check_stage, example_inputs, run_stage  # noqa: E402

STEEL_CFG = Path(PyMcaDataDir.PYMCA_DATA_DIR) / "Steel.cfg"
STEEL_SPE = Path(PyMcaDataDir.PYMCA_DATA_DIR) / "Steel.spe"


def steel(snip: bool = True, weight: int | None = None) -> Any:
    """PyMca's shipped steel configuration; its strip continuum swapped for SNIP, which PyMca's fast fit needs."""
    config = ConfigDict.ConfigDict()
    config.read(str(STEEL_CFG))
    if snip:
        config["fit"]["stripalgorithm"] = 1
    if weight is not None:
        config["fit"]["fitweight"] = weight
    return config


def steel_spectrum() -> np.ndarray:
    return np.asarray(specfilewrapper.Specfile(str(STEEL_SPE))[0].mca(1), dtype=np.float64)


def pymca(spectra: np.ndarray, config: Any, refit: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    logging.getLogger("PyMca5").setLevel(logging.ERROR)  # it warns of each area it forces to zero
    out = FastXRFLinearFit.FastXRFLinearFit().fitMultipleSpectra(y=spectra, configuration=copy.deepcopy(config),
                                                                refit=int(refit), save=False)
    return list(out.labels("parameters")), np.asarray(out["parameters"]).T, np.asarray(out["uncertainties"]).T


@pytest.mark.parametrize("weight", [1, 0], ids=["poisson-weights", "no-weights"])
@pytest.mark.parametrize("refit", [False, True], ids=["no-refit", "refit"])
def test_areas_are_pymca_fast_fit_areas(weight: int, refit: bool) -> None:
    rng = np.random.default_rng(4)
    # the steel spectrum at 2 to 50 % of its counts: weak peaks go negative, which the refit handles
    spectra = rng.poisson(steel_spectrum() * rng.uniform(0.02, 0.5, (300, 1))).astype(np.float64)
    config = steel(weight=weight)
    names, areas, sigmas = pymca(spectra, config, refit)
    model = XrfModel(from_dict(config), spectra.shape[1])
    result = model.fit(spectra, negative="pymca" if refit else "keep")
    assert model.peaks == names
    strong = areas > 3 * sigmas
    assert strong.mean() > 0.5
    np.testing.assert_allclose(result.areas[strong], areas[strong], rtol=1e-3)
    np.testing.assert_allclose(result.sigmas[strong], sigmas[strong], rtol=1e-3)
    if refit:
        assert (result.areas >= 0).all() and (areas >= 0).all()


def test_the_real_steel_spectrum_fits_as_in_pymca() -> None:
    spectrum = steel_spectrum()
    names, areas, sigmas = pymca(spectrum[None], steel(), refit=True)
    [out] = run_stage(XrfFit, {"config": str(_steel_file())}, [{"spectrum": spectrum, "dead_time": 0.0}])
    groups = peak_groups(str(_steel_file()))
    for name, area, sigma in zip(names, areas[0], sigmas[0]):
        if area > 3 * sigma:
            assert out["areas"][groups.index(name)] == pytest.approx(area, rel=1e-3), name
    assert out["areas"][groups.index("Fe Ka")] > 1e5


_STEEL: dict[str, Path] = {}


def _steel_file() -> Path:
    """Steel.cfg with SNIP, written once into a temporary folder."""
    if "path" not in _STEEL:
        import tempfile

        path = Path(tempfile.mkdtemp()) / "steel_snip.cfg"
        steel().write(str(path))
        _STEEL["path"] = path
    return _STEEL["path"]


def test_strip_continuum_of_the_shipped_configuration() -> None:
    spectrum = steel_spectrum()
    strip = XrfModel(read_config(STEEL_CFG), len(spectrum))  # as shipped: strip, which FastXRFLinearFit refuses
    assert strip.config.background == "strip"
    snip = XrfModel(from_dict(steel()), len(spectrum))
    fe = strip.peaks.index("Fe Ka")
    a, b = strip.fit(spectrum).areas[0, fe], snip.fit(spectrum).areas[0, fe]
    assert a == pytest.approx(b, rel=0.05)


def test_simulated_composition_is_recovered_within_the_noise() -> None:
    sim = XrfSimulation(XrfSimParams(map_shape=(12, 12), continuum=0.0))
    model = XrfModel(from_dict(sim.fit_config()), sim.params.channels)
    spectra = np.stack([sim.spectrum(i) for i in range(sim.points)])
    result = model.fit(spectra, "keep")
    scale = np.array([sim.params.i0_reference / sim.i0(i) / (1 - sim.dead_time(i)) for i in range(sim.points)])
    sigma = model.poisson_sigmas(spectra) * scale[:, None]
    truth = sim.truth()
    for element, area in truth.items():
        j = model.peaks.index(f"{element} K")
        z = (result.areas[:, j] * scale - [area[sim.cell(i)] for i in range(sim.points)]) / sigma[:, j]
        assert abs(z.mean()) < 0.3 and 0.8 < z.std() < 1.25, (element, z.mean(), z.std())


def test_pipeline_maps_are_the_fit_normalised_on_the_grid(tmp_path: Path) -> None:
    doc = dict(load_pipeline(Path(__file__).parents[1] / "pipelines" / "xrf-maps.yaml").document)
    doc["source"] = {"use": "xrf_sim", "params": {"name": "xrf_small", "map_shape": [4, 5], "snake": True}}
    with LocalEngine() as engine:
        (report,) = engine.run(load_pipeline(doc), tmp_path).scans
    assert report.ledger.failed == []
    sim = XrfSimulation(XrfSimParams(map_shape=(4, 5), snake=True))
    model = XrfModel(from_dict(sim.fit_config()), sim.params.channels)
    spectra = np.stack([sim.spectrum(i) for i in range(sim.points)])
    areas = model.fit(spectra).areas
    scale = np.array([sim.params.i0_reference / sim.i0(i) / (1 - sim.dead_time(i)) for i in range(sim.points)])
    with h5py.File(tmp_path / "xrf_small.nxs") as f:
        fe = f["entry/Fe_K/map"][()]
        assert f["entry"].attrs["default"] == "sum_spectrum"
        assert f["entry/Fe_K"].attrs["signal"] == "map" and f["entry/Fe_K/x"].attrs["units"] == "m"
        summed = f["entry/sum_spectrum/spectrum"][()]
        fit = f["entry/sum_spectrum/fit"][()]
        energy = f["entry/sum_spectrum/energy"][()]
    for i in range(sim.points):  # the snake's backward rows land in their own cells
        assert fe[sim.cell(i)] == pytest.approx(areas[i, model.peaks.index("Fe K")] * scale[i], rel=1e-9)
    np.testing.assert_array_equal(summed, spectra.sum(axis=0))
    lines = (energy > 5.0) & (energy < 9.0)  # Cr, Fe, Ni K (PyMca's Compton shape is not the simulator's)
    assert abs(fit[lines].sum() / summed[lines].sum() - 1) < 0.01


def test_stages_conform(tmp_path: Path) -> None:
    # the conformance check feeds 24 x 32 random frames: a detector of 32 channels of 0.5 keV
    cfg = XrfSimulation(XrfSimParams(channels=32, gain_kev=0.5, noise_kev=0.3)).write_config(tmp_path / "c.cfg")
    fit_inputs = [{**event, "dead_time": 0.2} for event in example_inputs(XrfFit, 3)]
    check_stage(XrfFit, {"config": str(cfg)}, inputs=fit_inputs)
    check_stage(XrfSumSpectrum, {"config": str(cfg)})
    check_stage(XrfMap, {"config": str(cfg), "peak": 0})
    rng = np.random.default_rng(1)
    check_stage(XrfNormalise, inputs=[{"areas": rng.random(7), "sigmas": rng.random(7), "i0": 1e5 * (1 + rng.random()),
                                       "dead_time": 0.1 * rng.random()} for _ in range(3)])


@pytest.mark.parametrize(("peaks", "message"), [
    ({"Xx": "K"}, "'Xx', which is not a chemical element"),
    ({"Fe": "Q"}, "Fe = 'Q' is not a line family"),
    ({"Ca": "M"}, "Ca has no M lines"),
    ({"Pb": "K"}, "PyMca cannot build the fit model"),  # Pb K is not excited at 16 keV
])
def test_configuration_naming_an_unknown_element_or_line_is_refused(peaks: dict[str, str], message: str,
                                                                     tmp_path: Path) -> None:
    config = steel()
    config["peaks"] = peaks
    path = tmp_path / "bad.cfg"
    config.write(str(path))
    with pytest.raises(XrfConfigError, match=message):
        peak_groups(str(path))
    doc = {"version": 2, "name": "bad", "source": {"use": "xrf_sim"},
           "stages": {"fit": {"use": "xrf_fit", "params": {"config": str(path)}}},
           "sinks": [{"use": "nexus", "fields": ["fit.areas"]}]}
    with pytest.raises(PipelineError, match="config"):
        load_pipeline(doc)


def test_unknown_peak_of_a_map_is_refused_when_the_pipeline_loads() -> None:
    with pytest.raises(ValueError, match="has no peak group 'Zn K'; its groups are V K, Cr K"):
        XrfMap.Params(config=str(_steel_file()), peak="Zn K")


def test_bad_spectra_fail_their_point_only() -> None:
    params = {"config": str(_steel_file()), "channels": 2048}
    good = steel_spectrum()
    negative = good.copy()
    negative[300] = -5
    fit = XrfFit(XrfFit.Params(**params))
    from lightpipe.core.event import Scan

    fit.setup(Scan(name="s", streams={"data": range(3)}, metadata={}))
    with pytest.raises(ValueError, match="spectrum of 1024 channels where the scan's have 2048"):
        fit.process(spectrum=good[:1024], dead_time=0.1)
    with pytest.raises(ValueError, match="negative counts"):
        fit.process(spectrum=negative, dead_time=0.1)
    # the stage goes on with the next point
    assert np.isfinite(fit.process(spectrum=good, dead_time=0.1)["areas"]).any()
    normalise = XrfNormalise()
    with pytest.raises(ValueError, match="beam off"):
        normalise.process(areas=np.ones(3), sigmas=np.ones(3), i0=0.0, dead_time=0.1)
    with pytest.raises(ValueError, match="outside"):
        normalise.process(areas=np.ones(3), sigmas=np.ones(3), i0=1.0, dead_time=1.5)


def test_separate_detector_elements_add_up_in_the_map() -> None:
    sim = XrfSimulation(XrfSimParams(map_shape=(2, 2), detectors=3))
    cfg = sim.fit_config()
    spectra = [sim.spectrum(i) for i in range(4)]
    assert spectra[0].shape == (3, 2048)
    model = XrfModel(from_dict(cfg), 2048)
    apart = model.fit(spectra[0]).areas.sum(axis=0)
    together = model.fit(spectra[0].sum(axis=0)).areas[0]
    fe = model.peaks.index("Fe K")
    assert apart[fe] == pytest.approx(together[fe], rel=0.02)
