"""The ``sfx_sim`` source: simulated serial crystallography runs (:mod:`~lightpipe.techniques.sfx.simulate`) read as events.

Every frame is a pure function of ``(seed, index)``, so any worker makes any
range of events. The scan's metadata carries the detector (beam centre, pixel
size, distance, module layout), which ``peakfinder8`` takes its geometry and
gap mask from. For a live stream, serve these frames from the EIGER simulator
(``lightpipe.simulators.eiger``, ``FrameSource.from_simulator("sfx_sim", ...)``)
and read them with the ``eiger`` source.
"""
from __future__ import annotations

from typing import Any, Iterator

from lightpipe.core.event import Event
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.simulators.pacing import SimulatedReader
from lightpipe.techniques.sfx.simulate import SfxSimParams, SfxSimulation, simulation

__all__ = ["SfxSimReader", "SfxSimSource"]


class SfxSimReader(SimulatedReader[SfxSimulation], simulation=simulation):
    """Makes the frames of one simulated run on demand."""

    def simulate(self, start: int, stop: int) -> list[Event]:
        sim = self.sim
        return [Event(index=i, stream="data", fields={"frame": sim.frame(i)}) for i in range(start, stop)]

    def streams(self) -> dict[str, range]:
        return {"data": range(self.params.frames)}


class SfxSimSource(Source):
    """Simulated serial crystallography runs: Bragg peaks of a lattice in random orientations, a set hit fraction."""

    name = "sfx_sim"
    Params = SfxSimParams
    outputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Detector frame")}

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        return {"frame": Port(ndim=2, dtype=params.frame_dtype, unit="counts", description="Detector frame")}

    def scans(self) -> Iterator[ScanReader]:
        yield SfxSimReader(self.params)
