"""Find stages, sources, sinks and engines: entry-point groups, or ``package.module:Class`` strings.

Built-in plug-ins are registered under the same entry-point groups as third-party
ones, so both are found the same way. What can go wrong is reported, never
fatal to the other plug-ins: one that fails to import is listed by
:func:`broken`, and a name registered by more than one package is listed by
:func:`problems` (and logged) with the entry point that is used and the ones
that are not. :func:`describe` turns a plug-in's declarations (docstring,
``Params`` model, ports) into a JSON-ready dict: the one source of the command
line's catalog, the docs' tables and the UI's forms.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from lightpipe.core.errors import PluginError

log = logging.getLogger(__name__)

Group = Literal["stages", "sources", "sinks", "engines"]
#: Every plug-in group, in the order the docs and the command line show them.
GROUPS: tuple[Group, ...] = ("stages", "sources", "sinks", "engines")
_ENTRY_POINT_GROUPS: dict[Group, str] = {
    "stages": "lightpipe.stages",
    "sources": "lightpipe.sources",
    "sinks": "lightpipe.sinks",
    "engines": "lightpipe.engines",
}
# On a name clash lightpipe's own entry point wins, so installing a package never
# changes what an existing pipeline file means.
_OWN_DISTRIBUTION = "lightpipe"


@dataclass(frozen=True)
class Problem:
    """Something wrong with one registered plug-in.

    Attributes
    ----------
    name
        The registered name.
    kind
        ``"duplicate"``: several packages register the name and one was picked;
        ``"broken"``: the plug-in fails to import or to describe itself, and is
        unavailable.
    message
        What happened and what to do about it.
    """

    name: str
    kind: Literal["duplicate", "broken"]
    message: str


@dataclass(frozen=True)
class _Discovery:
    entry_points: dict[str, EntryPoint]
    duplicates: dict[str, str]


def _distribution(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return None if dist is None else str(dist.name)


def _origin(ep: EntryPoint) -> str:
    return _distribution(ep) or "an unknown package"


def _precedence(ep: EntryPoint) -> tuple[bool, str, str]:
    # independent of sys.path order, so every machine of a cluster picks the same one
    origin = _origin(ep)
    return (origin != _OWN_DISTRIBUTION, origin, ep.value)


@lru_cache(maxsize=None)
def _discover(group: Group) -> _Discovery:
    candidates: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=_ENTRY_POINT_GROUPS[group]):
        candidates.setdefault(ep.name, []).append(ep)
    chosen: dict[str, EntryPoint] = {}
    duplicates: dict[str, str] = {}
    for name, eps in candidates.items():
        used, *others = sorted(eps, key=_precedence)
        chosen[name] = used
        ignored = [ep for ep in others if ep.value != used.value]
        if ignored:
            duplicates[name] = _duplicate_message(group, name, used, ignored)
            log.warning("%s", duplicates[name])
    return _Discovery(chosen, duplicates)


def _duplicate_message(group: Group, name: str, used: EntryPoint, ignored: list[EntryPoint]) -> str:
    others = ", ".join(f"{ep.value} (from {_origin(ep)})" for ep in ignored)
    return (f"{group[:-1]} {name!r} is registered more than once: {used.value} (from {_origin(used)}) is used, "
            f"{others} ignored; write the 'module:Class' form in a pipeline to use another, "
            f"or rename the entry point in one of the packages")


_loaded: dict[tuple[Group, str], type] = {}
_broken: dict[tuple[Group, str], str] = {}


def import_object(ref: str) -> Any:
    """Import ``package.module:Attr`` and return ``Attr``."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise PluginError(f"{ref!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} for {ref!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from exc


def names(group: Group, package: str | None = None) -> list[str]:
    """Names registered in ``group``, sorted; only those registered by the distribution ``package`` if given."""
    eps = _discover(group).entry_points
    return sorted(name for name, ep in eps.items() if package is None or _distribution(ep) == package)


def _unknown(group: Group, name: str, known: list[str]) -> PluginError:
    close = [repr(c) for c in difflib.get_close_matches(name, known, n=3)]
    hint = ""
    if close:
        choices = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
        hint = f" (did you mean {choices}?)"
    return PluginError(f"unknown {group[:-1]} {name!r}{hint}; known {group}: {', '.join(known) or 'none'}")


def load(group: Group, name: str) -> type:
    """Return the plug-in class registered as ``name`` in ``group``, or named by a ``module:Class`` string.

    Raises
    ------
    PluginError
        Unknown name (the message suggests close names and lists the known
        ones) or an import failure.
    """
    key = (group, name)
    if key in _loaded:
        return _loaded[key]
    if ":" in name:
        obj = import_object(name)
    else:
        eps = _discover(group).entry_points
        if name not in eps:
            raise _unknown(group, name, sorted(eps))
        try:
            obj = eps[name].load()
        except Exception as exc:  # a broken plug-in must not hide the others
            _broken[key] = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"{group[:-1]} {name!r} failed to import ({eps[name].value}): {exc}") from exc
    _loaded[key] = obj
    return obj


