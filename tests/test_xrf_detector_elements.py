"""XRF detectors of several elements: dead time and calibration per element, recovered, checked with PyMca, refused."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("PyMca5")
pytest.importorskip("xraylib")

from PyMca5.PyMcaIO import ConfigDict  # noqa: E402
from PyMca5.PyMcaPhysics.xrf import FastXRFLinearFit  # noqa: E402

from lightpipe import load_pipeline  # noqa: E402
from lightpipe.core.errors import PipelineError  # noqa: E402
from lightpipe.core.event import Scan  # noqa: E402
from lightpipe.engines.local import LocalEngine  # noqa: E402
from lightpipe.techniques.xrf.config import XrfConfigError  # noqa: E402
from lightpipe.techniques.xrf.linear_fit import XrfModel  # noqa: E402
from lightpipe.techniques.xrf.simulate import XrfSimParams, XrfSimulation  # noqa: E402
from lightpipe.techniques.xrf.stages import XrfFit, XrfNormalise  # noqa: E402
from lightpipe.testing import run_stage  # noqa: E402

PIPELINE = Path(__file__).parents[1] / "pipelines" / "xrf-maps.yaml"
#: A 4-element detector: unequal solid angles and dead times per count, so the elements' dead-time fractions
#: differ (about 0.5, 0.1, 0.05, 0.01), and calibrations 3 to 6 channels apart.
ELEMENTS: dict[str, Any] = {"detectors": 4, "element_shares": [4.0, 3.0, 2.0, 1.0],
                            "element_dead_times_s": [2e-6, 3e-7, 2e-7, 1e-7]}
OFFSETS_KEV = [0.0, 0.03, -0.04, 0.06]


def simulation(offsets: bool, **params: Any) -> XrfSimulation:
    return XrfSimulation(XrfSimParams(**{"map_shape": (8, 8), "continuum": 0.0, **ELEMENTS,
                                         **({"zero_offsets_kev": OFFSETS_KEV} if offsets else {}), **params}))


def write_configs(sim: XrfSimulation, folder: Path, weight: int = 0) -> list[str]:
    """One PyMca configuration per detector element, each with its own calibration."""
    paths = []
    for d in range(sim.params.detectors):
        config = ConfigDict.ConfigDict()
        config.update(sim.fit_config(d))
        config["fit"]["fitweight"] = weight
        config.write(str(folder / f"element{d}.cfg"))
        paths.append(str(folder / f"element{d}.cfg"))
    return paths


def z_scores(sim: XrfSimulation, element: str, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Residuals of each point's area of ``element`` against the truth, in standard deviations.

    Their mean is within 3 standard errors (3 / sqrt(points)) of 0 where the areas are right; their spread
    is below 1 where few counts are spread over many channels (the sigmas count a channel of no counts as one).
    """
    truth = sim.truth()[element]
    return (areas - [truth[sim.cell(i)] for i in range(sim.points)]) / sigmas


