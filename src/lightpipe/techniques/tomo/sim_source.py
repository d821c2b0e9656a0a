"""The ``tomo_sim`` source: simulated tomography scans (darks, flats, projections), streamed at a rate if asked.

Every frame is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.tomo.simulate.TomoSimulation`), so each worker
makes its own range of events. Each event carries its frame and its rotation
angle (``angle_deg``; NaN for darks and flats). With ``rate_hz`` the frames
become readable at that rate, as from a detector, and a streaming
reconstruction shows its slice before the last projection.
"""
from __future__ import annotations

import copy
import time
from typing import Iterator

import numpy as np

from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.techniques.ptychography.sim_source import AcquisitionClock
from lightpipe.techniques.tomo.simulate import TomoSimParams, TomoSimulation, simulation

__all__ = ["TomoSimReader", "TomoSimSource"]


class TomoSimReader(ScanReader):
    """Makes the events of one simulated tomography scan on demand; pickles as its parameters."""

    def __init__(self, params: TomoSimParams) -> None:
        self.params = params
        self.scan = Scan(name=params.name, streams=self.sim.streams, metadata=self.sim.metadata())
        self._clock = AcquisitionClock(params.rate_hz, self.scan.size) if params.rate_hz > 0 else None

    @property
    def sim(self) -> TomoSimulation:
        """The simulation, shared by the readers of one process."""
        return simulation(self.params)

    def ready(self, start: int, stop: int, timeout: float | None) -> int:
        clock = self._clock
        if clock is None:
            return stop
        wait = clock.due(stop - 1) - time.monotonic()
        if timeout is not None:
            wait = min(wait, timeout)
        if wait > 0:
            time.sleep(wait)
        return max(start, min(stop, clock.acquired()))

    def for_chunk(self, start: int, stop: int) -> ScanReader:
        if self._clock is None:
            return self
        chunk = copy.copy(self)
        chunk._clock = None
        return chunk

    def read(self, start: int, stop: int) -> list[Event]:
        if self._clock is not None:
            self._clock.start()
        events = []
        for index in range(start, stop):
            stream, frame, angle = self.sim.frame(index)
            events.append(Event(index=index, stream=stream, fields={"frame": frame, "angle_deg": np.float64(angle)}))
        return events


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

