"""Every example pipeline, mutated parameter by parameter: validate and run answer 0 or a clear error, never a crash.

Each parameter of every source, stage, sink and the engine section (those the file sets
and those the plug-in declares) gets wrong types, negatives, zero, huge values, reversed
ranges, wrong nesting, and is removed; unknown keys are added. Every mutation goes through
``lightpipe validate``; a seeded sample of them also through ``lightpipe run`` on a few
simulated frames. A Python exception escaping ``main`` fails the test with the mutation
that caused it.
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from lightpipe.cli.main import main
from lightpipe.core import registry

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))
#: Mutations checked by validate per pipeline, and by run in all (sampled, seeded).
VALIDATE_SAMPLE = 400
RUN_SAMPLE = 10
#: Sources whose counts are shrunk for a run, so that a run takes a second or two.
SMALL_RUN = {
    "simulated_frames": {"frames": 4, "darks": 2, "flats": 2},
    "ptycho_sim": {"n_positions": 9, "darks": 2, "rate_hz": 0},
}
#: Stage parameters shrunk for a run (iterations), unless the mutation is of that parameter.
SMALL_STAGES = {"ptycho_reconstruction": {"chain": "DM:2"}, "ptycho_distributed": {"chain": "DM:2", "merge_every": 1}}

Mutation = tuple[str, list[Any], Any]  # description, path in the document, new value (DELETE: remove the key)
DELETE = object()


def _bad_values(value: Any) -> Iterator[tuple[str, Any]]:
    """Wrong values for a parameter whose good value is ``value`` (None: not set in the file)."""
    yield "a string", "abc"
    yield "a mapping", {"a": 1}
    yield "a nested list", [[1, 2], [3]]
    yield "-1", -1
    yield "0", 0
    yield "2**63", 2**63
    yield "-2**63", -(2**63)
    yield "1e308", 1e308
    yield "inf", float("inf")
    yield "nan", float("nan")
    yield "true", True
    yield "null", None
    yield "an empty list", []
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        yield "the range reversed", [value[1], value[0]]
        yield "an empty range", [value[0], value[0]]
        yield "a negative start", [-value[1] - 1, value[1]]
        yield "a huge range", [0, 2**63]
        yield "three numbers", [*value, value[1]]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield "negated", -value - 1
        yield "huge", value * 2**40 + 2**40
        yield "a list of it", [value]


def _mutations(doc: dict[str, Any]) -> Iterator[Mutation]:
    """Every mutation of ``doc``'s parameters, sections and keys."""
    sections: list[tuple[list[Any], str, str]] = [(["source"], "sources", doc["source"]["use"])]
    sections += [(["stages", name], "stages", st["use"]) for name, st in doc.get("stages", {}).items()]
    sections += [(["sinks", i], "sinks", s["use"]) for i, s in enumerate(doc.get("sinks", []))]
    for path, group, use in sections:
        section = _get(doc, path)
        params = section.get("params", {})
        declared = registry.load(group, use).Params.model_fields
        for name in sorted(set(params) | set(declared)):
            where = path + ["params", name]
            for what, bad in _bad_values(params.get(name)):
                yield f"{'.'.join(map(str, where))} = {what}", where, bad
            if name in params:
                yield f"{'.'.join(map(str, where))} removed", where, DELETE
        yield f"{'.'.join(map(str, path))}.params.bogus added", path + ["params", "bogus"], 1
        yield f"{'.'.join(map(str, path))}.params nested in a list", path + ["params"], [params]
        yield f"{'.'.join(map(str, path))}.params = a string", path + ["params"], "x"
        yield f"{'.'.join(map(str, path))}.use removed", path + ["use"], DELETE
        yield f"{'.'.join(map(str, path))}.use unknown", path + ["use"], "no_such_plugin"
        yield f"{'.'.join(map(str, path))}.bogus added", path + ["bogus"], {"a": 1}
        for key in ("inputs", "fields", "stream"):
            if key in section:
                for what, bad in (("a number", 7), ("a mapping", {"x": "y"}), ("an unknown field", ["nowhere.x"]),
                                  ("empty", [])):
                    yield f"{'.'.join(map(str, path))}.{key} = {what}", path + [key], bad
    for key in ("chunk_size", "chunk_seconds"):
        for what, bad in _bad_values(doc.get("engine", {}).get(key)):
            yield f"engine.{key} = {what}", ["engine", key], bad
    for key in ("version", "name", "source", "stages", "sinks"):
        yield f"{key} removed", [key], DELETE
        yield f"{key} = a number", [key], 3
        yield f"{key} = a nested list", [key], [[1]]
    yield "sinks = []", ["sinks"], []
    yield "an unknown top-level key", ["bogus"], 1


