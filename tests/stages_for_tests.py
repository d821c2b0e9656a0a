"""Stages used by the tests, named in YAML as ``stages_for_tests:Class``."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe import MapStage, Port, StageParams, param


class RefuseBrightParams(StageParams):
    limit: float = param(1.09, "Raise when the monitor exceeds this")


class RefuseBright(MapStage):
    """Raise on events whose monitor exceeds a limit (a stage that fails on some events)."""

    name = "refuse_bright"
    Params = RefuseBrightParams
    inputs = {"frame": Port(ndim=2), "monitor": Port(ndim=0, dtype="float")}
    outputs = {"frame": Port(ndim=2)}

    def process(self, frame: Any, monitor: Any) -> dict[str, Any]:
        if monitor > self.params.limit:
            raise ValueError(f"monitor {monitor:.4f} above {self.params.limit}")
        return {"frame": frame}


class CrashOnceParams(StageParams):
    marker: str = param(description="File created when the worker has been killed once")
    index_sum: float = param(description="Kill the worker on the event whose frame sums to this")


class CrashOnce(MapStage):
    """Kill the worker process the first time it meets one given frame (a crashed node)."""

    name = "crash_once"
    Params = CrashOnceParams
    inputs = {"frame": Port(ndim=2)}
    outputs = {"frame": Port(ndim=2)}

    def process(self, frame: Any) -> dict[str, Any]:
        import os

        if float(frame.sum()) == self.params.index_sum and not os.path.exists(self.params.marker):
            open(self.params.marker, "w").close()
            os._exit(1)
        return {"frame": frame}


class SleepParams(StageParams):
    seconds: float = param(0.01, "Time to spend on each event", unit="s")


class Sleep(MapStage):
    """Spend a fixed time per event (a pipeline slower than its detector)."""

    name = "sleep"
    Params = SleepParams
    inputs = {"frame": Port(ndim=2)}
    outputs = {"frame": Port(ndim=2)}

    def process(self, frame: Any) -> dict[str, Any]:
        import time

        time.sleep(self.params.seconds)
        return {"frame": frame}


class Uncertain(MapStage):
    """A frame's total with its uncertainty (``total_errors``, as NeXus means it) and a misnamed ``errors``."""

    name = "uncertain"
    inputs = {"frame": Port(ndim=2)}
    outputs = {"total": Port(ndim=0, dtype="float"), "total_errors": Port(ndim=0, dtype="float"),
               "errors": Port(ndim=1, dtype="float")}

    def process(self, frame: Any) -> dict[str, Any]:
        total = float(frame.sum())
        return {"total": total, "total_errors": total**0.5, "errors": frame.sum(axis=0).astype(float)}


class DriftingAxis(MapStage):
    """Declares its ``bins`` constant but shifts them from the third event on (a stage that breaks its word)."""

    name = "drifting_axis"
    wants_index = True
    inputs = {"frame": Port(ndim=2)}
    outputs = {"profile": Port(ndim=1, dtype="float", axes=("bins",)),
               "bins": Port(ndim=1, dtype="float", constant=True)}

    def process(self, frame: Any, index: int) -> dict[str, Any]:
        bins = (frame.shape[1] if index < 2 else frame.shape[1] + 1) * 1.0
        return {"profile": frame.mean(axis=0).astype(float), "bins": bins - 1.0 - np.arange(frame.shape[1])[::-1]}


class ScaleFrame(MapStage):
    """Multiply a frame by a gain that may be left unconnected (an optional input, 1 by default)."""

    name = "scale_frame"
    inputs = {"frame": Port(ndim=2), "gain": Port(ndim=0, dtype="float", optional=True)}
    outputs = {"frame": Port(ndim=2, dtype="float")}

    def process(self, frame: Any, gain: Any = 1.0) -> dict[str, Any]:
        return {"frame": np.asarray(frame, dtype=np.float64) * float(gain)}
