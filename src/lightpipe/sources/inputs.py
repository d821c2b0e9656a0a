"""Choose a source for a path given on the command line (``lightpipe run --input PATH``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py

from lightpipe.core.errors import SourceError

HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi"}
IMAGE_SUFFIXES = {".tif", ".tiff", ".cbf", ".edf", ".img", ".mccd", ".sfrm"}


def source_for_input(path: str, current_use: str, current_params: dict[str, Any], has_path: bool) -> tuple[str, dict[str, Any]]:
    """Return ``(use, params)`` of the source that reads ``path``.

    If the pipeline's own source reads files (it has a ``path`` parameter), only
    its path changes. Otherwise the source is chosen from the path: a folder of
    image files is one image series, another folder is watched for new HDF5
    files (each a scan), HDF5/NeXus files are read with the ``hdf5`` source
    (dark and flat stacks at ``/entry/dark/data`` and ``/entry/flat/data`` are
    picked up, DECTRIS ``data_NNNNNN`` links too), and image files or globs go
    to the ``image_series`` source.
    """
    if has_path:
        return current_use, {**current_params, "path": path}
    p = Path(path)
    if p.is_dir():
        suffixes = {f.suffix.lower() for f in p.iterdir() if f.is_file()}
        if suffixes & IMAGE_SUFFIXES and not suffixes & HDF5_SUFFIXES:
            return "image_series", {"path": path}  # a folder of images is one scan
        return "folder", {"path": path}
    suffix = p.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5", hdf5_defaults(path)
    if suffix in IMAGE_SUFFIXES or any(c in path for c in "*?["):
        return "image_series", {"path": path}
    raise SourceError(
        f"cannot tell how to read {path!r}: use an HDF5/NeXus file ({', '.join(sorted(HDF5_SUFFIXES))}), "
        f"image files ({', '.join(sorted(IMAGE_SUFFIXES))}) or a folder"
    )


def hdf5_defaults(path: str) -> dict[str, Any]:
    """Parameters of the ``hdf5`` source for a file laid out as lightpipe or DECTRIS write them."""
    params: dict[str, Any] = {"path": path}
    try:
        with h5py.File(path, "r", locking=False) as f:
            data = f.get("entry/data")
            if isinstance(data, h5py.Group) and "data" not in data and any(k.startswith("data_") for k in data):
                params["dataset"] = "/entry/data"
            for stream in ("dark", "flat"):
                if f"entry/{stream}/data" in f:
                    params[stream] = f"/entry/{stream}/data"
            if isinstance(data, h5py.Group) and "monitor" in data and data["monitor"].ndim == 1:
                params["scalars"] = {"monitor": "/entry/data/monitor"}
    except FileNotFoundError as exc:
        raise SourceError(f"input file not found: {path}; check the path given to --input") from exc
    except OSError as exc:
        raise SourceError(f"cannot open {path} as HDF5 ({exc}); the file may be truncated or not HDF5") from exc
    return params