def _get(doc: Any, path: list[Any]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _apply(doc: dict[str, Any], mutation: Mutation) -> dict[str, Any]:
    _, path, value = mutation
    out = copy.deepcopy(doc)
    parent = out
    for key in path[:-1]:
        if isinstance(parent, dict):
            parent = parent.setdefault(key, {})
        else:
            parent = parent[key]
        if not isinstance(parent, (dict, list)):
            return out
    if value is DELETE:
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    elif isinstance(parent, dict) or (isinstance(parent, list) and path[-1] < len(parent)):
        parent[path[-1]] = value
    return out


def _small(doc: dict[str, Any], mutated: list[Any]) -> dict[str, Any]:
    """``doc`` made quick to run: few events, few iterations (except the mutated parameter)."""
    out = copy.deepcopy(doc)
    source = out.get("source")
    if isinstance(source, dict) and isinstance(source.get("params"), dict):
        for key, value in SMALL_RUN.get(source.get("use"), {}).items():
            if mutated != ["source", "params", key]:
                source["params"][key] = value
    for name, stage in (out.get("stages") or {}).items():
        if isinstance(stage, dict) and isinstance(stage.get("params"), dict):
            for key, value in SMALL_STAGES.get(stage.get("use"), {}).items():
                if mutated != ["stages", name, "params", key]:
                    stage["params"][key] = value
    return out


def _write(tmp_path: Path, doc: dict[str, Any], n: int) -> Path:
    path = tmp_path / f"m{n}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.stem)
def test_every_mutation_is_valid_or_refused_clearly(pipeline: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(pipeline.read_text())
    mutations = list(_mutations(doc))
    rng = random.Random(f"{pipeline.stem}-validate")
    sample = rng.sample(mutations, min(VALIDATE_SAMPLE, len(mutations)))
    refused = 0
    for n, mutation in enumerate(sample):
        path = _write(tmp_path, _apply(doc, mutation), n)
        capsys.readouterr()
        try:
            status = main(["validate", str(path)])
        except Exception as exc:  # the point of the test: name the mutation that crashed
            pytest.fail(f"{pipeline.name}, {mutation[0]}: validate raised {type(exc).__name__}: {exc}")
        out = capsys.readouterr()
        assert status in (0, 1), f"{pipeline.name}, {mutation[0]}: validate exit status {status}"
        assert "bug in lightpipe" not in out.err, f"{pipeline.name}, {mutation[0]}: {out.err}"
        if status == 1:
            refused += 1
            assert out.err.startswith("invalid") and str(path) in out.err, f"{mutation[0]}: {out.err}"
    assert refused > len(sample) // 2  # most mutations are wrong: a checker that accepts everything fails here


RUNNABLE = [p for p in PIPELINES if yaml.safe_load(p.read_text())["source"]["use"] in SMALL_RUN]


def test_sampled_mutations_run_or_are_refused_with_one_error_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random("run")
    candidates = []
    for pipeline in RUNNABLE:
        doc = yaml.safe_load(pipeline.read_text())
        doc["sinks"] = [s for s in doc["sinks"] if s["use"] != "lavue"]  # no fixed ports in a test
        candidates += [(pipeline, doc, m) for m in _mutations(doc) if m[1][:2] != ["sinks", 1]]
    statuses = []
    for n, (pipeline, doc, mutation) in enumerate(rng.sample(candidates, RUN_SAMPLE)):
        path = _write(tmp_path, _small(_apply(doc, mutation), mutation[1]), n)
        capsys.readouterr()
        valid = main(["validate", str(path)]) == 0
        try:
            status = main(["run", "--quiet", "--output", str(tmp_path / f"out{n}"), str(path)])
        except Exception as exc:
            pytest.fail(f"{pipeline.name}, {mutation[0]}: run raised {type(exc).__name__}: {exc}")
        err = capsys.readouterr().err
        assert status == (0 if valid else 2), f"{pipeline.name}, {mutation[0]}: run exit {status}: {err}"
        if status == 2:
            lines = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(lines) == 1 and str(path) in err, f"{mutation[0]}: {err}"
        statuses.append(status)
    assert 2 in statuses
