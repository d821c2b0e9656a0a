"""The source protocol, checked on every registered source.

A new source must add an entry to ``SOURCES``: a function that makes small
input data in a temporary folder and returns the source's parameters.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from lightpipe.core import registry
from lightpipe.core.event import Event
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation, write_nxmx
from lightpipe.core.source import ScanReader, Source
from lightpipe.techniques.ptychography.cxi import write_simulation_cxi
from lightpipe.techniques.ptychography.simulate import PtychoSimParams

SIM = FrameSimParams(name="conf", frames=11, darks=3, flats=2, shape=(12, 10), seed=5)
PTYCHO = PtychoSimParams(name="conf", frame_shape=(32, 32), distance_m=0.5, defocus_m=1e-4, n_positions=9, darks=3,
                         photons_per_frame=1e5, seed=5)


def _hdf5(tmp: Path) -> dict[str, Any]:
    path = write_nxmx(tmp / "conf_master.h5", SIM, frames_per_file=4)
    return {"path": str(path), "dataset": "/entry/data", "dark": "/entry/dark/data", "flat": "/entry/flat/data"}


def _folder(tmp: Path) -> dict[str, Any]:
    write_nxmx(tmp / "conf.h5", SIM)
    return {"path": str(tmp), "poll_s": 0.02, "settle_s": 0.05, "timeout_s": 1.0}


def _image_series(tmp: Path) -> dict[str, Any]:
    sim = FrameSimulation(SIM)
    for stream, indices in sim.streams.items():
        for k, index in enumerate(indices):
            Image.fromarray(sim.frame(index)[1]).save(tmp / f"{stream}_{k:03d}.tif")
    return {"path": str(tmp / "data_*.tif"), "dark": str(tmp / "dark_*.tif"), "flat": str(tmp / "flat_*.tif")}


def _simulated_frames(tmp: Path) -> dict[str, Any]:
    return SIM.model_dump()


def _ptycho_sim(tmp: Path) -> dict[str, Any]:
    return PTYCHO.model_dump()


def _cxi(tmp: Path) -> dict[str, Any]:
    return {"path": str(write_simulation_cxi(tmp / "conf.cxi", PTYCHO))}


_SIMULATORS: list[Any] = []


def _eiger(tmp: Path) -> dict[str, Any]:
    """A simulated EIGER streaming one series of SIM's data frames once the receiver connects."""
    import threading

    from lightpipe.simulators.eiger import EigerSimulator
    from lightpipe.simulators.eiger_frames import FrameSource

    sim = EigerSimulator(FrameSource.from_simulator("simulated_frames", SIM.model_dump()), stream_port=0,
                         rest_port=0).start()
    _SIMULATORS.append(sim)
    threading.Thread(target=sim.acquire, args=(SIM.frames,), daemon=True).start()
    return {"endpoint": sim.stream_endpoint, "idle_timeout_s": 5.0}


@pytest.fixture(autouse=True)
def _stop_simulators() -> Iterator[None]:
    yield
    while _SIMULATORS:
        _SIMULATORS.pop().stop()


#: Registered source name -> function making its test input and returning its parameters.
SOURCES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "hdf5": _hdf5,
    "folder": _folder,
    "image_series": _image_series,
    "simulated_frames": _simulated_frames,
    "eiger": _eiger,
    "ptycho_sim": _ptycho_sim,
    "cxi": _cxi,
    "powder_sim": lambda tmp: {"detector": None, "shape": [32, 48], "distance_m": 0.02, "map_shape": [2, 3],
                               "darks": 2},
    "sfx_sim": lambda tmp: {"name": "conf", "frames": 6, "hit_fraction": 0.5, "seed": 5},
    "rotation_sim": lambda tmp: {"images": 4, "shape": [64, 64]},
    "xrf_sim": lambda tmp: {"map_shape": [3, 4]},
    "scanning_sim": lambda tmp: {"map_shape": [4, 5]},
    "tomo_sim": lambda tmp: {"shape": [16, 32], "projections": 37, "darks": 2, "flats": 2},
}


