"""The spot_fit solver: a Gaussian beam spot recovered from Poisson frames, refined as frames arrive."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Iterator

import h5py
import numpy as np
import pytest
from pydantic import Field

from lightpipe.core.errors import PipelineError
from lightpipe.core.event import Event, Scan
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.ports import Port
from lightpipe.engines.local import LocalEngine
from lightpipe.core.source import ScanReader, Source, SourceParams
from lightpipe.stages.spot import SpotFit
from lightpipe.testing import run_stage

#: Fitted parameters in the order of ``truth`` below.
NAMES = ("amplitude", "x_px", "y_px", "sigma_x_px", "sigma_y_px", "background")


def spot(theta: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mean counts per pixel of a Gaussian spot on a flat background, sampled at pixel centres."""
    a, x0, y0, sx, sy, b = theta
    y, x = np.indices(shape, dtype=np.float64)
    return b + a * np.exp(-0.5 * (((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2))


def expected_spread(theta: np.ndarray, shape: tuple[int, int], frames: int) -> np.ndarray:
    """Standard deviation of each least-squares estimate under Poisson noise, from the truth.

    The fit minimises the squared residual of the mean frame, whose pixel
    variance is ``mean / frames``; the covariance of such an estimate is
    ``(J^T J)^-1 J^T V J (J^T J)^-1`` with ``J`` the model's Jacobian (here by
    central differences) and ``V`` the pixel variances.
    """
    mean = spot(theta, shape).ravel()
    jac = np.empty((6, mean.size))
    for k in range(6):
        h = np.zeros(6)
        h[k] = 1e-6 * max(abs(theta[k]), 1.0)
        jac[k] = (spot(theta + h, shape).ravel() - spot(theta - h, shape).ravel()) / (2 * h[k])
    inverse = np.linalg.inv(jac @ jac.T)
    cov = inverse @ (jac * (mean / frames)) @ jac.T @ inverse
    return np.sqrt(np.diag(cov))


# -- a source of Poisson frames of one spot ---------------------------------------------------


class SpotSourceParams(SourceParams):
    """Parameters of :class:`SpotSource`."""

    frames: int = Field(40, description="Frames in the scan")
    shape: tuple[int, int] = Field((48, 64), description="Frame shape (y, x)")
    truth: tuple[float, float, float, float, float, float] = Field(
        (40.0, 37.3, 21.6, 2.6, 1.7, 6.0), description="amplitude, x0, y0, sigma_x, sigma_y, background"
    )
    seed: int = Field(11, description="Random seed")


class SpotReader(ScanReader):
    """Frames of Poisson counts around the spot; frame ``i`` depends only on ``(seed, i)``."""

    def __init__(self, params: SpotSourceParams) -> None:
        self.params = params
        self.mean = spot(np.array(params.truth), params.shape)
        self.scan = Scan("spot", {"data": range(params.frames)},
                         {"frame_shape": list(params.shape), "frame_dtype": "uint32"})

    def frame(self, index: int) -> np.ndarray:
        return np.random.default_rng([self.params.seed, index]).poisson(self.mean).astype(np.uint32)

    def read(self, start: int, stop: int) -> list[Event]:
        return [Event(index=i, fields={"frame": self.frame(i)}) for i in range(start, stop)]


class SpotSource(Source):
    """Simulated frames of one Gaussian beam spot with Poisson noise."""

    name = "test_spot"
    Params = SpotSourceParams
    outputs = {"frame": Port(ndim=2, dtype="uint32", unit="counts", description="Frame")}

    def scans(self) -> Iterator[ScanReader]:
        yield SpotReader(self.params)


class RecordingSpotFit(SpotFit):
    """Spot fit that keeps every intermediate result the engine asked for."""

    updates: ClassVar[list[dict[str, Any]]] = []

    def update(self) -> dict[str, Any] | None:
        out = super().update()
        if out is not None:
            type(self).updates.append(out)
        return out


def _pipeline(source: dict[str, Any], spot_params: dict[str, Any], chunk_size: int) -> Any:
    return load_pipeline({
        "version": 1,
        "name": "spot",
        "source": {"use": f"{__name__}:SpotSource", "params": source},
        "stages": {"spot": {"use": f"{__name__}:RecordingSpotFit", "params": spot_params}},
        "sinks": [{"use": "nexus"}],
        "engine": {"chunk_size": chunk_size},
    })


def test_spot_fit_recovers_the_spot_and_writes_it_to_nexus(tmp_path: Path) -> None:
    from scipy.optimize import least_squares

    params = SpotSourceParams()
    truth = np.array(params.truth)
    RecordingSpotFit.updates.clear()
    with LocalEngine() as engine:
        report = engine.run(_pipeline(params.model_dump(), {"iterations_per_update": 2}, chunk_size=4), tmp_path)
    scan = report.scans[0]
    assert scan.ledger.written == params.frames and not scan.ledger.failed

    with h5py.File(tmp_path / "spot.nxs", "r") as f:
        fitted = np.array([f[f"entry/spot/{name}"][()] for name in NAMES])
        iterations = int(f["entry/spot/iterations"][()])
        residual = float(f["entry/spot/residual"][()])
    spread = expected_spread(truth, params.shape, params.frames)
    assert np.all(spread < [1.0, 0.05, 0.05, 0.05, 0.05, 0.02])  # the test can tell a good fit from a poor one
    assert np.all(np.abs(fitted - truth) < 5 * spread), (fitted - truth) / spread

    # scipy's least squares on the same mean frame lands on the same minimum
    reader = SpotReader(params)
    mean = np.mean([reader.frame(i) for i in range(params.frames)], axis=0, dtype=np.float64)
    start = truth * [0.8, 1, 1, 1.2, 1.2, 0.5] + [0, 1.0, -1.0, 0, 0, 0]
    reference = least_squares(lambda th: (spot(th, params.shape) - mean).ravel(), start, xtol=1e-14, ftol=1e-14)
    np.testing.assert_allclose(fitted, reference.x, rtol=1e-6, atol=1e-6)
    model = spot(reference.x, params.shape)
    np.testing.assert_allclose(residual, np.sqrt(np.sum((mean - model) ** 2) / np.sum((mean - mean.mean()) ** 2)),
                               rtol=1e-6)

    # one intermediate fit per chunk of 4 frames, each 2 iterations further, and better as frames accumulate
    updates = RecordingSpotFit.updates
    assert len(updates) == params.frames // 4
    assert [int(u["iterations"]) for u in updates] == list(range(2, 2 * len(updates) + 1, 2))
    assert iterations >= int(updates[-1]["iterations"])
    residuals = [float(u["residual"]) for u in updates]
    assert residuals[-1] < 0.7 * residuals[0]
    first = np.array([float(updates[0][name]) for name in NAMES])
    assert np.all(np.abs(first - truth) < 5 * expected_spread(truth, params.shape, 4))
    errors = [np.hypot(float(u["x_px"]) - truth[1], float(u["y_px"]) - truth[2]) for u in updates]
    assert np.mean(errors[-3:]) < np.mean(errors[:3])


def test_region_picks_one_spot_and_reports_full_frame_pixels() -> None:
    shape = (40, 60)
    dim = np.array([30.0, 12.4, 9.2, 1.8, 2.2, 3.0])
    bright = np.array([300.0, 44.0, 27.0, 3.0, 3.0, 0.0])
    mean = spot(dim, shape) + spot(bright, shape)
    rng = np.random.default_rng(5)
    frames = [rng.poisson(mean) for _ in range(20)]

    whole = run_stage(SpotFit, None, frames, chunk_size=5)
    assert abs(float(whole["x_px"]) - bright[1]) < 0.5  # without a region the bright spot wins

    around_dim = run_stage(SpotFit, {"y": [0, 20], "x": [0, 26]}, frames, chunk_size=5)
    fitted = np.array([float(around_dim[name]) for name in NAMES])
    spread = expected_spread(dim, (20, 26), 20)
    assert np.all(np.abs(fitted - dim) < 5 * spread), (fitted - dim) / spread

    shifted = run_stage(SpotFit, {"y": [2, 20], "x": [3, 26]}, frames, chunk_size=5)
    assert abs(float(shifted["x_px"]) - float(around_dim["x_px"])) < 3 * spread[1]
    assert abs(float(shifted["y_px"]) - float(around_dim["y_px"])) < 3 * spread[2]


def test_update_before_any_frame_and_a_region_without_a_spot(caplog: pytest.LogCaptureFixture) -> None:
    stage = SpotFit(SpotFit.Params())
    stage.setup(Scan("empty", {"data": range(0)}))
    assert stage.update() is None
    with pytest.raises(ValueError, match="no frame reached spot_fit"):
        stage.finish()

    flat = [np.full((16, 16), 7, np.uint16) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="lightpipe.stages.spot"):
        out = run_stage(SpotFit, None, flat)
    assert np.isnan(float(out["x_px"])) and np.isnan(float(out["amplitude"]))
    assert "no spot rises above the background" in caplog.text


def test_bad_regions_are_refused_with_a_clear_message() -> None:
    with pytest.raises(PipelineError, match=r"stages\.spot\.params.*y=\[5, 6\] is not a region of at least 3 pixels"):
        load_pipeline({
            "version": 1, "name": "bad", "source": {"use": "simulated_frames"},
            "stages": {"spot": {"use": "spot_fit", "params": {"y": [5, 6]}}},
        })
    with pytest.raises(ValueError, match=r"region y=\[0, 30\] x=\[0, 8\] does not fit the 16 x 16 frame"):
        run_stage(SpotFit, {"y": [0, 30], "x": [0, 8]}, [np.zeros((16, 16))])
