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
from typing import Any, ClassVar, Generic, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from lightpipe.core.event import Scan
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.parts import PartRunner, ThreadPartRunner
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
    extra: JsonDict | None = {"unit": unit} if unit else None
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
    frame_outputs
        Outputs that are an input's detector frame, possibly cropped or
        resampled (see :meth:`frame_geometry`), as ``{output: input}``. ``None``
        (the default) means ``{"frame": "frame"}`` when the stage has both.

    Attributes
    ----------
    params
        The stage's checked parameters.
    input_geometry
        Geometry of each input that is a detector frame, where the pipeline
        knows it (:class:`~lightpipe.core.geometry.FrameGeometry`); set before
        :meth:`setup`.
    part_runner
        Where the stage may start parts that run at once on several workers
        (:mod:`lightpipe.core.parts`): the run's engine sets it before
        :meth:`setup`; threads of this process otherwise.
    """

    kind: ClassVar[StageKind]
    name: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams
    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {}
    frame_outputs: ClassVar[dict[str, str] | None] = None

    def __init__(self, params: StageParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.input_geometry: dict[str, FrameGeometry] = {}
        self.part_runner: PartRunner = ThreadPartRunner()

    def setup(self, scan: Scan) -> None:
        """Prepare for ``scan`` (called once per scan on every worker). Does nothing by default."""

    @classmethod
    def outputs_for(cls, params: Any, inputs: Mapping[str, Port]) -> dict[str, Port]:
        """The outputs' ports given the parameters and the ports that feed each input (default :attr:`outputs`).

        Override where an output's unit is known only when the pipeline loads:
        an integration whose radial unit is a parameter, a stage whose axis
        carries its input's unit. Result files take the units from these ports.
        """
        return dict(cls.outputs)

    @classmethod
    def frame_sources(cls) -> dict[str, str]:
        """``{output: input}`` of the outputs that carry an input's frame (see ``frame_outputs``)."""
        if cls.frame_outputs is not None:
            return dict(cls.frame_outputs)
        return {"frame": "frame"} if "frame" in cls.inputs and "frame" in cls.outputs else {}

    @classmethod
    def frame_geometry(cls, params: Any, geometry: FrameGeometry) -> FrameGeometry:
        """The geometry of the frame outputs, given the input frame's: unchanged unless a stage crops or resamples.

        Override in stages that change it (a crop returns ``geometry.cropped(shape)``,
        a binning ``geometry.binned(factor)``, an FFT downsampling ``geometry.resampled(shape)``).
        """
        return geometry

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
