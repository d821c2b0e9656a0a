"""HDF5 external links resolved beside the master file only.

A DECTRIS master file holds no frames: ``/entry/data/data_000001``, ... are
external links to ``<name>_data_000001.h5``, ... When HDF5 follows such a link
itself it searches ``HDF5_EXT_PREFIX``, the link-access prefix, the folder of
the master file *and the current working directory*. A file missing beside the
master is then silently replaced by any same-named file in the folder the
pipeline was started from: another scan's data, read with status good.

lightpipe therefore never lets HDF5 follow an external link. :func:`resolve`
walks a dataset path one link at a time and opens each linked file itself,
from the master file's folder (or, for a link written with an absolute path,
from that path). A link whose file is not there becomes a :class:`MissingPart`
that names the file, the link and the master file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py


@dataclass(frozen=True)
class MissingPart:
    """A linked dataset that cannot be read, and why (the file, the link and the master file are named)."""

    file: str
    reason: str


def _open_linked(master: Path, link: h5py.ExternalLink, where: str, opened: dict[Path, h5py.File]) -> h5py.File | MissingPart:
    """The file ``link`` points to, looked for beside ``master`` only; kept open in ``opened``."""
    target = Path(link.filename)
    # an absolute link is honoured as written; failing that, like a relative one, beside the master file
    candidates = [target, master.parent / target.name] if target.is_absolute() else [master.parent / target]
    what = f"link {where} of {master} points to {link.filename}:{link.path}"
    for path in candidates:
        if path in opened:
            return opened[path]
        if path.is_file():
            try:
                opened[path] = h5py.File(path, "r", locking=False)
            except OSError as exc:
                return MissingPart(str(path), f"{what}, which cannot be opened ({exc}); copy it again from the beamline")
            return opened[path]
    return MissingPart(
        str(candidates[-1]),
        f"{what}, which is not in {master.parent} (linked files are read only beside the master file, "
        f"never from the current directory); copy {target.name} beside the master file",
    )


def resolve(f: h5py.File, path: str, opened: dict[Path, h5py.File]) -> h5py.HLObject | MissingPart | None:
    """The object at ``path`` of ``f``, following external links beside ``f``'s file only.

    Parameters
    ----------
    f
        The master file.
    path
        An absolute path in ``f``, e.g. ``/entry/data/data_000001``.
    opened
        Linked files opened so far, by path; files this call opens are added, and the
        caller closes them.

    Returns
    -------
    object
        The group or dataset; a :class:`MissingPart` when a linked file is not there;
        ``None`` when ``path`` names nothing.
    """
    master = Path(f.filename).resolve()
    node: h5py.Group = f["/"]
    walked = ""
    for name in [p for p in path.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        walked += "/" + name
        link = node.get(name, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.ExternalLink):
            target = _open_linked(master, link, walked, opened)
            if isinstance(target, MissingPart):
                return target
            if link.path not in target:
                return MissingPart(target.filename, f"link {walked} of {master} points to {link.filename}:{link.path}, "
                                                    f"which has no {link.path}; the data file does not match the master")
            node = target[link.path]
        else:
            node = node[name]
    return node


def exists(f: h5py.File, path: str) -> bool:
    """Whether ``path`` names a link of ``f``, without following external links (no file is opened)."""
    node: h5py.Group = f["/"]
    names = [p for p in path.split("/") if p]
    for k, name in enumerate(names):
        link = node.get(name, getlink=True)
        if link is None:
            return False
        if k == len(names) - 1:
            return True
        if isinstance(link, h5py.ExternalLink):
            return False  # a path through a linked file: only resolve() may follow it
        node = node[name]
        if not isinstance(node, h5py.Group):
            return False
    return True
