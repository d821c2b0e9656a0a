"""A watched folder: every new, complete HDF5/NeXus file becomes one scan.

The folder is polled rather than watched with inotify: inotify only sees
changes made through the local kernel, so it misses files that the detector
or control computers write to an NFS (or GPFS, Lustre) mount, which is how
beamlines deliver data.

A file is *complete* when its size and modification time have not changed for
``settle_s`` seconds, as observed by this process (the file server's clock is
not trusted), and it then opens as HDF5 with a frame stack. A file that stays
unreadable for another ``settle_s`` is logged and skipped; the watch goes on,
and the file is looked at again if it changes later. A DECTRIS master file
whose linked data files are not all there yet is likewise given another
``settle_s`` for them to arrive; then it is taken, and the frames of the
files still missing fail with the file's name. Each file is read with
the ``hdf5`` source's defaults for lightpipe and DECTRIS layouts (dark and flat
stacks, ``data_NNNNNN`` links), see :func:`lightpipe.sources.hdf5.hdf5_defaults`.

The watch ends after ``max_scans`` scans, after ``timeout_s`` without a new or
changing file, or within a poll when the run is asked to stop (``lightpipe
stop``, a cancelled service job).

Examples
--------
Watch a folder for a shift, one result file per scan file::

    source:
      use: folder
      params: {path: /data/visit/raw, settle_s: 5}
"""
from __future__ import annotations

import fnmatch
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, field_validator

from lightpipe.core.bounds import MAX_COUNT, MAX_SECONDS, Count, PathText, Seconds, SecondsOrZero
from lightpipe.core.errors import LightpipeError, SourceError
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source, SourceParams
from lightpipe.sources.hdf5 import HDF5Params, HDF5Reader, hdf5_defaults, scalar_ports

logger = logging.getLogger(__name__)

#: Size in bytes and modification time in ns: a file whose signature holds still has stopped changing.
Signature = tuple[int, int]


