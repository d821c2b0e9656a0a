"""``lightpipe stages|sources|sinks|engines [NAME] [--json]``: every plug-in with its declarations.

Everything shown comes from :func:`lightpipe.core.registry.describe`, so these
tables, the ``--json`` document, the tables in the docs
(:mod:`lightpipe.cli.doc_tables`) and the UI's forms cannot disagree.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightpipe.core import registry
from lightpipe.core.errors import PluginError
from lightpipe.core.ports import Port

_HELP: dict[registry.Group, str] = {
    "stages": "list stages with their parameters, inputs and outputs",
    "sources": "list sources with their parameters and the fields their events carry",
    "sinks": "list sinks with their parameters",
    "engines": "list engines with their options",
}
_TYPE_NAMES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}
_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))


@dataclass(frozen=True)
class ParameterRow:
    """One parameter of a plug-in as the tables show it; every field is display text."""

    name: str
    type: str
    unit: str
    default: str
    bounds: str
    description: str


def schema_type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """Short type of one JSON-schema property, e.g. ``int``, ``float | null``, ``[int, int]``, ``"a" | "b"``."""
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        return schema_type(target, defs) if "enum" in target else str(target.get("title", "object"))
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in prop:
            return " | ".join(schema_type(branch, defs) for branch in prop[key])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(schema_type(item, defs) for item in prop["prefixItems"]) + "]"
        return f"list[{schema_type(prop['items'], defs)}]" if "items" in prop else "list"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"dict[str, {schema_type(values, defs)}]" if isinstance(values, dict) else "dict"
    if isinstance(kind, list):
        return " | ".join(_TYPE_NAMES.get(k, k) for k in kind)
    return _TYPE_NAMES.get(kind, kind) if kind else "any"


def _bounds(prop: dict[str, Any]) -> list[str]:
    found = [f"{symbol}{prop[key]}" for key, symbol in _BOUNDS if key in prop]
    for branch in prop.get("anyOf", []):  # an optional number keeps its bounds in its non-null branch
        found += _bounds(branch)
    return found


def parameter_rows(schema: dict[str, Any] | None) -> list[ParameterRow]:
    """One row per property of a ``Params`` JSON schema (``describe(...)["params"]``); none for ``None``."""
    if not schema:
        return []
    defs = schema.get("$defs", {})
    rows = []
    for name, prop in schema.get("properties", {}).items():
        default = json.dumps(prop["default"]) if "default" in prop else "required"
        rows.append(ParameterRow(name, schema_type(prop, defs), str(prop.get("unit") or ""), default,
                                 " ".join(_bounds(prop)), str(prop.get("description", ""))))
    return rows


def port_rows(info: dict[str, Any]) -> list[tuple[str, str, Port]]:
    """``(direction, name, port)`` of each declared input and output of a description, inputs first."""
    return [(direction, name, Port(**fields))
            for direction in ("input", "output")
            for name, fields in info.get(f"{direction}s", {}).items()]


def add_catalog_commands(subparsers: Any) -> None:
    """Add ``stages``, ``sources``, ``sinks`` and ``engines`` to ``lightpipe``'s subcommands (see :func:`cmd_catalog`)."""
    for group in registry.GROUPS:
        p = subparsers.add_parser(group, help=_HELP[group], description=_HELP[group].capitalize() + ", from their "
                                  f"own declarations; third-party {group} registered under the entry-point group "
                                  f"lightpipe.{group} included.")
        p.add_argument("name", nargs="?", help=f"show only this {group[:-1]} (a name, or package.module:Class)")
        p.add_argument("--json", action="store_true",
                       help="print one JSON document: every declaration, and the plug-ins that are broken or "
                            "registered twice")
        p.set_defaults(catalog_group=group)


def cmd_catalog(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Print the plug-ins of the group of a catalog subcommand; 2 if ``NAME`` is unknown or broken."""
    group: registry.Group = args.catalog_group
    if args.name is None:
        document = registry.catalog(group)
    else:
        try:
            info = registry.describe(group, args.name)
        except PluginError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            return 2
        problems = [dataclasses.asdict(p) for p in registry.problems(group) if p.name == args.name]
        document = {"group": group, "plugins": {args.name: info}, "problems": problems}
    if args.json:
        out.file.write(json.dumps(document, indent=2) + "\n")
    else:
        print_catalog(document, out, err)
    return 0


def print_catalog(document: dict[str, Any], out: Console, err: Console) -> None:
    """Print a :func:`~lightpipe.core.registry.catalog` document as text; its problems go to ``err``."""
    for name, info in document["plugins"].items():
        kind = f"  ({info['kind']})" if "kind" in info else ""
        out.print(f"\n[bold cyan]{escape(name)}[/]{kind}  {escape(info['summary'])}")
        for direction, port_name, port in port_rows(info):
            out.print(escape(f"  {direction:6} {port_name}: {port.describe()}  {port.description}"))
        rows = parameter_rows(info["params"])
        if rows:
            table = Table(show_edge=False, pad_edge=False, box=None, header_style="dim")
            for column in ("parameter", "type", "unit", "default", "bounds", "description"):
                table.add_column(column)
            for row in rows:
                table.add_row(*(escape(cell) for cell in dataclasses.astuple(row)))
            out.print(table)
    for problem in document["problems"]:
        err.print(f"[yellow]{escape(problem['message'])}[/]")
