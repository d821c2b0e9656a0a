"""Every registered stage passes ``lightpipe.testing.check_stage``; ``run_stage`` runs stages as the engine does."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lightpipe.core import registry
from lightpipe.core.errors import StageError
from lightpipe.core.event import Event
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, SolverStage, StageParams, param
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import FrameSimParams, SimulatedReader
from lightpipe.techniques.xrd.simulate import PowderSimParams, PowderSimulation
from lightpipe.techniques.xrf.simulate import XrfSimParams, XrfSimulation
from lightpipe.testing import FRAME_SHAPE, check_stage, example_inputs, run_stage

#: Stand for the paths of a PONI file of a flat detector of FRAME_SHAPE pixels 1 cm from the sample, and of a
#: PyMca fit configuration of the XRF simulator's 32-channel spectra.
PONI = "<poni file>"
XRF_CFG = "<xrf configuration>"
#: Parameters for stages that have required parameters; generated frames are FRAME_SHAPE (24, 32).
STAGE_PARAMS: dict[str, dict[str, Any]] = {
    "crop": {"y": [2, 20], "x": [3, 30]},
    "roi_sum": {"y": [2, 20], "x": [3, 30]},
    "fft_downsample": {"shape": [12, 16]},
    "command": {"command": ["cp", "{input}", "{output}"]},
    "overscan_offset": {"columns": [0, 2]},
    "centred_crop": {"shape": [8, 8]},
    # generated scans carry no geometry: positions of 1 to 1000 "m" become 0.01 to 10 object pixels
    "ptycho_distributed": {"object_pixel_size_m": [100.0, 100.0], "chain": "DM:4, ML:2", "merge_every": 2},
    "ptycho_reconstruction": {"object_pixel_size_m": [100.0, 100.0], "chain": "DM:4, ML:2"},
    "azimuthal_integration": {"poni": PONI},
    "azimuthal_integration_dark": {"poni": PONI},
    "cake_integration": {"poni": PONI},
    "cake_integration_dark": {"poni": PONI},
    "roi_intensity": {"range": [0, 2000]},
    # generated angles have no pair 180 degrees apart: the centre is given
    "rotation_centre": {"centre_px": 10.0},
    "tomo_reconstruction": {"centre_px": 15.5},
    "xrf_fit": {"config": XRF_CFG},
    "xrf_sum_spectrum": {"config": XRF_CFG},
    "xrf_map": {"config": XRF_CFG, "peak": 0},
    "dispersion_spots": {"max_strong_fraction": 1.0},  # random frames are strong everywhere
    "dpc_phase": {"distance_m": 2.0, "pixel_size_m": 7.5e-5, "energy_ev": 1.0e4},
}


def _with_dead_times(stage: str, seed: int) -> Callable[[], list[dict[str, Any]]]:
    """Random inputs of ``stage``, each with a dead-time fraction in [0, 1) as a detector gives."""

    def inputs() -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        return [{**event, "dead_time": rng.uniform(0.0, 0.5)} for event in example_inputs(stage, 6, seed=seed)]

    return inputs


#: Inputs for stages whose inputs have a range that random values do not respect.
STAGE_INPUTS: dict[str, Any] = {"xrf_normalise": _with_dead_times("xrf_normalise", 1),
                                "xrf_fit": _with_dead_times("xrf_fit", 2)}

STAGES = registry.load_all("stages")


def test_every_registered_stage_imports() -> None:
    assert registry.broken("stages") == {}, "stage plugins failed to import; `lightpipe stages` shows why"
    assert set(STAGES) == set(registry.names("stages"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The PONI and XRF configuration files the placeholders stand for."""
    folder = tmp_path_factory.mktemp("conformance")
    powder = PowderSimulation(PowderSimParams(detector=None, shape=FRAME_SHAPE, distance_m=0.01))
    xrf = XrfSimulation(XrfSimParams(channels=32, gain_kev=0.5, noise_kev=0.3))
    return {PONI: str(powder.write_poni(folder / "conformance.poni")),
            XRF_CFG: str(xrf.write_config(folder / "conformance.cfg"))}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_conforms(name: str, files: dict[str, str]) -> None:
    cls = STAGES[name]
    assert cls.name == name, f"stage registered as {name!r} calls itself {cls.name!r}; make them agree"
    required = [n for n, f in cls.Params.model_fields.items() if f.is_required()]
    if required and name not in STAGE_PARAMS:
        pytest.fail(f"stage {name!r} has required parameters {required}: add an entry for it to STAGE_PARAMS "
                    "in tests/test_stage_conformance.py (generated frames are 24 x 32)")
    params = {k: files.get(v, v) if isinstance(v, str) else v for k, v in STAGE_PARAMS.get(name, {}).items()}
    check_stage(cls, params if name in STAGE_PARAMS else None,
                inputs=STAGE_INPUTS[name]() if name in STAGE_INPUTS else None)


