"""The ``ptycho_sim`` source: simulated ptychography scans, read as events, streamed at a detector's rate if asked.

Every frame is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.ptychography.simulate.PtychoSimulation`), so any
worker can make any range of events and two runs give the same data. With
``rate_hz`` the source streams: events become readable at that rate from the
scan's first read, as frames come from a detector, and a pipeline runs while
the scan is acquired.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from lightpipe.core.event import Event
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.simulators.pacing import SimulatedReader
from lightpipe.techniques.ptychography.ports import POSITION_PORTS
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation, simulation

__all__ = ["PtychoSimReader", "PtychoSimSource"]


class PtychoSimReader(SimulatedReader[PtychoSimulation], simulation=simulation):
    """Makes the events of one simulated ptychography scan on demand, at ``rate_hz`` if above 0."""

    def __init__(self, params: PtychoSimParams) -> None:
        super().__init__(params, rate_hz=params.rate_hz)

    def simulate(self, start: int, stop: int) -> list[Event]:
        sim = self.sim
        first = sim.streams["data"].start
        events = []
        for index in range(start, stop):
            stream, frame = sim.frame(index)
            y, x = sim.position_m(index - first) if stream == "data" else (np.nan, np.nan)
            fields = {"frame": frame, "position_y_m": np.float64(y), "position_x_m": np.float64(x)}
            events.append(Event(index=index, stream=stream, fields=fields))
        return events

    def streams(self) -> dict[str, range]:
        return self.sim.streams


class PtychoSimSource(Source):
    """Simulated ptychography scans: dark frames, then one diffraction pattern per scan position."""

    name = "ptycho_sim"
    Params = PtychoSimParams
    outputs = {"frame": Port(ndim=2, dtype="uint", unit="counts", description="Detector frame"), **POSITION_PORTS}

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        frame = Port(ndim=2, dtype=params.frame_dtype, unit="counts", description="Detector frame")
        return {**cls.outputs, "frame": frame}

    def scans(self) -> Iterator[ScanReader]:
        yield PtychoSimReader(self.params)
