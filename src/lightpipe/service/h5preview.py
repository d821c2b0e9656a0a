"""HDF5 preview for h5web: h5grove's routes, with lightpipe's own path checks.

h5web's ``H5GroveProvider`` reads a file through five GET routes, each taking
``file`` (the dataset path relative to the data root) and ``path`` (inside the
file): ``/meta/`` (an entity's kind, shape, type, attributes and children),
``/attr/`` (attribute values), ``/data/`` (a dataset or a slice of it, in
``json``, ``bin``, ``npy``, ``csv`` or ``tiff``), ``/stats/`` (minimum,
maximum, mean ... of a slice) and ``/paths/`` (every path below a group).
These routes answer them with h5grove's readers and encoders; the file is
found by the ``resolve`` function the service gives, never by h5grove's own
``base_dir`` (which follows ``../`` out of its folder).

External links and virtual datasets are checked too: a link in an allowed
file that points to a file outside the data root or the token's folders, or
a virtual dataset that maps one, is refused (403), so one file cannot open
another the token may not read. A DECTRIS master file's
links to its data files beside it are followed as usual. The files are opened
read-only without HDF5 file locking (beamline NFS, files still being written),
and ``hdf5plugin`` is imported, so bitshuffle-LZ4 and the other compressed
datasets of detectors read.
"""
from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the detectors' compression filters with HDF5 before any file opens)
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from h5grove.content import DatasetContent, GroupContent, ResolvedEntityContent, create_content
from h5grove.encoders import encode
from h5grove.models import LinkResolution
from h5grove.utils import NotFoundError, QueryArgumentError, hdf_path_join, parse_link_resolution_arg, sorted_dict

from lightpipe.service.paths import PathNotAllowed, PathNotFound

#: Links followed at most to reach one entity (soft and external links that lead to further links).
MAX_LINK_HOPS = 32
#: How files are opened: read-only, no locking (the pipeline may be writing one, on NFS).
H5PY_OPTIONS: dict[str, Any] = {"locking": False}
#: Formats of ``/data/`` that h5grove encodes.
DATA_FORMATS = ("json", "bin", "csv", "npy", "tiff")

Resolver = Callable[[Request, str], Path]