@pytest.fixture(params=registry.names("sources"))
def reader(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[type[Source], Any, ScanReader]]:
    name = request.param
    if name not in SOURCES:
        pytest.fail(f"source {name!r} is registered but has no entry in SOURCES of {__file__}; add one")
    cls = registry.load("sources", name)
    params = cls.Params.model_validate(SOURCES[name](tmp_path))
    scans = cls(params).scans()
    first = next(scans)
    yield cls, params, first
    first.close()
    scans.close()


def _same(a: list[Event], b: list[Event]) -> None:
    assert [(e.index, e.stream, e.error) for e in a] == [(e.index, e.stream, e.error) for e in b]
    for x, y in zip(a, b):
        assert x.fields.keys() == y.fields.keys()
        for key in x.fields:
            np.testing.assert_array_equal(np.asarray(x.fields[key]), np.asarray(y.fields[key]), err_msg=key)


def test_every_registered_source_has_a_conformance_entry() -> None:
    missing = set(registry.names("sources")) - set(SOURCES)
    assert not missing, f"add entries for {sorted(missing)} to SOURCES in {__file__}"


def test_streams_are_disjoint_and_cover_the_scan(reader: tuple[type[Source], Any, ScanReader]) -> None:
    _, _, r = reader
    ranges = r.scan.indices()
    assert [i for rng in ranges for i in rng] == list(range(r.scan.size))
    assert r.scan.size > 0 and "data" in r.scan.streams


def test_events_match_ports_and_streams(reader: tuple[type[Source], Any, ScanReader]) -> None:
    cls, params, r = reader
    ports = cls.outputs_for(params)
    for stream, rng in r.scan.streams.items():
        events = r.read(rng.start, rng.stop)
        assert [e.index for e in events] == list(rng)
        assert {e.stream for e in events} == {stream}
        for event in events:
            assert event.error is None, event.error
            assert event.fields.keys() == ports.keys(), f"fields {sorted(event.fields)} but ports {sorted(ports)}"
            for key, port in ports.items():
                assert port.check_value(event.fields[key]) is None, (key, port.check_value(event.fields[key]))
    fields = r.read(r.scan.streams["data"].start, r.scan.streams["data"].start + 1)[0].fields
    if "frame" not in fields:  # a source of spectra (an MCA) has no detector frame
        return
    frame = fields["frame"]
    if "frame_shape" in r.scan.metadata:
        assert list(frame.shape) == list(r.scan.metadata["frame_shape"])
        assert str(frame.dtype) == r.scan.metadata["frame_dtype"]


def test_halves_equal_the_whole(reader: tuple[type[Source], Any, ScanReader]) -> None:
    _, _, r = reader
    for rng in r.scan.streams.values():
        mid = rng.start + len(rng) // 2
        _same(r.read(rng.start, mid) + r.read(mid, rng.stop), r.read(rng.start, rng.stop))


def test_chunk_reader_pickles_and_reads_the_same(reader: tuple[type[Source], Any, ScanReader]) -> None:
    """What the engine sends to a worker is ``for_chunk``'s reader: it must pickle and read the same."""
    _, _, r = reader
    rng = r.scan.streams["data"]
    assert r.ready(rng.start, rng.stop, None) == rng.stop
    before = r.read(rng.start, rng.stop)  # files are open now: pickling must not carry the handles
    copy = pickle.loads(pickle.dumps(r.for_chunk(rng.start, rng.stop)))
    assert copy.scan == r.scan
    _same(copy.read(rng.start, rng.stop), before)
    copy.close()


def test_read_across_streams(reader: tuple[type[Source], Any, ScanReader]) -> None:
    _, _, r = reader
    events = r.read(0, r.scan.size)
    assert [(e.index, e.stream) for e in events] == [(i, r.scan.stream_of(i)) for i in range(r.scan.size)]
    assert all(e.error is None for e in events)
