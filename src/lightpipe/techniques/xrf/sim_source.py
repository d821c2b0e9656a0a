"""The ``xrf_sim`` source: simulated XRF map scans, one spectrum per point with its position, flux and dead time.

Every spectrum is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.xrf.simulate.XrfSimulation`), so each worker
makes its own range of events. With several detector elements, each point
has a spectrum and a dead-time fraction per element. With ``config_file``
set, the PyMca fit configuration of the simulated detector (of its first
element) is written there before the first scan, so the pipeline's
``xrf_fit`` stage reads it as it would one saved by PyMca's GUI.
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
from lightpipe.techniques.xrf.simulate import XrfSimParams, XrfSimulation, simulation

__all__ = ["XrfSimReader", "XrfSimSource", "XrfSourceParams", "SCAN_PORTS"]

#: Per-point fields of an XRF map scan besides the spectrum.
SCAN_PORTS = {
    "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Sample position y"),
    "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Sample position x"),
    "i0": Port(ndim=0, dtype="float", unit="counts", description="Incident flux (ion chamber counts)"),
    "dead_time": Port(ndim=0, dtype="float", description="Dead-time fraction of the detector (0 to 1)"),
}


class XrfSourceParams(XrfSimParams):
    """Parameters of the ``xrf_sim`` source: the simulator's, and where to write its PyMca configuration."""

    config_file: PathText | None = Field(None, description="Write the PyMca fit configuration of the simulated "
                                         "detector to this .cfg file when the source starts; none: do not")


class XrfSimReader(SimulatedReader[XrfSimulation], simulation=simulation):
    """Makes the events of one simulated XRF scan on demand."""

    def simulate(self, start: int, stop: int) -> list[Event]:
        sim = self.sim
        events = []
        for point in range(start, stop):
            y, x = sim.position_m(point)
            fields: dict[str, Any] = {"spectrum": sim.spectrum(point), "position_y_m": np.float64(y),
                                      "position_x_m": np.float64(x), "i0": np.float64(sim.i0(point)),
                                      "dead_time": np.asarray(sim.dead_time(point), dtype=np.float64)}
            events.append(Event(index=point, stream="data", fields=fields))
        return events

    def streams(self) -> dict[str, range]:
        return {"data": range(self.sim.points)}


class XrfSimSource(Source):
    """Simulated XRF map: a spectrum per raster point of a known composition, with positions, flux and dead time."""

    name = "xrf_sim"
    Params = XrfSourceParams
    outputs = {"spectrum": Port(ndim=1, dtype="uint32", unit="counts", description="MCA spectrum"), **SCAN_PORTS}

    @classmethod
    def outputs_for(cls, params: Any) -> dict[str, Port]:
        if params.detectors == 1:
            return dict(cls.outputs)
        spectra = Port(ndim=2, dtype="uint32", unit="counts", description="MCA spectrum of each detector element")
        dead = Port(ndim=1, dtype="float", description="Dead-time fraction of each detector element (0 to 1)")
        return {**cls.outputs, "spectrum": spectra, "dead_time": dead}

    def scans(self) -> Iterator[ScanReader]:
        p = self.params
        assert isinstance(p, XrfSourceParams)
        sim_params = XrfSimParams(**p.model_dump(exclude={"config_file"}))
        if p.config_file is not None:
            simulation(sim_params).write_config(p.config_file)
        yield XrfSimReader(sim_params)
