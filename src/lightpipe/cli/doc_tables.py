"""The tables of stages, sources, sinks and engines in ``docs/``, generated from the registry.

A generated table lives between two marker comments in any page of ``docs/``::

    <!-- registry:sources -->
    (one row per source: its name and what it does)
    <!-- /registry:sources -->

    <!-- registry:sources:details -->
    (one section per source: its class, ports and parameters)
    <!-- /registry:sources:details -->

and likewise for ``stages``, ``sinks`` and ``engines``. Only lightpipe's own
plug-ins are listed, so a package installed beside it never changes the docs.
Everything comes from :func:`lightpipe.core.registry.describe`, as for
``lightpipe stages --json``.

Run ``python -m lightpipe.cli.doc_tables --write`` after changing a plug-in's
declarations; ``--check`` (the test suite runs it) exits 1 naming each table
that differs from what the registry gives.
"""
from __future__ import annotations

import argparse
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, cast

from lightpipe.cli.catalog import parameter_rows, port_rows
from lightpipe.core import registry
from lightpipe.core.errors import PluginError

#: The command that regenerates the tables, quoted in every complaint about stale ones.
WRITE_COMMAND = "python -m lightpipe.cli.doc_tables --write"
#: Where the docs are in a source checkout (``src/lightpipe/cli/`` is three levels down).
DOCS = Path(__file__).resolve().parents[3] / "docs"
_BLOCK = re.compile(r"(<!-- registry:(?P<block>\w+(?::details)?) -->\n).*?(<!-- /registry:(?P=block) -->)", re.S)
_OWN_PACKAGE = "lightpipe"
_NAME_COLUMN: dict[registry.Group, str] = {"stages": "`use:`", "sources": "`use:`", "sinks": "`use:`",
                                           "engines": "`--engine`"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _anchor(group: registry.Group, name: str) -> str:
    # the slug that GitHub and MkDocs give the heading "### `name` stage"
    return f"{name.lower()}-{group[:-1]}"


@lru_cache(maxsize=None)
def _described(group: registry.Group) -> tuple[dict[str, Any], ...]:
    return tuple(registry.describe(group, name) for name in registry.names(group, package=_OWN_PACKAGE))


def overview(group: registry.Group, link: bool = False) -> str:
    """One table row per plug-in of ``group``: name (linked to its details if ``link``), kind of stage, summary."""
    rows = []
    for info in _described(group):
        name = f"`{info['name']}`"
        if link:
            name = f"[{name}](#{_anchor(group, info['name'])})"
        kind = [info["kind"]] if group == "stages" else []
        rows.append([name, *kind, _cell(info["summary"])])
    header = [_NAME_COLUMN[group], *(["kind"] if group == "stages" else []), "what it does"]
    return "\n".join(_table(header, rows))


def details(group: registry.Group) -> str:
    """One section per plug-in of ``group``: class, kind, ports and a table of parameters."""
    parts = []
    for info in _described(group):
        kind = f", a {info['kind']} stage" if group == "stages" else ""
        lines = [f"### `{info['name']}` {group[:-1]}", "", f"{info['summary']} (`{info['class']}`{kind})", ""]
        ports = port_rows(info)
        if ports:
            lines += _table(["", "field", "values", "description"],
                            [[direction, f"`{name}`", _cell(port.describe()), _cell(port.description)]
                             for direction, name, port in ports]) + [""]
        params = parameter_rows(info["params"])
        if params:
            lines += _table(["parameter", "type", "unit", "default", "bounds", "description"],
                            [[f"`{p.name}`", _code(p.type), _cell(p.unit), _code(p.default), _cell(p.bounds),
                              _cell(p.description)] for p in params])
        else:
            lines.append("No parameters.")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render(block: str, link: bool = False) -> str:
    """The generated text of a block: ``"stages"`` (an overview) or ``"stages:details"``."""
    group, _, part = block.partition(":")
    if group not in registry.GROUPS or part not in ("", "details"):
        raise ValueError(f"unknown registry block {block!r}; use GROUP or GROUP:details, GROUP one of "
                         f"{', '.join(registry.GROUPS)}")
    checked = cast(registry.Group, group)
    return details(checked) if part else overview(checked, link)


def rewrite(text: str) -> str:
    """``text`` (a page) with every registry block regenerated; overviews link to details on the same page."""
    on_page = {m["block"] for m in _BLOCK.finditer(text)}

    def fill(match: re.Match[str]) -> str:
        block = match["block"]
        body = render(block, link=f"{block}:details" in on_page)
        return f"{match[1]}{body}\n{match[3]}"

    return _BLOCK.sub(fill, text)


def stale(docs: Path = DOCS) -> list[str]:
    """What is out of date in ``docs``: each page whose tables differ, and each group that has no overview table."""
    found = []
    overviews: set[str] = set()
    for page in sorted(docs.glob("*.md")):
        text = page.read_text()
        overviews |= {m["block"] for m in _BLOCK.finditer(text)}
        if rewrite(text) != text:
            found.append(f"{page}: its tables of plug-ins differ from the registry; run `{WRITE_COMMAND}`")
    found += [f"{docs}: no page has a table of {group}; add the markers <!-- registry:{group} --> and "
              f"<!-- /registry:{group} --> to a page and run `{WRITE_COMMAND}`"
              for group in registry.GROUPS if group not in overviews]
    return found


def write(docs: Path = DOCS) -> list[Path]:
    """Regenerate the tables of every page of ``docs``; return the pages that changed."""
    changed = []
    for page in sorted(docs.glob("*.md")):
        text = page.read_text()
        new = rewrite(text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightpipe.cli.doc_tables [--write | --check] [--docs DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m lightpipe.cli.doc_tables", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the tables in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a table is out of date")
    parser.add_argument("--docs", type=Path, default=DOCS, help=f"the docs folder (default: {DOCS})")
    args = parser.parse_args(argv)
    try:
        if args.write:
            for page in write(args.docs):
                print(f"rewrote {page}")
            return 0
        problems = stale(args.docs)
    except PluginError as exc:  # a table without one of lightpipe's own plug-ins would be wrong
        print(f"error: cannot make the tables: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
