"""Load a pipeline from YAML and check it completely before anything runs.

Every problem is reported with the file, the line and the dotted field path,
and says what is expected; all problems found are reported together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from lightpipe.core import registry
from lightpipe.core.bounds import FrameBox, KnowsFrameShape
from lightpipe.core.errors import PipelineError, PipelineErrors, PluginError, StageError
from lightpipe.core.event import Scan
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.parts import PartRunner
from lightpipe.core.ports import Port
from lightpipe.core.sink import Sink
from lightpipe.core.source import Source
from lightpipe.core.spec import CURRENT_VERSION, UPGRADES, EngineSpec, PipelineSpec, as_list
from lightpipe.core.stage import Stage
from lightpipe.core.yamlfile import LocatedYAML, read_text

SOURCE = "source"
#: Inputs named ``scan.<key>`` read ``<key>`` of the scan's metadata (a detector's pixel mask, say),
#: checked against the input's port when each scan starts.
SCAN = "scan"


@dataclass
class StageNode:
    """A stage instance of a loaded pipeline: its class, checked parameters and resolved inputs."""

    name: str
    cls: type[Stage]
    params: Any
    streams: frozenset[str]
    inputs: dict[str, str]
    workers: int | None
    buffer_policy: str
    buffer_capacity: int

    @property
    def kind(self) -> str:
        return self.cls.kind

    def create(self) -> Stage:
        """A fresh instance of the stage."""
        return self.cls(self.params)


@dataclass
class SinkNode:
    """A sink of a loaded pipeline."""

    cls: type[Sink]
    params: Any
    fields: list[str]
    streams: frozenset[str]


@dataclass
class Pipeline:
    """A validated pipeline, ready for an engine.

    Use :func:`load_pipeline` to make one from a file or a dict.
    """

    name: str
    description: str
    source_cls: type[Source]
    source_params: Any
    stages: dict[str, StageNode]
    sinks: list[SinkNode]
    engine: EngineSpec
    file: str | None = None
    ports: dict[str, Port] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict)

    def port(self, key: str) -> Port:
        """Declared port of field ``producer.field``."""
        return self.ports[key]

    def create_source(self) -> Source:
        """A fresh source instance."""
        return self.source_cls(self.source_params)

    def frame_geometry(self, key: str, frame_shape: Any) -> FrameGeometry | None:
        """Geometry of the frames in field ``key``, when the source's frames are ``frame_shape`` (ny, nx).

        Follows each stage's frame output back to its frame input, and on to the
        source's ``frame``, applying every stage's :meth:`~lightpipe.core.stage.Stage.frame_geometry`.
        ``None`` when ``key`` is not a detector frame or ``frame_shape`` is unknown.
        """
        producer, _, out = key.partition(".")
        if producer == SOURCE:
            if out != "frame" or frame_shape is None or len(frame_shape) != 2:
                return None
            return FrameGeometry((int(frame_shape[0]), int(frame_shape[1])))
        node = self.stages.get(producer)
        source = node.cls.frame_sources().get(out) if node is not None else None
        if node is None or source is None or source not in node.inputs:
            return None
        geometry = self.frame_geometry(node.inputs[source], frame_shape)
        return None if geometry is None else node.cls.frame_geometry(node.params, geometry)

    def running_stages(self) -> set[str]:
        """Stages a run executes: every reduce and solver stage, and the map stages that feed them or a sink
        (a map stage whose outputs nothing uses is skipped, as the execution plan does)."""
        running = {name for name, node in self.stages.items() if node.kind != "map"}
        todo = [ref for s in self.sinks for ref in s.fields]
        todo += [ref for name in running for ref in self.stages[name].inputs.values()]
        while todo:
            producer = todo.pop().split(".", 1)[0]
            if producer in self.stages and producer not in running:
                running.add(producer)
                todo.extend(self.stages[producer].inputs.values())
        return running

    def frame_problems(self, frame_shape: Any) -> dict[str, str]:
        """Stages whose region (a crop, a region of interest) does not fit their frames, when the source's frames
        are ``frame_shape`` (ny, nx): ``{stage: why}``, empty when every region fits or the shape is unknown."""
        problems = {}
        for name, node in self.stages.items():
            if name in self.running_stages() and isinstance(node.params, FrameBox) and "frame" in node.inputs:
                geometry = self.frame_geometry(node.inputs["frame"], frame_shape)
                why = node.params.frame_problem(geometry.shape) if geometry is not None else None
                if why:
                    problems[name] = why
        return problems

    def start_stage(self, name: str, scan: Scan, part_runner: PartRunner | None = None) -> Stage:
        """A fresh instance of stage ``name``, given its input geometry and part runner, set up for ``scan``.

        Raises
        ------
        StageError
            When the stage's region (a crop, a region of interest) does not fit the scan's frames.
        """
        node = self.stages[name]
        stage = node.create()
        shape = scan.metadata.get("frame_shape")
        for in_name, ref in node.inputs.items():
            geometry = self.frame_geometry(ref, shape)
            if geometry is not None:
                stage.input_geometry[in_name] = geometry
        frame = stage.input_geometry.get("frame")
        why = node.params.frame_problem(frame.shape) if frame is not None and isinstance(node.params, FrameBox) else None
        if why:
            raise StageError(f"stage {name!r} ({node.cls.name}) does not fit the frames of scan {scan.name!r}: {why}; "
                             "fix its parameters in the pipeline")
        if part_runner is not None:
            stage.part_runner = part_runner
        stage.setup(scan)
        return stage

    def with_source(self, use: str, params: dict[str, Any]) -> Pipeline:
        """A copy of this pipeline reading from another source; checked like the original."""
        data = dict(self.document)
        data["source"] = {"use": use, "params": params}
        return load_pipeline(data, file=self.file, require_output=bool(self.sinks))


def load_pipeline(
    source: str | Path | dict[str, Any], *, file: str | None = None, require_output: bool | None = None
) -> Pipeline:
    """Load and validate a pipeline.

    Parameters
    ----------
    source
        Path of a YAML file, YAML text, or an already-parsed dict.
    file
        Name to use in error messages when ``source`` is text or a dict.
    require_output
        Refuse a pipeline that would write nothing: no sinks, or a sink that
        receives no fields. Default: yes for a file or YAML text (a run of it
        would end without a result); no for a dict, whose caller may read the
        results from the run's report instead.

    Raises
    ------
    PipelineError
        With file, line and field of the first problem; :class:`PipelineErrors`
        when there are several.
    """
    if require_output is None:
        require_output = not isinstance(source, dict)
    if isinstance(source, dict):
        doc = LocatedYAML("{}", file)
        doc.data = source
    else:
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))):
            path = Path(source)
            if not path.is_file():
                raise PipelineError(f"pipeline file not found: {path}; check the path (pipelines/ has examples)")
            file = str(path)
            text = read_text(path)
        doc = LocatedYAML(str(text), file)
    return _Checker(doc, require_output).check()


class _Checker:
    def __init__(self, doc: LocatedYAML, require_output: bool) -> None:
        self.doc = doc
        self.require_output = require_output
        self.errors: list[PipelineError] = []

    def fail(self, message: str, *path: Any) -> None:
        self.errors.append(self.doc.error(message, path))

    def raise_if_failed(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise PipelineErrors(self.errors)

    def check(self) -> Pipeline:
        data = self._upgraded(self.doc.data)
        try:
            spec = PipelineSpec.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                self.fail(_explain(err), *err["loc"])
            self.raise_if_failed()
            raise  # unreachable: there was at least one error
        ports: dict[str, Port] = {}
        source_cls, source_params = self._plugin("sources", spec.source.use, spec.source.params, ("source",))
        if source_cls is not None:
            for name, port in source_cls.outputs_for(source_params).items():
                ports[f"{SOURCE}.{name}"] = port
        producers_streams: dict[str, frozenset[str] | None] = {SOURCE: None}
        nodes: dict[str, StageNode] = {}
        self.declared = list(spec.stages)
        # a source that failed to load has no fields: what stages read from it is not a second error
        self.failed_stages: set[str] = set() if source_cls is not None else {SOURCE}
        for name, st in spec.stages.items():
            node = self._stage(name, st, ports, producers_streams)
            if node is None:
                self.failed_stages.add(name)
            else:
                nodes[name] = node
                producers_streams[name] = node.streams if node.kind == "map" else None
                feeding = {k: ports[ref] for k, ref in node.inputs.items() if ref in ports}
                for out, port in node.cls.outputs_for(node.params, feeding).items():
                    ports[f"{name}.{out}"] = port
        sinks = [self._sink(i, s, ports, producers_streams) for i, s in enumerate(spec.sinks)]
        if self.require_output and not spec.sinks:
            self.fail("the pipeline has no sinks, so a run would write nothing; add one, e.g. "
                      "'sinks: [{use: nexus}]'", "sinks")
        self.raise_if_failed()
        pipeline = Pipeline(
            name=spec.name,
            description=spec.description,
            source_cls=source_cls,
            source_params=source_params,
            stages=nodes,
            sinks=[s for s in sinks if s is not None],
            engine=spec.engine,
            file=self.doc.file,
            ports=ports,
            document=data,
        )
        shape = source_params.known_frame_shape() if isinstance(source_params, KnowsFrameShape) else None
        if shape is not None:
            for name, why in pipeline.frame_problems(shape).items():
                self.fail(f"{why} (the source's frames are {shape[0]} x {shape[1]})", "stages", name, "params")
            self.raise_if_failed()
        return pipeline

    def _upgraded(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("a pipeline file must be a mapping with version, name, source, stages and sinks")
            self.raise_if_failed()
        version = data.get("version")
        if not isinstance(version, int):
            self.fail(f"missing or non-integer 'version'; write 'version: {CURRENT_VERSION}' at the top", "version")
            self.raise_if_failed()
        if version > CURRENT_VERSION:
            self.fail(f"version {version} is newer than this lightpipe understands ({CURRENT_VERSION}); upgrade lightpipe", "version")
            self.raise_if_failed()
        while version < CURRENT_VERSION:
            if version not in UPGRADES:
                self.fail(f"version {version} cannot be upgraded; rewrite the file as version {CURRENT_VERSION}", "version")
                self.raise_if_failed()
            data = UPGRADES[version](data)
            version += 1
        return data

    def _plugin(self, group: registry.Group, use: str, params: dict[str, Any], path: tuple[Any, ...]) -> tuple[Any, Any]:
        try:
            cls: Any = registry.load(group, use)
        except PluginError as exc:
            self.fail(str(exc), *path, "use")
            return None, None
        base = _BASES[group]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            self.fail(f"{use!r} is not a lightpipe {base.__name__} subclass (it is {cls!r}); a {group[:-1]} "
                      f"subclasses lightpipe.core.{base.__module__.rsplit('.', 1)[1]}.{base.__name__}", *path, "use")
            return None, None
        model: type[BaseModel] = cls.Params
        try:
            return cls, model.model_validate(params)
        except ValidationError as exc:
            for err in exc.errors():
                self.fail(_explain(err, model), *path, "params", *err["loc"])
            return None, None

    def _stage(
        self, name: str, st: Any, ports: dict[str, Port], producers_streams: dict[str, frozenset[str] | None]
    ) -> StageNode | None:
        path = ("stages", name)
        if name in (SOURCE, SCAN) or "." in name:
            self.fail(f"stage name {name!r} is reserved or contains '.'; rename it", *path)
            return None
        cls, params = self._plugin("stages", st.use, st.params, path)
        if cls is None:
            return None
        streams = frozenset(as_list(st.stream))
        for key in st.inputs:
            if key not in cls.inputs:
                self.fail(f"stage {st.use!r} has no input {key!r}; its inputs are {sorted(cls.inputs)}", *path, "inputs", key)
        inputs = {}
        for in_name, in_port in cls.inputs.items():
            ref = st.inputs.get(in_name) or self._default_input(in_name, ports)
            where = (*path, "inputs", in_name)
            if ref is None:
                if in_port.optional:
                    continue  # left out: the stage uses its default
                if SOURCE not in self.failed_stages:  # otherwise the source's own field may be the one missing
                    self.fail(f"input {in_name!r} ({in_port.describe()}) is not connected; add "
                              f"'inputs: {{{in_name}: producer.field}}'", *where)
                continue
            if ref.startswith(f"{SCAN}.") and len(ref) > len(SCAN) + 1:
                inputs[in_name] = ref  # the scan's metadata: known when a scan starts, checked then
                continue
            if ref not in ports:
                producer = ref.split(".", 1)[0]
                if producer in self.declared[self.declared.index(name):]:
                    self.fail(f"stage {producer!r} comes after {name!r}; stages are listed in data-flow order, "
                              "so move it up", *where)
                elif not self._already_reported(ref):
                    self.fail(f"{ref!r} is not produced before this stage; known fields: {', '.join(sorted(ports))}", *where)
                continue
            why = in_port.accepts(ports[ref])
            if why:
                self.fail(f"input {in_name!r} {why} from {ref!r}", *where)
                continue
            made_on = producers_streams.get(ref.split(".", 1)[0])
            if made_on is not None and not streams <= made_on:
                self.fail(f"{ref!r} exists only on streams {sorted(made_on)} but this stage takes {sorted(streams)}", *where)
                continue
            inputs[in_name] = ref
        return StageNode(name, cls, params, streams, inputs, st.workers, st.buffer.policy, st.buffer.capacity)

    def _already_reported(self, ref: str) -> bool:
        """Whether ``ref`` is missing only because its stage failed to load (an error already given)."""
        return ref.split(".", 1)[0] in self.failed_stages

    @staticmethod
    def _default_input(in_name: str, ports: dict[str, Port]) -> str | None:
        """The latest producer of a field called ``in_name`` (stages shadow the source)."""
        matches = [key for key in ports if key.split(".", 1)[1] == in_name]
        return matches[-1] if matches else None

    def _sink(
        self, i: int, s: Any, ports: dict[str, Port], producers_streams: dict[str, frozenset[str] | None]
    ) -> SinkNode | None:
        path = ("sinks", i)
        cls, params = self._plugin("sinks", s.use, s.params, path)
        streams = frozenset(as_list(s.stream))
        if s.fields is None:  # every stage output that exists on the sink's streams
            fields = [
                key for key in ports
                if key.split(".", 1)[0] != SOURCE and streams <= (producers_streams[key.split(".", 1)[0]] or streams)
            ]
        else:
            fields = list(s.fields)
            for j, key in enumerate(fields):
                if key not in ports:
                    if not self._already_reported(key):
                        self.fail(f"{key!r} is not produced by this pipeline; known fields: {', '.join(sorted(ports))}",
                                  *path, "fields", j)
                    continue
                made_on = producers_streams.get(key.split(".", 1)[0])
                if made_on is not None and not streams <= made_on:
                    self.fail(f"{key!r} exists only on streams {sorted(made_on)} but this sink writes "
                              f"{sorted(streams)}; set the sink's 'stream' or drop the field", *path, "fields", j)
        if self.require_output and not fields:
            self.fail(f"sink {s.use!r} receives no fields, so it would write nothing; list what it writes in "
                      f"'fields' (known fields: {', '.join(sorted(ports)) or 'none'}), or remove the sink", *path)
        if cls is None:
            return None
        if all(key in ports for key in fields):  # otherwise a missing field is the error already given
            for where, why in cls.field_problems(params, fields, ports):
                self.fail(why, *path, *where)
        return SinkNode(cls, params, fields, streams)


_BASES: dict[registry.Group, type[Stage | Source | Sink]] = {"stages": Stage, "sources": Source, "sinks": Sink}


def _explain(err: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """A pydantic error as one sentence saying what is expected."""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        field_name = err["loc"][-1] if err["loc"] else "?"
        known = sorted(model.model_fields) if model is not None else None
        hint = f"; known parameters: {', '.join(known)}" if known else "; remove it or check its spelling"
        return f"unknown field {field_name!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    return f"{msg.removeprefix('Value error, ')} (got {err.get('input')!r})"
