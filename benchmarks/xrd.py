"""XRD integration: frames/s of the ``azimuthal_integration`` stage in a pipeline against a raw pyFAI loop.

What it measures
    Frames per second of the pipeline ``hdf5 source -> azimuthal_integration ->
    nexus sink`` (the sink writing each frame's curve) on the local engine,
    divided by the frames per second of a plain script on the same file::

        ai = pyFAI.load(poni)
        for i in range(n):
            ai.integrate1d(ds[i], npt, unit=..., method=..., error_model=...)

    Both use the same PONI file, frames, bins, unit, method and error model.
    The frames are powder rings of LaB6 simulated on a Pilatus 1M
    (1043 x 981) and an Eiger 4M (2167 x 2070), uint32, in an uncompressed
    HDF5 file written just before (so in the page cache): the figure is the
    CPU cost per frame of lightpipe around pyFAI.

Conditions
    Neither side counts building the integrator: the raw loop integrates one
    frame before its timer starts, and the pipeline runs once on a two-frame
    file of the same detector first, which builds the integrator this process
    then reuses (as a worker does for every scan after its first). The build
    time is reported apart. Each runner runs ``--repeat`` times, alternating;
    the best time counts. pyFAI's OpenMP threads are left as they are on both
    sides (the local engine runs one chunk at a time).

Run ``python benchmarks/xrd.py`` (``--quick`` for a small run, ``--json`` for
the figures as JSON on the last line of stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py

#: Least acceptable ratio of the pipeline's frames/s to the raw pyFAI loop's.
TARGET = 0.9
#: Distinct simulated frames written in turn: simulating a frame costs more than integrating it.
DISTINCT_FRAMES = 4
#: Integration settings, the same on both sides.
SETTINGS = {"npt": 1000, "unit": "2th_deg", "method": ["bbox", "csr", "cython"], "error_model": "poisson"}
#: (label, powder_sim parameters, frames) of the full run and of --quick.
FULL = [("Pilatus 1M", {"detector": "Pilatus1M"}, 200), ("Eiger 4M", {"detector": "Eiger4M", "distance_m": 0.3}, 60)]
QUICK = [("generic 512 x 512", {"detector": None, "shape": (512, 512), "distance_m": 0.1}, 60)]


def write_frames(workdir: Path, label: str, sim_params: dict[str, Any], frames: int) -> tuple[Path, Path, Path]:
    """The PONI file, a file of ``frames`` frames and a two-frame warm-up file, for one detector."""
    from lightpipe.techniques.xrd.simulate import PowderSimParams, PowderSimulation

    sim = PowderSimulation(PowderSimParams(frames=DISTINCT_FRAMES, **sim_params))
    stem = label.replace(" ", "_")
    poni = sim.write_poni(workdir / f"{stem}.poni")
    stack = [sim.frame(k)[1] for k in range(DISTINCT_FRAMES)]
    paths = []
    for name, count in ((f"{stem}.h5", frames), (f"{stem}_warm.h5", 2)):
        with h5py.File(workdir / name, "w") as f:
            ds = f.create_dataset("entry/data/data", (count, *stack[0].shape), stack[0].dtype,
                                  chunks=(1, *stack[0].shape))
            for k in range(count):
                ds[k] = stack[k % DISTINCT_FRAMES]
        paths.append(workdir / name)
    return poni, paths[0], paths[1]


def raw_loop(poni: Path, path: Path) -> tuple[float, float]:
    """Seconds of the plain pyFAI loop over the file, and of building its integrator."""
    import pyFAI

    t = time.perf_counter()
    ai = pyFAI.load(str(poni))
    kwargs = {"unit": SETTINGS["unit"], "method": tuple(SETTINGS["method"]), "error_model": SETTINGS["error_model"]}
    with h5py.File(path, "r") as f:
        ds = f["entry/data/data"]
        ai.integrate1d(ds[0], SETTINGS["npt"], **kwargs)
        build = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(ds.shape[0]):
            ai.integrate1d(ds[i], SETTINGS["npt"], **kwargs)
        return time.perf_counter() - t, build


def pipeline_run(poni: Path, path: Path, output: Path) -> float:
    """Seconds of the lightpipe pipeline over the file (local engine, one worker)."""
    from lightpipe import load_pipeline
    from lightpipe.engines.local import LocalEngine

    pipeline = load_pipeline({
        "version": 2, "name": "xrd-bench",
        "source": {"use": "hdf5", "params": {"path": str(path)}},
        "stages": {"curve": {"use": "azimuthal_integration", "params": {"poni": str(poni), **SETTINGS}}},
        "sinks": [{"use": "nexus", "fields": ["curve.intensity"]}],
    })
    t = time.perf_counter()
    with LocalEngine() as engine:
        report = engine.run(pipeline, output)
    seconds = time.perf_counter() - t
    ledger = report.scans[0].ledger
    if ledger.failed or ledger.written != ledger.received:
        raise RuntimeError(f"the pipeline failed events: {ledger.failed[:3]}")
    return seconds


def measure(workdir: Path, label: str, sim_params: dict[str, Any], frames: int, repeat: int) -> dict[str, Any]:
    """Both runners on one detector's frames."""
    from lightpipe.techniques.xrd import geometry

    poni, path, warm = write_frames(workdir, label, sim_params, frames)
    built = geometry.BUILT["count"]
    t = time.perf_counter()
    pipeline_run(poni, warm, workdir / "warm")
    pipeline_build = time.perf_counter() - t
    raw, lp, raw_build = [], [], 0.0
    for k in range(repeat):
        seconds, raw_build = raw_loop(poni, path)
        raw.append(seconds)
        lp.append(pipeline_run(poni, path, workdir / f"out{k}"))
    with h5py.File(path, "r") as f:
        shape = list(f["entry/data/data"].shape[1:])
    raw_fps, lp_fps = frames / min(raw), frames / min(lp)
    return {
        "detector": label, "shape": shape, "frames": frames, "repeat": repeat,
        "raw_seconds": min(raw), "raw_frames_per_s": raw_fps, "raw_build_s": raw_build,
        "pipeline_seconds": min(lp), "pipeline_frames_per_s": lp_fps, "pipeline_first_run_s": pipeline_build,
        "integrators_built": geometry.BUILT["count"] - built,
        "ratio": lp_fps / raw_fps, "target": TARGET, "meets_target": lp_fps / raw_fps >= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small frames, a few seconds")
    parser.add_argument("--json", action="store_true", help="figures as JSON on the last line of stdout")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per runner (best counts)")
    parser.add_argument("--workdir", default=None, help="where the HDF5 files go (default a temporary folder)")
    args = parser.parse_args(argv)
    import pyFAI

    cases = QUICK if args.quick else FULL
    repeat = args.repeat or 3
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = [measure(Path(tmp), label, params, frames, repeat) for label, params, frames in cases]
    figures = {"pyfai_version": pyFAI.version, "settings": SETTINGS, "omp_num_threads": os.environ.get(
               "OMP_NUM_THREADS"), "cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "results": rows}
    out = sys.stderr if args.json else sys.stdout
    print(f"XRD integration: azimuthal_integration in a pipeline vs a raw pyFAI loop (pyFAI {pyFAI.version}, "
          f"{SETTINGS['method']}, npt {SETTINGS['npt']}, {SETTINGS['unit']}, errors {SETTINGS['error_model']})",
          file=out)
    print(f"{'detector':<18} {'shape':>12} {'frames':>6} {'raw f/s':>8} {'lightpipe f/s':>13} {'ratio':>6} "
          f"{'target':>6}  built", file=out)
    for r in rows:
        print(f"{r['detector']:<18} {'x'.join(map(str, r['shape'])):>12} {r['frames']:>6} "
              f"{r['raw_frames_per_s']:>8.1f} {r['pipeline_frames_per_s']:>13.1f} {r['ratio']:>6.2f} "
              f"{r['target']:>6.2f}  {r['integrators_built']}", file=out)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
