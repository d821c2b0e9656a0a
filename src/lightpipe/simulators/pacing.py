"""Readers of simulated scans, and the clock that paces them at a detector's rate.

A technique's simulator makes every event as a pure function of its
parameters and the event's index, so a reader of a simulated scan is its
parameters: it pickles as them, and each worker makes its own range of events
from a simulation cached per process. :class:`SimulatedReader` is that reader;
a technique's reader names its simulation, its streams and how an event is made.

With ``rate_hz > 0`` the reader streams: the driver's reader holds an
:class:`AcquisitionClock`, started by the scan's first read, and :meth:`~SimulatedReader.ready`
hands out only the events acquired so far, as frames come from a detector; the
readers sent to workers (:meth:`~SimulatedReader.for_chunk`) leave the clock
behind, so they never wait.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Generic, Protocol, TypeVar

from lightpipe.core.event import Event, Scan
from lightpipe.core.source import ScanReader

__all__ = ["AcquisitionClock", "SimulatedReader"]



class Simulation(Protocol):
    """What a reader needs of a technique's simulation: the scan's metadata."""

    def metadata(self) -> Any:
        """Scan-level metadata (geometry, energy, truth) of the simulated scan."""


SimT = TypeVar("SimT", bound=Simulation)


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


class SimulatedReader(ScanReader, Generic[SimT]):
    """Reads one simulated scan, making its events on demand; paced at ``rate_hz`` if above 0.

    A subclass names its simulation (:attr:`simulation`) and implements
    :meth:`simulate` and :meth:`streams`; :meth:`read` starts the acquisition clock, then calls
    :meth:`simulate`.

    Parameters
    ----------
    params
        The simulator's parameters (a frozen model with a ``name``): all the reader holds.
    rate_hz
        Events per second from the first read, as from a detector; 0: all at once.

    Attributes
    ----------
    params
        The simulator's parameters.
    scan
        The scan: its name, the streams of :meth:`streams` and the simulation's metadata.

    Examples
    --------
    >>> from lightpipe.techniques.tomo.simulate import TomoSimParams
    >>> from lightpipe.techniques.tomo.sim_source import TomoSimReader
    >>> reader = TomoSimReader(TomoSimParams(rate_hz=100.0))
    >>> reader.ready(0, 3, timeout=0.0)  # the clock starts now: nothing acquired yet
    0
    """

    #: The technique's ``simulation(params)``, given as ``class R(SimulatedReader[S], simulation=simulation)``:
    #: one simulation per parameters and process, made again from the parameters after pickling.
    simulation: Callable[[Any], SimT]

    def __init_subclass__(cls, simulation: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if simulation is not None:
            cls.simulation = staticmethod(simulation)

    def __init__(self, params: Any, rate_hz: float = 0.0) -> None:
        self.params = params
        self.scan = Scan(name=params.name, streams=self.streams(), metadata=self.sim.metadata())
        self._clock = AcquisitionClock(rate_hz, self.scan.size) if rate_hz > 0 else None

    @property
    def sim(self) -> SimT:
        """The simulation, shared by the readers of one process."""
        return self.simulation(self.params)

    def streams(self) -> dict[str, range]:
        """The scan's streams (``data``, and ``dark`` or ``flat`` where simulated), as index ranges."""
        raise NotImplementedError

    def simulate(self, start: int, stop: int) -> list[Event]:
        """Events ``start`` to ``stop - 1``, made by the simulation."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> list[Event]:
        if self._clock is not None:
            self._clock.start()
        return self.simulate(start, stop)

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
        chunk._clock = None  # a worker makes its events at once; only the driver's reader waits
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