def load_all(group: Group) -> dict[str, type]:
    """Load every plug-in of ``group``; the ones that fail are left out and listed by :func:`broken`."""
    found = {}
    for name in names(group):
        try:
            found[name] = load(group, name)
        except PluginError:
            continue
    return found


def broken(group: Group) -> dict[str, str]:
    """Plug-ins of ``group`` that failed to import or to describe themselves so far, with the reason."""
    return {name: why for (g, name), why in _broken.items() if g == group}


def problems(group: Group) -> list[Problem]:
    """Names of ``group`` registered more than once, and plug-ins found broken so far, by name.

    A plug-in is found broken when it is loaded: call :func:`load_all` or
    :func:`catalog` first to check them all.
    """
    found = [Problem(name, "duplicate", why) for name, why in _discover(group).duplicates.items()]
    found += [Problem(name, "broken", f"{group[:-1]} {name!r} is unavailable: {why}")
              for name, why in broken(group).items()]
    return sorted(found, key=lambda p: (p.name, p.kind))


def _summary(cls: type) -> str:
    # the class's own docstring only: a base class's would describe the base
    doc = inspect.cleandoc(cls.__doc__ or "")
    return doc.splitlines()[0] if doc else ""


def _params_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    # pydantic leaves out defaults made by a default_factory; a form needs them too
    for name, field in model.model_fields.items():
        prop = schema.get("properties", {}).get(field.alias or name)
        if prop is not None and "default" not in prop and not field.is_required():
            prop["default"] = to_jsonable_python(field.get_default(call_default_factory=True, validated_data={}))
    return schema


def _ports(ports: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {port_name: dataclasses.asdict(port) for port_name, port in ports.items()}


def describe(group: Group, name: str) -> dict[str, Any]:
    """Describe one plug-in from its declarations, as plain JSON-ready data.

    Parameters
    ----------
    group
        ``"stages"``, ``"sources"``, ``"sinks"`` or ``"engines"``.
    name
        A registered name, or ``package.module:Class``.

    Returns
    -------
    dict
        ``name``, ``group``, ``class`` (``package.module:Class``), ``package``
        (the distribution that registers it; ``None`` for a ``module:Class``
        name), ``summary`` (the first line of the class docstring) and
        ``params``: the JSON schema
        of the class's ``Params`` model (each property's type, ``default``,
        bounds such as ``minimum`` or ``exclusiveMinimum``, ``description`` and
        ``unit``; ``required`` lists those without a default), or ``None`` for
        a class that declares no ``Params``. Stages add ``kind`` (``map``,
        ``reduce`` or ``solver``), ``inputs`` and ``outputs``; sources add
        ``outputs``. A port is a dict of the fields of
        :class:`~lightpipe.core.ports.Port` (``ndim``, ``dtype``, ``unit``,
        ``description``, ``scan``).

    Raises
    ------
    PluginError
        The plug-in is unknown, fails to import, or its declarations cannot be
        turned into a schema (then it is also listed by :func:`broken`).

    Examples
    --------
    >>> describe("stages", "dark_correction")["kind"]
    'map'
    """
    cls: Any = load(group, name)
    ep = None if ":" in name else _discover(group).entry_points[name]
    try:
        params = _params_schema(cls.Params) if hasattr(cls, "Params") else None
        info: dict[str, Any] = {
            "name": name,
            "group": group,
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "package": None if ep is None else _distribution(ep),
            "summary": _summary(cls),
            "params": params,
        }
        if group == "stages":
            info.update(kind=cls.kind, inputs=_ports(cls.inputs), outputs=_ports(cls.outputs))
        elif group == "sources":
            info.update(outputs=_ports(cls.outputs))
    except Exception as exc:  # a plug-in with bad declarations must not hide the others
        _broken[group, name] = f"cannot describe {cls!r}: {type(exc).__name__}: {exc}"
        raise PluginError(f"{group[:-1]} {name!r} cannot be described: {exc}; check its Params and ports") from exc
    return info


def catalog(group: Group) -> dict[str, Any]:
    """Every plug-in of ``group`` described (see :func:`describe`), with the problems found, as one document.

    Returns
    -------
    dict
        ``group``; ``plugins``, each description by name; ``problems``, each
        :class:`Problem` as a dict (``name``, ``kind``, ``message``).
    """
    plugins = {}
    for name in names(group):
        try:
            plugins[name] = describe(group, name)
        except PluginError:
            continue  # recorded in broken(), so it is listed under problems
    return {"group": group, "plugins": plugins, "problems": [dataclasses.asdict(p) for p in problems(group)]}
