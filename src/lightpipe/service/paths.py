"""The data root: every dataset path the service is given is resolved here, and only here.

A client names a dataset by its path relative to the service's data root
(``visit1/scan_master.h5``), and a token may be limited to some folders of it
(one visit's or one proposal's data). :meth:`DataRoot.resolve` turns such a
name into a real path on disk and refuses anything that would leave the root
or the token's folders: ``..`` components, absolute paths elsewhere, symbolic
links that point out (the link is followed first, then the target checked),
NUL bytes. A path outside the token's folders is refused *before* it is looked
up, so a limited token cannot learn which files exist elsewhere.

:meth:`DataRoot.browse` lists a folder the way a person looks for data: sub-
folders, HDF5/NeXus/CXI files, DECTRIS master files (their ``_data_NNNNNN``
files folded into them), and numbered image files grouped into one series
each; :meth:`DataRoot.describe` opens one dataset with the source that
``lightpipe run --input`` would pick and reports the scans it finds.

Example
-------
>>> import tempfile
>>> root = DataRoot(Path(tempfile.mkdtemp()))
>>> (root.root / "visit1").mkdir()
>>> root.resolve("visit1") == root.root / "visit1"
True
>>> try:
...     root.resolve("visit1/../..")
... except PathNotAllowed as exc:
...     print("refused")
refused
"""
from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lightpipe.core.errors import LightpipeError

#: Longest path a client may give, in bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Longest single name, in bytes (NAME_MAX of every common Linux file system).
MAX_NAME_BYTES = 255
#: Scans :meth:`DataRoot.describe` reports at most (a folder source could find thousands).
MAX_SCANS = 100
#: Characters that make the last component of a path a glob (an image series).
GLOB_CHARS = frozenset("*?[")

HDF5_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi"})
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".cbf", ".edf", ".img", ".mccd", ".sfrm"})
COMPRESSED_SUFFIXES = frozenset({".gz", ".bz2"})
#: A DECTRIS master file and the data files it links: ``<stem>_master.h5``, ``<stem>_data_000001.h5``.
MASTER_RE = re.compile(r"^(?P<stem>.+)_master\.h5$")
LINKED_DATA_RE = re.compile(r"^(?P<stem>.+)_data_\d{6}\.h5$")
#: A numbered image: text, the frame number, the suffix (and a compression suffix).
NUMBERED_IMAGE_RE = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.[A-Za-z0-9]+(?:\.(?:gz|bz2))?)$")


class PathNotAllowed(LightpipeError):
    """A path that leaves the data root or the folders a token is limited to (HTTP 403)."""


class PathNotFound(LightpipeError):
    """A path inside the data root that names nothing there (HTTP 404)."""


