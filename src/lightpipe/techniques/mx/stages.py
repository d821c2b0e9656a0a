"""Rotation-crystallography spot finding: ``dispersion_spots`` per image, ``spot_table`` per scan.

``dispersion_spots`` is a map stage: it runs on any worker, one image at a
time, as Spark-DIALS maps DIALS's per-image spot finding over Spark. It
finds the image's strong spots with DIALS's dispersion algorithm
(:mod:`~lightpipe.techniques.mx.dispersion`) and gives their count, their
columns (x, y, intensity, pixels, box) and the image's strong pixels.
``spot_table`` gathers those columns into the scan's table of spots, image by
image in acquisition order, and the spot count of every image: the curve a
crystallographer looks at first (DIALS's ``dials.spot_counts_per_image``),
against the rotation angle (:mod:`~lightpipe.techniques.mx.rotation`). It also
joins the strong pixels of consecutive images into 3-D spots, one per
reflection, as ``dials.find_spots`` does by default
(:mod:`~lightpipe.techniques.mx.join`): that needs the neighbouring images, so
it is done once per scan, where every image's pixels meet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import model_validator

from lightpipe.core.bounds import MAX_COUNT, PathText
from lightpipe.core.errors import LightpipeError
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, StageParams, param
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.mx.dispersion import find_spots
from lightpipe.techniques.mx.join import join_images
from lightpipe.techniques.mx.pixels import mask_shape_problem, read_mask, valid_pixels
from lightpipe.techniques.mx.rotation import rotation_of

__all__ = ["DispersionParams", "DispersionSpots", "SpotTable", "SpotTableParams"]

#: Half size of the local box: at most this many pixels each way (a 201 x 201 box).
MAX_KERNEL = 100


class DispersionParams(StageParams):
    """Parameters of :class:`DispersionSpots`: DIALS's ``spotfinder.threshold.dispersion`` and ``filter``."""

    kernel_size: tuple[int, int] = param((3, 3), "Half sizes [ny, nx] of the local box (DIALS's kernel_size, in its "
                                         "order): a box of 2 n + 1 pixels each way", unit="px")
    gain: float = param(1.0, "Detector gain, ADU per photon (1 for photon-counting detectors)", gt=0, le=1e6)
    sigma_background: float = param(6.0, "Standard errors the box's dispersion index must exceed Poisson noise by "
                                    "(DIALS's sigma_background)", ge=0, le=1e6)
    sigma_strong: float = param(3.0, "Standard deviations a strong pixel stands above the box's mean "
                                "(DIALS's sigma_strong)", ge=0, le=1e6)
    global_threshold: float = param(0.0, "Pixels at or below this are never strong (DIALS's global_threshold)",
                                    unit="counts", ge=0, le=1e12)
    min_local: int = param(2, "Fewest valid pixels in the box to judge a pixel; 0: the whole box (DIALS's "
                           "min_local)", ge=0, le=MAX_COUNT)
    min_spot_size: int = param(3, "Fewest pixels in a spot (DIALS's auto for pixel-array detectors; 6 for CCDs)",
                               ge=1, le=MAX_COUNT)
    max_spot_size: int = param(1000, "Most pixels in a spot", ge=1, le=100_000_000)
    max_separation: float | None = param(2.0, "Spots whose brightest pixel is farther than this from their "
                                         "centroid are dropped (DIALS's max_separation); none: keep them",
                                         unit="px", ge=0, le=1e6)
    max_strong_fraction: float = param(0.25, "An image with a larger fraction of strong pixels fails (DIALS's "
                                       "max_strong_pixel_fraction): ice, a direct beam, wrong parameters", gt=0, le=1)
    mask: PathText | None = param(None, "Detector mask: .npy, an image (EDF, TIFF, CBF) or file.h5::/dataset, "
                                  "non-zero where a pixel is bad")
    min_valid: float | None = param(0.0, "Pixels below this are left out (a PILATUS writes -1 in gaps, -2 in bad "
                                    "pixels); none: keep every value", unit="counts", ge=-1e12, le=1e12)
    max_valid: float | None = param(None, "Pixels above this are left out (saturated); default for unsigned "
                                    "frames the dtype's largest value minus one", unit="counts", ge=-1e12, le=1e12)

    @model_validator(mode="after")
    def _consistent(self) -> DispersionParams:
        ky, kx = self.kernel_size
        if not (0 < ky <= MAX_KERNEL and 0 < kx <= MAX_KERNEL):
            raise ValueError(f"kernel_size {list(self.kernel_size)} must be two half sizes from 1 to {MAX_KERNEL}, "
                             "e.g. [3, 3] for a 7 x 7 box")
        box = (2 * ky + 1) * (2 * kx + 1)
        if self.min_local == 1 or self.min_local > box:
            raise ValueError(f"min_local {self.min_local} must be 0 (the whole box) or from 2 to {box}, the pixels "
                             f"of a kernel_size {list(self.kernel_size)} box")
        if self.max_spot_size < self.min_spot_size:
            raise ValueError(f"max_spot_size {self.max_spot_size} is below min_spot_size {self.min_spot_size}")
        if self.min_valid is not None and self.max_valid is not None and self.max_valid < self.min_valid:
            raise ValueError(f"max_valid {self.max_valid} is below min_valid {self.min_valid}")
        if self.mask is not None:
            try:  # a missing or unreadable mask is refused when the pipeline loads, naming the file
                read_mask(self.mask)
            except LightpipeError as exc:
                raise ValueError(str(exc)) from None
        return self


