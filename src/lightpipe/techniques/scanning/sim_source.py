"""The ``scanning_sim`` source: a simulated scanning-probe scan, a detector frame and counters per point.

Every event is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.scanning.simulate.ScanningSimulation`), so each
worker makes its own range of events; the geometry (distance, pixel size,
energy) is in the scan's metadata, where ``dpc_phase`` finds it.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from lightpipe.core.event import Event
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.simulators.pacing import SimulatedReader
from lightpipe.techniques.scanning.simulate import ScanningSimParams, ScanningSimulation, simulation

__all__ = ["ScanningSimReader", "ScanningSimSource", "COUNTER_PORTS"]

#: Per-point counters of a scanning scan.
COUNTER_PORTS = {
    "i0": Port(ndim=0, dtype="float", unit="counts", description="Upstream ion chamber (incident flux)"),
    "it": Port(ndim=0, dtype="float", unit="counts", description="Downstream ion chamber (transmitted flux)"),
    "photodiode": Port(ndim=0, dtype="float", unit="counts", description="Photodiode behind the sample"),
    "xbic": Port(ndim=0, dtype="float", unit="A", description="X-ray beam induced current of the sample"),
    "ring_current": Port(ndim=0, dtype="float", unit="mA", description="Storage ring current"),
}


class ScanningSimReader(SimulatedReader[ScanningSimulation], simulation=simulation):
    """Makes the events of one simulated scan on demand."""

    def simulate(self, start: int, stop: int) -> list[Event]:
        sim = self.sim
        events = []
        for point in range(start, stop):
            y, x = sim.position_m(point)
            fields = {"frame": sim.frame(point), "position_y_m": np.float64(y), "position_x_m": np.float64(x)}
            fields.update({k: np.float64(v) for k, v in sim.counters(point).items()})
            events.append(Event(index=point, stream="data", fields=fields))
        return events

    def streams(self) -> dict[str, range]:
        return {"data": range(self.sim.points)}


class ScanningSimSource(Source):
    """Simulated scanning-probe scan of a known object: a frame, the position and the counters at each point."""

    name = "scanning_sim"
    Params = ScanningSimParams
    outputs = {
        "frame": Port(ndim=2, dtype="uint32", unit="counts", description="Detector frame"),
        "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Sample position y"),
        "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Sample position x"),
        **COUNTER_PORTS,
    }

    def scans(self) -> Iterator[ScanReader]:
        yield ScanningSimReader(self.params)
