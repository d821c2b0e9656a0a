"""The layer rules of docs/architecture.md, read from the imports of every module under src/lightpipe/.

Every import counts: at the top of a module, inside a function, under
``if TYPE_CHECKING:``. A failure names each offending file and line with its
arrow (importing module -> imported module or name).
"""
from __future__ import annotations

import ast
import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lightpipe

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "lightpipe"


@dataclass(frozen=True)
class Arrow:
    """One import: ``source`` (a module) uses ``target`` (a module, or ``module.name`` for a name imported from it)."""

    file: Path
    line: int
    source: str
    target: str
    private: bool = False  # the target is another module's ``_name``

    def __str__(self) -> str:
        return f"{self.file.relative_to(SRC.parent)}:{self.line}: {self.source} -> {self.target}"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> frozenset[str]:
    return frozenset(module_name(p) for p in PACKAGE.rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``source``."""
    if level == 0:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def arrows(path: Path, text: str | None = None, root: Path = SRC) -> list[Arrow]:
    """Every import of lightpipe by the module at ``path``, and every use of a lightpipe module's private name."""
    source = module_name(path, root)
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Arrow] = []
    bound: dict[str, str] = {}  # local name -> the lightpipe module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lightpipe":
                    found.append(Arrow(path, node.lineno, source, alias.name))
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            origin = _resolve(source, is_package, node.level, node.module)
            if origin.split(".")[0] != "lightpipe":
                continue
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                is_module = submodule in modules()
                target = submodule if is_module else origin
                private = _is_private(alias.name) and not is_module
                found.append(Arrow(path, node.lineno, source, submodule if private else target, private))
                if is_module:
                    bound[alias.asname or alias.name] = submodule
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain = _dotted(node.value)
            if chain is None:
                continue
            head, _, rest = chain.partition(".")
            if head in bound:
                module = ".".join(filter(None, [bound[head], rest]))
                if module in modules():
                    found.append(Arrow(path, node.lineno, source, f"{module}.{node.attr}", private=True))
    return found


@lru_cache(maxsize=None)
def all_arrows() -> tuple[Arrow, ...]:
    return tuple(a for path in sorted(PACKAGE.rglob("*.py")) for a in arrows(path))


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _report(bad: list[Arrow], rule: str) -> str:
    return f"{rule} ({len(bad)} arrows break it):\n" + "\n".join(str(a) for a in bad)


def test_core_imports_only_core() -> None:
    bad = [a for a in all_arrows() if _within(a.source, "lightpipe.core") and not _within(a.target, "lightpipe.core")]
    assert not bad, _report(bad, "lightpipe.core imports nothing of lightpipe outside lightpipe.core")


def test_techniques_and_stages_never_import_engines() -> None:
    bad = [a for a in all_arrows()
           if _within(a.source, "lightpipe.techniques", "lightpipe.stages") and _within(a.target, "lightpipe.engines")]
    assert not bad, _report(bad, "techniques and stages never import lightpipe.engines")


def test_engines_never_import_techniques() -> None:
    bad = [a for a in all_arrows()
           if _within(a.source, "lightpipe.engines") and _within(a.target, "lightpipe.techniques")]
    assert not bad, _report(bad, "lightpipe.engines never imports lightpipe.techniques")


def test_sources_never_import_engines() -> None:
    bad = [a for a in all_arrows() if _within(a.source, "lightpipe.sources") and _within(a.target, "lightpipe.engines")]
    assert not bad, _report(bad, "lightpipe.sources never imports lightpipe.engines")


def test_no_module_uses_another_modules_private_names() -> None:
    bad = [a for a in all_arrows() if a.private and a.target.rpartition(".")[0] != a.source]
    assert not bad, _report(bad, "no module imports or uses another module's _private name; make it public or "
                                 "move the code where it is used")


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, targets = work[-1]
            step = next(targets, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_no_import_circles() -> None:
    # every import counts, TYPE_CHECKING and function-level ones too: a circle hidden there is still a circle
    graph: dict[str, set[str]] = {}
    for a in all_arrows():
        target = a.target.rpartition(".")[0] if a.private else a.target
        if target != a.source and target in modules():
            graph.setdefault(a.source, set()).add(target)
    circles = _circles(graph)
    assert not circles, "modules that import each other (break the circle by moving what both need): " + \
        "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_circles() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_only_the_command_line_imports_the_package_root() -> None:
    # the root re-exports the lower layers, so a lower layer importing it (for __version__) is a cycle
    bad = [a for a in all_arrows() if a.target == "lightpipe" and not _within(a.source, "lightpipe.cli")]
    assert not bad, _report(bad, "only lightpipe.cli imports the package root; the version is lightpipe.core.version")


def test_the_version_has_one_source() -> None:
    assert lightpipe.__version__ == importlib.metadata.version("lightpipe")
    home = PACKAGE / "core" / "version.py"
    written = [f"{path.relative_to(SRC.parent)}:{node.lineno}" for path in PACKAGE.rglob("*.py") if path != home
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, (ast.Assign, ast.AnnAssign))
               and any(isinstance(t, ast.Name) and t.id == "__version__"
                       for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert not written, f"__version__ set outside lightpipe/core/version.py (re-export it from there): {written}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    module = tmp_path / "lightpipe" / "core" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from lightpipe.core import registry\n"
        "if TYPE_CHECKING:\n"
        "    from lightpipe.engines import Engine\n"
        "def f():\n"
        "    import lightpipe.sources.hdf5 as h\n"
        "    from ..sinks.nexus import _fill\n"
        "    return registry._broken, h, _fill\n"
    )
    found = {(a.line, a.target, a.private) for a in arrows(module, root=tmp_path)}
    assert found == {
        (2, "lightpipe.core.registry", False),
        (4, "lightpipe.engines", False),
        (6, "lightpipe.sources.hdf5", False),
        (7, "lightpipe.sinks.nexus._fill", True),
        (8, "lightpipe.core.registry._broken", True),
    }
