"""Read YAML while remembering the line of every field, so errors can point at it.

A pipeline file comes from people and from programs that may go wrong, so it is read
defensively: every limit below is checked before the text can cost much time or memory,
and YAML tags never construct anything but plain data (no ``!!python/...``).

* at most :data:`MAX_FILE_BYTES` bytes, UTF-8 text (a byte-order mark is allowed), no NUL bytes;
* lines of at most :data:`MAX_LINE_CHARS` characters;
* mappings and lists nested at most :data:`MAX_DEPTH` deep;
* at most :data:`MAX_NODES` values, counting each use of an alias (``*name``) as a copy of
  what its anchor (``&name``) holds, so a small file cannot expand into a huge one;
* an alias may not refer to a node that contains it, each key appears once per mapping,
  and the file holds one document.

The document is built from the parser's events with an explicit stack rather than by
PyYAML's recursive composer, so deep nesting is refused instead of overflowing Python's
stack.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lightpipe.core.errors import PipelineError

Path_ = tuple[Any, ...]

#: Largest pipeline file read, in bytes. Real pipelines are a few kilobytes.
MAX_FILE_BYTES = 1 << 20
#: Longest line, in characters.
MAX_LINE_CHARS = 10_000
#: Deepest nesting of mappings and lists.
MAX_DEPTH = 64
#: Most values (scalars, mappings, lists) in a document, each alias counted as a copy of its anchor.
MAX_NODES = 50_000

#: Tags a mapping or a list may carry: only the plain ones (``!!map``, ``!!seq``).
_COLLECTION_TAGS = {None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}

# libyaml's parser is twenty times faster than the pure-Python one; either gives the same events.
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(path: str | Path) -> str:
    """The text of a pipeline file, read as bytes with a size limit and decoded as strict UTF-8.

    Raises
    ------
    PipelineError
        When the file cannot be read, is larger than :data:`MAX_FILE_BYTES`,
        is binary or is not UTF-8; the message says what to do.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PipelineError(f"cannot read the pipeline file: {exc.strerror or exc}; check the path and its "
                            "permissions", file=str(path)) from exc
    return decode(data, str(path))


def decode(data: bytes, file: str | None = None) -> str:
    """``data`` as pipeline text: strict UTF-8, no NUL bytes, at most :data:`MAX_FILE_BYTES` bytes."""
    if len(data) > MAX_FILE_BYTES:
        raise PipelineError(f"the file is larger than {MAX_FILE_BYTES // 1024} kB, the most a pipeline file may be; "
                            "is it really a pipeline? (large data belong in the source's files)", file=file)
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise PipelineError("the file is binary (it holds NUL bytes), not YAML text; give the pipeline's .yaml file",
                            file=file, line=line)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PipelineError(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                            "save it as UTF-8", file=file, line=line) from None


def _check_text(text: str, file: str | None) -> None:
    if len(text) > MAX_FILE_BYTES:
        raise PipelineError(f"the pipeline is longer than {MAX_FILE_BYTES // 1024} kB of text, the most a pipeline "
                            "may be", file=file)
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            raise PipelineError(f"line {number} is {len(line)} characters long, more than the {MAX_LINE_CHARS} a "
                                "pipeline line may have; break it over several lines", file=file, line=number)


class _Open:
    """A mapping or list being built: where it goes and what it holds so far."""

    __slots__ = ("path", "value", "key", "anchor", "first_node")

    def __init__(self, path: Path_, value: dict[str, Any] | list[Any], anchor: str | None, first_node: int) -> None:
        self.path = path
        self.value = value
        self.key: str | None = None  # a mapping's key waiting for its value
        self.anchor = anchor
        self.first_node = first_node


