"""lightpipe: beamline data into results while the experiment runs.

The public vocabulary (see ``docs/concepts.md``): an :class:`Event` is one
acquisition, a :class:`Scan` a run of events, a :class:`Stage` one processing
step, a :class:`Pipeline` a validated graph of stages from a source to sinks,
and an engine executes a pipeline.
"""
from __future__ import annotations

from lightpipe.core.errors import LightpipeError, PipelineError, SourceError, StageError
from lightpipe.core.event import Event, Scan
from lightpipe.core.pipeline import Pipeline, load_pipeline
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, ReduceStage, SolverStage, Stage, StageParams, param
from lightpipe.core.version import __version__

__all__ = [
    "Event",
    "LightpipeError",
    "MapStage",
    "Pipeline",
    "PipelineError",
    "Port",
    "ReduceStage",
    "Scan",
    "SolverStage",
    "SourceError",
    "Stage",
    "StageError",
    "StageParams",
    "load_pipeline",
    "param",
    "__version__",
]