# -- check_stage fails where it should ------------------------------------------------------------


class _Good(MapStage):
    """Double the frame."""

    name = "double"
    inputs = {"frame": Port(ndim=2, dtype="number")}
    outputs = {"frame": Port(ndim=2, dtype="float")}

    def process(self, frame: Any) -> dict[str, Any]:
        return {"frame": frame * 2.0}


class _Undeclared(_Good):
    """Double the frame and return a stray output."""

    def process(self, frame: Any) -> dict[str, Any]:
        return {"frame": frame * 2.0, "total": float(frame.sum())}


class _WrongDim(_Good):
    """Return a 1-D profile where a frame is declared."""

    def process(self, frame: Any) -> dict[str, Any]:
        return {"frame": (frame * 2.0).sum(axis=0)}


class _InPlace(_Good):
    """Double the frame in place."""

    def process(self, frame: Any) -> dict[str, Any]:
        frame *= 2
        return {"frame": frame.astype(np.float64)}


class _Counter(_Good):
    """Add the number of events seen so far."""

    def process(self, frame: Any) -> dict[str, Any]:
        self.seen = getattr(self, "seen", 0) + 1
        return {"frame": frame + float(self.seen)}


class _NoDescriptionParams(StageParams):
    """Parameters without a description."""

    factor: float = param(2.0)


class _NoDescription(_Good):
    """Multiply the frame."""

    Params = _NoDescriptionParams


class _LaxParams(StageParams):
    """Parameters that accept anything."""

    model_config = {"extra": "allow", "frozen": True}
    factor: float = param(2.0, "Factor")


class _Lax(_Good):
    """Multiply the frame."""

    Params = _LaxParams


class _NoDoc(_Good):
    name = "nodoc"


class _Halves(ReduceStage[Any]):
    """Average of the two halves at every merge (not associative)."""

    name = "halves"
    inputs = {"frame": Port(ndim=2, dtype="number")}
    outputs = {"mean": Port(ndim=2, dtype="float", scan=True)}

    def partial(self, frame: Any) -> Any:
        return frame.astype(np.float64)

    def merge(self, left: Any, right: Any) -> Any:
        return (left + right) / 2

    def finish(self, total: Any) -> dict[str, Any]:
        return {"mean": total}


class _Numbered(_Halves):
    """Sum of frames weighted by a count kept in the instance (depends on chunking)."""

    def partial(self, frame: Any) -> Any:
        self.seen = getattr(self, "seen", 0) + 1
        return frame.astype(np.float64) * (self.seen % 3 + 1)

    def merge(self, left: Any, right: Any) -> Any:
        return left + right


class _PerEventResult(_Halves):
    """Sum of frames, declared per event by mistake."""

    outputs = {"mean": Port(ndim=2, dtype="float")}

    def merge(self, left: Any, right: Any) -> Any:
        return left + right


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_Undeclared, "undeclared outputs \\['total'\\]"),
        (_WrongDim, "output 'frame' .* has 1 dimensions, expected 2"),
        (_InPlace, "modified its inputs \\['frame'\\] in place"),
        (_Counter, "must be stateless"),
        (_NoDescription, "parameter 'factor' has no description"),
        (_Lax, "accepted an unknown parameter"),
        (_NoDoc, "has no docstring"),
        (_Halves, "merge is not associative"),
        (_Numbered, "differ between one chunk and chunks of"),
        (_PerEventResult, "must be declared per scan"),
    ],
)
def test_check_stage_finds_the_fault(cls: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_stage(cls)


def test_check_stage_passes_a_good_stage_and_asks_for_required_params() -> None:
    check_stage(_Good)
    with pytest.raises(AssertionError, match=r"required parameters \['y', 'x'\].*check_stage\(cls, params="):
        check_stage("crop")
    with pytest.raises(AssertionError, match="does not fit a 24x32 frame"):
        check_stage("crop", {"y": [0, 100], "x": [0, 8]})


def test_example_inputs_follow_the_ports() -> None:
    first, second = example_inputs("dark_correction", 1, variant=0)[0], example_inputs("dark_correction", 1, variant=1)[0]
    assert first["frame"].dtype == np.uint16 and second["frame"].dtype == np.float32
    assert first["mask"].dtype == bool and first["frame"].shape == FRAME_SHAPE
    assert example_inputs("identity")[0]["frame"].ndim == 2


# -- run_stage ------------------------------------------------------------------------------------


def _frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 500, (12, 10)).astype(np.uint16) for _ in range(n)]


def test_run_stage_map_matches_numpy() -> None:
    frames = _frames(4, seed=1)
    out = run_stage("roi_sum", {"y": [2, 7], "x": [1, 9]}, frames)
    assert isinstance(out, list) and len(out) == 4
    for frame, result in zip(frames, out):
        assert result["sum"] == frame[2:7, 1:9].astype(np.float64).sum()
        assert result["max"] == frame[2:7, 1:9].max()


