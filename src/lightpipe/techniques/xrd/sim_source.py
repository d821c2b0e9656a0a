"""The ``powder_sim`` source: simulated powder diffraction scans, with the PONI geometry in the scan's metadata.

Every frame is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.xrd.simulate.PowderSimulation`), so each worker
makes its own range of events. The calibration the frames were made at is in
the scan metadata (``poni``: pyFAI's configuration) and, when ``poni_file`` is
set, written there as a PONI file before the first scan, so a pipeline's
integration stages can read it as they would pyFAI-calib2's.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from pydantic import Field

from lightpipe.core.bounds import PathText
from lightpipe.core.event import Event
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.simulators.pacing import SimulatedReader
from lightpipe.techniques.xrd.simulate import PowderSimParams, PowderSimulation, simulation

__all__ = ["PowderSimReader", "PowderSimSource", "PowderSourceParams"]


class PowderSourceParams(PowderSimParams):
    """Parameters of the ``powder_sim`` source: the simulator's, and where to write its PONI file."""

    poni_file: PathText | None = Field(None, description="Write the simulated geometry to this PONI file when "
                                       "the source starts; none: do not write one")


class PowderSimReader(SimulatedReader[PowderSimulation], simulation=simulation):
    """Makes the events of one simulated powder scan on demand."""

    def simulate(self, start: int, stop: int) -> list[Event]:
        sim = self.sim
        first = sim.streams["data"].start
        mapping = self.params.map_shape is not None
        events = []
        for index in range(start, stop):
            stream, frame = sim.frame(index)
            fields: dict[str, Any] = {"frame": frame}
            if mapping:
                y, x = sim.position_m(index - first) if stream == "data" else (np.nan, np.nan)
                fields.update(position_y_m=np.float64(y), position_x_m=np.float64(x))
            events.append(Event(index=index, stream=stream, fields=fields))
        return events

    def streams(self) -> dict[str, range]:
        return self.sim.streams


class PowderSimSource(Source):
    """Simulated powder diffraction: rings of pyFAI calibrants at a known PONI geometry, optionally over a map."""

    name = "powder_sim"
    Params = PowderSourceParams
    outputs = {"frame": Port(ndim=2, dtype="uint32", unit="counts", description="Detector frame")}
    #: Fields of a mapping scan's events besides the frame.
    POSITIONS = {
        "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Sample position y (NaN for darks)"),
        "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Sample position x (NaN for darks)"),
    }

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        return {**cls.outputs, **(cls.POSITIONS if params.map_shape is not None else {})}

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        assert isinstance(p, PowderSourceParams)
        sim_params = PowderSimParams(**p.model_dump(exclude={"poni_file"}))
        if p.poni_file is not None:
            simulation(sim_params).write_poni(p.poni_file)
        yield PowderSimReader(sim_params)
