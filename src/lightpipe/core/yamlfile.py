"""Read YAML while remembering the line of every field, so errors can point at it."""
from __future__ import annotations

from typing import Any

import yaml

from lightpipe.core.errors import PipelineError

Path_ = tuple[Any, ...]


class LocatedYAML:
    """A parsed YAML document and the 1-based line of each field in it.

    Parameters
    ----------
    text
        The YAML text.
    file
        Name used in error messages.
    """

    def __init__(self, text: str, file: str | None = None) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise PipelineError(f"not valid YAML: {problem}; fix the syntax", file=file, line=line) from exc
        self.data = self._build(node, ()) if node is not None else {}

    def _build(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = key_node.value
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self._build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, path + (i,)) for i, item in enumerate(node.value)]
        return _scalar(node)

    def line(self, path: Path_) -> int | None:
        """Line of the deepest known prefix of ``path``."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, message: str, path: Path_) -> PipelineError:
        """A :class:`PipelineError` pointing at ``path``."""
        field = ".".join(str(p) for p in path) or None
        return PipelineError(message, file=self.file, line=self.line(path), field=field)


def _scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
