"""Tomography stages: flat and dark normalisation, minus log, the centre of rotation, and the reconstruction.

The projections flow as events; the sinograms they make exist only once every
angle of a row has arrived, so what works on sinograms (ring removal, the
centre from opposite projections, FBP and SIRT) lives in solver and reduce
stages that gather the projections: ``rotation_centre`` keeps a few rows of
each, ``tomo_reconstruction`` all of them, and spreads the slices over the
workers when it reconstructs (:mod:`~lightpipe.techniques.tomo.parts`).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import field_validator

from lightpipe.core.bounds import PixelRange
from lightpipe.core.errors import LightpipeError
from lightpipe.core.event import Scan
from lightpipe.core.parts import available_cores
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, SolverStage, StageParams, param
from lightpipe.core.xp import array_namespace

__all__ = ["CentreRows", "MinusLog", "RotationCentre", "TomoNormalise", "TomoReconstruction"]

_PROJECTION = Port(ndim=2, dtype="float", description="Projection: line integrals (minus_log of the transmission)")
_ANGLE = Port(ndim=0, dtype="float", unit="deg", description="Rotation angle of the projection")


def _scipy() -> None:
    """Check that SciPy is there, or say which extra installs it."""
    if importlib.util.find_spec("scipy") is None:
        raise LightpipeError("tomographic reconstruction needs SciPy; install it with: pip install 'lightpipe[tomo]'")


def _angle(angle: Any) -> float:
    value = float(angle)
    if not np.isfinite(value):
        raise ValueError(f"the projection's angle is {value}: every projection needs its rotation angle (a dark or "
                         "flat frame in the data stream? angles and frames out of step?); check the scan's angles")
    return value


class NormaliseParams(StageParams):
    """Parameters of :class:`TomoNormalise`."""

    min_flat_counts: float = param(1.0, "Pixels whose flat is less than this above the dark are dead: their "
                                   "transmission is set to 1 (the ring filter removes the stripe)",
                                   unit="counts", ge=0, le=1e9)


class TomoNormalise(MapStage):
    """Flat and dark normalisation of a projection: (frame - dark) / (flat - dark), the sample's transmission."""

    name = "tomo_normalise"
    Params = NormaliseParams
    inputs = {
        "frame": Port(ndim=2, dtype="number", unit="counts", description="Projection"),
        "dark": Port(ndim=2, dtype="float", unit="counts", description="Mean dark frame (dark_statistics.mean)"),
        "flat": Port(ndim=2, dtype="float", unit="counts",
                     description="Mean flat frame, dark included (sum_frames.mean of the flats)"),
    }
    outputs = {"frame": Port(ndim=2, dtype="float32", description="Transmission: 1 where nothing absorbs")}

    def process(self, frame: Any, dark: Any, flat: Any) -> dict[str, Any]:
        if not frame.shape == dark.shape == flat.shape:
            raise ValueError(f"the projection is {tuple(frame.shape)} but the dark is {tuple(dark.shape)} and the flat "
                             f"{tuple(flat.shape)}: record darks and flats with the same detector settings (binning, "
                             "region of interest) as the projections")
        xp = array_namespace(frame, dark, flat)
        dark32 = xp.astype(dark, xp.float32)
        beam = xp.astype(flat, xp.float32) - dark32
        dead = beam < self.params.min_flat_counts
        safe = xp.where(dead, xp.asarray(1.0, dtype=xp.float32), beam)
        transmission = (xp.astype(frame, xp.float32) - dark32) / safe
        return {"frame": xp.where(dead, xp.asarray(1.0, dtype=xp.float32), transmission)}


class MinusLogParams(StageParams):
    """Parameters of :class:`MinusLog`."""

    min_transmission: float = param(1e-6, "Transmissions below this (noise makes them zero or negative where "
                                    "little gets through) count as this before the log", gt=0, le=1)


