"""The ``rotation_sim`` source: a simulated rotation series, with the geometry and rotation in the scan's metadata.

Every image is a pure function of ``(seed, image)``
(:class:`~lightpipe.techniques.mx.simulate.RotationSimulation`), so each worker
makes its own range of events; the reader pickles as its parameters.
"""
from __future__ import annotations

from typing import Iterator

from lightpipe.core.event import Event
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.simulators.pacing import SimulatedReader
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation, simulation

__all__ = ["RotationSimReader", "RotationSimSource"]


class RotationSimReader(SimulatedReader[RotationSimulation], simulation=simulation):
    """Makes the images of one simulated rotation on demand."""

    def simulate(self, start: int, stop: int) -> list[Event]:
        return [Event(index=index, stream="data", fields={"frame": self.sim.frame(index)})
                for index in range(start, stop)]

    def streams(self) -> dict[str, range]:
        return {"data": range(self.params.images)}


class RotationSimSource(Source):
    """Simulated rotation crystallography: a known cell and orientation, spots from the Ewald construction."""

    name = "rotation_sim"
    Params = RotationSimParams
    outputs = {"frame": Port(ndim=2, dtype="int32", unit="counts", description="Rotation image")}

    def scans(self) -> Iterator[ScanReader]:
        yield RotationSimReader(self.params)
