"""Beam-spot fitting: a 2-D Gaussian fitted to the running sum of a scan's frames, refined as frames arrive.

The model of the mean frame in the fitted region is

.. math::

    f(x, y) = b + a \\exp\\left(-\\frac{(x - x_0)^2}{2\\sigma_x^2} - \\frac{(y - y_0)^2}{2\\sigma_y^2}\\right)

with pixel ``(row y, column x)`` at coordinates ``(y, x)``, so ``x_px, y_px``
are pixel positions in the full frame (0 is the centre of the first pixel).
The fit is unweighted least squares by Levenberg-Marquardt, started from the
moments of the spot's half-maximum core.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pydantic import model_validator

from lightpipe.core.bounds import MAX_COUNT, PixelRange, box_problem
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import SolverStage, StageParams, param
from lightpipe.core.xp import to_numpy

log = logging.getLogger(__name__)

#: Order of the fitted parameters.
AMPLITUDE, X0, Y0, SIGMA_X, SIGMA_Y, BACKGROUND = range(6)

#: Second moment of a Gaussian spot cut at half maximum, in units of sigma squared: 1 - ln 2.
HALF_MAX_MOMENT = 1.0 - math.log(2.0)

#: Beyond this damping no step lowers the cost: the fit sits at its minimum to machine precision.
MAX_DAMPING = 1e10


def gaussian(
    theta: np.ndarray, y: np.ndarray, x: np.ndarray, jacobian: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """The spot model on the grid ``(y, x)`` (broadcast against each other), and optionally its Jacobian.

    Returns
    -------
    model : ndarray
        Model values, raveled.
    jacobian : ndarray or None
        ``[6, pixels]`` derivatives by amplitude, x0, y0, sigma_x, sigma_y, background.
    """
    a, x0, y0, sx, sy, b = theta
    ex, ey = (x - x0) / sx, (y - y0) / sy
    g = np.exp(-0.5 * (ex * ex + ey * ey)).ravel()
    model = a * g + b
    if not jacobian:
        return model, None
    ex, ey = np.broadcast_arrays(ex, ey)
    ex, ey = ex.ravel(), ey.ravel()
    ag = a * g
    jac = np.stack([g, ag * ex / sx, ag * ey / sy, ag * ex * ex / sx, ag * ey * ey / sy, np.ones_like(g)])
    return model, jac


def _box3(image: np.ndarray) -> np.ndarray:
    """Mean over each pixel's 3 x 3 neighbourhood (edges repeated)."""
    padded = np.pad(image, 1, mode="edge")
    ny, nx = image.shape
    return sum(padded[dy : dy + ny, dx : dx + nx] for dy in range(3) for dx in range(3)) / 9.0


def moments_start(image: np.ndarray) -> np.ndarray | None:
    """A starting point for the fit from the moments of the spot's half-maximum core.

    The background is the median of the region's edge pixels; the core is
    where the 3 x 3-smoothed image rises above half its peak. Returns ``None``
    when nothing rises above the background.
    """
    edge = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    background = float(np.median(edge))
    above = image - background
    smooth = _box3(above)
    peak = float(smooth.max())
    if not np.isfinite(peak) or peak <= 0:
        return None
    weights = np.where(smooth >= 0.5 * peak, np.clip(above, 0, None), 0.0)
    flux = float(weights.sum())
    if flux <= 0:
        return None
    y, x = np.indices(image.shape, dtype=np.float64)
    x0, y0 = float((weights * x).sum() / flux), float((weights * y).sum() / flux)
    # a quarter pixel floor keeps a one-pixel core from starting at zero width
    sx = math.sqrt(max(float((weights * (x - x0) ** 2).sum() / flux) / HALF_MAX_MOMENT, 0.25))
    sy = math.sqrt(max(float((weights * (y - y0) ** 2).sum() / flux) / HALF_MAX_MOMENT, 0.25))
    # half of a Gaussian's flux lies inside its half-maximum contour
    amplitude = 2.0 * flux / (2.0 * math.pi * sx * sy)
    return np.array([amplitude, x0, y0, sx, sy, background])


