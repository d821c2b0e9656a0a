"""The pipeline file's schema (``version: 2``) as pydantic models, and its upgrade path."""
from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from lightpipe.core.bounds import MAX_IN_FLIGHT, MAX_SECONDS, MAX_WORKERS, InFlight, Seconds, Workers

#: Version written by this lightpipe. Files of older versions are upgraded step by step.
CURRENT_VERSION = 2


def _window_from_pipeline(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 to 2: stages learn the detector window of their frames from the pipeline's crops and
    resampling (:meth:`lightpipe.core.pipeline.Pipeline.frame_geometry`), so ``detector_window_px`` goes."""
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return {**data, "version": 2}
    kept = {}
    for name, stage in stages.items():
        params = stage.get("params") if isinstance(stage, dict) else None
        if isinstance(params, dict) and "detector_window_px" in params:
            stage = {**stage, "params": {k: v for k, v in params.items() if k != "detector_window_px"}}
        kept[name] = stage
    return {**data, "version": 2, "stages": kept}


#: ``UPGRADES[n]`` turns a version-``n`` document into version ``n + 1``.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _window_from_pipeline}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BufferSpec(_Strict):
    """The pipeline buffer in front of a stage: a bounded window of events in flight."""

    policy: Literal["fifo", "lifo", "priority"] = Field("fifo", description="Order in which waiting events are taken")
    capacity: InFlight = Field(256, description=f"Events held before the source is made to wait; 1 to {MAX_IN_FLIGHT}")


class SourceSpec(_Strict):
    """Where events come from."""

    use: str = Field(description="Registered source name or package.module:Class")
    params: dict[str, Any] = Field(default_factory=dict)


class StageSpec(_Strict):
    """One stage instance in the pipeline."""

    use: str = Field(description="Registered stage name or package.module:Class")
    stream: str | list[str] = Field("data", description="Stream(s) of events this stage receives")
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> 'producer.field'")
    params: dict[str, Any] = Field(default_factory=dict)
    workers: Workers | None = Field(None, description=f"Most workers running this stage at once; 1 to {MAX_WORKERS}")
    buffer: BufferSpec = Field(default_factory=BufferSpec)


class SinkSpec(_Strict):
    """Where results go."""

    use: str = Field(description="Registered sink name or package.module:Class")
    fields: list[str] | None = Field(None, description="'producer.field' to write; default every stage output")
    stream: str | list[str] = Field("data", description="Stream(s) of events written per event")
    params: dict[str, Any] = Field(default_factory=dict)


class EngineSpec(_Strict):
    """How events are batched for execution; the engine itself is chosen at run time."""

    chunk_size: InFlight = Field(16, description=f"Events fused into one task; 1 to {MAX_IN_FLIGHT}")
    chunk_seconds: Seconds = Field(
        0.5, description=f"Live sources: submit a chunk after this long even if it is not full; more than 0, "
        f"at most {MAX_SECONDS} (a week)"
    )


class PipelineSpec(_Strict):
    """A whole pipeline file."""

    version: int
    name: str
    description: str = ""
    source: SourceSpec
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    sinks: list[SinkSpec] = Field(default_factory=list)
    engine: EngineSpec = Field(default_factory=EngineSpec)


def as_list(value: str | list[str]) -> list[str]:
    """A stream selector as a list of stream names."""
    return [value] if isinstance(value, str) else list(value)
