"""The ``rotation_sim`` source: a simulated rotation series, with the geometry and rotation in the scan's metadata.

Every image is a pure function of ``(seed, image)``
(:class:`~lightpipe.techniques.mx.simulate.RotationSimulation`), so each worker
makes its own range of events; the reader pickles as its parameters.
"""
from __future__ import annotations

from typing import Iterator

from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation, simulation

__all__ = ["RotationSimReader", "RotationSimSource"]


class RotationSimReader(ScanReader):
    """Makes the images of one simulated rotation on demand."""

    def __init__(self, params: RotationSimParams) -> None:
        self.params = params
        self.scan = Scan(name=params.name, streams={"data": range(params.images)}, metadata=self.sim.metadata())

    @property
    def sim(self) -> RotationSimulation:
        """The simulation, shared by the readers of one process."""
        return simulation(self.params)

    def read(self, start: int, stop: int) -> list[Event]:
        return [Event(index=index, stream="data", fields={"frame": self.sim.frame(index)})
                for index in range(start, stop)]


class RotationSimSource(Source):
    """Simulated rotation crystallography: a known cell and orientation, spots from the Ewald construction."""

    name = "rotation_sim"
    Params = RotationSimParams
    outputs = {"frame": Port(ndim=2, dtype="int32", unit="counts", description="Rotation image")}

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        assert isinstance(p, RotationSimParams)
        yield RotationSimReader(p)