class SpotParams(StageParams):
    """Parameters of :class:`SpotFit`."""

    iterations_per_update: int = param(3, "Levenberg-Marquardt iterations after each batch of frames", ge=1,
                                       le=MAX_COUNT)
    max_iterations: int = param(200, "Most iterations at the end of the scan", ge=1, le=MAX_COUNT)
    tolerance: float = param(
        1e-4, "Converged when a step moves no parameter more than this: px for centre and widths, "
        "a fraction of the amplitude for amplitude and background", gt=0, le=1e6,
    )
    y: PixelRange | None = param(None, "Rows fitted: first and one past the last; default all", unit="px")
    x: PixelRange | None = param(None, "Columns fitted: first and one past the last; default all", unit="px")

    @model_validator(mode="after")
    def _check_region(self) -> SpotParams:
        for axis in ("y", "x"):
            bounds = getattr(self, axis)
            if bounds is not None and not (0 <= bounds[0] and bounds[1] - bounds[0] >= 3):
                raise ValueError(f"{axis}={list(bounds)} is not a region of at least 3 pixels; give [first, one "
                                 "past the last] with first >= 0")
        return self

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the fitted region does not fit a frame of ``shape``, or ``None``."""
        return box_problem("y", self.y, shape[0]) or box_problem("x", self.x, shape[1])


def _scan_port(unit: str | None, description: str, dtype: str = "float") -> Port:
    return Port(ndim=0, dtype=dtype, unit=unit, description=description, scan=True)


class SpotFit(SolverStage):
    """Fit a 2-D Gaussian beam spot to the sum of the frames so far, refined after every batch.

    Each update refines the previous fit with a few Levenberg-Marquardt
    iterations on the mean of the frames fed so far, starting from moments
    the first time; the end of the scan iterates to convergence. Amplitude
    and background are in counts per frame; ``residual`` is the root of the
    fraction of the region's variance that the model leaves unexplained (0 a
    perfect fit, 1 no better than a flat level), which falls as frames
    accumulate and noise averages out. A region without a spot gives NaN.
    """

    name = "spot_fit"
    Params = SpotParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Frame with the spot")}
    outputs = {
        "x_px": _scan_port("px", "Spot centre, column"),
        "y_px": _scan_port("px", "Spot centre, row"),
        "sigma_x_px": _scan_port("px", "Gaussian width along x"),
        "sigma_y_px": _scan_port("px", "Gaussian width along y"),
        "amplitude": _scan_port("counts", "Peak height above the background, per frame"),
        "background": _scan_port("counts", "Constant level under the spot, per frame"),
        "residual": _scan_port(None, "Root of the unexplained fraction of the region's variance"),
        "iterations": _scan_port(None, "Levenberg-Marquardt iterations so far", dtype="int"),
        "region": Port(ndim=2, dtype="float", unit="counts", scan=True, axes=("region_y_px", "region_x_px"),
                       main=True, description="Mean frame in the fitted region, the spot the fit sees"),
        "model": Port(ndim=2, dtype="float", unit="counts", scan=True, axes=("region_y_px", "region_x_px"),
                      description="The fitted Gaussian over the region (NaN where no spot was found)"),
        "region_y_px": Port(ndim=1, dtype="float", unit="px", scan=True, description="Detector row of each region row"),
        "region_x_px": Port(ndim=1, dtype="float", unit="px", scan=True,
                            description="Detector column of each region column"),
    }

    def setup(self, scan: Scan) -> None:
        self._total: np.ndarray | None = None
        self._count = 0
        self._theta: np.ndarray | None = None
        self._damping = 1e-3
        self._iterations = 0
        self._origin = (0, 0)
        self._y = self._x = np.zeros((0, 0))  # pixel coordinates of the region, set by the first frame

    def feed(self, index: int, frame: Any) -> None:
        image = np.asarray(to_numpy(frame))
        if image.ndim != 2:
            raise ValueError(f"spot_fit takes 2-D frames; event {index} has shape {image.shape}")
        ny, nx = image.shape
        (y0, y1), (x0, x1) = self.params.y or (0, ny), self.params.x or (0, nx)
        if y1 > ny or x1 > nx:
            raise ValueError(f"spot_fit region y={[y0, y1]} x={[x0, x1]} does not fit the {ny} x {nx} frame of "
                             f"event {index}; fix the stage's y and x parameters")
        region = image[y0:y1, x0:x1].astype(np.float64)
        if self._total is None:
            self._total, self._origin = region, (y0, x0)
            self._y = np.arange(y1 - y0, dtype=np.float64)[:, None]
            self._x = np.arange(x1 - x0, dtype=np.float64)[None, :]
        elif region.shape != self._total.shape:
            raise ValueError(f"event {index} has a {ny} x {nx} frame, unlike the scan's earlier frames")
        else:
            self._total += region
        self._count += 1

    def update(self) -> dict[str, Any] | None:
        if self._total is None:
            return None
        data = self._total.ravel() / self._count
        if self._theta is None:
            self._theta = moments_start(self._total / self._count)
            if self._theta is None:
                return None
        self._iterate(data, self.params.iterations_per_update, tolerance=None)
        return self._outputs(data)

    def finish(self) -> dict[str, Any]:
        if self._total is None:
            raise ValueError("no frame reached spot_fit; check the stage's stream and inputs")
        data = self._total.ravel() / self._count
        if self._theta is None:
            self._theta = moments_start(self._total / self._count)
        if self._theta is None:
            log.warning("spot_fit: no spot rises above the background in %d frames; results are NaN", self._count)
            fit = {k: np.float64(np.nan) for k, port in self.outputs.items() if port.ndim == 0}
            return {**fit, **self._region(data, np.full(data.shape, np.nan)), "iterations": np.int64(self._iterations)}
        if not self._iterate(data, self.params.max_iterations, tolerance=self.params.tolerance):
            log.warning("spot_fit: not converged after %d iterations; raise max_iterations or tolerance",
                        self.params.max_iterations)
        return self._outputs(data)

    def _iterate(self, data: np.ndarray, iterations: int, tolerance: float | None) -> bool:
        """Up to ``iterations`` Levenberg-Marquardt trial steps; whether the fit converged."""
        theta = self._theta
        assert theta is not None
        model, jac = gaussian(theta, self._y, self._x, jacobian=True)
        assert jac is not None
        residual = data - model
        cost = float(residual @ residual)
        for _ in range(iterations):
            if self._damping > MAX_DAMPING:
                self._damping = 1.0  # ready for the next batch of frames, whose minimum lies elsewhere
                return True
            self._iterations += 1
            jtj, gradient = jac @ jac.T, jac @ residual
            scale = np.maximum(np.diag(jtj), 1e-12 * max(float(np.max(np.diag(jtj))), 1e-300))
            try:
                step = np.linalg.solve(jtj + self._damping * np.diag(scale), gradient)
            except np.linalg.LinAlgError:
                self._damping *= 10.0
                continue
            trial = theta + step
            if np.all(np.isfinite(trial)) and trial[SIGMA_X] > 0 and trial[SIGMA_Y] > 0:
                trial_model, _ = gaussian(trial, self._y, self._x)
                trial_residual = data - trial_model
                trial_cost = float(trial_residual @ trial_residual)
                if trial_cost <= cost:
                    self._damping = max(self._damping / 10.0, 1e-12)
                    level = abs(theta[AMPLITUDE]) or 1.0
                    moved = float(np.max(np.abs(step) / np.array([level, 1.0, 1.0, 1.0, 1.0, level])))
                    theta = self._theta = trial
                    model, jac = gaussian(theta, self._y, self._x, jacobian=True)
                    assert jac is not None
                    residual, cost = trial_residual, trial_cost
                    if tolerance is not None and moved < tolerance:
                        return True
                    continue
            self._damping *= 10.0
        return False

    def _outputs(self, data: np.ndarray) -> dict[str, Any]:
        theta = self._theta
        assert theta is not None
        model, _ = gaussian(theta, self._y, self._x)
        spread = float(np.sum((data - data.mean()) ** 2))
        unexplained = float(np.sum((data - model) ** 2))
        oy, ox = self._origin
        return {
            "x_px": np.float64(theta[X0] + ox),
            "y_px": np.float64(theta[Y0] + oy),
            "sigma_x_px": np.float64(theta[SIGMA_X]),
            "sigma_y_px": np.float64(theta[SIGMA_Y]),
            "amplitude": np.float64(theta[AMPLITUDE]),
            "background": np.float64(theta[BACKGROUND]),
            "residual": np.float64(math.sqrt(unexplained / spread) if spread > 0 else np.nan),
            "iterations": np.int64(self._iterations),
            **self._region(data, model),
        }

    def _region(self, data: np.ndarray, model: np.ndarray) -> dict[str, np.ndarray]:
        """The region's mean frame and the model as images, with the detector pixel of each row and column."""
        oy, ox = self._origin
        ny, nx = self._y.shape[0], self._x.shape[1]
        return {"region": data.reshape(ny, nx), "model": np.reshape(model, (ny, nx)),
                "region_y_px": self._y[:, 0] + oy, "region_x_px": self._x[0] + ox}