_COLUMNS = {
    "x": Port(ndim=1, dtype="float", unit="px", description="Spot centroids, column (0: centre of the first pixel)"),
    "y": Port(ndim=1, dtype="float", unit="px", description="Spot centroids, row"),
    "intensity": Port(ndim=1, dtype="float", unit="counts", description="Sum of each spot's counts"),
    "pixels": Port(ndim=1, dtype="int", description="Strong pixels in each spot"),
    "bbox_x0": Port(ndim=1, dtype="int", unit="px", description="First column of each spot"),
    "bbox_x1": Port(ndim=1, dtype="int", unit="px", description="One past the last column of each spot"),
    "bbox_y0": Port(ndim=1, dtype="int", unit="px", description="First row of each spot"),
    "bbox_y1": Port(ndim=1, dtype="int", unit="px", description="One past the last row of each spot"),
}
#: Every strong pixel of an image, spots kept or not: what joining images into 3-D spots starts from.
_STRONG = {
    "strong_x": Port(ndim=1, dtype="int", unit="px", description="Column of each strong pixel, row by row"),
    "strong_y": Port(ndim=1, dtype="int", unit="px", description="Row of each strong pixel"),
    "strong_counts": Port(ndim=1, dtype="float", unit="counts", description="Counts of each strong pixel"),
}