def h5grove_router(resolve: Resolver) -> APIRouter:
    """h5grove's routes for h5web, reading the files that ``resolve`` allows.

    Parameters
    ----------
    resolve
        ``resolve(request, file)``: the absolute path of ``file`` (relative to
        the data root) for the caller of ``request``, or an
        :class:`~fastapi.HTTPException` (401, 403, 404). It is also asked about
        the files that external links point to (with their paths relative to
        the data root, or absolute when a link names an absolute path), so a
        token reads through links only what it may read directly. It may
        raise :class:`~lightpipe.service.paths.PathNotAllowed` and
        :class:`~lightpipe.service.paths.PathNotFound` instead (403, 404).

    Returns
    -------
    APIRouter
        Mount it where h5web's provider points, e.g. ``/api/v1/h5grove``.
    """
    router = APIRouter()

    def h5file(request: Request, file: str = Query(description="HDF5 file, relative to the data root")) -> Path:
        return _resolve_http(request, resolve, file)

    def check_links(request: Request, f: h5py.File, path: str) -> None:
        _check_path_links(f, path, lambda target: _allow_target(request, resolve, target))

    def check_data(request: Request, f: h5py.File, path: str) -> None:
        """The links to ``path`` and, for a virtual dataset, the files its values come from."""
        check_links(request, f, path)
        _check_virtual_sources(f, path, lambda target: _allow_target(request, resolve, target))

    @router.get("/", include_in_schema=False)
    def root() -> Response:
        """h5grove's health check."""
        return Response("ok")

    @router.get("/meta/", summary="Metadata of an HDF5 entity (h5web)")
    def meta(request: Request, file: Path = Depends(h5file), path: str = "/",
             resolve_links: str = "only_valid") -> Response:
        links = _link_resolution(resolve_links)
        with _content(file, path, links, lambda f: check_links(request, f, path)) as (f, content):
            if isinstance(content, GroupContent):
                return _response(_group_metadata(f, content, links, lambda p: check_links(request, f, p)), "json")
            return _response(content.metadata(), "json")

    @router.get("/attr/", summary="Attribute values of an HDF5 entity (h5web)")
    def attr(request: Request, file: Path = Depends(h5file), path: str = "/",
             attr_keys: list[str] | None = Query(default=None)) -> Response:
        with _content(file, path, LinkResolution.ONLY_VALID, lambda f: check_links(request, f, path)) as (_, content):
            if not isinstance(content, ResolvedEntityContent):
                raise HTTPException(404, f"{path} is a link that cannot be followed; it has no attributes")
            try:
                return _response(content.attributes(attr_keys), "json")
            except KeyError as exc:
                raise HTTPException(404, f"{path} has no attribute {exc}") from None

    @router.get("/data/", summary="Values of an HDF5 dataset, or a slice of it (h5web)")
    def data(request: Request, file: Path = Depends(h5file), path: str = "/", dtype: str = "origin",
             format: str = "json", flatten: bool = False, selection: str | None = None) -> Response:
        if format not in DATA_FORMATS:
            raise HTTPException(422, f"format {format!r} is not one of {', '.join(DATA_FORMATS)}")
        with _content(file, path, LinkResolution.ONLY_VALID, lambda f: check_data(request, f, path)) as (_, content):
            if not isinstance(content, DatasetContent):
                raise HTTPException(422, f"{path} is not a dataset; ask /meta/ what it is")
            return _response(content.data(selection, flatten, dtype), format)

    @router.get("/stats/", summary="Statistics of an HDF5 dataset or a slice of it (h5web)")
    def stats(request: Request, file: Path = Depends(h5file), path: str = "/",
              selection: str | None = None) -> Response:
        with _content(file, path, LinkResolution.ONLY_VALID, lambda f: check_data(request, f, path)) as (_, content):
            if not isinstance(content, DatasetContent):
                raise HTTPException(422, f"{path} is not a dataset; ask /meta/ what it is")
            return _response(content.data_stats(selection), "json")

    @router.get("/paths/", summary="Every path below an HDF5 group (h5web search)")
    def paths(request: Request, file: Path = Depends(h5file), path: str = "/") -> Response:
        with _content(file, path, LinkResolution.ONLY_VALID, lambda f: check_links(request, f, path)) as (f, content):
            if not isinstance(content, GroupContent):
                raise HTTPException(422, f"{path} is not a group; only a group has paths below it")
            names = [content.path]
            # only the links stored in this file: an external link is listed, not entered
            group = f[content.path]  # held while visiting: its id must stay open
            group.id.links.visit(lambda name: names.append(hdf_path_join(path, name.decode())))
            return _response(names, "json")

    # h5web asks with the trailing slash; without it the same routes answer instead of a redirect
    for route in list(router.routes):
        route_path = getattr(route, "path", "")
        if route_path.endswith("/") and route_path != "/":
            router.add_api_route(route_path.rstrip("/"), route.endpoint, methods=["GET"],  # type: ignore[attr-defined]
                                 include_in_schema=False)
    return router


def _link_resolution(value: str) -> LinkResolution:
    try:
        return parse_link_resolution_arg(value, fallback=LinkResolution.ONLY_VALID)
    except QueryArgumentError as exc:
        raise HTTPException(422, str(exc)) from None


@contextmanager
def _content(file: Path, path: str, links: LinkResolution,
             check: Callable[[h5py.File], None]) -> Iterator[tuple[h5py.File, Any]]:
    """The opened file and h5grove's content of ``path`` in it, after ``check``; h5grove's errors as HTTP ones."""
    if file.is_dir():
        raise HTTPException(422, f"{file.name} is a folder, not an HDF5 file")
    try:
        with h5py.File(file, "r", **H5PY_OPTIONS) as f:
            check(f)
            yield f, create_content(f, path, links)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except (QueryArgumentError, ValueError, IndexError, TypeError) as exc:  # a bad selection, dtype or slice
        raise HTTPException(422, str(exc)) from None
    except FileNotFoundError:
        raise HTTPException(404, f"{file.name} is gone; it may have been moved or deleted") from None
    except OSError as exc:
        raise HTTPException(422, f"{file.name} cannot be read as HDF5 ({exc}); it may be truncated, still "
                                 "being written, or not HDF5") from None


def _response(value: Any, format: str) -> Response:
    encoded = encode(value, format)
    return Response(content=encoded.content, headers=encoded.headers)


