"""Scanning maps: per-event values placed at their scan positions (STXM, DPC, ROI counts, XRF lines).

A map lands on the scan's own grid when the positions form a raster (row by row, snake, a
single row or a single position): its rows and columns are found by grouping the sorted y
and x positions, so a 20 x 20 raster gives a 20 x 20 map, also when its positions jitter
by a small part of the step. Positions that form no raster (Fermat and Archimedean spirals,
a raster whose jitter blurs its rows and columns) are regridded onto a regular grid, and the
map says so.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, Mapping

import numpy as np
from scipy.interpolate import griddata
from scipy.spatial import QhullError, cKDTree

from lightpipe.core.bounds import PixelCoordinate
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, SolverStage, StageParams, param

#: A position deviating from its raster row or column by more than this fraction of the step is not on the grid.
_ON_GRID = 1e-6
#: Fewest of a raster's cells that must hold a position; fewer (a staggered, hexagonal pattern) is regridded.
_RASTER_FILL = 0.75
#: Most cells of a regridded map (800 MB of float64), so that a step far too fine is refused rather than filling memory.
_MAX_CELLS = 10**8


class MapParams(StageParams):
    """Parameters of :class:`ScanMap`."""

    step_m: float | None = param(None, "Grid step of a regridded map; default the median distance to the nearest "
                                 "scan position (a raster keeps its own rows and columns)", unit="m", gt=0, le=1.0)
    regrid: Literal["linear", "nearest"] = param(
        "linear", "How positions that form no raster are put on the grid: linear interpolation between them, "
        "or the mean of the events nearest each grid point"
    )


class LiveMapParams(MapParams):
    """Parameters of :class:`LiveScanMap`."""

    every: int = param(1, "Events between two updates of the live map (at most one update per chunk)", ge=1)


#: Rows a frame is summed in at a time: 128 rows of an EIGER 4M frame (1 MB) stay in the cache for their second sum.
BLOCK_ROWS = 128


def sum_dtype(dtype: np.dtype) -> type[np.generic]:
    """The dtype a frame of ``dtype`` is summed in: exact 64-bit integers for integer frames of up to 32 bits.

    Integers add up faster than float64 and, for frames of up to 2**32 pixels, cannot overflow; other
    frames (floats, 64-bit integers) are summed in float64.
    """
    if dtype.kind == "u" and dtype.itemsize <= 4 or dtype.kind == "b":
        return np.uint64
    if dtype.kind == "i" and dtype.itemsize <= 4:
        return np.int64
    return np.float64


def projections(frame: np.ndarray,
                disc: tuple[slice, slice, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Sums of a frame's rows and of its columns (float64), and of its pixels in a disc, in one pass over the frame.

    The total is ``rows.sum()``; the centre of mass is ``rows @ arange(ny) / total`` and
    ``columns @ arange(nx) / total``. Integer frames are summed exactly (:func:`sum_dtype`),
    and no float64 copy of the frame is made.

    Parameters
    ----------
    frame
        A 2-D frame.
    disc
        Rows and columns of a box and the mask of the disc's pixels in it, or ``None`` (the third sum is 0).

    Returns
    -------
    rows, columns, inside
        The sum of each row and of each column, and of the disc's pixels.
    """
    dtype = sum_dtype(frame.dtype)
    ny, nx = frame.shape
    rows = np.empty(ny, dtype)
    columns = np.zeros(nx, dtype)
    inside = dtype(0)
    for top in range(0, ny, BLOCK_ROWS):
        # a block's second sum (and the disc's) reads it from the cache, not from memory
        block = frame[top : top + BLOCK_ROWS]
        np.add.reduce(block, axis=1, dtype=dtype, out=rows[top : top + BLOCK_ROWS])
        columns += np.add.reduce(block, axis=0, dtype=dtype)
        if disc is not None:
            box_rows, box_columns, mask = disc
            first, last = max(top, box_rows.start), min(top + len(block), box_rows.stop)
            if first < last:
                where = mask[first - box_rows.start : last - box_rows.start]
                inside += np.sum(frame[first:last, box_columns], where=where, dtype=dtype)
    return rows.astype(np.float64), columns.astype(np.float64), float(inside)