class DispersionSpots(MapStage):
    """Find an image's strong spots with DIALS's dispersion algorithm: count, centroids, intensities, boxes.

    A pixel is strong when its local box is not Poisson background (index of
    dispersion above ``gain`` by ``sigma_background`` standard errors) and it
    stands ``sigma_strong`` above the box's mean; strong pixels sharing an edge
    form a spot of ``min_spot_size`` to ``max_spot_size`` pixels whose peak is
    within ``max_separation`` of its centroid. The mask file,
    NaN, negative and saturated pixels are left out (``min_valid``,
    ``max_valid``). Positions: 0 is the centre of the first pixel (DIALS's
    ``xyzobs.px`` adds 0.5). Every strong pixel (``strong_x``, ``strong_y``,
    ``strong_counts``: 16 bytes each, a few thousand per image) goes on to
    ``spot_table``, which joins consecutive images into 3-D spots.
    """

    name = "dispersion_spots"
    Params: ClassVar[type[StageParams]] = DispersionParams
    params: DispersionParams
    wants_index = True
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Rotation image")}
    outputs = {
        "spot_count": Port(ndim=0, dtype="int", description="Strong spots on the image"),
        "image": Port(ndim=0, dtype="int", description="Image number in the scan's data, from 1 (as DIALS counts)"),
        **_COLUMNS,
        **_STRONG,
    }
    frame_outputs: ClassVar[dict[str, str] | None] = {}

    def setup(self, scan: Scan) -> None:
        p = self.params
        self._first = scan.streams["data"].start if "data" in scan.streams else 0
        self._bad = read_mask(p.mask) if p.mask is not None else None
        shape = scan.metadata.get("frame_shape")
        if isinstance(shape, (list, tuple)) and len(shape) == 2:
            self._check_mask(tuple(shape))

    def _check_mask(self, shape: tuple[int, ...]) -> None:
        """Raise, naming the mask file, when the mask does not fit frames of ``shape``."""
        why = mask_shape_problem(self._bad, str(self.params.mask), shape) if self._bad is not None else None
        if why:
            raise LightpipeError(f"dispersion_spots: {why}")

    def process(self, frame: Any, index: int) -> dict[str, Any]:  # type: ignore[override]
        p = self.params
        image = np.asarray(to_numpy(frame))
        self._check_mask(image.shape)
        valid = valid_pixels(image, self._bad, p.min_valid, p.max_valid)
        spots = find_spots(image, valid, kernel=p.kernel_size, gain=p.gain, sigma_background=p.sigma_background,
                           sigma_strong=p.sigma_strong, global_threshold=p.global_threshold, min_local=p.min_local,
                           min_spot_size=p.min_spot_size, max_spot_size=p.max_spot_size,
                           max_separation=p.max_separation)
        if spots.strong > p.max_strong_fraction * image.size:
            raise ValueError(f"{spots.strong} of {image.size} pixels are strong, more than max_strong_fraction="
                             f"{p.max_strong_fraction}: ice rings, a direct beam or a wrong gain? Check the image, "
                             "mask the region, or raise sigma_background or global_threshold")
        return {"spot_count": np.int64(len(spots)), "image": np.int64(index - self._first + 1), "x": spots.x,
                "y": spots.y, "intensity": spots.intensity, "pixels": spots.pixels, "bbox_x0": spots.bbox[:, 0],
                "bbox_x1": spots.bbox[:, 1], "bbox_y0": spots.bbox[:, 2], "bbox_y1": spots.bbox[:, 3],
                "strong_x": spots.strong_x, "strong_y": spots.strong_y, "strong_counts": spots.strong_counts}


@dataclass
class Gathered:
    """Partial result of :class:`SpotTable`: images in acquisition order, with their spots and strong pixels."""

    images: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    strong: list[int] = field(default_factory=list)
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)


_TABLE = tuple(_COLUMNS)
#: The columns of a spot joined across images (``spot3d_*``), after ``spot3d_x``, ``spot3d_y``.
_JOINED = {
    "spot3d_x": Port(ndim=1, dtype="float", unit="px", scan=True, description="Centroid of each 3-D spot, column"),
    "spot3d_y": Port(ndim=1, dtype="float", unit="px", scan=True, description="Centroid of each 3-D spot, row"),
    "spot3d_z": Port(ndim=1, dtype="float", scan=True,
                     description="Centroid of each 3-D spot along the scan, in image numbers (k: image k's middle)"),
    "spot3d_rotation_angle": Port(ndim=1, dtype="float", unit="deg", scan=True,
                                  description="Rotation angle of each 3-D spot's centroid"),
    "spot3d_intensity": Port(ndim=1, dtype="float", unit="counts", scan=True,
                             description="Sum of each 3-D spot's counts over its images"),
    "spot3d_pixels": Port(ndim=1, dtype="int", scan=True, description="Strong pixels in each 3-D spot, all images"),
    "spot3d_first_image": Port(ndim=1, dtype="int", scan=True, description="First image of each 3-D spot"),
    "spot3d_last_image": Port(ndim=1, dtype="int", scan=True, description="Last image of each 3-D spot"),
    "spot3d_bbox_x0": Port(ndim=1, dtype="int", unit="px", scan=True, description="First column of each 3-D spot"),
    "spot3d_bbox_x1": Port(ndim=1, dtype="int", unit="px", scan=True,
                           description="One past the last column of each 3-D spot"),
    "spot3d_bbox_y0": Port(ndim=1, dtype="int", unit="px", scan=True, description="First row of each 3-D spot"),
    "spot3d_bbox_y1": Port(ndim=1, dtype="int", unit="px", scan=True,
                           description="One past the last row of each 3-D spot"),
}


