"""Parallel scaling of a compute-bound stage on the Dask engine: 1 worker against 2.

What it measures
    The time to FFT-downsample every frame of a file (``fft_downsample``,
    1024 x 1024 uint16 frames to 256 x 256 by default, written to NeXus) on
    the Dask engine with 1 worker (T1) and with 2 workers (T2), each a separate
    LocalCluster of single-threaded worker processes, on the same data. The
    clusters are built by :func:`lightpipe.engines.dask.make_cluster`, as
    ``lightpipe run --engine dask`` builds them, so this measures what users
    get. From
    them, as the SSRF nanoprobe paper defines them (J. Synchrotron Rad. 2024,
    the equations before its Table 1):

    * parallel acceleration ratio ``PAR_p = T1 / Tp``
    * parallel efficiency ``PEFF_p = PAR_p / p = T1 / (p * Tp)`` (target >= 0.9)

Reference
    The same computation in a plain loop in this process, measured in the same
    run: ``h5py`` read, :func:`lightpipe.stages.fourier.fft_downsample` on the
    NumPy array, ``h5py`` write, frame after frame. ``vs raw`` is the raw loop's
    time divided by lightpipe's.

Conditions
    The engine asks for each worker to start with :data:`lightpipe.engines.dask.WORKER_ENV`:
    ``OMP_NUM_THREADS=1`` (one numerical-library thread per worker: on a 2-core
    machine a worker whose libraries started one thread per core would use both
    cores alone, so T1 would already be parallel and PEFF meaningless; NumPy's
    FFT, pocketfft, is single-threaded anyway) and glibc settings that reuse
    frame-sized buffers instead of mapping fresh memory for each. The values
    these variables, and the other libraries' thread variables, had when the
    worker processes started (what glibc and the thread pools read) are
    printed with the table (see ``benchmarks/README.md``). The frames come from
    the frame simulator (8 distinct frames written in turn: FFT cost does not
    depend on content) into an uncompressed HDF5 file, so they sit in the page
    cache and the work is the FFTs. The driver and the Dask scheduler share the
    cores with the workers. Each cluster's start-up is reported apart; every
    runner runs once on a small file first, then ``--repeat`` times; the best
    time counts.

Where the time goes
    On Linux the table also gives, for the timed run, the CPU seconds of the
    workers and of the driver process, and the seconds the workers' threads
    were ready to run but waited for a core (``/proc/<pid>/task/*/schedstat``).

Run ``python benchmarks/scaling.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lightpipe.core.pipeline import Pipeline, load_pipeline
from lightpipe.engines.dask import WORKER_ENV
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation
from lightpipe.stages.fourier import fft_downsample
from overhead import environment_at_start

DATASET = "/entry/data/data"
#: Variables read back from every worker: the engine's, and the other numerical libraries' thread counts
#: (Dask's nanny sets some of these itself; the stage's FFT uses none of those libraries).
WORKER_VARIABLES = (*WORKER_ENV, "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
TARGET_PEFF = 0.9
DISTINCT_FRAMES = 8


def write_frames(path: Path, frames: int, shape: tuple[int, int]) -> Path:
    """Write ``frames`` simulated uint16 frames, uncompressed, one HDF5 chunk per frame."""
    side = min(shape)
    sim = FrameSimulation(FrameSimParams(
        frames=DISTINCT_FRAMES, darks=0, flats=0, shape=shape, rings_px=[0.1 * side, 0.2 * side, 0.3 * side], seed=2,
    ))
    base = [sim.frame(i)[1] for i in range(DISTINCT_FRAMES)]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(DATASET, (frames, *shape), np.uint16, chunks=(1, *shape))
        for i in range(frames):
            ds[i] = base[i % DISTINCT_FRAMES]
    return path


def fft_pipeline(path: Path, target: tuple[int, int], chunk_size: int) -> Pipeline:
    """Read every frame, FFT-downsample it to ``target``, write the downsampled frames to NeXus."""
    return load_pipeline({
        "version": 1,
        "name": "scaling",
        "source": {"use": "hdf5", "params": {"path": str(path), "dataset": DATASET}},
        "stages": {"downsampled": {"use": "fft_downsample", "params": {"shape": list(target)}}},
        "sinks": [{"use": "nexus", "fields": ["downsampled.frame"], "params": {"compression": "none"}}],
        "engine": {"chunk_size": chunk_size},
    })


def time_raw(path: Path, target: tuple[int, int], out: Path) -> float:
    """Seconds for the hand-written loop: read a frame, downsample it, write it."""
    t0 = time.perf_counter()
    with h5py.File(path, "r", locking=False) as f, h5py.File(out, "w") as g:
        ds = f[DATASET]
        result = g.create_dataset("frames", (ds.shape[0], *target), np.float64, chunks=(1, *target))
        for i in range(ds.shape[0]):
            result[i] = fft_downsample(ds[i], target)
    return time.perf_counter() - t0


def cpu_and_wait() -> tuple[float, float, int]:
    """CPU seconds of all threads of this process, seconds they were ready to run but had no core, and minor page faults.

    Linux only (``/proc/self/task/*/schedstat``, ``getrusage``); zeros elsewhere.
    """
    run_ns = wait_ns = 0
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        try:
            fields = stat.read_text().split()
        except OSError:  # the thread ended while we looked
            continue
        run_ns += int(fields[0])
        wait_ns += int(fields[1])
    return run_ns / 1e9, wait_ns / 1e9, resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_pipeline(engine: Any, path: Path, target: tuple[int, int], chunk_size: int, out: Path) -> dict[str, float]:
    """Run the pipeline once on ``engine``; wall seconds, stage seconds, and CPU and wait seconds."""
    with h5py.File(path, "r", locking=False) as f:
        n = f[DATASET].shape[0]
    pipeline = fft_pipeline(path, target, chunk_size)
    workers0, driver0 = engine.client.run(cpu_and_wait), cpu_and_wait()
    t0 = time.perf_counter()
    report = engine.run(pipeline, out)
    seconds = time.perf_counter() - t0
    workers1, driver1 = engine.client.run(cpu_and_wait), cpu_and_wait()
    scan = report.scans[0]
    if scan.ledger.written != n or scan.ledger.failed:
        raise RuntimeError(f"dask engine wrote {scan.ledger.written} of {n} frames; failed: {scan.ledger.failed[:3]}")
    return {
        "seconds": seconds,
        "stage_s": scan.stage_seconds["downsampled"],
        "worker_cpu_s": sum(workers1[w][0] - workers0[w][0] for w in workers1),
        "worker_wait_s": sum(workers1[w][1] - workers0[w][1] for w in workers1),
        "driver_cpu_s": driver1[0] - driver0[0],
    }


def time_dask(workers: int, path: Path, warm: Path, target: tuple[int, int], chunk_size: int, repeat: int,
              out: Path) -> dict[str, Any]:
    """Start a LocalCluster of ``workers`` single-threaded workers as the engine does, time the pipeline, stop it."""
    from lightpipe.engines.dask import DaskEngine, make_cluster

    t0 = time.perf_counter()
    client, cluster = make_cluster(None, workers, 1)
    try:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        env = client.run(environment_at_start, list(WORKER_VARIABLES))
        engine = DaskEngine(client=client)
        time_pipeline(engine, warm, target, chunk_size, out / "warm")
        runs = [time_pipeline(engine, path, target, chunk_size, out / f"run-{k}") for k in range(repeat)]
    finally:
        client.close()
        cluster.close()
    seen = {k: ",".join(sorted({"unset" if e[k] is None else e[k] for e in env.values()})) for k in WORKER_VARIABLES}
    return {"workers": workers, **min(runs, key=lambda r: r["seconds"]), "startup_s": startup, "worker_env": seen}


def run(frames: int, shape: tuple[int, int], target: tuple[int, int], chunk_size: int, repeat: int,
        workdir: str | None) -> dict[str, Any]:
    """Write the data, time the raw loop and the Dask engine on 1 and 2 workers, and return the figures."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lightpipe-scaling-", dir=workdir) as tmp:
        root = Path(tmp)
        path = write_frames(root / "frames.h5", frames, shape)
        warm = write_frames(root / "warm.h5", 2 * chunk_size, shape)
        time_raw(warm, target, root / "raw-warm.h5")
        raw = min(time_raw(path, target, root / f"raw-{k}.h5") for k in range(repeat))
        dask = [time_dask(p, path, warm, target, chunk_size, repeat, root / f"dask-{p}") for p in (1, 2)]
    t1 = dask[0]["seconds"]
    for d in dask:
        d["frames_per_s"] = frames / d["seconds"]
        d["par"] = t1 / d["seconds"]
        d["peff"] = t1 / (d["workers"] * d["seconds"])
        d["ratio_vs_raw"] = raw / d["seconds"]
        d["stage_ms_per_frame"] = 1e3 * d.pop("stage_s") / frames
    return {
        "benchmark": "scaling",
        "stage": "fft_downsample",
        "frames": frames,
        "shape": list(shape),
        "target_shape": list(target),
        "chunk_size": chunk_size,
        "repeat": repeat,
        "raw": {"seconds": raw, "frames_per_s": frames / raw},
        "dask": dask,
        "par_2": dask[1]["par"],
        "peff_2": dask[1]["peff"],
        # what PEFF_2 would be if nothing else wanted the cores: the extra work that parallel runs cost
        "work_efficiency_2": dask[0]["worker_cpu_s"] / dask[1]["worker_cpu_s"] if dask[1]["worker_cpu_s"] else None,
        "target_peff": TARGET_PEFF,
        "meets_target": dask[1]["peff"] >= TARGET_PEFF,
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def table(figures: dict[str, Any]) -> Any:
    """The figures as a rich table."""
    from rich.table import Table

    (ny, nx), (my, mx) = figures["shape"], figures["target_shape"]
    t = Table(title=f"Scaling: fft_downsample of {figures['frames']} frames {ny}x{nx} -> {my}x{mx} "
                    f"(best of {figures['repeat']}; target PEFF_2 >= {figures['target_peff']})")
    for col in ("runner", "p", "time s", "frames/s", "PAR_p", "PEFF_p", "vs raw", "stage ms/frame",
                "worker CPU s", "worker wait s", "driver CPU s"):
        t.add_column(col, justify="left" if col == "runner" else "right", no_wrap=True)
    raw = figures["raw"]
    t.add_row("raw loop", "-", f"{raw['seconds']:.3f}", f"{raw['frames_per_s']:.1f}", "", "", "1.00x")
    for d in figures["dask"]:
        peff = f"{d['peff']:.2f}"
        if d["workers"] > 1:
            peff = f"{'[green]' if d['peff'] >= figures['target_peff'] else '[red]'}{peff}"
        t.add_row("dask", str(d["workers"]), f"{d['seconds']:.3f}", f"{d['frames_per_s']:.1f}",
                  f"{d['par']:.2f}", peff, f"{d['ratio_vs_raw']:.2f}x", f"{d['stage_ms_per_frame']:.2f}",
                  f"{d['worker_cpu_s']:.2f}", f"{d['worker_wait_s']:.2f}", f"{d['driver_cpu_s']:.2f}")
    return t


NOTES = (
    "PAR_p = T1/Tp (parallel acceleration ratio), PEFF_p = T1/(p Tp) (parallel efficiency), as in the SSRF paper; "
    "vs raw = raw loop time / lightpipe time. raw loop: h5py read, fft_downsample, h5py write, in this process. "
    "dask: the lightpipe Dask engine. worker CPU s / worker wait s: CPU seconds of the workers' threads, and seconds "
    "they were ready to run but waited for a core; driver CPU s: this process (driver, scheduler, client). Each p is "
    "its own LocalCluster of single-threaded worker processes, built by lightpipe.engines.dask.make_cluster "
    "(start-up {startups}, not in the times); chunks of {chunk} frames. Worker environment at process start: "
    "{env}. So T1 uses one core and T2 two; this machine has {cpus} cores, shared with the driver and the scheduler. stage ms/frame: time "
    "inside fft_downsample per frame, summed over workers. Load average {load0:.1f} before, {load1:.1f} after. "
    "Worker CPU at p=1 / worker CPU at p=2 = {work}: the PEFF_2 two otherwise idle cores would give."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=256, help="frames in the file (default 256)")
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1024), metavar=("NY", "NX"),
                        help="frame shape (default 1024 1024)")
    parser.add_argument("--target", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"),
                        help="downsampled shape (default 256 256)")
    parser.add_argument("--chunk-size", type=int, default=8, help="frames per task (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each runner; the best counts (default 3)")
    parser.add_argument("--workdir", help="folder for the temporary files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        frames, shape, target, chunk, repeat = 16, (128, 128), (32, 32), 4, 1
    else:
        frames, shape, target, chunk, repeat = args.frames, tuple(args.shape), tuple(args.target), args.chunk_size, args.repeat
    if frames < 1 or chunk < 1 or repeat < 1:
        parser.error("--frames, --chunk-size and --repeat must be at least 1")
    if not all(1 <= t <= s for t, s in zip(target, shape)):
        parser.error(f"--target {target} must be between 1 1 and the frame shape {shape}")
    figures = run(frames, shape, target, chunk, repeat, args.workdir)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 140)
    console.print(table(figures))
    env = sorted({f"{k}={v}" for d in figures["dask"] for k, v in d["worker_env"].items()})
    startups = ", ".join(f"p={d['workers']}: {d['startup_s']:.2f} s" for d in figures["dask"])
    console.print(NOTES.format(startups=startups, chunk=figures["chunk_size"], env=" ".join(env),
                               cpus=figures["cpu_count"], load0=figures["load_average"][0],
                               work="n/a" if figures["work_efficiency_2"] is None else f"{figures['work_efficiency_2']:.2f}",
                               load1=figures["load_average"][1]), markup=False)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
