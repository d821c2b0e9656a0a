"""Stages: one processing step each, with typed parameters and declared inputs and outputs.

There are three kinds:

* :class:`MapStage` turns one event into outputs; stateless, so it runs on any
  number of workers in any order.
* :class:`ReduceStage` accumulates events into a partial result with an
  associative :meth:`~ReduceStage.merge`, so partial results from many workers
  combine into one scan-level result.
* :class:`SolverStage` keeps iterative state, is fed events in acquisition order
  and emits intermediate and final scan-level results.
"""
from __future__ import annotations

import inspect
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from lightpipe.core.event import Scan
from lightpipe.core.ports import Port

StageKind = Literal["map", "reduce", "solver"]
P = TypeVar("P")


class StageParams(BaseModel):
    """Base of every stage's parameter model; unknown parameters are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def param(
    default: Any = ...,
    description: str = "",
    *,
    unit: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """Declare one stage parameter with its unit, bounds and a one-line description.

    Examples
    --------
    >>> class Params(StageParams):
    ...     threshold: float = param(0.5, "Photon threshold", unit="counts", ge=0)
    """
    extra = {"unit": unit} if unit else None
    return Field(default, description=description, ge=ge, gt=gt, le=le, lt=lt, json_schema_extra=extra)


class Stage:
    """Base class of all stages. Subclass :class:`MapStage`, :class:`ReduceStage` or :class:`SolverStage`.

    Class attributes
    ----------------
    name
        Registry name used in pipeline YAML (``use: dark_correction``).
    Params
        A :class:`StageParams` subclass; its fields are the stage's parameters.
    inputs, outputs
        Declared :class:`~lightpipe.core.ports.Port` of each named input and output.
    """

    kind: ClassVar[StageKind]
    name: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams
    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {}

    def __init__(self, params: StageParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def setup(self, scan: Scan) -> None:
        """Prepare for ``scan`` (called once per scan on every worker). Does nothing by default."""

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""


class MapStage(Stage):
    """Event in, outputs out. Implement :meth:`process`.

    A stage that sets ``wants_index = True`` also gets the event's acquisition
    index as the keyword argument ``index``.
    """

    kind: ClassVar[StageKind] = "map"
    wants_index: ClassVar[bool] = False

    def process(self, **inputs: Any) -> dict[str, Any]:
        """Return the outputs for one event, given its inputs by name."""
        raise NotImplementedError


class ReduceStage(Stage, Generic[P]):
    """Accumulates events into one scan-level result.

    Implement :meth:`partial` (one event to a partial result), :meth:`merge`
    (associative; may update and return ``left``) and :meth:`finish`. The engine
    merges partial results in a tree fixed by acquisition index, so the result
    does not depend on chunk size or the number of workers.
    """

    kind: ClassVar[StageKind] = "reduce"

    def partial(self, **inputs: Any) -> P:
        """Return the partial result of one event."""
        raise NotImplementedError

    def merge(self, left: P, right: P) -> P:
        """Combine two partial results; ``left`` holds earlier events than ``right``."""
        raise NotImplementedError

    def finish(self, total: P | None) -> dict[str, Any]:
        """Turn the merged partial result (``None`` if no event arrived) into the outputs."""
        raise NotImplementedError


class SolverStage(Stage):
    """Iterative state fed by events in acquisition order.

    The engine calls :meth:`feed` for each event, :meth:`update` after each batch
    of events (return intermediate outputs or ``None``) and :meth:`finish` once
    the scan has ended.
    """

    kind: ClassVar[StageKind] = "solver"

    def feed(self, index: int, **inputs: Any) -> None:
        """Take one event's inputs."""
        raise NotImplementedError

    def update(self) -> dict[str, Any] | None:
        """Iterate on what has been fed so far; return intermediate outputs or ``None``."""
        return None

    def finish(self) -> dict[str, Any]:
        """Return the final outputs."""
        raise NotImplementedError
