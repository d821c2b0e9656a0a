"""Helpers for people who write stages: run one stage without a pipeline, and check that it conforms.

:func:`run_stage` runs a stage the way an engine does, on inputs you give by
name. :func:`check_stage` is the conformance check that every stage, built in
or third party, should pass; lightpipe's own test suite runs it over every
registered stage.

Examples
--------
>>> import numpy as np
>>> from lightpipe.testing import check_stage, run_stage
>>> frames = [np.full((4, 4), 10, np.uint16), np.full((4, 4), 30, np.uint16)]
>>> float(run_stage("sum_frames", None, frames)["mean"][0, 0])
20.0
>>> check_stage("crop", {"y": [0, 8], "x": [0, 8]})
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
from pydantic import BaseModel, ValidationError

from lightpipe.core import registry
from lightpipe.core.errors import StageError
from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.reduction import TreeReducer
from lightpipe.core.stage import MapStage, ReduceStage, SolverStage, Stage, StageParams
from lightpipe.core.xp import to_numpy

__all__ = ["RunningMean", "check_stage", "example_inputs", "run_stage"]

#: Shape of a generated 2-D input: not square, so swapped axes show up.
FRAME_SHAPE = (24, 32)

#: Dtypes tried for each dtype family of a port, one per variant of the generated input.
FAMILY_DTYPES = {
    "number": ("uint16", "float32"),
    "int": ("int32", "uint16"),
    "uint": ("uint16", "uint32"),
    "float": ("float32", "float64"),
    "bool": ("bool", "bool"),
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNKNOWN_PARAM = "lightpipe_conformance_unknown_parameter"


def _stage_class(stage: type[Stage] | str) -> type[Stage]:
    cls = registry.load("stages", stage) if isinstance(stage, str) else stage
    if not (isinstance(cls, type) and issubclass(cls, (MapStage, ReduceStage, SolverStage))):
        raise TypeError(f"{stage!r} is not a MapStage, ReduceStage or SolverStage subclass")
    return cls


def _params(cls: type[Stage], params: Mapping[str, Any] | StageParams | None) -> StageParams:
    if isinstance(params, BaseModel):
        return params
    try:
        return cls.Params.model_validate(dict(params or {}))
    except ValidationError as exc:
        raise ValueError(f"invalid parameters for stage {cls.name or cls.__name__!r}: {exc}") from exc


def _default_scan(n_events: int) -> Scan:
    return Scan(name="test", streams={"data": range(n_events)}, metadata={})


def _as_inputs(cls: type[Stage], events: Iterable[Any]) -> list[tuple[int, dict[str, Any]]]:
    """``(index, inputs by name)`` of each event; a bare value feeds a stage's only input."""
    declared = set(cls.inputs)
    out = []
    for position, item in enumerate(events):
        index = position
        if isinstance(item, Event):
            index, item = item.index, item.fields
        if isinstance(item, Mapping):
            inputs = dict(item)
        elif len(declared) == 1:
            inputs = {next(iter(declared)): item}
        else:
            raise TypeError(
                f"event {position}: stage {cls.name!r} has inputs {sorted(declared)}; "
                "give each event as a dict of input name -> value"
            )
        missing, unknown = declared - set(inputs), set(inputs) - declared
        if missing or unknown:
            raise ValueError(
                f"event {position}: stage {cls.name!r} takes inputs {sorted(declared)}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(unknown)}" if unknown else "")
            )
        out.append((index, inputs))
    return out


