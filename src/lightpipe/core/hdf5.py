"""What every HDF5 writer of lightpipe shares: the compression filters and the provenance block.

One spelling each, so a sink's ``compression`` parameter, a simulator's and the
command line's ``--compression`` take the same names, and every result file
records who wrote it the same way.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Mapping, get_args

from lightpipe.core.version import __version__

if TYPE_CHECKING:
    import h5py

#: A compression filter: ``bitshuffle`` (bitshuffle-LZ4, as DECTRIS detectors write;
#: readers need hdf5plugin), ``gzip`` (level 1, readable everywhere) or ``none``.
Compression = Literal["bitshuffle", "gzip", "none"]
#: The names :func:`compression_filters` accepts, for ``choices=`` of an argument parser.
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)


def compression_filters(name: Compression) -> dict[str, Any]:
    """Keyword arguments of :meth:`h5py.Group.create_dataset` for the filter called ``name``.

    Raises
    ------
    ValueError
        ``name`` is not one of :data:`COMPRESSIONS`.

    Examples
    --------
    >>> compression_filters("gzip")
    {'compression': 'gzip', 'compression_opts': 1}
    >>> compression_filters("none")
    {}
    """
    if name == "bitshuffle":
        # imported here: it registers every filter with HDF5, which the command line need not wait for
        import hdf5plugin

        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    if name == "none":
        return {}
    raise ValueError(f"unknown compression {name!r}; use one of {', '.join(COMPRESSIONS)}")


def write_provenance(group: h5py.Group, pipeline: Mapping[str, Any] | str | None = None) -> None:
    """Write who made a result into ``group``: datasets ``program``, ``version``, ``date`` and ``pipeline``.

    Parameters
    ----------
    group
        Usually an ``NXprocess`` group.
    pipeline
        The pipeline document (written as JSON) or its text; ``None`` writes no
        ``pipeline`` dataset.
    """
    group["program"] = "lightpipe"
    group["version"] = __version__
    group["date"] = datetime.now(timezone.utc).isoformat()
    if pipeline is not None:
        group["pipeline"] = pipeline if isinstance(pipeline, str) else json.dumps(pipeline, default=str)
