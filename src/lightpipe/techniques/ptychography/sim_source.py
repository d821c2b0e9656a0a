"""The ``ptycho_sim`` source: simulated ptychography scans, read as events, streamed at a detector's rate if asked.

Every frame is a pure function of ``(seed, index)``
(:class:`~lightpipe.techniques.ptychography.simulate.PtychoSimulation`), so any
worker can make any range of events and two runs give the same data. With
``rate_hz`` the source streams: events become readable at that rate from the
scan's first read, as frames come from a detector, and a pipeline runs while
the scan is acquired.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Iterator

import numpy as np

from lightpipe.core.event import Event, Scan
from lightpipe.core.ports import Port
from lightpipe.core.source import ScanReader, Source
from lightpipe.techniques.ptychography.ports import POSITION_PORTS
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation, simulation

__all__ = ["AcquisitionClock", "PtychoSimReader", "PtychoSimSource"]


class AcquisitionClock:
    """When each event of a scan acquired at a steady rate has been acquired, counted from the first use.

    Event ``i`` (darks first) is complete ``(i + 1) / rate_hz`` seconds after
    :meth:`start`, as a detector delivers a frame once its exposure ends.

    Parameters
    ----------
    rate_hz
        Events per second (> 0).
    events
        Events in the scan.
    """

    def __init__(self, rate_hz: float, events: int) -> None:
        self.rate_hz = rate_hz
        self.events = events
        self.started: float | None = None
        self.released = 0

    def start(self) -> float:
        """The acquisition's start (``time.monotonic`` seconds), set by the first call."""
        if self.started is None:
            self.started = time.monotonic()
        return self.started

    def due(self, index: int) -> float:
        """When event ``index`` has been acquired (``time.monotonic`` seconds)."""
        return self.start() + (index + 1) / self.rate_hz

    def acquired(self) -> int:
        """Number of events acquired so far."""
        elapsed = time.monotonic() - self.start()
        return min(self.events, int(elapsed * self.rate_hz + 1e-6))  # the tolerance absorbs rounding at a due time


class PtychoSimReader(ScanReader):
    """Makes the events of one simulated ptychography scan on demand; pickles as its parameters.

    With ``rate_hz > 0`` the driver's reader holds an :class:`AcquisitionClock`
    and :meth:`ready` hands out only the events acquired so far, so a pipeline
    streams exactly as from a detector; the readers sent to workers
    (:meth:`for_chunk`) leave the clock behind.
    """

    def __init__(self, params: PtychoSimParams) -> None:
        self.params = params
        self.scan = Scan(name=params.name, streams=self.sim.streams, metadata=self.sim.metadata())
        self._clock = AcquisitionClock(params.rate_hz, self.scan.size) if params.rate_hz > 0 else None

    @property
    def sim(self) -> PtychoSimulation:
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

    def release(self, start: int, stop: int) -> None:
        if self._clock is not None:
            self._clock.released = max(self._clock.released, stop)

    def status(self) -> dict[str, Any]:
        clock = self._clock
        if clock is None:
            return {}
        acquired, done = clock.acquired(), clock.released
        lag = time.monotonic() - clock.due(done) if acquired > done else 0.0
        return {"held": max(acquired - done, 0), "lag_s": max(lag, 0.0)}

    def read(self, start: int, stop: int) -> list[Event]:
        if self._clock is not None:
            self._clock.start()
        sim = self.sim
        first = sim.streams["data"].start
        events = []
        for index in range(start, stop):
            stream, frame = sim.frame(index)
            y, x = sim.position_m(index - first) if stream == "data" else (np.nan, np.nan)
            fields = {"frame": frame, "position_y_m": np.float64(y), "position_x_m": np.float64(x)}
            events.append(Event(index=index, stream=stream, fields=fields))
        return events


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