def _map_inputs(cls: type[Stage], index: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``process``: the inputs, and ``index`` for a stage that asks for it."""
    return {**inputs, "index": index} if getattr(cls, "wants_index", False) else inputs


def _reduce(
    cls: type[Stage], params: StageParams, events: list[dict[str, Any]], scan: Scan, chunk_size: int | None
) -> dict[str, Any]:
    """Reduce ``events`` as the engine does: each chunk ships aligned blocks, the driver merges and finishes."""
    driver = cls(params)
    driver.setup(scan)
    tree: TreeReducer[Any] = TreeReducer(driver.merge)
    step = chunk_size or max(len(events), 1)
    for start in range(0, len(events), step):
        worker = cls(params)  # each chunk may run on another worker
        worker.setup(scan)
        chunk: TreeReducer[Any] = TreeReducer(worker.merge, start)
        for inputs in events[start : start + step]:
            chunk.push_leaf(worker.partial(**inputs))
        for block in chunk.blocks():
            tree.push(block)
    return driver.finish(tree.result())


def run_stage(
    stage: type[Stage] | str,
    params: Mapping[str, Any] | StageParams | None = None,
    events: Iterable[Any] = (),
    scan: Scan | None = None,
    *,
    chunk_size: int | None = None,
) -> list[dict[str, Any]] | dict[str, Any]:
    """Run one stage over events, without a pipeline or an engine.

    Parameters
    ----------
    stage
        The stage class, its registered name (``"dark_correction"``) or
        ``"package.module:Class"``.
    params
        The stage's parameters as in the pipeline YAML; ``None`` takes the defaults.
    events
        One item per event, in acquisition order: a dict of input name ->
        value, an :class:`~lightpipe.core.event.Event` whose fields are named
        like the inputs, or (for a stage with one input) the value itself. A map
        stage with ``wants_index = True`` also gets ``index``: the Event's
        index, or else the item's position.
    scan
        Passed to ``setup``; default a scan named ``test`` whose ``data``
        stream holds the events.
    chunk_size
        Events per chunk, as ``engine.chunk_size`` in a pipeline: a reduce
        stage gets one stage instance per chunk, a solver's ``update`` is
        called after each chunk. Default: one chunk.

    Returns
    -------
    list of dict or dict
        A map stage: the outputs of each event. A reduce stage: ``finish`` of
        the partial results merged in the engine's canonical tree
        (:class:`~lightpipe.core.reduction.TreeReducer`). A solver: ``finish``
        after every event was fed.

    Raises
    ------
    StageError
        A map stage that did not return all its declared outputs.

    Notes
    -----
    An exception raised by the stage propagates, where an engine would fail
    that one event and go on; tests usually want to see it.
    """
    cls = _stage_class(stage)
    p = _params(cls, params)
    indexed = _as_inputs(cls, events)
    scan = scan if scan is not None else _default_scan(len(indexed))
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if cls.kind == "reduce":
        return _reduce(cls, p, [inputs for _, inputs in indexed], scan, chunk_size)
    instance = cls(p)
    instance.setup(scan)
    if isinstance(instance, SolverStage):
        step = chunk_size or max(len(indexed), 1)
        for k, (index, inputs) in enumerate(indexed, start=1):
            instance.feed(index, **inputs)
            if k % step == 0 or k == len(indexed):
                instance.update()
        return instance.finish()
    assert isinstance(instance, MapStage)
    results = []
    for index, inputs in indexed:
        out = instance.process(**_map_inputs(cls, index, inputs))
        missing = set(cls.outputs) - set(out)
        if missing:
            raise StageError(f"stage {cls.name!r} did not return declared outputs {sorted(missing)} for event {index}")
        results.append(out)
    return results


# -- generated inputs ---------------------------------------------------------------------------


def _shape(ndim: int | None) -> tuple[int, ...]:
    if ndim is None:
        return FRAME_SHAPE
    if ndim <= 2:
        return FRAME_SHAPE[2 - ndim :]
    return (3,) * (ndim - 2) + FRAME_SHAPE


def _dtype(port: Port, variant: int) -> np.dtype:
    if port.dtype is None:
        return np.dtype(("float32", "uint16")[variant % 2])
    if port.dtype in FAMILY_DTYPES:
        return np.dtype(FAMILY_DTYPES[port.dtype][variant % 2])
    return np.dtype(port.dtype)


def _random(port: Port, rng: np.random.Generator, variant: int) -> Any:
    dtype, shape = _dtype(port, variant), _shape(port.ndim)
    if dtype.kind == "b":
        values = rng.random(shape) < 0.1
    elif dtype.kind in "iu":
        values = rng.integers(0, min(1000, np.iinfo(dtype).max), shape)
    elif dtype.kind in "fc":
        values = rng.uniform(1.0, 1000.0, shape)
    else:
        raise AssertionError(f"cannot generate values of dtype {dtype} for a port; pass inputs to check_stage")
    values = values.astype(dtype)
    return values[()] if values.ndim == 0 else values


def example_inputs(
    stage: type[Stage] | str, n_events: int = 1, *, seed: int = 0, variant: int = 0
) -> list[dict[str, Any]]:
    """Random inputs that fit a stage's declared input ports.

    Arrays are 2-D of shape :data:`FRAME_SHAPE` where a port's ``ndim`` is 2
    or ``None``. A dtype family picks one dtype per ``variant`` (see
    :data:`FAMILY_DTYPES`), so variants 0 and 1 cover integer and float frames.
    An input port declared ``constant`` gets the same value in every event.

    Parameters
    ----------
    stage
        Stage class or registered name.
    n_events
        Number of events to make.
    seed
        Seed of the random generator.
    variant
        Which dtype of each family to use.
    """
    cls = _stage_class(stage)
    rng = np.random.default_rng(seed)
    constants = {name: _random(port, rng, variant) for name, port in cls.inputs.items() if port.constant}
    return [{name: constants[name] if name in constants else _random(port, rng, variant)
             for name, port in cls.inputs.items()} for _ in range(n_events)]


# -- conformance --------------------------------------------------------------------------------


def _fail(label: str, message: str) -> NoReturn:
    raise AssertionError(f"{label}: {message}")


def _copy(value: Any) -> Any:
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


def _same(a: Any, b: Any, exact: bool) -> bool:
    """Whether two output values agree: bit for bit, or within float tolerance."""
    try:
        x, y = np.asarray(to_numpy(a)), np.asarray(to_numpy(b))
    except Exception:  # an output that is not array-like: compare as objects
        return bool(a == b)
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype.kind == "O":
        return bool(np.all(x == y))
    if exact or x.dtype.kind not in "fc":
        return x.tobytes() == y.tobytes()
    return bool(np.allclose(x, y, rtol=1e-5, atol=1e-8, equal_nan=True))


def _differing(a: Mapping[str, Any], b: Mapping[str, Any], exact: bool) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not _same(a[k], b[k], exact))


def _check_outputs(label: str, cls: type[Stage], out: Any, what: str) -> None:
    """``out`` is a dict with exactly the declared outputs, each fitting its port."""
    if not isinstance(out, Mapping):
        _fail(label, f"{what} returned {type(out).__name__}, not a dict of output name -> value")
    missing, extra = set(cls.outputs) - set(out), set(out) - set(cls.outputs)
    if missing:
        _fail(label, f"{what} did not return the declared outputs {sorted(missing)}")
    if extra:
        _fail(label, f"{what} returned undeclared outputs {sorted(extra)}; declare them in `outputs` or drop them")
    for name, port in cls.outputs.items():
        why = port.check_value(out[name])
        if why:
            _fail(label, f"output {name!r} from {what} {why} (declared {port.describe()})")


def _check_declarations(label: str, cls: type[Stage]) -> None:
    if not isinstance(cls.name, str) or not _NAME.match(cls.name):
        _fail(label, f"`name` is {cls.name!r}; set a class attribute `name = \"my_stage\"` (letters, digits, _)")
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        _fail(label, "has no docstring; start the class with a one-line summary ending in a full stop")
    lines = inspect.cleandoc(doc).splitlines()
    if len(lines) > 1 and lines[1].strip():
        _fail(label, "the docstring summary spans several lines; write one line, then a blank line, then details")
    if not lines[0].rstrip().endswith("."):
        _fail(label, f"the docstring summary {lines[0]!r} should be a sentence ending in a full stop")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, BaseModel)):
        _fail(label, "`Params` must be a subclass of lightpipe.core.stage.StageParams")
    for name, info in cls.Params.model_fields.items():
        if not (info.description or "").strip():
            _fail(label, f"parameter {name!r} has no description; declare it with param(default, \"what it does\")")
    for attr in ("inputs", "outputs"):
        ports = getattr(cls, attr)
        if not isinstance(ports, Mapping):
            _fail(label, f"`{attr}` must be a dict of name -> Port, not {type(ports).__name__}")
        for name, port in ports.items():
            if not isinstance(port, Port):
                _fail(label, f"{attr[:-1]} {name!r} is a {type(port).__name__}, not a lightpipe Port")
            if "." in name or not _NAME.match(name):
                _fail(label, f"{attr[:-1]} name {name!r} must be letters, digits and _ (it becomes 'stage.{name}')")
    if not cls.outputs:
        _fail(label, "declares no outputs")
    per_scan = cls.kind != "map"
    for name, port in cls.outputs.items():
        if port.scan != per_scan:
            kind = "per scan (Port(scan=True))" if per_scan else "per event (Port(scan=False))"
            _fail(label, f"output {name!r} of a {cls.kind} stage must be declared {kind}")


def _check_params(label: str, cls: type[Stage], params: Mapping[str, Any] | None) -> StageParams:
    given = dict(params or {})
    try:
        cls.Params.model_validate({**given, _UNKNOWN_PARAM: 1})
    except ValidationError as exc:
        if not any(e["type"] == "extra_forbidden" for e in exc.errors()):
            _fail(label, "Params accepted an unknown parameter; subclass StageParams, which forbids them")
    else:
        _fail(label, "Params accepted an unknown parameter; subclass StageParams, which forbids them")
    try:
        return cls.Params.model_validate(given)
    except ValidationError as exc:
        required = [n for n, f in cls.Params.model_fields.items() if f.is_required() and n not in given]
        if required:
            raise AssertionError(f"{label}: has required parameters {required} without defaults; "
                                 "pass them: check_stage(cls, params={...})") from exc
        raise AssertionError(f"{label}: the parameters {given} are invalid: {exc}") from exc


def _check_map(label: str, cls: type[Stage], params: StageParams, events: list[dict[str, Any]], scan: Scan) -> None:
    stage = cls(params)
    stage.setup(scan)
    assert isinstance(stage, MapStage)
    for k, inputs in enumerate(events):
        saved = {name: _copy(v) for name, v in inputs.items()}
        what = f"process() on event {k} ({_describe(inputs)})"
        kwargs = _map_inputs(cls, k, inputs)
        try:
            out = stage.process(**kwargs)
        except Exception as exc:
            _fail(label, f"{what} raised {type(exc).__name__}: {exc}; "
                         "if the stage needs particular input, pass inputs=[...] to check_stage")
        _check_outputs(label, cls, out, what)
        changed = _differing(inputs, saved, exact=True)
        if changed:
            _fail(label, f"{what} modified its inputs {changed} in place; other stages read them too, work on a copy")
        again = cls(params)
        again.setup(scan)
        for other, name in ((stage.process(**kwargs), "a second call"), (again.process(**kwargs), "a fresh instance")):
            diff = _differing(out, other, exact=True)
            if diff:
                _fail(label, f"{what} gave other outputs {diff} on {name}; a map stage must be stateless")


def _check_reduce(label: str, cls: type[Stage], params: StageParams, events: list[dict[str, Any]], scan: Scan) -> None:
    if len(events) < 3:
        _fail(label, "a reduce stage needs at least 3 events to check merge; pass more inputs")
    stage = cls(params)
    stage.setup(scan)
    assert isinstance(stage, ReduceStage)

    def leaves() -> list[Any]:
        # fresh partial results each time: merge may update and return its left argument
        return [stage.partial(**inputs) for inputs in events[:3]]

    try:
        a, b, c = leaves()
    except Exception as exc:
        _fail(label, f"partial() raised {type(exc).__name__}: {exc} on generated input ({_describe(events[0])}); "
                     "if the stage needs particular input, pass inputs=[...] to check_stage")
    if a is None or b is None or c is None:
        _fail(label, "partial() returned None, which the engine takes for a failed event; return a partial result")
    left = stage.finish(stage.merge(stage.merge(a, b), c))
    a, b, c = leaves()
    right = stage.finish(stage.merge(a, stage.merge(b, c)))
    _check_outputs(label, cls, left, "finish()")
    diff = _differing(left, right, exact=False)
    if diff:
        _fail(label, f"merge is not associative: finish(merge(merge(a, b), c)) and finish(merge(a, merge(b, c))) "
                     f"differ in {diff}")
    chunked = {size: _reduce(cls, params, events, scan, size) for size in (len(events), 1, 2, 3)}
    whole = chunked.pop(len(events))
    for size, result in chunked.items():
        diff = _differing(whole, result, exact=True)
        if diff:
            _fail(label, f"outputs {diff} differ between one chunk and chunks of {size} events; partial, merge "
                         "and finish must not keep state in the stage instance")


def _check_solver(label: str, cls: type[Stage], params: StageParams, events: list[dict[str, Any]], scan: Scan) -> None:
    stage = cls(params)
    stage.setup(scan)
    assert isinstance(stage, SolverStage)
    for index, inputs in enumerate(events):
        stage.feed(index, **inputs)
    update = stage.update()
    if update is not None:
        if not isinstance(update, Mapping) or set(update) - set(cls.outputs):
            _fail(label, f"update() must return None or a dict of declared outputs, got {update!r:.80}")
    _check_outputs(label, cls, stage.finish(), "finish()")


def _describe(inputs: Mapping[str, Any]) -> str:
    parts = []
    for name, value in inputs.items():
        arr = np.asarray(to_numpy(value))
        parts.append(f"{name}: {arr.dtype} {tuple(arr.shape)}")
    return ", ".join(parts)


def check_stage(
    stage: type[Stage] | str,
    params: Mapping[str, Any] | None = None,
    *,
    inputs: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> None:
    """Check that a stage keeps the contract every engine relies on.

    Checked: a ``name``; a docstring whose first line is a one-line summary;
    a description for every parameter; ``Params`` that refuse unknown
    parameters; ``inputs`` and ``outputs`` that are :class:`Port` objects
    (per event for map stages, per scan otherwise). Then the stage is run on
    random inputs made from its input ports (2-D arrays where ``ndim`` is
    ``None``), once with integer and once with float dtypes where a port
    allows both:

    * a map stage's ``process`` returns exactly the declared outputs, each
      fitting its port, leaves its inputs unchanged and is stateless;
    * a reduce stage's ``merge`` is associative (within float tolerance after
      ``finish``), and its result is bit-identical however the events are
      chunked;
    * a solver's ``finish`` returns the declared outputs.

    Parameters
    ----------
    stage
        The stage class or its registered name.
    params
        Parameters to use; needed when some parameter has no default.
    inputs
        Events to run on (dicts of input name -> value) instead of random ones;
        at least 3 for a reduce stage.
    seed
        Seed of the random inputs.

    Raises
    ------
    AssertionError
        Naming the stage, what is wrong and how to fix it.

    Examples
    --------
    >>> from lightpipe.testing import check_stage
    >>> check_stage("dark_correction")
    """
    cls = _stage_class(stage)
    label = f"stage {cls.name or cls.__name__!r} ({cls.__module__}.{cls.__qualname__})"
    _check_declarations(label, cls)
    p = _check_params(label, cls, params)
    check = {"map": _check_map, "reduce": _check_reduce, "solver": _check_solver}[cls.kind]
    runs = [list(inputs)] if inputs is not None else [example_inputs(cls, 6, seed=seed, variant=v) for v in (0, 1)]
    for events in runs:
        check(label, cls, p, events, _default_scan(len(events)))


class RunningMean(SolverStage):
    """The mean of the frames so far, after every update: a live image that changes as the scan goes.

    For tests and benchmarks of live views (name it ``lightpipe.testing:RunningMean``
    in a pipeline); ``frames`` counts the frames averaged.
    """

    name = "running_mean"
    inputs = {"frame": Port(ndim=2)}
    outputs = {"mean": Port(ndim=2, dtype="float", scan=True, description="Mean of the frames so far"),
               "frames": Port(ndim=0, dtype="int", scan=True, description="Frames averaged")}

    def setup(self, scan: Scan) -> None:
        self._sum: np.ndarray | None = None
        self._count = 0

    def feed(self, index: int, frame: Any) -> None:
        self._sum = frame.astype(np.float64) if self._sum is None else self._sum + frame
        self._count += 1

    def update(self) -> dict[str, Any] | None:
        if self._sum is None:
            return None
        return {"mean": self._sum / self._count, "frames": np.int64(self._count)}

    def finish(self) -> dict[str, Any]:
        return self.update() or {}