class MinusLog(MapStage):
    """Line integrals of the attenuation from a transmission: -ln(T), with T clipped from below to stay finite.

    Where the beam is almost stopped, noise and the dark subtraction give a
    transmission of zero or less, whose log is infinite or undefined; such
    values are clipped to ``min_transmission`` (1e-6 by default, a line integral
    of 13.8), so one starved pixel makes a bright streak in FBP rather than
    NaN in every slice it touches.
    """

    name = "minus_log"
    Params = MinusLogParams
    inputs = {"frame": Port(ndim=2, dtype="float", description="Transmission (tomo_normalise)")}
    outputs = {"frame": _PROJECTION}

    def process(self, frame: Any) -> dict[str, Any]:
        xp = array_namespace(frame)
        floor = xp.asarray(self.params.min_transmission, dtype=xp.float32)
        clipped = xp.where(xp.isnan(frame), floor, xp.maximum(xp.astype(frame, xp.float32), floor))
        return {"frame": -xp.log(clipped)}


@dataclass
class CentreRows:
    """Partial result of :class:`RotationCentre`: the angles so far and their projections' chosen rows."""

    angles: np.ndarray
    rows: np.ndarray  # (rows, angles, columns)


class CentreParams(StageParams):
    """Parameters of :class:`RotationCentre`."""

    rows: int = param(8, "Detector rows compared, evenly spread over the height", ge=1, le=65536)
    tolerance_deg: float = param(1.0, "How far from 180 deg apart two projections may be to count as opposite",
                                 unit="deg", gt=0, le=10)
    centre_px: float | None = param(None, "The centre of rotation, if known (a detector column; the middle is "
                                    "(columns - 1) / 2); none: found from opposite projections", unit="px")


def _find(rows: np.ndarray, angles_deg: np.ndarray, tolerance_deg: float, given: float | None) -> tuple[float, int]:
    """The centre: ``given`` if set, else found from opposite projections; checked to be on the detector."""
    from lightpipe.techniques.tomo.centre import find_centre
    from lightpipe.techniques.tomo.geometry import centre_problem

    if given is not None:
        centre, pairs = float(given), 0
    else:
        centre, pairs = find_centre(rows, np.radians(angles_deg), np.radians(tolerance_deg))
    problem = centre_problem(centre, rows.shape[-1])
    if problem:
        raise ValueError(problem if given is not None else f"{problem} (found from {pairs} pair(s) of opposite "
                         "projections: are these projections of one rotation?)")
    return centre, pairs


class RotationCentre(ReduceStage[CentreRows]):
    """The centre of rotation: the detector column of the axis, from projections 180 degrees apart.

    Each projection ``theta + 180`` is the mirror image of ``theta`` about the
    axis; the cross-correlation of the pair measures the axis to a fraction of
    a pixel (:mod:`~lightpipe.techniques.tomo.centre`). A few rows of every
    projection are kept; the pairs closest to 180 degrees apart are used.
    """

    name = "rotation_centre"
    Params = CentreParams
    inputs = {"frame": _PROJECTION, "angle": _ANGLE}
    outputs = {
        "centre": Port(ndim=0, dtype="float", unit="px", scan=True,
                       description="Detector column of the rotation axis"),
        "pairs": Port(ndim=0, dtype="int", scan=True, description="Pairs of opposite projections measured (0: given)"),
    }

    def partial(self, frame: Any, angle: Any) -> CentreRows:
        height = frame.shape[0]
        chosen = np.unique(np.linspace(0, height - 1, min(self.params.rows, height)).round().astype(int))
        rows = np.asarray(frame, np.float32)[chosen][:, None, :]
        return CentreRows(np.array([_angle(angle)]), rows)

    def merge(self, left: CentreRows, right: CentreRows) -> CentreRows:
        if left.rows.shape[::2] != right.rows.shape[::2]:
            raise ValueError(f"projections of {left.rows.shape[-1]} and {right.rows.shape[-1]} columns in one scan: "
                             "every projection must have the detector's shape")
        return CentreRows(np.concatenate([left.angles, right.angles]), np.concatenate([left.rows, right.rows], axis=1))

    def finish(self, total: CentreRows | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no projection reached rotation_centre; check its stream and that minus_log succeeded")
        _scipy()
        centre, pairs = _find(total.rows, total.angles, self.params.tolerance_deg, self.params.centre_px)
        return {"centre": np.float64(centre), "pairs": np.int64(pairs)}


class ReconstructionParams(StageParams):
    """Parameters of :class:`TomoReconstruction`."""

    algorithm: Literal["fbp", "sirt"] = param("fbp", "fbp: filtered back projection; sirt: iterative, for few or "
                                              "uneven angles")
    window: Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"] = param(
        "ramp", "FBP filter window: ramp (none, sharpest) to hann (smoothest, least noise)")
    iterations: int = param(100, "SIRT iterations", ge=1, le=100_000)
    centre_px: float | None = param(None, "The centre of rotation (a detector column; the middle is (columns - 1) "
                                    "/ 2); none: found from projections 180 deg apart", unit="px")
    tolerance_deg: float = param(1.0, "How far from 180 deg apart two projections may be to find the centre from",
                                 unit="deg", gt=0, le=10)
    ring_filter_px: int = param(0, "Width of Vo's sorting-based ring filter (a median over this many detector "
                                "columns, odd, wider than the widest stripe); 0: no ring removal", ge=0, le=1001)
    slices: PixelRange | None = param(None, "Detector rows to reconstruct [first, one past the last]; none: all")
    pixel_size_m: float | None = param(None, "Pixel size at the sample: axes in m and attenuation in 1/m; none: "
                                       "pixels and 1/px", unit="m", gt=0, le=1)
    parts: int | None = param(None, "Blocks of slices reconstructed at once on the engine's workers; none: the "
                              "cores of this machine", ge=1, le=10_000)
    update_every: int = param(0, "Streaming: refine the middle slice every this many projections, so it can be "
                              "watched before the scan ends; 0: reconstruct once, at the end", ge=0, le=1_000_000)
    live_iterations: int = param(10, "Streaming SIRT: iterations per update, each update starting from the last",
                                 ge=1, le=100_000)

    @field_validator("ring_filter_px")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value and (value < 3 or value % 2 == 0):
            raise ValueError(f"ring_filter_px must be 0 (off) or an odd width of at least 3 columns, not {value}")
        return value