def _groups(values: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Centres of the groups of sorted ``values`` that no step wider than ``gap`` splits, and each value's group.

    ``None`` when a group spreads wider than twice ``gap``: the values form no rows or columns.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered) > gap) + 1])
    stops = np.append(starts[1:], len(ordered))
    if np.any(ordered[stops - 1] - ordered[starts] > 2.0 * gap):
        return None
    centres = np.array([np.median(ordered[a:b]) for a, b in zip(starts, stops)])
    group = np.empty(len(values), dtype=np.intp)
    group[order] = np.repeat(np.arange(len(starts)), stops - starts)
    return centres, group


def _cell_means(shape: tuple[int, int], rows: np.ndarray, columns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of the values (``(n, k)``) that fall in each cell, ``(k, rows, columns)``; NaN where none falls."""
    sums = np.zeros((*shape, values.shape[1]))
    counts = np.zeros(shape)
    np.add.at(sums, (rows, columns), values)  # in acquisition order: the same bits on every engine
    np.add.at(counts, (rows, columns), 1)
    image = np.full(sums.shape, np.nan)
    np.divide(sums, counts[..., None], out=image, where=counts[..., None] > 0)
    return np.moveaxis(image, -1, 0)


def map_values(yx: np.ndarray, values: np.ndarray, params: Any) -> list[dict[str, Any]]:
    """Maps of several values per event on the scan's grid, one output dict (as :class:`ScanMap`'s) per value.

    Parameters
    ----------
    yx
        Positions ``(n, 2)``, m, in acquisition order.
    values
        ``(n, k)``: ``k`` values per event, each mapped on the same grid.
    params
        Gridding parameters (:class:`MapParams`: ``step_m``, ``regrid``).

    Raises
    ------
    ValueError
        When a position is not finite, or a regridded map would be too large.
    """
    bad = np.flatnonzero(~np.isfinite(yx).all(axis=1))
    if len(bad):
        raise ValueError(f"{len(bad)} of {len(yx)} events have a non-finite scan position (the first is "
                         f"{yx[bad[0]].tolist()}); map only events whose positions were recorded")
    unique = np.unique(yx, axis=0)
    if len(unique) == 1:
        return _outputs(values.mean(axis=0)[:, None, None], unique[:1, 0], unique[:1, 1], False, params)
    spacing = float(np.median(cKDTree(unique).query(unique, k=2)[0][:, 1]))
    raster = _raster(yx, values, spacing, params)
    if raster is not None:
        return raster
    return _regridded(yx, values, params.step_m or spacing, params)


def _raster(yx: np.ndarray, values: np.ndarray, spacing: float, params: Any) -> list[dict[str, Any]] | None:
    """The maps on the positions' own rows and columns, or ``None`` if they form no raster."""
    # a gap of half the nearest-neighbour distance separates rows; a row (jitter and all) must stay
    # narrower than that distance, which a spiral's positions, spread over every height, never do
    gap = spacing / 2.0
    rows, columns = _groups(yx[:, 0], gap), _groups(yx[:, 1], gap)
    if rows is None or columns is None:
        return None
    (y, row), (x, column) = rows, columns
    cells = len(np.unique(row * len(x) + column))
    if cells < _RASTER_FILL * len(y) * len(x):
        return None
    off_grid = max(np.abs(yx[:, 0] - y[row]).max(), np.abs(yx[:, 1] - x[column]).max())
    images = _cell_means((len(y), len(x)), row, column, values)
    return _outputs(images, y, x, bool(off_grid > _ON_GRID * spacing), params)