class SpotTableParams(StageParams):
    """Parameters of :class:`SpotTable`."""

    omega_start_deg: float | None = param(None, "Rotation angle at the start of the first image; default the scan's "
                                          "metadata (omega_start_deg, or each image's omega_deg)", unit="deg",
                                          ge=-1e6, le=1e6)
    omega_increment_deg: float | None = param(None, "Rotation per image; default the scan's metadata "
                                              "(omega_increment_deg)", unit="deg", gt=0, le=1e6)
    join_images: bool = param(True, "Also join strong pixels that touch on consecutive images into one 3-D spot "
                              "per reflection (spot3d_*), as dials.find_spots does by default")
    min_spot_size: int = param(3, "Fewest pixels in a 3-D spot, all its images together (DIALS applies "
                               "spotfinder.filter.min_spot_size to the joined spot): as dispersion_spots's",
                               ge=1, le=MAX_COUNT)
    max_spot_size: int = param(1000, "Most pixels in a 3-D spot, all its images together: as dispersion_spots's",
                               ge=1, le=100_000_000)
    max_separation: float | None = param(2.0, "3-D spots whose brightest pixel is farther than this from their "
                                         "centroid, in pixels and images, are dropped: as dispersion_spots's; none: "
                                         "keep them", unit="px", ge=0, le=1e6)

    @model_validator(mode="after")
    def _sizes(self) -> SpotTableParams:
        if self.max_spot_size < self.min_spot_size:
            raise ValueError(f"max_spot_size {self.max_spot_size} is below min_spot_size {self.min_spot_size}")
        return self