def _resolve_http(request: Request, resolve: Resolver, file: str) -> Path:
    """``resolve(request, file)``, with the data root's own errors given their HTTP status."""
    try:
        return resolve(request, file)
    except PathNotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    except PathNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _allow_target(request: Request, resolve: Resolver, target: Path) -> bool:
    """Whether the caller may read ``target``, a linked file given by its absolute path, and it exists.

    A missing target is refused too: HDF5 would otherwise look for the name
    in the server's working directory.
    """
    try:
        _resolve_http(request, resolve, str(target))
    except HTTPException:
        return False
    return True


def _link_target(f: h5py.File, link: h5py.ExternalLink) -> Path:
    """The file an external link opens: as HDF5 does, relative names from the linking file's folder."""
    name = Path(link.filename)
    return name if name.is_absolute() else Path(f.filename).parent / name


def _check_path_links(f: h5py.File, path: str, allowed: Callable[[Path], bool]) -> None:
    """Walk ``path`` in ``f`` link by link; refuse (403) an external link to a file that is not ``allowed``.

    Soft links are followed inside the file, external links into their files
    (each checked before it is opened: a missing one is refused, as HDF5
    would look for it in the working directory), at most :data:`MAX_LINK_HOPS` times. A
    path that does not exist is left for h5grove to report.
    """
    files: list[h5py.File] = []
    try:
        current, rest, hops = f, [p for p in posixpath.normpath(path).split("/") if p], 0
        where = "/"
        while rest:
            name = rest.pop(0)
            node = current.get(where, getlink=False) if where != "/" else current["/"]
            if not isinstance(node, h5py.Group):
                return
            link = node.get(name, getlink=True)
            if link is None:
                return
            if isinstance(link, h5py.SoftLink):
                hops += 1
                target = link.path if link.path.startswith("/") else posixpath.join(where, link.path)
                rest = [p for p in posixpath.normpath(target).split("/") if p] + rest
                where = "/"
            elif isinstance(link, h5py.ExternalLink):
                hops += 1
                target_file = _link_target(current, link)
                if not allowed(target_file):
                    raise HTTPException(403, f"{posixpath.join(where, name)} links to {link.filename}, which is "
                                             "missing or outside the folders this token may read")
                try:
                    current = h5py.File(target_file, "r", **H5PY_OPTIONS)
                except OSError as exc:
                    raise HTTPException(422, f"{posixpath.join(where, name)} links to {link.filename}, which "
                                             f"cannot be read as HDF5 ({exc})") from None
                files.append(current)
                rest = [p for p in posixpath.normpath(link.path).split("/") if p] + rest
                where = "/"
            else:
                where = posixpath.join(where, name)
            if hops > MAX_LINK_HOPS:
                raise HTTPException(422, f"{path} goes through more than {MAX_LINK_HOPS} links; a link loop?")
    finally:
        for opened in files:
            opened.close()


def _check_virtual_sources(f: h5py.File, path: str, allowed: Callable[[Path], bool]) -> None:
    """Refuse (403) reading a virtual dataset whose values come from a file that is not ``allowed``.

    A virtual dataset maps other files' datasets (lightpipe's NeXus sink maps
    its workers' part files so); those files are checked as external links'
    targets are: relative names from the virtual dataset's file's folder, a
    missing one refused.
    """
    try:
        dataset = f[path]
    except (KeyError, OSError):
        return  # h5grove reports it
    if not isinstance(dataset, h5py.Dataset) or not dataset.is_virtual:
        return
    folder = Path(dataset.file.filename).parent
    for source in {s.file_name for s in dataset.virtual_sources()}:
        if source == ".":  # the virtual dataset's own file
            continue
        target = Path(source) if Path(source).is_absolute() else folder / source
        if "*" in source or "%" in source or not allowed(target):  # a printf-style pattern names many files
            raise HTTPException(403, f"{path} takes its values from {source}, which is missing or outside the "
                                     "folders this token may read")


def _group_metadata(f: h5py.File, group: GroupContent, links: LinkResolution,
                    check: Callable[[str], None]) -> dict[str, Any]:
    """h5grove's metadata of a group, whose children that lead out of what the caller may read stay links.

    h5grove resolves every child link to describe it (a dataset's shape and
    type, a group's attributes); a child that leads to a file the caller may
    not read is described as the link it is instead.
    """
    children = []
    for name in f[group.path]:
        child = hdf_path_join(group.path, name)
        child_links = links
        if links != LinkResolution.NONE:
            try:
                check(child)
            except HTTPException:
                child_links = LinkResolution.NONE
        children.append(create_content(f, child, child_links).metadata(0))
    return sorted_dict(("children", children), *ResolvedEntityContent.metadata(group).items())
