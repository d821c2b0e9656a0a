"""The ``tomo_sim`` source: simulated tomography scans (darks, flats, projections), streamed at a rate if asked.

Every frame is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.tomo.simulate.TomoSimulation`), so each worker
makes its own range of events. Each event carries its frame and its rotation
angle (``angle_deg``; NaN for darks and flats). With ``rate_hz`` the frames
become readable at that rate, as from a detector, and a streaming
reconstruction shows its slice before the last projection.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from lightpipe.core.event import Event
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.simulators.pacing import SimulatedReader
from lightpipe.techniques.tomo.simulate import TomoSimParams, TomoSimulation, simulation

__all__ = ["TomoSimReader", "TomoSimSource"]


class TomoSimReader(SimulatedReader[TomoSimulation], simulation=simulation):
    """Makes the events of one simulated tomography scan on demand, at ``rate_hz`` if above 0."""

    def __init__(self, params: TomoSimParams) -> None:
        super().__init__(params, rate_hz=params.rate_hz)

    def simulate(self, start: int, stop: int) -> list[Event]:
        events = []
        for index in range(start, stop):
            stream, frame, angle = self.sim.frame(index)
            events.append(Event(index=index, stream=stream, fields={"frame": frame, "angle_deg": np.float64(angle)}))
        return events

    def streams(self) -> dict[str, range]:
        return self.sim.streams


class TomoSimSource(Source):
    """Simulated parallel-beam tomography: darks, flats, then projections of a 3-D phantom with known truth."""

    name = "tomo_sim"
    Params = TomoSimParams
    outputs = {
        "frame": Port(ndim=2, dtype="uint16", unit="counts", description="Detector frame"),
        "angle_deg": Port(ndim=0, dtype="float", unit="deg", description="Rotation angle (NaN for darks and flats)"),
    }

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        assert isinstance(p, TomoSimParams)
        yield TomoSimReader(p)