class LocatedYAML:
    """A parsed YAML document and the 1-based line of each field in it.

    Parameters
    ----------
    text
        The YAML text.
    file
        Name used in error messages.

    Raises
    ------
    PipelineError
        When the text is not valid YAML or breaks one of the limits of this module.
    """

    def __init__(self, text: str, file: str | None = None) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        _check_text(text, file)
        try:
            self.data = self._build(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise PipelineError(f"not valid YAML: {problem}; fix the syntax", file=file, line=line) from None

    def _fail(self, message: str, event: yaml.Event) -> PipelineError:
        return PipelineError(message, file=self.file, line=event.start_mark.line + 1)

    def _build(self, text: str) -> Any:
        """The document's data, built from parser events with an explicit stack."""
        scalars = yaml.SafeLoader("")  # resolves and constructs plain scalars only
        try:
            return self._from_events(yaml.parse(text, Loader=_Loader), scalars)
        finally:
            scalars.dispose()

    def _from_events(self, events: Any, scalars: yaml.SafeLoader) -> Any:
        stack: list[_Open] = []
        anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, nodes it holds)
        open_anchors: set[str] = set()
        nodes = 0
        documents = 0
        root: Any = {}
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self._fail("the file holds more than one YAML document ('---'); a pipeline file is one "
                                     "document", event)
                continue
            if not isinstance(event, yaml.NodeEvent):
                if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    done = stack.pop()
                    if done.anchor is not None:
                        open_anchors.discard(done.anchor)
                        anchors[done.anchor] = (done.value, nodes - done.first_node)
                continue
            parent = stack[-1] if stack else None
            if parent is not None and isinstance(parent.value, dict) and parent.key is None:
                parent.key = self._key(event, parent.value)
                self.lines[parent.path + (parent.key,)] = event.start_mark.line + 1
                continue
            path = self._path_of(parent)
            self.lines.setdefault(path, event.start_mark.line + 1)
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in open_anchors:
                    raise self._fail(f"alias *{event.anchor} refers to a node that contains it; a pipeline cannot be "
                                     "recursive", event)
                if event.anchor not in anchors:
                    raise self._fail(f"alias *{event.anchor} has no anchor &{event.anchor} before it", event)
                held, count = anchors[event.anchor]
                nodes += count
                if nodes > MAX_NODES:
                    raise self._fail(f"the file expands to more than {MAX_NODES} values (aliases count as copies of "
                                     "their anchors); use fewer aliases or a smaller file", event)
                value = copy.deepcopy(held)
            else:
                nodes += 1
                if nodes > MAX_NODES:
                    raise self._fail(f"the file holds more than {MAX_NODES} values, the most a pipeline may have", event)
                if isinstance(event, yaml.ScalarEvent):
                    value = self._scalar(event, scalars)
                    if event.anchor is not None:
                        anchors[event.anchor] = (value, 1)
                else:
                    if event.tag not in _COLLECTION_TAGS:
                        raise self._fail(f"YAML tag {event.tag!r} is not allowed; a pipeline holds plain mappings, "
                                         "lists and values", event)
                    if len(stack) >= MAX_DEPTH:
                        raise self._fail(f"mappings and lists are nested more than {MAX_DEPTH} deep, more than a "
                                         "pipeline may be", event)
                    value = {} if isinstance(event, yaml.MappingStartEvent) else []
                    if event.anchor is not None:
                        open_anchors.add(event.anchor)
                    stack.append(_Open(path, value, event.anchor, nodes))
            if parent is None:
                root = value
            elif isinstance(parent.value, dict):
                assert parent.key is not None, "a mapping's value comes after its key"
                parent.value[parent.key] = value
                parent.key = None
            else:
                parent.value.append(value)
        return root

    def _path_of(self, parent: _Open | None) -> Path_:
        if parent is None:
            return ()
        if isinstance(parent.value, dict):
            return parent.path + (parent.key,)
        return parent.path + (len(parent.value),)

    def _key(self, event: yaml.Event, mapping: dict[str, Any]) -> str:
        """A mapping key: a plain scalar, once per mapping."""
        if not isinstance(event, yaml.ScalarEvent):
            raise self._fail("a key must be a plain name, not a list, mapping or alias", event)
        if event.value == "<<" and event.implicit[0]:
            raise self._fail("merge keys ('<<: *anchor') are not supported in pipeline files; write the values out, "
                             "or alias the whole mapping", event)
        if event.value in mapping:
            raise self._fail(f"key {event.value!r} appears twice in the same mapping; keep one", event)
        return event.value

    def _scalar(self, event: yaml.ScalarEvent, scalars: yaml.SafeLoader) -> Any:
        node = yaml.ScalarNode(
            event.tag if event.tag not in (None, "!") else scalars.resolve(yaml.ScalarNode, event.value, event.implicit),
            event.value, event.start_mark, event.end_mark, event.style,
        )
        try:
            return scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            raise self._fail(f"YAML tag {event.tag!r} is not allowed; a pipeline holds plain mappings, lists and "
                             "values", event) from None

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