def fit_apart(sim: XrfSimulation, configs: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every point's spectra fitted element by element, each with its configuration (or the one given)."""
    spectra = np.stack([sim.spectrum(i) for i in range(sim.points)])
    events = [{"spectrum": s, "dead_time": sim.dead_time(i)} for i, s in enumerate(spectra)]
    params = {"config": configs if len(configs) > 1 else configs[0], "detectors": "separate", "negative_areas": "keep"}
    out = run_stage(XrfFit, params, events)
    assert isinstance(out, list)
    groups = list(XrfModel.from_file(configs[0], sim.params.channels).groups)
    return groups, np.stack([o["areas"] for o in out]), spectra


def test_per_element_dead_times_and_calibrations_recover_the_composition(tmp_path: Path) -> None:
    sim = simulation(offsets=True)
    configs = write_configs(sim, tmp_path)
    groups, areas, spectra = fit_apart(sim, configs)
    dead = np.stack([sim.dead_time(i) for i in range(sim.points)])
    assert dead.shape == (sim.points, 4) and dead[:, 0].min() > 0.4 and dead[:, 3].max() < 0.03
    flux = np.array([sim.params.i0_reference / sim.i0(i) for i in range(sim.points)])
    normalise = XrfNormalise(XrfNormalise.Params(i0_reference=sim.params.i0_reference))
    normalise.setup(Scan(name="s", streams={"data": range(sim.points)}, metadata={}))
    normalised = np.stack([normalise.process(areas=a, sigmas=a, i0=sim.i0(i), dead_time=dead[i])["areas"]
                           for i, a in enumerate(areas)])
    # each element's areas, the noise of its own counts, scaled as its areas are
    models = [XrfModel.from_file(c, sim.params.channels) for c in configs]
    scale = flux[:, None] / (1 - dead)
    for element in sim.params.elements:
        j = groups.index(f"{element} K")
        variance = sum((m.poisson_sigmas(spectra[:, d])[:, m.peaks.index(f"{element} K")] * scale[:, d]) ** 2
                       for d, m in enumerate(models))
        sigma = np.sqrt(variance)
        z = z_scores(sim, element, normalised[:, :, j].sum(axis=1), sigma)
        assert abs(z.mean()) < 3 / np.sqrt(sim.points) and 0.6 < z.std() < 1.3, (element, z.mean(), z.std())
        # one dead time for the whole detector (the elements' mean) misses the composition by over 4 standard
        # errors of the mean, none at all by more
        global_dead = z_scores(sim, element, (areas[:, :, j] * flux[:, None]).sum(axis=1) / (1 - dead.mean(axis=1)),
                               sigma)
        assert global_dead.mean() < -4 / np.sqrt(sim.points), (element, global_dead.mean())
        skipped = z_scores(sim, element, (areas[:, :, j] * flux[:, None]).sum(axis=1), sigma)
        assert skipped.mean() < 2 * global_dead.mean(), (element, skipped.mean())
    # every element fitted with the first element's calibration: the shifted peaks are fitted wrong
    _, one_config, _ = fit_apart(sim, configs[:1])
    fe = groups.index("Fe K")
    shifted = np.abs(one_config[:, 1:, fe] / areas[:, 1:, fe] - 1).mean()
    assert shifted > 0.05, shifted


def test_summed_elements_are_each_corrected_before_the_sum(tmp_path: Path) -> None:
    sim = simulation(offsets=False)
    config = write_configs(sim, tmp_path)[0]
    model = XrfModel.from_file(config, sim.params.channels)
    spectra = np.stack([sim.spectrum(i) for i in range(sim.points)])
    dead = np.stack([sim.dead_time(i) for i in range(sim.points)])
    out = run_stage(XrfFit, {"config": config, "negative_areas": "keep"},
                    [{"spectrum": s, "dead_time": dead[i]} for i, s in enumerate(spectra)])
    assert isinstance(out, list)
    assert all(o["dead_time"] == 0.0 for o in out)  # the areas carry no dead time: xrf_normalise leaves them
    flux = np.array([sim.params.i0_reference / sim.i0(i) for i in range(sim.points)])
    raw_sum = model.fit(spectra.sum(axis=1), "keep").areas
    for element in sim.params.elements:
        j = model.peaks.index(f"{element} K")
        areas = np.array([o["areas"][j] for o in out]) * flux
        variance = sum(model.poisson_sigmas(spectra[:, d])[:, j] ** 2 / (1 - dead[:, d]) ** 2 for d in range(4))
        sigma = np.sqrt(variance) * flux
        z = z_scores(sim, element, areas, sigma)
        assert abs(z.mean()) < 3 / np.sqrt(sim.points) and 0.6 < z.std() < 1.3, (element, z.mean(), z.std())
        global_dead = z_scores(sim, element, raw_sum[:, j] * flux / (1 - dead.mean(axis=1)), sigma)
        assert global_dead.mean() < -4 / np.sqrt(sim.points), (element, global_dead.mean())


@pytest.mark.parametrize("weight", [0, 1], ids=["no-weights", "poisson-weights"])
def test_one_dead_time_gives_the_same_areas_before_or_after_the_sum(weight: int, tmp_path: Path) -> None:
    sim = simulation(offsets=False, map_shape=(2, 3))
    config = write_configs(sim, tmp_path, weight)[0]
    fit, normalise = XrfFit(XrfFit.Params(config=config)), XrfNormalise()
    for point in range(sim.points):
        spectrum = sim.spectrum(point)
        before = fit.process(spectrum=spectrum, dead_time=np.full(4, 0.3))
        after = fit.process(spectrum=spectrum, dead_time=0.3)
        assert after["dead_time"] == 0.3 and before["dead_time"] == 0.0
        one = normalise.process(areas=before["areas"], sigmas=before["sigmas"], i0=1.0, dead_time=before["dead_time"])
        two = normalise.process(areas=after["areas"], sigmas=after["sigmas"], i0=1.0, dead_time=after["dead_time"])
        fitted = np.isfinite(one["areas"])
        np.testing.assert_allclose(one["areas"][fitted], two["areas"][fitted], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(one["sigmas"][fitted], two["sigmas"][fitted], rtol=1e-9)


@pytest.mark.parametrize("weight", [0, 1], ids=["no-weights", "poisson-weights"])
def test_each_element_fits_as_pymca_with_its_configuration(weight: int, tmp_path: Path) -> None:
    sim = simulation(offsets=True, map_shape=(4, 5), detectors=3, element_shares=[], element_dead_times_s=[],
                     zero_offsets_kev=OFFSETS_KEV[:3])
    configs = write_configs(sim, tmp_path, weight)
    groups, areas, spectra = fit_apart(sim, configs)
    logging.getLogger("PyMca5").setLevel(logging.ERROR)
    for d, path in enumerate(configs):
        config = ConfigDict.ConfigDict()
        config.read(path)
        out = FastXRFLinearFit.FastXRFLinearFit().fitMultipleSpectra(
            y=spectra[:, d].astype(np.float64), configuration=copy.deepcopy(config), refit=0, save=False)
        names = list(out.labels("parameters"))
        reference, sigmas = np.asarray(out["parameters"]).T, np.asarray(out["uncertainties"]).T
        ours = areas[:, d, [groups.index(n) for n in names]]
        strong = reference > 3 * sigmas
        assert strong.mean() > 0.5
        np.testing.assert_allclose(ours[strong], reference[strong], rtol=1e-3)
    # the calibrations differ: so do the fits of the same spectra with another element's configuration
    assert not np.allclose(areas[:, 0], areas[:, 1], rtol=0.01, equal_nan=True)


@pytest.mark.parametrize("offsets", [False, True], ids=["summed", "separate-calibrations"])
def test_pipeline_maps_of_a_four_element_detector(offsets: bool, tmp_path: Path) -> None:
    doc = dict(load_pipeline(PIPELINE).document)
    params = {"name": "xrf_four", "map_shape": [3, 4], "continuum": 0.0, **ELEMENTS,
              **({"zero_offsets_kev": OFFSETS_KEV} if offsets else {})}
    doc["source"] = {"use": "xrf_sim", "params": params}
    stages = copy.deepcopy(doc["stages"])
    if offsets:
        stages["fit"]["params"] = {"detectors": "separate"}
    doc["stages"] = stages
    with LocalEngine() as engine:
        (report,) = engine.run(load_pipeline(doc), tmp_path).scans
    assert report.ledger.failed == []
    sim = XrfSimulation(XrfSimParams(**{**params, "map_shape": (3, 4)}))
    truth = sim.truth()["Fe"]
    with h5py.File(tmp_path / "xrf_four.nxs") as f:
        fe = f["entry/Fe_K/map"][()]
        summed = f["entry/sum_spectrum/spectrum"][()]
        fit = f["entry/sum_spectrum/fit"][()]
        energy = f["entry/sum_spectrum/energy"][()]
    assert abs(np.mean(fe / truth) - 1) < 0.02, np.mean(fe / truth)
    lines = (energy > 5.0) & (energy < 9.0)
    assert abs(fit[lines].sum() / summed[lines].sum() - 1) < 0.01


def test_configurations_of_other_peak_groups_are_refused(tmp_path: Path) -> None:
    fe_zn = XrfSimulation(XrfSimParams(elements={"Fe": 1000.0, "Zn": 500.0})).write_config(tmp_path / "fe_zn.cfg")
    fe_cu = XrfSimulation(XrfSimParams(elements={"Fe": 1000.0, "Cu": 500.0})).write_config(tmp_path / "fe_cu.cfg")
    message = f"{fe_cu} lacks Zn K and adds Cu K against {fe_zn}"
    with pytest.raises(ValueError, match=message):
        XrfFit.Params(config=[str(fe_zn), str(fe_cu)], detectors="separate")
    doc = {"version": 2, "name": "bad", "source": {"use": "xrf_sim"},
           "stages": {"fit": {"use": "xrf_fit", "params": {"config": [str(fe_zn), str(fe_cu)],
                                                           "detectors": "separate"}}},
           "sinks": [{"use": "nexus", "fields": ["fit.areas"]}]}
    with pytest.raises(PipelineError, match="lacks Zn K"):
        load_pipeline(doc)
    with pytest.raises(ValueError, match="needs 'detectors: separate'"):
        XrfFit.Params(config=[str(fe_zn), str(fe_zn)])
    scan = Scan(name="s", streams={"data": range(1)},
                metadata={"pymca_config": json.dumps([XrfSimulation(XrfSimParams()).fit_config()] * 2)})
    with pytest.raises(XrfConfigError, match="configuration per detector element: set the fit's 'detectors: sep"):
        XrfFit().setup(scan)


def test_bad_dead_times_fail_their_point_only(tmp_path: Path) -> None:
    sim = simulation(offsets=True, map_shape=(1, 2))
    configs = write_configs(sim, tmp_path)
    fit = XrfFit(XrfFit.Params(config=configs, detectors="separate"))
    summing = XrfFit(XrfFit.Params(config=configs[0]))
    spectrum, dead = sim.spectrum(0), sim.dead_time(0)
    with pytest.raises(ValueError, match=r"dead-time fractions of shape \(3,\) for 4 detector elements"):
        fit.process(spectrum=spectrum, dead_time=dead[:3])
    with pytest.raises(ValueError, match=r"dead-time fractions of shape \(4,\) for one spectrum"):
        summing.process(spectrum=spectrum[0], dead_time=dead)
    with pytest.raises(ValueError, match="dead-time fraction 1.2 is outside"):
        summing.process(spectrum=spectrum, dead_time=[0.1, 1.2, 0.1, 0.1])
    with pytest.raises(ValueError, match="4 detector elements, but 3 configurations"):
        XrfFit(XrfFit.Params(config=configs[:3], detectors="separate")).process(spectrum=spectrum, dead_time=dead)
    normalise = XrfNormalise()
    summed = summing.process(spectrum=spectrum, dead_time=0.1)
    with pytest.raises(ValueError, match=r"connect this input to the fit's dead_time \(fit.dead_time\)"):
        normalise.process(areas=summed["areas"], sigmas=summed["sigmas"], i0=1.0, dead_time=dead)
    apart = fit.process(spectrum=spectrum, dead_time=dead)
    with pytest.raises(ValueError, match=r"shape \(2,\) for 4 detector elements"):
        normalise.process(areas=apart["areas"], sigmas=apart["sigmas"], i0=1.0, dead_time=dead[:2])
    with pytest.raises(ValueError, match="-0.1 is outside"):
        normalise.process(areas=apart["areas"], sigmas=apart["sigmas"], i0=1.0, dead_time=[0.1, -0.1, 0.1, 0.1])
    # the next point goes on: each element's areas by its own live fraction
    good = normalise.process(areas=apart["areas"], sigmas=apart["sigmas"], i0=1.0, dead_time=apart["dead_time"])
    np.testing.assert_allclose(good["areas"], apart["areas"] / (1 - dead)[:, None])