class FolderParams(SourceParams):
    """Parameters of the folder source."""

    path: PathText = Field(description="Folder to watch (polled, so NFS mounts work)")
    pattern: list[PathText] = Field(
        ["*.h5", "*.nxs"], description="File-name patterns of scan files (one string or a list)"
    )
    exclude: list[PathText] = Field(
        ["*_data_[0-9][0-9][0-9][0-9][0-9][0-9].h5"],
        description="File-name patterns never taken as scans (default: DECTRIS data files linked from a master file)",
    )
    poll_s: Seconds = Field(1.0, description=f"Seconds between looks at the folder; more than 0, at most {MAX_SECONDS}")
    settle_s: SecondsOrZero = Field(
        2.0, description=f"A file is complete when unchanged this long (0 to {MAX_SECONDS} s) and readable as HDF5"
    )
    timeout_s: Seconds | None = Field(
        None, description=f"End the watch when no file appeared or changed this long (at most {MAX_SECONDS} s); "
        "null watches forever"
    )
    existing: bool = Field(
        True, description="Also process files already in the folder at the start (if false, only when they change later)"
    )
    max_scans: Count | None = Field(None, description=f"End the watch after this many scans (1 to {MAX_COUNT})")
    scalars: dict[str, PathText] = Field(default_factory=dict, description="Per-event field name -> 1-D dataset in each file")

    @field_validator("pattern", "exclude", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


@dataclass
class _Pending:
    """A file seen but not taken yet: its signature, and since when (monotonic) it has held still."""

    signature: Signature
    since: float


class FolderWatch:
    """Polls a folder and returns readers of the files that became complete, in order of appearance.

    Parameters
    ----------
    params
        The folder source's parameters.

    Raises
    ------
    SourceError
        When the folder does not exist.
    """

    def __init__(self, params: FolderParams) -> None:
        self.params = params
        self.folder = Path(params.path).expanduser()
        if not self.folder.is_dir():
            raise SourceError(f"folder {self.folder} does not exist or is not a folder; create it or fix source.params.path")
        self.pending: dict[str, _Pending] = {}
        # name -> signature at which the file was skipped (seen again only if it changes), None once taken
        self.done: dict[str, Signature | None] = {}
        self.unreachable = False
        if not params.existing:
            self.done.update(self._listing())

    def _wanted(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in self.params.pattern) and not any(
            fnmatch.fnmatch(name, p) for p in self.params.exclude
        )

    def _listing(self) -> dict[str, Signature]:
        found = {}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if not self._wanted(entry.name):
                    continue
                try:
                    if entry.is_file():
                        st = entry.stat()
                        found[entry.name] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:  # removed between listing and stat
                    continue
        return found

    def _open(self, name: str) -> HDF5Reader:
        path = str(self.folder / name)
        reader = HDF5Reader(HDF5Params(**{**hdf5_defaults(path), "scalars": dict(self.params.scalars)}))
        reader.close()  # reopened lazily where it is read; no handle is held while the scan waits
        return reader

    def poll(self) -> tuple[list[HDF5Reader], bool]:
        """Look at the folder once.

        Returns
        -------
        readers, changed
            Readers of the files that became complete, ordered by modification
            time then name; and whether a file appeared or changed.
        """
        now = time.monotonic()
        try:
            listing = self._listing()
        except OSError as exc:  # an NFS outage must not end a shift-long watch
            if not self.unreachable:
                logger.warning("cannot list %s (%s); trying again every %.1f s", self.folder, exc, self.params.poll_s)
            self.unreachable = True
            return [], False
        self.unreachable = False
        changed = False
        ready: list[tuple[Signature, str, HDF5Reader]] = []
        for name, signature in listing.items():
            if name in self.done and self.done[name] in (None, signature):
                continue
            seen = self.pending.get(name)
            if seen is None or seen.signature != signature:
                self.pending[name] = _Pending(signature, now)
                changed = True
                continue
            if now - seen.since < self.params.settle_s:
                continue
            try:
                reader = self._open(name)
            except (LightpipeError, OSError, KeyError, ValueError, RuntimeError) as exc:
                if now - seen.since >= 2 * self.params.settle_s:
                    logger.warning("skipping %s: unreadable for %.1f s after it stopped changing (%s)",
                                   self.folder / name, now - seen.since - self.params.settle_s, exc)
                    self.done[name] = signature
                    del self.pending[name]
                continue
            if reader.missing:
                # a detector may close the master file before its last data files are on the share
                if now - seen.since < 2 * self.params.settle_s:
                    continue
                logger.warning("%s: taken without %s, still missing %.1f s after the master file stopped "
                               "changing; their frames fail", self.folder / name,
                               ", ".join(Path(m.file).name for m in reader.missing), now - seen.since)
            ready.append((signature, name, reader))
        for name in set(self.pending) - set(listing):
            del self.pending[name]
        ready.sort(key=lambda item: (item[0][1], item[1]))
        for _, name, _ in ready:
            self.done[name] = None
            del self.pending[name]
        return [reader for _, _, reader in ready], changed


class FolderSource(Source):
    """Scans from a watched folder: each new, complete HDF5/NeXus file is one scan."""

    name = "folder"
    Params = FolderParams

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        return scalar_ports(cls.outputs, params.scalars)

    @classmethod
    def can_open(cls, path: str) -> int:
        """Any folder (10): watched for scan files. A folder of images only is better read as one series."""
        return 10 if Path(path).is_dir() else 0

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        watch = FolderWatch(p)
        taken = 0
        idle_since = time.monotonic()
        while True:
            readers, changed = watch.poll()
            if changed:
                idle_since = time.monotonic()
            for reader in readers:
                logger.info("scan %s from %s", reader.scan.name, reader.params.path)
                yield reader
                taken += 1
                if p.max_scans is not None and taken >= p.max_scans:
                    return
                # time spent processing the scan is not idle time
                idle_since = time.monotonic()
            if p.timeout_s is not None and not watch.pending and time.monotonic() - idle_since >= p.timeout_s:
                logger.info("no new file in %s for %.1f s; the watch ends", watch.folder, p.timeout_s)
                return
            if self.wait_for_stop(p.poll_s):
                logger.info("the run was asked to stop; the watch of %s ends", watch.folder)
                return