class TomoReconstruction(SolverStage):
    """Reconstruct the slices of a parallel-beam scan by FBP or SIRT, with ring removal and the centre found.

    Projections are gathered as they arrive; at the end their sinograms are
    cleaned of stripes (Vo's sorting-based filter, ``ring_filter_px``), the
    centre of rotation is found from opposite projections (or taken from
    ``centre_px``) and the slices are reconstructed in blocks spread over the
    engine's workers. With ``update_every``, the middle slice is reconstructed
    from the projections so far every that many projections (SIRT refining its
    last estimate), and sent to the sinks and live views as it improves.
    """

    name = "tomo_reconstruction"
    Params = ReconstructionParams
    inputs = {"frame": _PROJECTION, "angle": _ANGLE}
    outputs = {
        "volume": Port(ndim=3, dtype="float32", unit="1/px", scan=True, axes=("z", "y", "x"),
                       description="Attenuation coefficient, (z, y, x)"),
        "slice": Port(ndim=2, dtype="float32", unit="1/px", scan=True, axes=("y", "x"), main=True,
                      description="The middle slice of the volume (the latest estimate while streaming)"),
        "z": Port(ndim=1, dtype="float", unit="px", scan=True, description="Height of each slice (detector row)"),
        "y": Port(ndim=1, dtype="float", unit="px", scan=True,
                  description="Position from the axis along the beam at angle 0"),
        "x": Port(ndim=1, dtype="float", unit="px", scan=True,
                  description="Position from the axis along the detector's rows at angle 0"),
        "centre": Port(ndim=0, dtype="float", unit="px", scan=True, description="Centre of rotation used (detector "
                       "column)"),
        "projections": Port(ndim=0, dtype="int", scan=True, description="Projections reconstructed from"),
    }

    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        if params.pixel_size_m is None:
            return dict(cls.outputs)
        metres = {"z": "m", "y": "m", "x": "m", "volume": "1/m", "slice": "1/m"}
        return {k: replace(port, unit=metres[k]) if k in metres else port for k, port in cls.outputs.items()}

    def setup(self, scan: Scan) -> None:
        _scipy()
        self.projections: list[np.ndarray] = []
        self.angles: list[float] = []
        self.shape: tuple[int, ...] | None = None
        self.updated_at = 0
        self.live: np.ndarray | None = None
        shape = scan.metadata.get("frame_shape")
        if shape is not None and len(shape) == 2:
            self._check_geometry(tuple(int(n) for n in shape))

    def _check_geometry(self, shape: tuple[int, ...]) -> None:
        """Refuse a centre or a range of slices that the detector's frames cannot have."""
        from lightpipe.techniques.tomo.geometry import centre_problem

        p = self.params
        if p.centre_px is not None and (problem := centre_problem(p.centre_px, shape[1])):
            raise ValueError(problem)
        if p.slices is not None and p.slices[1] > shape[0]:
            raise ValueError(f"slices {list(p.slices)} go past the detector's {shape[0]} rows; give [first, one past "
                             f"the last] within 0 to {shape[0]}")

    def feed(self, index: int, frame: Any, angle: Any) -> None:
        value = _angle(angle)
        shape = tuple(frame.shape)
        if self.shape is None:
            self._check_geometry(shape)
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"projection {index} is {shape} but the scan's first was {self.shape}: every projection "
                             "must have the detector's shape")
        self.projections.append(np.asarray(frame, np.float32))
        self.angles.append(value)

    def _rows(self) -> range:
        assert self.shape is not None
        first, stop = self.params.slices or (0, self.shape[0])
        return range(first, stop)

    def _sinograms(self, rows: range | list[int]) -> np.ndarray:
        """``(rows, angles, columns)`` sinograms of the projections fed so far."""
        return np.ascontiguousarray(np.stack([p[rows] if isinstance(rows, list) else p[rows.start:rows.stop]
                                              for p in self.projections], axis=1))

    def _centre(self, required: bool) -> float:
        """The centre of rotation: the parameter, or found from opposite projections; the middle if none are yet."""
        assert self.shape is not None
        if self.params.centre_px is not None:
            return self.params.centre_px
        rows = self._rows()
        chosen = sorted({int(r) for r in np.linspace(rows.start, rows.stop - 1, min(8, len(rows))).round()})
        try:
            return _find(self._sinograms(chosen), np.asarray(self.angles), self.params.tolerance_deg, None)[0]
        except ValueError:
            if required:
                raise
            return (self.shape[1] - 1) / 2  # no opposite projections yet: the detector's middle, until there are

    def _recipe(self, centre: float) -> Any:
        from lightpipe.techniques.tomo.parts import Recipe

        assert self.shape is not None
        p = self.params
        return Recipe(p.algorithm, p.window, p.iterations, centre, self.shape[1], p.ring_filter_px)

    def _scaled(self, image: np.ndarray) -> np.ndarray:
        size = self.params.pixel_size_m
        return image if size is None else image / np.float32(size)

    def update(self) -> dict[str, Any] | None:
        every = self.params.update_every
        if not every or not self.projections or len(self.projections) - self.updated_at < every:
            return None
        from lightpipe.techniques.tomo.parts import reconstruct

        self.updated_at = len(self.projections)
        rows = self._rows()
        middle = rows.start + len(rows) // 2
        centre = self._centre(required=False)
        recipe = self._recipe(centre)
        if self.params.algorithm == "sirt":
            recipe = replace(recipe, iterations=self.params.live_iterations)
        self.live = reconstruct(self._sinograms([middle]), np.radians(self.angles), recipe, self.live)
        return {"slice": self._scaled(self.live[0]), "centre": np.float64(centre),
                "projections": np.int64(len(self.projections))}

    def finish(self) -> dict[str, Any]:
        if not self.projections:
            raise ValueError("no projection reached tomo_reconstruction; check its stream and the stages before it "
                             "(the scan's failed events say why)")
        from lightpipe.techniques.tomo.geometry import coordinates
        from lightpipe.techniques.tomo.parts import reconstruct_in_parts

        assert self.shape is not None
        centre = self._centre(required=True)
        rows = self._rows()
        volume = reconstruct_in_parts(self._sinograms(rows), np.radians(self.angles), self._recipe(centre),
                                      self.part_runner, self.params.parts or available_cores())
        size = self.params.pixel_size_m or 1.0
        across = coordinates(self.shape[1]).astype(np.float64) * size
        return {"volume": self._scaled(volume), "slice": self._scaled(volume[len(rows) // 2]),
                "z": np.arange(rows.start, rows.stop, dtype=np.float64) * size, "y": across, "x": across.copy(),
                "centre": np.float64(centre), "projections": np.int64(len(self.projections))}
