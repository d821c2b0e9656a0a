"""DIALS's own spot finder on the same images, through its command-line programs, for comparisons.

DIALS lives in its own Python (Debian's ``python3-dials`` installs
``/usr/bin/dials.import``, ``dials.find_spots`` and the ``dials`` package for
``/usr/bin/python3``); lightpipe never imports it. :func:`find_spots_with_dials`
runs ``dials.import`` and ``dials.find_spots`` with the parameters of a
``dispersion_spots`` stage, then reads ``strong.refl`` with DIALS's own
reflection table, in DIALS's Python, into a ``.npz`` file.

Spots are found per image (``spotfinder.force_2d=True``), as
``dispersion_spots`` finds them, or, with ``force_2d=False`` (DIALS's
default), joined across consecutive images into one 3-D spot per reflection,
as ``spot_table`` joins them (``spot3d_*``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lightpipe.core.errors import LightpipeError

__all__ = ["DialsSpots", "dials_python", "dials_version", "find_spots_with_dials", "phil_for"]

#: What reads ``strong.refl`` in DIALS's Python: columns to a .npz file.
_DUMP = """
import sys
import numpy as np
from dials.array_family import flex
table = flex.reflection_table.from_file(sys.argv[1])
xyz = np.array(table["xyzobs.px.value"]).reshape(-1, 3)
bbox = np.array(table["bbox"]).reshape(-1, 6)
np.savez(sys.argv[2], xyz=xyz, bbox=bbox, intensity=np.array(table["intensity.sum.value"]))
"""


@dataclass(frozen=True)
class DialsSpots:
    """DIALS's strong spots in lightpipe's coordinates (0 at the centre of the first pixel).

    Attributes
    ----------
    image
        Image number of each spot, from 1: the image its centroid is on.
    x, y
        Centroids (DIALS's ``xyzobs.px.value`` less 0.5).
    z
        Centroid along the scan in image numbers, image ``k``'s middle at ``k``
        (DIALS's ``z`` plus 0.5; its ``z`` is 0 where the first image starts).
    intensity
        ``intensity.sum.value``.
    bbox
        ``[n, 6]``: DIALS's ``bbox``, ``x0, x1, y0, y1, z0, z1``, half-open;
        ``z0 + 1`` is the first image a spot is on, ``z1`` the last.
    seconds
        Wall time of ``dials.find_spots`` alone, start-up included.
    version
        DIALS's version.
    """

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    intensity: np.ndarray
    bbox: np.ndarray
    seconds: float
    version: str


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise LightpipeError(f"{name} is not installed; on Debian or Ubuntu: apt-get install python3-dials")
    return found


def dials_python() -> str | None:
    """The Python that runs DIALS (from the ``#!`` line of ``dials.find_spots``), or ``None`` without DIALS."""
    program = shutil.which("dials.find_spots")
    if program is None:
        return None
    with open(program, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    return first[2:].split()[0] if first.startswith("#!") else None


def dials_version() -> str:
    """DIALS's version, as its Python package reports it."""
    python = dials_python()
    if python is None:
        raise LightpipeError("dials.find_spots is not installed; on Debian or Ubuntu: apt-get install python3-dials")
    out = subprocess.run([python, "-c", "import dials.util.version as v; print(v.dials_version())"],
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip().removeprefix("DIALS ") or "unknown"


def phil_for(params: Any, nproc: int = 1, force_2d: bool = True) -> list[str]:
    """``dials.find_spots`` arguments equal to a ``dispersion_spots`` stage's parameters.

    ``force_2d=False`` asks for DIALS's 3-D spots, joined across images.
    """
    ky, kx = params.kernel_size
    args = [
        "spotfinder.threshold.algorithm=dispersion",
        f"spotfinder.threshold.dispersion.kernel_size={ky},{kx}",
        f"spotfinder.threshold.dispersion.gain={params.gain}",
        f"spotfinder.threshold.dispersion.sigma_background={params.sigma_background}",
        f"spotfinder.threshold.dispersion.sigma_strong={params.sigma_strong}",
        f"spotfinder.threshold.dispersion.global_threshold={params.global_threshold}",
        f"spotfinder.threshold.dispersion.min_local={params.min_local}",
        f"spotfinder.filter.min_spot_size={params.min_spot_size}",
        f"spotfinder.filter.max_spot_size={params.max_spot_size}",
        f"spotfinder.filter.max_strong_pixel_fraction={params.max_strong_fraction}",
        f"spotfinder.filter.max_separation={params.max_separation}",
        f"spotfinder.mp.nproc={nproc}",
        f"spotfinder.force_2d={force_2d}",
        "output.shoeboxes=False",
    ]
    if params.mask is not None:
        raise LightpipeError("find_spots_with_dials compares without a mask file: DIALS reads its own mask.pickle")
    return args


def _run(args: Sequence[str], workdir: Path, timeout: float) -> None:
    done = subprocess.run(list(args), cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise LightpipeError(f"{Path(args[0]).name} failed with status {done.returncode} in {workdir}:\n{tail}")


def find_spots_with_dials(images: Sequence[str | os.PathLike[str]], workdir: str | Path, params: Any, *,
                          nproc: int = 1, force_2d: bool = True, timeout: float = 3600) -> DialsSpots:
    """Import ``images`` (CBF files or one NXmx file) and find their spots with DIALS, as ``params`` say.

    Parameters
    ----------
    images
        The image files, or one NXmx master file.
    workdir
        Where DIALS writes ``imported.expt``, ``strong.refl`` and its logs.
    params
        A ``dispersion_spots`` stage's parameters (:class:`~lightpipe.techniques.mx.stages.DispersionParams`).
    nproc
        Processes ``dials.find_spots`` uses.
    force_2d
        Find the spots of each image on its own (``True``), or join them across
        images into 3-D spots (``False``, DIALS's default).
    timeout
        Seconds each program may take.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    python = dials_python()
    if python is None:
        raise LightpipeError("dials.find_spots is not installed; on Debian or Ubuntu: apt-get install python3-dials")
    _run([_program("dials.import"), *(str(Path(i).resolve()) for i in images), "output.experiments=imported.expt"],
         workdir, timeout)
    start = time.perf_counter()
    _run([_program("dials.find_spots"), "imported.expt", "output.reflections=strong.refl",
          *phil_for(params, nproc, force_2d)],
         workdir, timeout)
    seconds = time.perf_counter() - start
    _run([python, "-c", _DUMP, "strong.refl", "strong.npz"], workdir, timeout)
    with np.load(workdir / "strong.npz") as f:
        xyz, bbox, intensity = f["xyz"], f["bbox"], f["intensity"]
    return DialsSpots(image=np.floor(xyz[:, 2]).astype(np.int64) + 1, x=xyz[:, 0] - 0.5, y=xyz[:, 1] - 0.5,
                      z=xyz[:, 2] + 0.5, intensity=intensity, bbox=bbox.astype(np.int64), seconds=seconds,
                      version=dials_version())

