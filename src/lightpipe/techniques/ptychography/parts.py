"""One part of a distributed reconstruction: what it starts from, what it sends back, and the part itself.

A :class:`PartReconstruction` holds a
:class:`~lightpipe.techniques.ptychography.algorithms.ReconstructionState` of
its frames on its own crop of the object grid, for the length of a scan, on
the worker the engine's part runner put it on (:mod:`lightpipe.core.parts`):
a Dask actor on the ``dask`` engine, a thread of this process on ``local``.
Its frames are sent there once; what travels per merge period is one object
crop, its illumination and the probe each way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightpipe.core.allocator import tune_allocator
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.algorithms import ALGORITHMS, ReconstructionState, iterate, make_algorithm

__all__ = ["PartData", "PartReconstruction", "PartResult"]


@dataclass
class PartData:
    """What one part needs to start: its frames, positions on its crop of the grid, guesses and settings.

    Sent to the part's worker once, when the part starts.
    """

    intensities: np.ndarray
    positions_px: np.ndarray
    probe: np.ndarray
    obj: np.ndarray
    mask: np.ndarray | None
    probe_modes: int
    threads: int
    fft: str
    algorithm_params: dict[str, dict[str, Any]]
    probe_update_start: int


@dataclass
class PartResult:
    """What a part sends back after a merge period.

    Attributes
    ----------
    object, illumination, probe
        The part's object and illumination on its crop, and its probe modes.
    fourier_errors, algorithms
        Fourier error (normalised by the part's photons) and algorithm of each iteration of the period.
    photons
        Photons the part's frames measured (weight of its errors and probe).
    seconds
        Time the part spent on the period, on its worker.
    """

    object: np.ndarray
    illumination: np.ndarray
    probe: np.ndarray
    fourier_errors: list[float]
    algorithms: list[str]
    photons: float
    seconds: float
    stalled: bool = False


class PartReconstruction:
    """One part of a distributed reconstruction: its :class:`ReconstructionState`, kept between merge periods.

    It lives where the part runner started it: on one Dask worker as an actor, or in this process.

    Parameters
    ----------
    data
        The part's frames, positions, guesses and settings.
    """

    def __init__(self, data: PartData) -> None:
        # The algorithms run in the part's own thread, whose heaps glibc deletes when they
        # empty unless told otherwise: that cost 16 % in page faults (lightpipe.core.allocator).
        tune_allocator()
        self.state = ReconstructionState(data.intensities, data.positions_px, data.probe, data.obj, mask=data.mask,
                                         probe_modes=data.probe_modes, threads=data.threads, fft=data.fft)
        self.algorithms = {name: make_algorithm(name, data.algorithm_params.get(name)) for name in ALGORITHMS}
        self.probe_update_start = data.probe_update_start

    def run(self, obj: np.ndarray | None, probe: np.ndarray | None, steps: list[tuple[str, int]]) -> PartResult:
        """Continue from ``obj`` and ``probe`` (``None``: keep the part's own) for ``steps`` of the chain."""
        t0 = time.perf_counter()
        state = self.state
        if obj is not None:
            state.set_object(obj)
        if probe is not None:
            state.set_probe(probe)
        records = []
        for name, count in steps:
            records += iterate(state, self.algorithms[name], count, probe_update_start=self.probe_update_start)
        return PartResult(
            object=np.asarray(to_numpy(state.object)),
            illumination=np.asarray(to_numpy(state.illumination())),
            probe=np.asarray(to_numpy(state.probe)),
            fourier_errors=[r.fourier_error for r in records],
            algorithms=[r.algorithm for r in records],
            photons=state.measured_photons(),
            seconds=time.perf_counter() - t0,
            stalled=any(r.stalled for r in records),
        )