def _regridded(yx: np.ndarray, values: np.ndarray, step: float, params: Any) -> list[dict[str, Any]]:
    """The maps on a regular grid of ``step`` over the positions' bounding box."""
    low = yx.min(axis=0)
    size = np.rint((yx.max(axis=0) - low) / step).astype(int) + 1
    if float(size[0]) * float(size[1]) > _MAX_CELLS:
        raise ValueError(f"a grid of step {step:g} m over the scanned {np.ptp(yx, axis=0).tolist()} m has "
                         f"{size[0]} x {size[1]} cells, more than {_MAX_CELLS}; set a larger step_m")
    y, x = low[0] + step * np.arange(size[0]), low[1] + step * np.arange(size[1])
    if params.regrid == "linear":
        unique, where = np.unique(yx, axis=0, return_inverse=True)
        where = where.ravel()
        counts = np.bincount(where)
        means = np.stack([np.bincount(where, weights=v) / counts for v in values.T], axis=1)
        try:
            images = griddata(unique, means, tuple(np.meshgrid(y, x, indexing="ij")), method="linear")
            return _outputs(np.moveaxis(np.asarray(images), -1, 0), y, x, True, params)
        except QhullError:  # positions on one line span no triangle: average them instead
            pass
    cell = np.rint((yx - low) / step).astype(np.intp)
    return _outputs(_cell_means((len(y), len(x)), cell[:, 0], cell[:, 1], values), y, x, True, params)


def _outputs(images: np.ndarray, y: np.ndarray, x: np.ndarray, regridded: bool, params: Any) -> list[dict[str, Any]]:
    steps = np.concatenate([np.diff(y), np.diff(x)])
    step = float(np.median(steps)) if len(steps) else (params.step_m or np.nan)
    axes = {
        "y": np.asarray(y, dtype=np.float64),
        "x": np.asarray(x, dtype=np.float64),
        "origin": np.array([y[0], x[0]], dtype=np.float64),
        "step": np.float64(step),
        "regridded": np.bool_(regridded),
    }
    return [{"map": np.asarray(image, dtype=np.float64), **axes} for image in images]


class ScanMap(ReduceStage[Any]):
    """A 2-D map of a per-event value on the scan's grid, with its y and x axes in metres.

    A raster (row by row or snake, also one row or one position) keeps its own rows and
    columns: each event goes to the cell of its row and column, the mean where several do.
    The axes are the median position of each row and column, so an exact raster's axes are
    its positions; ``regridded`` is true when positions depart from them (jitter snapped to
    the nearest row and column). Positions that form no raster (spirals, a raster whose
    jitter blurs its rows and columns, a staggered pattern) are regridded onto a grid of
    step ``step_m`` (default the median nearest-neighbour distance) covering their bounding
    box: ``regrid: linear`` interpolates between the positions (NaN outside their convex
    hull), ``regrid: nearest`` averages the events nearest each grid point (NaN where none
    is). Positions on one line have no hull to interpolate in and are always averaged.
    """

    name = "scan_map"
    Params = MapParams
    inputs = {
        "value": Port(ndim=0, dtype="number", description="Value to map"),
        "y": Port(ndim=0, dtype="number", unit="m", description="Scan position, vertical"),
        "x": Port(ndim=0, dtype="number", unit="m", description="Scan position, horizontal"),
    }
    outputs = {
        "map": Port(ndim=2, dtype="float", axes=("y", "x"), main=True,
                    description="Mean value per grid cell, rows along y (NaN where no event is)",
                    scan=True),
        "y": Port(ndim=1, dtype="float", unit="m", description="Vertical position of each map row", scan=True),
        "x": Port(ndim=1, dtype="float", unit="m", description="Horizontal position of each map column", scan=True),
        "origin": Port(ndim=1, dtype="float", unit="m", description="Position (y, x) of cell (0, 0)", scan=True),
        "step": Port(ndim=0, dtype="float", unit="m", scan=True,
                     description="Median distance between neighbouring rows and columns (NaN for one position)"),
        "regridded": Port(ndim=0, dtype="bool", scan=True,
                          description="True when positions were moved onto the grid (see regrid)"),
    }


    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        """The map in the unit of the value mapped."""
        unit = inputs["value"].unit if "value" in inputs else None
        return {k: replace(port, unit=unit) if k == "map" and unit else port for k, port in cls.outputs.items()}

    def partial(self, value: Any, y: Any, x: Any) -> Any:
        return np.array([[float(y), float(x), float(value)]])

    def merge(self, left: Any, right: Any) -> Any:
        return np.concatenate([left, right])

    def finish(self, total: Any) -> dict[str, Any]:
        if total is None:
            raise ValueError("no event arrived to map; check that the events carry the value and the y and x positions")
        return map_values(total[:, :2], total[:, 2:], self.params)[0]