class DataRoot:
    """The folder whose datasets the service may read, and the one place their paths are checked.

    Parameters
    ----------
    root
        The data root; made absolute and its symbolic links resolved, so every
        check compares real paths.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    # -- resolving ---------------------------------------------------------------------------------------------

    def resolve(self, relative: str, allowed: Sequence[str] = ()) -> Path:
        """The real path of ``relative``, checked to lie inside the root and inside ``allowed``.

        Parameters
        ----------
        relative
            A path relative to the data root, ``/``-separated (``""`` is the
            root). An absolute path is accepted only when it lies inside the
            root. The last component may be a glob (``scan_*.cbf``, an image
            series): then every file it matches must be allowed too, and the
            glob is returned under its folder's real path.
        allowed
            Folders, relative to the root, that the caller is limited to;
            empty: the whole root.

        Returns
        -------
        Path
            The absolute path with symbolic links resolved.

        Raises
        ------
        PathNotAllowed
            When the path, or what a symbolic link in it points to, is outside
            the root or outside every allowed folder, or holds a NUL byte.
        PathNotFound
            When the path is allowed but does not exist (or a glob matches nothing).
        """
        parts = self._parts(relative)
        if parts and any(c in parts[-1] for c in GLOB_CHARS):
            return self._resolve_glob(relative, parts, allowed)
        real = self._real(self.root.joinpath(*parts), relative)
        self._check_allowed(real, relative, allowed)
        if not os.path.lexists(real):
            raise PathNotFound(f"{relative!r} does not exist in the data root; browse the folder above it to see "
                               "what is there")
        return real

    def _parts(self, relative: str) -> tuple[str, ...]:
        """The components of ``relative`` below the root, with the checks that need no file system."""
        if not isinstance(relative, str):
            raise PathNotAllowed(f"a dataset path must be text, not {type(relative).__name__}")
        if "\x00" in relative:
            raise PathNotAllowed("a dataset path may not contain a NUL byte; give the path as it appears on disk")
        encoded = len(relative.encode("utf-8", "surrogateescape"))
        if encoded > MAX_PATH_BYTES:
            raise PathNotFound(f"a path of {encoded} bytes cannot exist (at most {MAX_PATH_BYTES}); check the path")
        path = PurePosixPath(relative)
        if path.is_absolute():
            if not (path == PurePosixPath(self.root) or path.is_relative_to(PurePosixPath(self.root))):
                raise PathNotAllowed(f"{relative!r} is outside the data root; give a path relative to the data "
                                     "root, such as visit1/scan_master.h5")
            path = path.relative_to(PurePosixPath(self.root))
        for name in path.parts:
            if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                raise PathNotFound(f"a name of more than {MAX_NAME_BYTES} bytes cannot exist ({name[:40]!r}...); "
                                   "check the path")
        return path.parts

    def _real(self, path: Path, relative: str) -> Path:
        """``path`` with ``..`` and symbolic links resolved, refused when that leaves the root."""
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symbolic link loop, a permission denied on the way
            raise PathNotFound(f"{relative!r} cannot be followed ({exc.__class__.__name__}: {exc}); "
                               "a symbolic link on the way may point to itself") from None
        if not real.is_relative_to(self.root):
            raise PathNotAllowed(f"{relative!r} (or a symbolic link in it) is outside the data root; only data "
                                 "under the data root can be read")
        return real

    def _allowed_roots(self, allowed: Sequence[str]) -> list[Path]:
        """The real paths of the allowed folders; one with ``..`` or that resolves outside the root allows nothing."""
        roots = []
        for folder in allowed:
            try:
                parts = self._parts(folder)
                if ".." not in parts:
                    roots.append(self._real(self.root.joinpath(*parts), folder))
            except (PathNotAllowed, PathNotFound):
                continue
        return roots

    def check_folders(self, folders: Sequence[str]) -> list[str]:
        """The folders a token is to be limited to, checked and written as :meth:`resolve` names them.

        For the service to call when a token is made, so a mistyped folder is
        refused then rather than silently allowing nothing.

        Raises
        ------
        PathNotAllowed
            A folder with ``..``, or outside the root (a symbolic link out included).
        PathNotFound
            A folder that does not exist or is a file.
        """
        checked = []
        for folder in folders:
            parts = self._parts(folder)
            if ".." in parts:
                raise PathNotAllowed(f"token folder {folder!r} has a '..'; name the folder from the data root down")
            real = self._real(self.root.joinpath(*parts), folder)
            if not real.is_dir():
                raise PathNotFound(f"token folder {folder!r} is not a folder of the data root")
            checked.append(self.relative(real))
        return checked

    def _check_allowed(self, real: Path, relative: str, allowed: Sequence[str]) -> None:
        if not allowed:
            return
        if not any(real.is_relative_to(folder) for folder in self._allowed_roots(allowed)):
            raise PathNotAllowed(f"{relative!r} is outside the folders this token may read "
                                 f"({', '.join(sorted(allowed))}); ask an administrator for a token that "
                                 "includes it")

    def _resolve_glob(self, relative: str, parts: tuple[str, ...], allowed: Sequence[str]) -> Path:
        pattern = parts[-1]
        if pattern in (".", ".."):
            raise PathNotAllowed(f"{relative!r}: a glob must be the last name of a path")
        folder = self._real(self.root.joinpath(*parts[:-1]), relative)
        self._check_allowed(folder, relative, allowed)
        matches = sorted(folder.glob(pattern))
        if not matches:
            raise PathNotFound(f"{relative!r} matches no file; check the folder and the pattern")
        for match in matches:
            real = self._real(match, self.relative(match) if match.is_relative_to(self.root) else relative)
            self._check_allowed(real, f"{relative!r} matches {match.name!r}, which", allowed)
        return folder / pattern

    def relative(self, path: Path) -> str:
        """``path`` (absolute, inside the root) as the ``/``-separated name clients use; ``""`` for the root."""
        rel = Path(path).relative_to(self.root).as_posix()
        return "" if rel == "." else rel

    def is_allowed(self, path: Path, allowed: Sequence[str] = ()) -> bool:
        """Whether an absolute ``path`` (a link target, a file a pipeline wrote) is inside the root and ``allowed``."""
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError):
            return False
        if not real.is_relative_to(self.root):
            return False
        return not allowed or any(real.is_relative_to(folder) for folder in self._allowed_roots(allowed))

    # -- browsing ----------------------------------------------------------------------------------------------

    def browse(self, relative: str = "", allowed: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The datasets and folders in the folder ``relative``, folders first, then by name.

        A folder above the allowed ones (the root, for a token limited to
        ``visit1``) lists only the way down to them.

        Returns
        -------
        list of dict
            One entry each: ``name``, ``path`` (relative to the root, to give
            back to :meth:`resolve`), ``kind`` (``folder``, ``hdf5``, ``nexus``,
            ``cxi``, ``dectris_master``, ``image_series`` or ``image``),
            ``size`` (bytes; summed over a master's data files and a series),
            ``modified`` (POSIX time), ``source`` (the source that would read
            it, or ``None``); a master file adds ``linked_files``, a series
            ``files``, ``first`` and ``last``, a folder of images only
            ``images``.

        Raises
        ------
        PathNotAllowed, PathNotFound
            As :meth:`resolve`; also :class:`PathNotFound` when ``relative`` is a file.
        """
        parts = self._parts(relative)
        folder = self._real(self.root.joinpath(*parts), relative)
        way_down = self._way_down(folder, allowed)
        if way_down is None:
            self._check_allowed(folder, relative, allowed)
        if not folder.is_dir():
            raise PathNotFound(f"{relative!r} is not a folder of the data root" if folder.exists()
                               else f"{relative!r} does not exist in the data root")
        try:
            children = list(os.scandir(folder))
        except OSError as exc:
            raise PathNotFound(f"{relative!r} cannot be listed ({exc.strerror}); check its permissions") from None
        entries = []
        for child in children:
            if way_down is not None and child.name not in way_down:
                continue
            # a folder on the way down is shown though not itself allowed: listing it shows only the way on
            entry = self._entry(Path(child.path), () if way_down is not None else allowed)
            if entry is not None:
                entries.append(entry)
        masters = {MASTER_RE.match(e["name"]).group("stem") for e in entries  # type: ignore[union-attr]
                   if e["kind"] == "dectris_master"}
        entries = self._fold_linked(entries, masters)
        entries = self._group_series(entries, folder)
        return sorted(entries, key=lambda e: (e["kind"] != "folder", e["name"]))

    def _way_down(self, folder: Path, allowed: Sequence[str]) -> set[str] | None:
        """Names of ``folder``'s children that lead to allowed folders, when ``folder`` is above all of them."""
        if not allowed:
            return None
        roots = self._allowed_roots(allowed)
        if any(folder.is_relative_to(r) for r in roots):
            return None
        below = [r for r in roots if r.is_relative_to(folder) and r != folder]
        if not below:
            return None
        return {r.relative_to(folder).parts[0] for r in below}

    def _entry(self, path: Path, allowed: Sequence[str]) -> dict[str, Any] | None:
        """One listing entry, or ``None`` for what is neither data nor a folder (or leads outside)."""
        try:
            real = path.resolve()
            info = real.stat()
        except (OSError, RuntimeError):
            return None  # a dangling or looping link names nothing a user can open
        if not self.is_allowed(real, allowed):
            return None  # a link that leads out of the root or the token's folders is not shown
        name = path.name
        base = {"name": name, "path": self.relative(path), "size": info.st_size, "modified": info.st_mtime}
        if stat.S_ISDIR(info.st_mode):
            entry = {**base, "kind": "folder", "size": None, "source": None}
            images = _image_count(real)
            if images:
                entry.update(source="image_series", images=images)
            return entry
        if not stat.S_ISREG(info.st_mode):
            return None
        suffix = _suffix(name)
        if suffix in HDF5_SUFFIXES:
            kind = ("dectris_master" if MASTER_RE.match(name) else "cxi" if suffix == ".cxi"
                    else "nexus" if suffix in (".nxs", ".nx5") else "hdf5")
            return {**base, "kind": kind, "source": _best_source(str(real))}
        if suffix in IMAGE_SUFFIXES:
            return {**base, "kind": "image", "source": "image_series"}
        return None

    @staticmethod
    def _fold_linked(entries: list[dict[str, Any]], masters: set[str]) -> list[dict[str, Any]]:
        """Put each master file's ``_data_NNNNNN.h5`` files into its entry instead of beside it."""
        linked: dict[str, list[dict[str, Any]]] = {}
        kept = []
        for entry in entries:
            match = LINKED_DATA_RE.match(entry["name"]) if entry["kind"] == "hdf5" else None
            if match and match.group("stem") in masters:
                linked.setdefault(match.group("stem"), []).append(entry)
            else:
                kept.append(entry)
        for entry in kept:
            match = MASTER_RE.match(entry["name"]) if entry["kind"] == "dectris_master" else None
            if match:
                parts = sorted(linked.get(match.group("stem"), []), key=lambda e: e["name"])
                entry["linked_files"] = [e["name"] for e in parts]
                entry["size"] += sum(e["size"] for e in parts)
        return kept

    def _group_series(self, entries: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
        """Numbered image files of one pattern become one ``image_series`` entry with a glob as its path."""
        groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        kept = []
        for entry in entries:
            match = NUMBERED_IMAGE_RE.match(entry["name"]) if entry["kind"] == "image" else None
            if match:
                key = (match.group("prefix"), match.group("suffix"))
                groups.setdefault(key, []).append((int(match.group("number")), entry))
            else:
                kept.append(entry)
        for (prefix, suffix), members in groups.items():
            if len(members) == 1:
                kept.append(members[0][1])
                continue
            members.sort(key=lambda m: m[0])
            glob = f"{_glob_escape(prefix)}*{_glob_escape(suffix)}"
            rel_folder = self.relative(folder)
            kept.append({
                "name": glob, "path": f"{rel_folder}/{glob}" if rel_folder else glob, "kind": "image_series",
                "size": sum(m[1]["size"] for m in members), "modified": max(m[1]["modified"] for m in members),
                "source": "image_series", "files": len(members), "first": members[0][1]["name"],
                "last": members[-1][1]["name"],
            })
        return kept

    # -- describing --------------------------------------------------------------------------------------------

    def describe(self, relative: str, allowed: Sequence[str] = ()) -> dict[str, Any]:
        """What a source finds in one dataset: the source, its parameters and the scans with their metadata.

        The source is the one ``lightpipe run --input`` picks
        (:func:`lightpipe.core.source.source_for_input`). A folder is watched
        by the ``folder`` source while a job runs, so its scans are not
        listed here (``scans`` is ``None``); browse it instead.

        Returns
        -------
        dict
            ``path``, ``source``, ``params`` (paths in them relative to the
            root), ``scans``: each ``name``, ``events`` per stream and
            ``metadata`` (numbers, text and lists only), at most
            :data:`MAX_SCANS`; ``error`` instead when the source cannot read it.

        Raises
        ------
        PathNotAllowed, PathNotFound
            As :meth:`resolve`.
        """
        from lightpipe.core import registry
        from lightpipe.core.source import Source, source_for_input

        real = self.resolve(relative, allowed)
        result: dict[str, Any] = {"path": relative, "source": None, "params": {}, "scans": None}
        try:
            name, params = source_for_input(str(real), "", {})
            result.update(source=name, params=self._params_for_client(params))
            if real.is_dir() and name == "folder":
                return result
            cls: type[Source] = registry.load("sources", name)
            source = cls(cls.Params(**params))
            scans = []
            for reader in source.scans():
                try:
                    scan = reader.scan
                    scans.append({"name": scan.name,
                                  "events": {stream: len(indices) for stream, indices in scan.streams.items()},
                                  "metadata": {k: self._client_value(v) for k, v in scan.metadata.items()}})
                finally:
                    reader.close()
                if len(scans) >= MAX_SCANS:
                    break
            result["scans"] = scans
        except (LightpipeError, ValueError, OSError) as exc:  # a dataset the sources cannot read is still listed
            result["error"] = str(exc)
        return result

    def _params_for_client(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self._client_value(v) for k, v in params.items()}

    def _client_value(self, value: Any) -> Any:
        """A JSON-safe copy of ``value``; absolute paths under the root become relative (clients never see the root)."""
        if isinstance(value, dict):
            return {str(k): self._client_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._client_value(v) for v in value]
        if isinstance(value, np.ndarray):
            return self._client_value(value.tolist()) if value.size <= 64 else f"array {value.shape} {value.dtype}"
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, str) and value.startswith(str(self.root) + os.sep):
            return value[len(str(self.root)) + 1:]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)


def _suffix(name: str) -> str:
    """Lower-case suffix of ``name``, a compression suffix skipped (``a.cbf.gz`` -> ``.cbf``)."""
    path = Path(name)
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        path = Path(path.stem)
    return path.suffix.lower()


def _glob_escape(text: str) -> str:
    """``text`` with glob characters taken literally (``[``, ``*``, ``?`` in a file name)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _image_count(folder: Path) -> int:
    """Image files directly in ``folder`` if it holds images and no HDF5 (a series), else 0."""
    images = 0
    try:
        with os.scandir(folder) as it:
            for child in it:
                suffix = _suffix(child.name)
                if suffix in HDF5_SUFFIXES:
                    return 0
                images += suffix in IMAGE_SUFFIXES
    except OSError:
        return 0
    return images


def _best_source(path: str) -> str | None:
    """The source that reads ``path`` best, or ``None``; a source that fails while looking is skipped."""
    from lightpipe.core.source import sources_for

    try:
        found = sources_for(path)
    except (OSError, ValueError, LightpipeError):
        return None
    return found[0][1] if found else None