class SpotTable(ReduceStage[Gathered]):
    """The scan's strong spots per image and joined across images (3-D), and the spot count per image.

    Rows follow acquisition order, image by image, so the tables are the same
    on one worker or many. The default plot is ``spot_count`` against
    ``rotation_angle``, the middle of each image's rotation in degrees, from
    the parameters or the scan's metadata (``omega_start_deg`` and
    ``omega_increment_deg``, or each image's own ``omega_deg``; NaN when
    neither says). An image whose spot finding failed has no row and no point
    on the curve, and no 3-D spot joins across it. With ``join_images`` the
    strong pixels of consecutive images that touch form one 3-D spot
    (``spot3d_*``: centroid, image range, intensity, pixels, box), sized and
    filtered as a whole, as ``dials.find_spots`` finds spots by default.
    """

    name = "spot_table"
    Params: ClassVar[type[StageParams]] = SpotTableParams
    params: SpotTableParams
    inputs = {"image": Port(ndim=0, dtype="int", description="Image number (dispersion_spots.image)"),
              **_COLUMNS, **_STRONG}
    outputs = {
        "spot_count": Port(ndim=1, dtype="int", scan=True, axes=("rotation_angle",), main=True,
                           description="Strong spots on each image"),
        "image": Port(ndim=1, dtype="int", scan=True, description="Image numbers, from 1"),
        "rotation_angle": Port(ndim=1, dtype="float", unit="deg", scan=True,
                               description="Rotation angle at the middle of each image (NaN when the scan does not "
                                           "say)"),
        "spot_image": Port(ndim=1, dtype="int", scan=True, description="Image of each spot"),
        "spot_rotation_angle": Port(ndim=1, dtype="float", unit="deg", scan=True,
                                    description="Rotation angle at the middle of each spot's image"),
        **{f"spot_{name}": Port(ndim=port.ndim, dtype=port.dtype, unit=port.unit, scan=True,
                                description=port.description.replace("each spot", "the spot"))
           for name, port in _COLUMNS.items()},
        **_JOINED,
    }

    @classmethod
    def outputs_for(cls, params: Any, inputs: Any) -> dict[str, Port]:
        """All outputs; without ``join_images``, none of the 3-D spots' (``spot3d_*``)."""
        if params.join_images:
            return dict(cls.outputs)
        return {name: port for name, port in cls.outputs.items() if name not in _JOINED}

    def setup(self, scan: Scan) -> None:
        images = len(scan.streams["data"]) if "data" in scan.streams else None
        self._rotation = rotation_of(scan.metadata, self.params.omega_start_deg, self.params.omega_increment_deg,
                                     images)
        self._gathered = _TABLE + tuple(_STRONG) if self.params.join_images else _TABLE

    def partial(self, image: Any, **columns: Any) -> Gathered:  # type: ignore[override]
        arrays = {name: np.asarray(columns[name]) for name in self._gathered}
        for group in (_TABLE, tuple(_STRONG)):
            lengths = {name: len(arrays[name]) for name in group if name in arrays}
            if len(set(lengths.values())) > 1:
                raise ValueError("spot_table: the columns of one image differ in length "
                                 f"({', '.join(f'{k} {n}' for k, n in lengths.items())}); connect every input to "
                                 "the same dispersion_spots stage")
        strong = len(arrays["strong_x"]) if "strong_x" in arrays else 0
        return Gathered([int(image)], [len(arrays["x"])], [strong], {name: [a] for name, a in arrays.items()})

    def merge(self, left: Gathered, right: Gathered) -> Gathered:
        left.images.extend(right.images)
        left.counts.extend(right.counts)
        left.strong.extend(right.strong)
        for name, parts in right.columns.items():
            left.columns.setdefault(name, []).extend(parts)
        return left

    def finish(self, total: Gathered | None) -> dict[str, Any]:
        if total is None:
            raise ValueError("no image reached spot_table; check the source's data stream and that dispersion_spots "
                             "succeeded on some images")
        images = np.asarray(total.images, np.int64)
        counts = np.asarray(total.counts, np.int64)
        angles = self._angles(images)
        out: dict[str, Any] = {"spot_count": counts, "image": images, "rotation_angle": angles,
                               "spot_image": np.repeat(images, counts),
                               "spot_rotation_angle": np.repeat(angles, counts)}
        for name, port in _COLUMNS.items():
            out[f"spot_{name}"] = _joined(total.columns[name], port)
        if self.params.join_images:
            out.update(self._spots_3d(total, images, angles))
        return out

    def _spots_3d(self, total: Gathered, images: np.ndarray, angles: np.ndarray) -> dict[str, np.ndarray]:
        """The ``spot3d_*`` columns: the strong pixels of all images joined (:func:`join_images`)."""
        p = self.params
        pixel_image = np.repeat(images, total.strong)
        counts = _joined(total.columns["strong_counts"], _STRONG["strong_counts"])
        spots = join_images(pixel_image, _joined(total.columns["strong_x"], _STRONG["strong_x"]),
                            _joined(total.columns["strong_y"], _STRONG["strong_y"]), counts,
                            min_spot_size=p.min_spot_size, max_spot_size=p.max_spot_size,
                            max_separation=p.max_separation)
        # a spot's angle: the count-weighted mean of its pixels' image angles (start + (z - 0.5) width when even)
        inside = spots.pixel_spot >= 0
        pixel_angle = np.repeat(angles, total.strong)[inside]
        weights = counts[inside]
        with np.errstate(invalid="ignore", divide="ignore"):
            angle = np.bincount(spots.pixel_spot[inside], weights * pixel_angle, minlength=len(spots)) / \
                np.bincount(spots.pixel_spot[inside], weights, minlength=len(spots))
        return {"spot3d_x": spots.x, "spot3d_y": spots.y, "spot3d_z": spots.z, "spot3d_rotation_angle": angle,
                "spot3d_intensity": spots.intensity, "spot3d_pixels": spots.pixels,
                "spot3d_first_image": spots.first_image, "spot3d_last_image": spots.last_image,
                "spot3d_bbox_x0": spots.bbox[:, 0], "spot3d_bbox_x1": spots.bbox[:, 1],
                "spot3d_bbox_y0": spots.bbox[:, 2], "spot3d_bbox_y1": spots.bbox[:, 3]}

    def _angles(self, images: np.ndarray) -> np.ndarray:
        """The rotation angle at the middle of each image, in degrees (NaN when the scan does not say)."""
        if self._rotation is None:
            return np.full(images.shape, np.nan)
        return self._rotation.middle(images)


def _joined(parts: list[np.ndarray], port: Port) -> np.ndarray:
    """The images' arrays of one column end to end, in the port's dtype family (float64 or int64)."""
    dtype = np.float64 if port.dtype == "float" else np.int64
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
