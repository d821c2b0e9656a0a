"""Scanning maps: frames/s of the scanning-maps pipeline on Eiger 4M frames against a raw NumPy loop.

What it measures
    Frames per second of ``hdf5 source (frames + positions) ->
    diffraction_signals -> scan_map (STXM) and dpc_phase -> nexus sink``
    (the sink writing each frame's total, dark field and centre of mass, and
    the maps) on the local engine, divided by the frames per second of a
    plain loop on the same file that computes the same numbers::

        for i in range(n):
            f = ds[i]
            rows, columns = f.sum(1, dtype=float64), f.sum(0, dtype=float64)
            total = rows.sum(); com = rows @ arange / total, columns @ arange / total
            bright = f[box].sum(where=disc)

    in float64, as the issue's reference; ``ratio`` is against it. The stage sums
    integer frames in 64-bit integers (exact, and faster), so the same loop summing in
    uint64 is measured too (``ratio_to_uint64_loop``): that ratio is the pipeline's own
    cost (reading through the source, the engine, the sink) with the arithmetic equal.

    The frames are Eiger 4M sized (2162 x 2068, uint32), a handful of distinct
    simulated frames written in turn into an uncompressed HDF5 file just before
    (so in the page cache), with a raster of positions beside them.

Run ``python benchmarks/maps.py`` (``--quick`` for 256 x 256 frames, ``--json``
for the figures as JSON on the last line of stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

TARGET = 0.9
RADIUS = 0.25  # bright-field disc radius, as a fraction of the frame's smaller side (the stage's default)


def write(path: Path, shape: tuple[int, int], rows: int, columns: int) -> None:
    from lightpipe.techniques.scanning.simulate import ScanningSimParams, ScanningSimulation

    sim = ScanningSimulation(ScanningSimParams(frame_shape=shape, map_shape=(4, 4), spot_px=shape[0] / 16))
    distinct = [sim.frame(i) for i in range(4)]
    n = rows * columns
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("entry/data/data", (n, *shape), np.uint32, chunks=(1, *shape))
        for i in range(n):
            ds[i] = distinct[i % 4]
        r, c = np.divmod(np.arange(n), columns)
        f["entry/data/y"] = r * 1e-7
        f["entry/data/x"] = c * 1e-7


def numpy_loop(path: Path, dtype: type[np.generic] = np.float64) -> float:
    """Frames/s of the plain loop, summing in ``dtype`` (float64; uint64 sums uint32 frames exactly, and faster)."""
    with h5py.File(path, "r") as f:
        ds = f["entry/data/data"]
        n, ny, nx = ds.shape
        cy, cx, radius = ny / 2.0, nx / 2.0, min(ny, nx) * RADIUS
        box = np.s_[int(np.floor(cy - radius)):int(np.ceil(cy + radius)) + 1,
                    int(np.floor(cx - radius)):int(np.ceil(cx + radius)) + 1]
        yy, xx = np.ogrid[box[0], box[1]]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        ay, ax = np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64)
        out = np.empty((n, 4))
        t = time.perf_counter()
        for i in range(n):
            frame = ds[i]
            rows = frame.sum(axis=1, dtype=dtype).astype(np.float64, copy=False)
            columns = frame.sum(axis=0, dtype=dtype).astype(np.float64, copy=False)
            total = rows.sum()
            out[i] = total, np.sum(frame[box], where=disc, dtype=dtype), rows @ ay / total, columns @ ax / total
        return n / (time.perf_counter() - t)


def pipeline(path: Path, workdir: Path) -> float:
    from lightpipe import load_pipeline
    from lightpipe.engines.local import LocalEngine

    doc = {
        "version": 2, "name": "maps-bench",
        "source": {"use": "hdf5", "params": {"path": str(path), "scalars": {"position_y_m": "/entry/data/y",
                                                                           "position_x_m": "/entry/data/x"}}},
        "stages": {
            "signals": {"use": "diffraction_signals"},
            "stxm": {"use": "scan_map", "inputs": {"value": "signals.total", "y": "source.position_y_m",
                                                   "x": "source.position_x_m"}},
            "dpc": {"use": "dpc_phase", "params": {"distance_m": 2.0, "pixel_size_m": 75e-6, "energy_ev": 1e4},
                    "inputs": {"com_y": "signals.com_y", "com_x": "signals.com_x", "y": "source.position_y_m",
                               "x": "source.position_x_m"}},
        },
        "sinks": [{"use": "nexus", "fields": ["signals.total", "signals.dark_field", "signals.com_y", "signals.com_x",
                                              "stxm.map", "dpc.phase"]}],
    }
    pipe = load_pipeline(doc)
    with LocalEngine() as engine:
        t = time.perf_counter()
        (report,) = engine.run(pipe, workdir / f"out{time.perf_counter_ns()}").scans
        seconds = time.perf_counter() - t
    assert report.ledger.failed == [], report.ledger.failed[:2]
    return report.ledger.written / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 frames, a 6 x 8 map")
    parser.add_argument("--json", action="store_true", help="figures as JSON on the last line of stdout")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each; the best counts")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    shape, rows, columns = ((256, 256), 6, 8) if args.quick else ((2162, 2068), 10, 12)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        work = Path(folder)
        path = work / "frames.h5"
        write(path, shape, rows, columns)
        pipeline(path, work)  # imports, first allocations
        loop, integer_loop, pipe = 0.0, 0.0, 0.0
        for _ in range(args.repeat):
            loop = max(loop, numpy_loop(path))
            integer_loop = max(integer_loop, numpy_loop(path, np.uint64))
            pipe = max(pipe, pipeline(path, work))
    figures = {"frame_shape": list(shape), "frames": rows * columns, "numpy_frames_per_s": loop,
               "numpy_uint64_frames_per_s": integer_loop, "pipeline_frames_per_s": pipe, "ratio": pipe / loop,
               "ratio_to_uint64_loop": pipe / integer_loop, "target": TARGET, "load_average": os.getloadavg()[0]}
    table = "\n".join(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}" for k, v in figures.items())
    print(table, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