def test_run_stage_reduce_matches_the_engine_bit_for_bit(tmp_path: Any) -> None:
    """Dark statistics, dark correction and a sum over float frames: run_stage reproduces a LocalEngine run."""
    sim = {"name": "t", "frames": 13, "darks": 5, "flats": 0, "shape": [16, 20], "seed": 5}
    pipeline = load_pipeline({
        "version": 1, "name": "t", "source": {"use": "simulated_frames", "params": sim},
        "stages": {
            "dark": {"use": "dark_statistics", "stream": "dark"},
            "corrected": {"use": "dark_correction", "inputs": {"dark": "dark.mean", "mask": "dark.mask"}},
            "powder": {"use": "sum_frames", "inputs": {"frame": "corrected.frame"}},
        },
        "engine": {"chunk_size": 3},
    })
    results = LocalEngine().run(pipeline, tmp_path).scans[0].results

    reader = SimulatedReader(FrameSimParams(**sim), "t")
    darks = [e.fields["frame"] for e in reader.read(0, 5)]
    frames = [e.fields["frame"] for e in reader.read(5, 18)]
    dark = run_stage("dark_statistics", None, darks, chunk_size=2)
    corrected = run_stage("dark_correction", None,
                          [{"frame": f, "dark": dark["mean"], "mask": dark["mask"]} for f in frames])
    powder = run_stage("sum_frames", None, [c["frame"] for c in corrected], chunk_size=5)

    assert powder["sum"].dtype == results["powder.sum"].dtype
    assert powder["sum"].tobytes() == results["powder.sum"].tobytes()
    assert dark["mean"].tobytes() == results["dark.mean"].tobytes()
    np.testing.assert_allclose(powder["sum"], np.sum([c["frame"] for c in corrected], axis=0, dtype=np.float64))


class _RunningMean(SolverStage):
    """Running mean of the frames fed so far, updated after each chunk."""

    name = "running_mean"
    inputs = {"frame": Port(ndim=2, dtype="number")}
    outputs = {"mean": Port(ndim=2, dtype="float", scan=True), "updates": Port(ndim=0, dtype="int", scan=True)}

    def setup(self, scan: Any) -> None:
        self.total, self.count, self.indices, self.updates = 0.0, 0, [], 0

    def feed(self, index: int, frame: Any) -> None:
        self.total = self.total + frame.astype(np.float64)
        self.count += 1
        self.indices.append(index)

    def update(self) -> dict[str, Any] | None:
        self.updates += 1
        return None

    def finish(self) -> dict[str, Any]:
        return {"mean": self.total / self.count, "updates": np.int64(self.updates)}


def test_run_stage_solver_feeds_in_order_and_updates_per_chunk() -> None:
    frames = _frames(7, seed=2)
    out = run_stage(_RunningMean, None, frames, chunk_size=3)
    assert isinstance(out, dict)
    np.testing.assert_allclose(out["mean"], np.mean(frames, axis=0))
    assert out["updates"] == 3
    check_stage(_RunningMean)


class _Broken(_Good):
    """Forget to return the frame."""

    def process(self, frame: Any) -> dict[str, Any]:
        return {}


class _Numbering(MapStage):
    """Return the acquisition index of each event."""

    name = "numbering"
    wants_index = True
    inputs = {"frame": Port(ndim=None, dtype=None)}
    outputs = {"index": Port(ndim=0, dtype="int")}

    def process(self, frame: Any, index: int) -> dict[str, Any]:
        return {"index": np.int64(index)}


def test_run_stage_gives_the_index_to_stages_that_want_it() -> None:
    by_position = run_stage(_Numbering, None, [np.zeros(2), np.zeros(2)])
    by_event = run_stage(_Numbering, None, [Event(index=7, fields={"frame": np.zeros(2)})])
    assert [o["index"] for o in by_position] == [0, 1] and by_event[0]["index"] == 7
    check_stage(_Numbering)


def test_run_stage_takes_module_class_strings() -> None:
    out = run_stage("lightpipe.stages.identity:Identity", None, [np.arange(3)])
    assert isinstance(out, list) and out[0]["frame"].tolist() == [0, 1, 2]


def test_run_stage_reports_bad_input_clearly() -> None:
    with pytest.raises(ValueError, match=r"event 0: stage 'dark_correction' takes inputs .*missing \['dark', 'mask'\]"):
        run_stage("dark_correction", None, [{"frame": np.zeros((2, 2))}])
    with pytest.raises(TypeError, match="give each event as a dict"):
        run_stage("dark_correction", None, [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="invalid parameters for stage 'crop'"):
        run_stage("crop", {"y": [0, 2]}, [np.zeros((2, 2))])
    with pytest.raises(StageError, match="did not return declared outputs"):
        run_stage(_Broken, None, [np.zeros((2, 2))])
