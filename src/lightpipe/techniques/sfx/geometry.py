"""Detector geometry for peak finding: where each pixel of a frame sits, and which pixels to leave out.

A frame is the detector's data as stored (CrystFEL's "slab"): one 2-D array,
rows along ``ss`` (slow scan, y) and columns along ``fs`` (fast scan, x). A
:class:`DetectorGeometry` holds one or more panels, each a rectangle of the
slab placed in the lab by a corner and two pixel vectors, and a mask of
pixels left out (panel gaps, bad pixels, bad regions). Peak finding needs
from it the distance of every pixel from the beam, in pixels
(:meth:`DetectorGeometry.radius_px`), which panel each pixel belongs to
(peaks never join across panels) and the mask.

Three places give a geometry:

* a CrystFEL ``.geom`` file (:func:`read_crystfel_geom`): panels with
  ``min_fs``/``max_fs``/``min_ss``/``max_ss``, ``res``, ``corner_x``/``corner_y``,
  ``fs``/``ss`` vectors, ``clen`` or ``coffset``, ``bad*`` regions and
  ``no_index`` panels. Slab pixels no panel covers (the gaps between modules)
  are masked. A keyword CrystFEL does not define is an error naming the file
  and the line;
* a pyFAI PONI file (:func:`read_poni`): one flat detector, its radius map and
  its own mask (a Pilatus's module gaps) from pyFAI;
* the scan's metadata (:func:`from_metadata`), as the ``hdf5`` source reads it
  from a NeXus/NXmx file (beam centre in pixels, pixel size, distance), and
  the module layout a simulated detector declares (its gaps masked).

Coordinates follow CrystFEL's geometry files: a panel pixel ``(fs, ss)``
(counted from the panel's first pixel) has its *corner* at
``corner + fs * fs_vector + ss * ss_vector`` in pixels of the panel,
relative to the beam, so its centre is half a pixel further along both.
Peak positions elsewhere in this package are slab coordinates with the
centre of the first pixel at 0, as Cheetah and OM write them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightpipe.core.errors import LightpipeError

__all__ = [
    "CRYSTFEL_GLOBAL_KEYS",
    "CRYSTFEL_PANEL_KEYS",
    "DetectorGeometry",
    "GeometryError",
    "Panel",
    "from_metadata",
    "read_crystfel_geom",
    "read_geometry",
    "read_mask",
    "read_poni",
    "write_crystfel_geom",
]


class GeometryError(LightpipeError):
    """A geometry or mask file that cannot be used: the message names the file (and line) and what to change."""


#: Keys a CrystFEL geometry file may give per panel (``panel/key = value``), or globally as every later panel's default.
CRYSTFEL_PANEL_KEYS = frozenset({
    "min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y", "fs", "ss", "res", "clen", "coffset",
    "adu_per_eV", "adu_per_photon", "max_adu", "data", "dim0", "dim1", "dim2", "dim3", "mask", "mask_file",
    "mask0_data", "mask0_file", "mask0_goodbits", "mask0_badbits", "mask1_data", "mask1_file", "mask1_goodbits",
    "mask1_badbits", "mask2_data", "mask2_file", "mask2_goodbits", "mask2_badbits", "mask_good", "mask_bad",
    "satmap", "satmap_file", "no_index", "ignore", "badrow_direction", "mask_edge_pixels", "flag_lessthan",
    "flag_morethan", "flag_equal", "rail_x", "rail_y", "rail_z", "clen_for_centering",
})
#: Keys a CrystFEL geometry file may give only globally.
CRYSTFEL_GLOBAL_KEYS = frozenset({
    "photon_energy", "photon_energy_bandwidth", "photon_energy_scale", "bandwidth", "wavelength",
    "electron_voltage", "peak_list", "peak_list_type", "detector_shift_x", "detector_shift_y", "peak_info_location",
    "hdf5_peak_path", "mask_good", "mask_bad",
})
#: Keys of a bad region (``bad<name>/key = value``).
CRYSTFEL_BAD_KEYS = frozenset({"min_x", "max_x", "min_y", "max_y", "min_fs", "max_fs", "min_ss", "max_ss", "panel"})
_VECTOR = re.compile(r"([+-]?\s*(?:\d+\.?\d*|\.\d+)?(?:[eE][+-]?\d+)?)\s*([xyz])")


@dataclass(frozen=True)
class Panel:
    """One rectangle of the slab and where it sits.

    Attributes
    ----------
    name
        The panel's name in the geometry file.
    min_fs, max_fs, min_ss, max_ss
        First and last slab column (fs) and row (ss) of the panel, inclusive.
    corner_x, corner_y
        Lab position of the corner of the panel's first pixel, in its pixels, relative to the beam.
    fs, ss
        Lab (x, y) step of one pixel along fs and along ss, in pixels.
    res
        Pixels per metre.
    clen_m
        Camera length (sample to panel), m, where known.
    no_index
        The panel is left out of peak finding.
    """

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    corner_x: float
    corner_y: float
    fs: tuple[float, float] = (1.0, 0.0)
    ss: tuple[float, float] = (0.0, 1.0)
    res: float = 1.0 / 75e-6
    clen_m: float | None = None
    no_index: bool = False


@dataclass(frozen=True)
class BadRegion:
    """A region left out: a slab rectangle (fs/ss, optionally on one panel) or a lab rectangle (x/y, pixels)."""

    name: str
    bounds: tuple[float, float, float, float]  # min, max along fs or x; min, max along ss or y
    lab: bool
    panel: str | None = None


@dataclass
class DetectorGeometry:
    """Panels on a slab of ``shape`` pixels, and a mask of pixels left out.

    Attributes
    ----------
    shape
        Slab shape (ny, nx): the frames' shape.
    panels
        The panels; pixels outside every panel are masked.
    source
        Where the geometry came from, for messages (a file name, ``scan metadata``).
    bad
        Pixels left out besides the gaps (``True`` = left out), or ``None``.
    bad_regions
        Regions left out, from a ``.geom`` file.
    radius
        Distance of each pixel from the beam in pixels, where it does not follow
        from flat panels (pyFAI's, with tilts); ``None``: from the panels.
    """

    shape: tuple[int, int]
    panels: list[Panel]
    source: str
    bad: np.ndarray | None = None
    bad_regions: list[BadRegion] = field(default_factory=list)
    radius: np.ndarray | None = None

    def _pixel_positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lab x and y (pixels, of each pixel's centre) and panel number (-1: no panel) of every slab pixel."""
        ny, nx = self.shape
        x = np.zeros(self.shape, np.float64)
        y = np.zeros(self.shape, np.float64)
        panel = np.full(self.shape, -1, np.int32)
        for k, p in enumerate(self.panels):
            ss, fs = np.mgrid[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1].astype(np.float64)
            fs_rel, ss_rel = fs - p.min_fs + 0.5, ss - p.min_ss + 0.5
            window = (slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1))
            x[window] = p.corner_x + fs_rel * p.fs[0] + ss_rel * p.ss[0]
            y[window] = p.corner_y + fs_rel * p.fs[1] + ss_rel * p.ss[1]
            panel[window] = k
        return x, y, panel

    def radius_px(self) -> np.ndarray:
        """Distance of every pixel's centre from the beam, in pixels of its panel (float32, slab shape)."""
        if self.radius is not None:
            return self.radius
        x, y, _ = self._pixel_positions()
        return np.hypot(x, y).astype(np.float32)

    def panel_index(self) -> np.ndarray:
        """Panel number of every slab pixel (int32; -1 where no panel covers it)."""
        return self._pixel_positions()[2]

    def mask(self) -> np.ndarray:
        """Pixels left out (``True``): no panel, a ``no_index`` panel, a bad region or a bad pixel."""
        x, y, panel = self._pixel_positions()
        out = panel < 0
        for k, p in enumerate(self.panels):
            if p.no_index:
                out |= panel == k
        names = [p.name for p in self.panels]
        for region in self.bad_regions:
            a0, a1, b0, b1 = region.bounds
            if region.lab:
                inside = (x >= a0) & (x <= a1) & (y >= b0) & (y <= b1)
            else:
                ss, fs = np.indices(self.shape)
                inside = (fs >= a0) & (fs <= a1) & (ss >= b0) & (ss <= b1)
            if region.panel is not None:
                inside &= panel == names.index(region.panel)
            out |= inside
        if self.bad is not None:
            out |= self.bad
        return out

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`GeometryError` when frames of ``shape`` are not this geometry's slab."""
        if tuple(shape) != tuple(self.shape):
            raise GeometryError(
                f"the geometry from {self.source} describes {self.shape[0]} x {self.shape[1]} pixel frames but the "
                f"frames are {shape[0]} x {shape[1]}: give the geometry of this detector (its .geom, PONI or NeXus "
                "file), or read the frames the geometry was made for")