class DpcParams(StageParams):
    """Parameters of :class:`TransmissionDpc`."""

    centre_px: tuple[PixelCoordinate, PixelCoordinate] | None = param(
        None, "Reference centre (y, x); default the middle of the frame", unit="px"
    )


class TransmissionDpc(MapStage):
    """Transmitted intensity and differential phase contrast (centre-of-mass shift) of a diffraction frame."""

    name = "transmission_dpc"
    Params = DpcParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Diffraction frame")}
    outputs = {
        "transmission": Port(ndim=0, dtype="float", unit="counts", description="Total counts (STXM)"),
        "dpc_y": Port(ndim=0, dtype="float", unit="px", description="Centre-of-mass shift, vertical"),
        "dpc_x": Port(ndim=0, dtype="float", unit="px", description="Centre-of-mass shift, horizontal"),
    }

    def process(self, frame: Any) -> dict[str, Any]:
        f = np.asarray(frame)
        rows, columns, _ = projections(f)
        total = rows.sum()
        if total <= 0:
            raise ValueError("the frame holds no counts")
        cy = rows @ np.arange(len(rows), dtype=np.float64) / total
        cx = columns @ np.arange(len(columns), dtype=np.float64) / total
        ry, rx = self.params.centre_px if self.params.centre_px is not None else (f.shape[0] / 2.0, f.shape[1] / 2.0)
        return {"transmission": np.float64(total), "dpc_y": np.float64(cy - ry), "dpc_x": np.float64(cx - rx)}


class LiveScanMap(SolverStage):
    """A scan map that grows while the scan runs: the map of the events so far after every chunk, then the final one.

    The same map as ``scan_map`` (the same grid, the same cells) once the scan
    has ended; while it runs, each update sends the map of the events seen so
    far to the sinks that show intermediate results (the live view), as a
    solver's intermediate results go. ``scan_map`` is a reduce stage: its
    partial results merge on the workers and reach the sinks only at the end.
    """

    name = "scan_map_live"
    Params = LiveMapParams
    inputs = ScanMap.inputs
    outputs = ScanMap.outputs

    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        """The map in the unit of the value mapped."""
        return ScanMap.outputs_for(params, inputs)

    def setup(self, scan: Any) -> None:
        self._rows: list[tuple[float, float, float]] = []
        self._shown = 0

    def feed(self, index: int, value: Any, y: Any, x: Any) -> None:
        self._rows.append((float(y), float(x), float(value)))

    def update(self) -> dict[str, Any] | None:
        seen = len(self._rows)
        if seen - self._shown < self.params.every or not seen:
            return None
        self._shown = seen
        total = np.asarray(self._rows)
        try:
            return map_values(total[:, :2], total[:, 2:], self.params)[0]
        except ValueError:  # a position not recorded yet: the final map says so
            return None

    def finish(self) -> dict[str, Any]:
        if not getattr(self, "_rows", None):
            raise ValueError("no event arrived to map; check that the events carry the value and the y and x positions")
        total = np.asarray(self._rows)
        return map_values(total[:, :2], total[:, 2:], self.params)[0]
