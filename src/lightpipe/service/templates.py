"""Pipeline templates: registered YAML, versioned, and the schema of the parameters a user may change.

A template is a pipeline file an admin registered. It is checked as
``lightpipe validate`` checks a file, and stored as a new version: a
template is never edited in place, so a job always names the exact text it
ran. A user changes only stage parameters (``stage.param``), within the
bounds the stages declare; :func:`params_schema` turns those declarations
(pydantic's JSON schema of each stage's ``Params``, with units) into one JSON
schema whose defaults are the template's values, and :func:`job_document`
applies a user's changes and points the source at the dataset.

Example
-------
>>> schema = params_schema(load_pipeline(Path("pipelines/powder-profile.yaml")))
>>> schema["properties"]["photons"]["properties"]["threshold"]["default"]
6.0
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lightpipe.core import registry
from lightpipe.core.errors import LightpipeError, PipelineError
from lightpipe.core.pipeline import Pipeline, load_pipeline
from lightpipe.core.source import source_for_input

#: Largest template accepted, in characters (the body limit of the server applies before).
MAX_TEMPLATE_CHARS = 256 * 1024


class OverrideError(LightpipeError):
    """A parameter change that is not of the form ``stage.param`` or names no stage (HTTP 400)."""


def check_template(text: str, name: str = "<template>") -> Pipeline:
    """The pipeline of a template's YAML, checked completely.

    Raises
    ------
    PipelineError
        With the line and field of each problem (``name`` stands for the file).
    """
    if len(text) > MAX_TEMPLATE_CHARS:
        raise PipelineError(f"the template has {len(text)} characters, more than {MAX_TEMPLATE_CHARS}", file=name)
    if "\n" not in text:
        text += "\n"  # one line of YAML must not be taken for a file name
    return load_pipeline(text, file=name)


def _prefixed_refs(node: Any, prefix: str) -> Any:
    """``node`` with every ``#/$defs/X`` reference renamed ``#/$defs/<prefix>X``."""
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", f"#/$defs/{prefix}") if k == "$ref" and isinstance(v, str)
                    else _prefixed_refs(v, prefix)) for k, v in node.items()}
    if isinstance(node, list):
        return [_prefixed_refs(v, prefix) for v in node]
    return node


def params_schema(pipeline: Pipeline) -> dict[str, Any]:
    """A JSON schema of the stage parameters of ``pipeline``: one object per stage, one property per parameter.

    Each parameter keeps what its stage declares (type, bounds, ``unit``,
    ``description``) and takes the template's value as its ``default``. The
    stage objects carry ``title`` (``name (stage kind)``) and ``description``
    (the stage's summary), in data-flow order (``x-order``), so a form can be
    made from the schema alone.
    """
    stages: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for name, node in pipeline.stages.items():
        # as the template names it: a registered name, or package.module:Class for a stage no package registers
        described = registry.describe("stages", pipeline.document["stages"][name]["use"])
        schema = described["params"] or {"properties": {}}
        prefix = f"{name}__"
        defs.update({prefix + k: _prefixed_refs(v, prefix) for k, v in schema.get("$defs", {}).items()})
        values = node.params.model_dump(mode="json")
        properties = {}
        for param, prop in schema.get("properties", {}).items():
            prop = _prefixed_refs(copy.deepcopy(prop), prefix)
            if param in values:
                prop["default"] = values[param]
            properties[param] = prop
        stages[name] = {"type": "object", "title": f"{name} ({node.cls.name}, {node.kind})",
                        "description": described["summary"], "properties": properties, "additionalProperties": False}
    schema: dict[str, Any] = {"type": "object", "title": pipeline.name, "description": pipeline.description,
                              "properties": stages, "additionalProperties": False, "x-order": list(stages)}
    if defs:
        schema["$defs"] = defs
    return schema


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["stage.param=value", ...]`` (the command line's ``-p``) as a dict; values are read as YAML scalars.

    Raises
    ------
    OverrideError
        For a pair without ``=`` or a value that is not YAML.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise OverrideError(f"-p {pair!r}: write stage.param=value, e.g. -p photons.threshold=5")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise OverrideError(f"-p {pair!r}: the value is not valid YAML; quote text, write lists as [1, 2]") from None
    return overrides


def apply_overrides(document: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the pipeline ``document`` with ``{"stage.param": value}`` set; checked later, by loading it.

    Raises
    ------
    OverrideError
        For a key that is not ``stage.param`` or names no stage of the pipeline.
    """
    doc = copy.deepcopy(document)
    stages = doc.get("stages") or {}
    for key, value in overrides.items():
        stage, dot, param = key.partition(".")
        if not dot or not stage or not param or "." in param:
            raise OverrideError(f"parameter {key!r}: name it stage.param, e.g. photons.threshold")
        if stage not in stages:
            raise OverrideError(f"parameter {key!r}: the pipeline has no stage {stage!r}; its stages are "
                                f"{', '.join(stages) or 'none'}")
        stages[stage].setdefault("params", {})[param] = value
    return doc


def job_document(template_yaml: str, overrides: dict[str, Any], dataset: Path | None = None,
                 live: dict[str, Any] | None = None) -> tuple[Pipeline, str]:
    """The pipeline a job runs and its exact YAML: the template, the user's changes, the dataset's source.

    Parameters
    ----------
    template_yaml
        The template's text.
    overrides
        ``{"stage.param": value}``.
    dataset
        A file, folder or glob the best registered source reads, as ``lightpipe run --input`` picks it.
    live
        Instead of a dataset, a source ``{"use": ..., "params": {...}}`` (a detector stream).

    Raises
    ------
    OverrideError, PipelineError, SourceError
        A bad parameter name (400), a value the stage refuses (422, naming the field), no source for the dataset.
    """
    document = apply_overrides(check_template(template_yaml).document, overrides)
    if dataset is not None:
        source = document["source"]
        use, params = source_for_input(str(dataset), source["use"], dict(source.get("params") or {}))
        document["source"] = {"use": use, "params": params}
    elif live is not None:
        document["source"] = live
    text = yaml.safe_dump(document, sort_keys=False)
    return load_pipeline(text, file="<job>"), text