def _geom_value(path: Path, line: int, key: str, text: str) -> Any:
    """A value of a ``.geom`` key in the type the key has."""
    try:
        if key in ("min_fs", "max_fs", "min_ss", "max_ss"):
            return int(text)
        if key in ("corner_x", "corner_y", "res", "coffset", "min_x", "max_x", "min_y", "max_y"):
            return float(text)
        if key == "clen":
            return float(text)  # a number; an HDF5 path (a clen read per frame) is refused below
        if key in ("fs", "ss"):
            parts = dict.fromkeys("xyz", 0.0)
            compact = text.replace(" ", "")
            found = _VECTOR.findall(compact)
            if not found or "".join(f"{n}{a}" for n, a in found) != compact:
                raise ValueError(text)
            for number, axis in found:
                parts[axis] = float(number + "1" if number in ("", "+", "-") else number)
            return parts["x"], parts["y"]
        if key in ("no_index", "ignore"):
            return text.strip().lower() not in ("0", "false", "no")
    except ValueError:
        raise GeometryError(f"{path}:{line}: {key} = {text!r} is not a valid value; e.g. "
                            f"{'fs = +1.0x +0.0y' if key in ('fs', 'ss') else key + ' = 0'}") from None
    return text


def read_crystfel_geom(path: str | Path, shape: tuple[int, int] | None = None) -> DetectorGeometry:
    """Read a CrystFEL geometry file.

    Parameters
    ----------
    path
        The ``.geom`` file.
    shape
        The frames' shape (ny, nx); default the smallest slab that holds every panel.

    Raises
    ------
    GeometryError
        On an unknown keyword, a bad value, a panel without its extent, or a
        ``clen`` given as an HDF5 path, naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise GeometryError(f"cannot read the geometry file {path}: {exc.strerror or exc}; check the path") from None
    defaults: dict[str, Any] = {}
    panels: dict[str, dict[str, Any]] = {}
    bad: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.split(";", 1)[0].strip()
        if not text:
            continue
        if "=" not in text:
            raise GeometryError(f"{path}:{number}: {text!r} is not 'key = value'; a comment starts with ';'")
        key, _, value = (part.strip() for part in text.partition("="))
        owner, _, name = key.rpartition("/")
        if key.startswith("rigid_group") or key.startswith("rigid_group_collection"):
            continue  # groups for refinement: no effect on where pixels are
        if owner.startswith("bad"):
            if name not in CRYSTFEL_BAD_KEYS:
                raise GeometryError(f"{path}:{number}: unknown keyword {name!r} for bad region {owner!r}; a bad "
                                    f"region takes {', '.join(sorted(CRYSTFEL_BAD_KEYS))}")
            bad.setdefault(owner, {})[name] = value if name == "panel" else _geom_value(path, number, name, value)
        elif owner:
            if name not in CRYSTFEL_PANEL_KEYS:
                raise GeometryError(f"{path}:{number}: unknown keyword {name!r} for panel {owner!r}; CrystFEL's "
                                    "panel keywords are min_fs, max_fs, min_ss, max_ss, corner_x, corner_y, fs, ss, "
                                    "res, clen, coffset, ... (see 'man crystfel_geometry'); check the spelling")
            # a panel takes the global values set before its first line
            panels.setdefault(owner, dict(defaults))[name] = _geom_value(path, number, name, value)
        else:
            if name not in CRYSTFEL_PANEL_KEYS and name not in CRYSTFEL_GLOBAL_KEYS:
                raise GeometryError(f"{path}:{number}: unknown keyword {name!r}; CrystFEL's global keywords "
                                    "include clen, coffset, res, photon_energy, adu_per_photon, data, dim0, mask, "
                                    "... (see 'man crystfel_geometry'); check the spelling or remove the line")
            defaults[name] = _geom_value(path, number, name, value)
    if not panels:
        raise GeometryError(f"{path}: no panel is defined (lines such as 'p0/min_fs = 0'); a geometry needs at least one")
    built = []
    for name, keys in panels.items():
        missing = [k for k in ("min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y") if k not in keys]
        if missing:
            raise GeometryError(f"{path}: panel {name!r} has no {', '.join(missing)}; give them, e.g. "
                                f"'{name}/{missing[0]} = 0'")
        clen = keys.get("clen")
        if isinstance(clen, str):
            raise GeometryError(f"{path}: panel {name!r} reads clen from the frames ({clen}); give it in metres")
        if keys["max_fs"] < keys["min_fs"] or keys["max_ss"] < keys["min_ss"]:
            raise GeometryError(f"{path}: panel {name!r} has max_fs < min_fs or max_ss < min_ss; swap them")
        built.append(Panel(name, keys["min_fs"], keys["max_fs"], keys["min_ss"], keys["max_ss"], keys["corner_x"],
                           keys["corner_y"], keys.get("fs", (1.0, 0.0)), keys.get("ss", (0.0, 1.0)),
                           keys.get("res", 1.0 / 75e-6),
                           None if clen is None else clen + keys.get("coffset", 0.0),
                           bool(keys.get("no_index", keys.get("ignore", False)))))
    extent = (max(p.max_ss for p in built) + 1, max(p.max_fs for p in built) + 1)
    slab = tuple(shape) if shape is not None else extent
    if extent[0] > slab[0] or extent[1] > slab[1]:
        raise GeometryError(f"{path}: its panels reach row {extent[0] - 1} and column {extent[1] - 1} but the frames "
                            f"are {slab[0]} x {slab[1]}; give this detector's geometry")
    names = {p.name for p in built}
    regions = []
    for name, keys in bad.items():
        lab = "min_x" in keys
        bounds_keys = ("min_x", "max_x", "min_y", "max_y") if lab else ("min_fs", "max_fs", "min_ss", "max_ss")
        missing = [k for k in bounds_keys if k not in keys]
        if missing:
            raise GeometryError(f"{path}: bad region {name!r} has no {', '.join(missing)}")
        if keys.get("panel") is not None and keys["panel"] not in names:
            raise GeometryError(f"{path}: bad region {name!r} names panel {keys['panel']!r}, which is not defined")
        regions.append(BadRegion(name, tuple(float(keys[k]) for k in bounds_keys), lab, keys.get("panel")))  # type: ignore[arg-type]
    return DetectorGeometry((int(slab[0]), int(slab[1])), built, str(path), bad_regions=regions)


def write_crystfel_geom(path: str | Path, geometry: DetectorGeometry, *, photon_energy_ev: float | None = None,
                        data: str = "/entry/data/data", mask: str | None = None) -> Path:
    """Write ``geometry`` as a CrystFEL ``.geom`` file (one section per panel).

    Parameters
    ----------
    path
        The file to write.
    geometry
        The panels (their ``clen_m`` is written as ``clen``).
    photon_energy_ev
        Written as ``photon_energy``.
    data
        The HDF5 dataset of the frames (``dim0 = %``: one frame per event).
    mask
        HDF5 dataset of the pixel mask in the same file as the frames (NeXus
        ``pixel_mask``: non-zero left out), written as ``mask`` with ``mask_bad``.
    """
    out = ["; written by lightpipe (techniques/sfx)", f"data = {data}", "dim0 = %", "dim1 = ss", "dim2 = fs"]
    if photon_energy_ev is not None:
        out.append(f"photon_energy = {photon_energy_ev:g}")
    if mask is not None:
        out += [f"mask = {mask}", "mask_good = 0x0", "mask_bad = 0xffffffff"]
    for p in geometry.panels:
        out.append("")
        out += [f"{p.name}/min_fs = {p.min_fs}", f"{p.name}/max_fs = {p.max_fs}", f"{p.name}/min_ss = {p.min_ss}",
                f"{p.name}/max_ss = {p.max_ss}", f"{p.name}/corner_x = {p.corner_x:.4f}",
                f"{p.name}/corner_y = {p.corner_y:.4f}", f"{p.name}/fs = {p.fs[0]:+g}x {p.fs[1]:+g}y",
                f"{p.name}/ss = {p.ss[0]:+g}x {p.ss[1]:+g}y", f"{p.name}/res = {p.res:.6g}"]
        if p.clen_m is not None:
            out.append(f"{p.name}/clen = {p.clen_m:.6g}")
    path = Path(path)
    path.write_text("\n".join(out) + "\n")
    return path


def read_poni(path: str | Path, shape: tuple[int, int] | None = None) -> DetectorGeometry:
    """A flat detector from a pyFAI PONI file: pixel radii from pyFAI, its own mask (module gaps) as bad pixels.

    The radius of a pixel is its distance from the point of normal incidence
    corrected for tilts as pyFAI computes it (``rArray``), in pixels.

    Raises
    ------
    GeometryError
        When pyFAI cannot read the file, or the detector is not ``shape``.
    """
    try:
        import pyFAI
    except ImportError:
        raise GeometryError(f"reading the PONI file {path} needs pyFAI; install it with: pip install 'lightpipe[xrd]'") from None
    try:
        ai = pyFAI.load(str(path))
    except Exception as exc:  # pyFAI raises many kinds on a broken file
        raise GeometryError(f"pyFAI cannot read the PONI file {path} ({type(exc).__name__}: {exc}); check it was "
                            "saved by pyFAI-calib2") from None
    detector_shape = ai.detector.shape or ai.detector.max_shape
    if detector_shape is None and shape is None:
        raise GeometryError(f"the PONI file {path} names no detector shape; give a detector in it")
    slab = tuple(int(n) for n in (shape or detector_shape))
    if detector_shape is not None and tuple(detector_shape) != slab:
        raise GeometryError(f"the PONI file {path} is for a {detector_shape[0]} x {detector_shape[1]} detector but "
                            f"the frames are {slab[0]} x {slab[1]}: calibrate this detector, or read its frames")
    radius_m = ai.rArray(slab)
    pixel_m = float(ai.detector.pixel1)
    mask = ai.detector.mask
    panel = Panel("p0", 0, slab[1] - 1, 0, slab[0] - 1, 0.0, 0.0, res=1.0 / pixel_m, clen_m=float(ai.dist))
    return DetectorGeometry(slab, [panel], str(path), bad=None if mask is None else np.asarray(mask, bool),
                            radius=(radius_m / pixel_m).astype(np.float32))


def from_metadata(metadata: dict[str, Any], shape: tuple[int, int]) -> DetectorGeometry:
    """One flat panel centred on the scan's beam centre (default the frame's centre), gaps from its module layout.

    Uses ``beam_center_x_px``, ``beam_center_y_px`` (NeXus/NXmx), ``x_pixel_size_m``,
    ``distance_m`` and, for a modular detector, ``module_shape_px`` (ny, nx)
    and ``module_gap_px`` (rows, columns between modules): the gap pixels are masked.
    """
    ny, nx = shape
    cx = float(metadata.get("beam_center_x_px", (nx - 1) / 2))
    cy = float(metadata.get("beam_center_y_px", (ny - 1) / 2))
    pixel = float(metadata.get("x_pixel_size_m", 75e-6))
    distance = metadata.get("distance_m")
    # the beam centre is the position of a pixel's centre; corners are half a pixel before it
    panel = Panel("p0", 0, nx - 1, 0, ny - 1, -cx - 0.5, -cy - 0.5, res=1.0 / pixel,
                  clen_m=None if distance is None else float(distance))
    bad = None
    module, gap = metadata.get("module_shape_px"), metadata.get("module_gap_px")
    if module is not None and gap is not None:
        bad = gap_mask(shape, (int(module[0]), int(module[1])), (int(gap[0]), int(gap[1])))
    return DetectorGeometry((ny, nx), [panel], "the scan's metadata", bad=bad)


def gap_mask(shape: tuple[int, int], module: tuple[int, int], gap: tuple[int, int]) -> np.ndarray:
    """``True`` on the rows and columns between modules of ``module`` pixels separated by ``gap`` pixels."""
    rows = (np.arange(shape[0]) % (module[0] + gap[0])) >= module[0]
    cols = (np.arange(shape[1]) % (module[1] + gap[1])) >= module[1]
    return rows[:, None] | cols[None, :]


def read_mask(spec: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels left out (``True``) from ``file.h5::/dataset`` (NeXus ``pixel_mask``: non-zero left out) or a ``.npy`` file.

    Raises
    ------
    GeometryError
        When the file or dataset cannot be read, or the mask is not ``shape``.
    """
    path, _, dataset = spec.partition("::")
    try:
        if dataset:
            import h5py

            with h5py.File(path, "r", locking=False) as f:
                if dataset not in f:
                    raise GeometryError(f"the mask file {path} has no dataset {dataset}; give file.h5::/path/to/mask")
                values = np.asarray(f[dataset][()])
        elif path.endswith(".npy"):
            values = np.load(path)
        else:
            raise GeometryError(f"the mask {spec!r} is neither file.h5::/dataset nor a .npy file; give one of them")
    except OSError as exc:
        raise GeometryError(f"cannot read the mask file {path}: {exc}; check the path") from None
    if values.ndim != 2:
        raise GeometryError(f"the mask {spec} is {values.ndim}-D; a mask is one 2-D image of the detector")
    if shape is not None and values.shape != tuple(shape):
        raise GeometryError(f"the mask {spec} is {values.shape[0]} x {values.shape[1]} but the frames are {shape[0]} x "
                            f"{shape[1]}: give the mask of this detector")
    return values != 0


def read_geometry(path: str, shape: tuple[int, int] | None = None) -> DetectorGeometry:
    """A CrystFEL ``.geom`` or pyFAI ``.poni`` file, told apart by its suffix."""
    if path.endswith(".geom"):
        return read_crystfel_geom(path, shape)
    if path.endswith(".poni"):
        return read_poni(path, shape)
    raise GeometryError(f"the geometry file {path} is neither a CrystFEL .geom nor a pyFAI .poni file; give one of "
                        "them, or leave geometry unset to take the NeXus file's beam centre")
