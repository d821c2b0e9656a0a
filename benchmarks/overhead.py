"""Engine overhead: a no-op pipeline over 4-Mpixel frames against a plain h5py read loop.

What it measures
    Frames per second of a pipeline that reads every frame of an HDF5 file and
    passes it through the ``identity`` stage, on the local engine (one worker)
    and on the Dask engine (its own LocalCluster of 2 single-threaded workers),
    divided by the frames per second of ``for i in range(n): ds[i]`` on the same
    file in the same run. An uncompressed file and a bitshuffle-LZ4 file (what
    DECTRIS detectors write) are both measured. Frames are Eiger 4M sized
    (2162 x 2068 uint16) unless ``--shape`` says otherwise.

References
    ``raw ds[i]`` is the loop above: the reference of every ratio. ``raw
    read_direct`` reads each frame into one reused buffer: the floor of h5py
    reading, with no memory allocated per frame.

Why there is a one-pixel ROI
    The core plans passes from what reduce stages and sinks need: a map stage
    whose output nobody keeps is not run, and a pipeline without sinks reads
    nothing. To make every frame go through ``identity`` without writing it
    back, a ``roi_sum`` over one pixel of ``identity.frame`` feeds a NeXus sink
    that writes that one float per frame: the least a sink can write while
    still pulling every frame through the stage.

Conditions
    The files are written just before they are read, so they sit in the page
    cache: this measures CPU cost per frame (decompression, copies, page
    faults, engine bookkeeping), not the disk. Each runner runs in a fresh
    Python process, as a user's script would: how much memory the C allocator
    keeps between frames depends on what the process did before, and that
    moves the ``ds[i]`` loop by up to 3x on compressed data. In that process the
    runner first runs once on a small file (imports, worker start-up, file
    handles), then ``--repeat`` times on the full file; the best time counts.
    The Dask cluster's start-up time is reported apart and not included. The
    engine asks for every LocalCluster worker to run with
    :data:`lightpipe.engines.dask.WORKER_ENV` (glibc keeps frame-sized buffers
    for reuse); the table prints the values the worker processes started with,
    which is what glibc reads (see ``benchmarks/README.md``).

Run ``python benchmarks/overhead.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

# Only h5py and NumPy at the top: the raw runners' processes must look like a
# plain h5py script, so lightpipe and Dask are imported where they are used.
import h5py
import hdf5plugin
import numpy as np

#: DECTRIS Eiger 4M frame shape (y, x).
EIGER_4M = (2162, 2068)
DATASET = "/entry/data/data"
COMPRESSIONS: dict[str, dict[str, Any]] = {"none": {}, "bitshuffle-lz4": dict(hdf5plugin.Bitshuffle(cname="lz4"))}
RUNNERS = ("raw ds[i]", "raw read_direct", "local", "dask")
#: Least acceptable ratio of lightpipe frames/s to the ``ds[i]`` loop, per engine.
TARGETS = {"local": 0.8, "dask": 0.6}
CHUNK_SIZE = 16
DASK_WORKERS = 2
#: Distinct simulated frames written in turn: simulating 4-Mpixel frames is slower than reading them.
DISTINCT_FRAMES = 8


def write_stack(path: Path, frames: int, shape: tuple[int, int], compression: str) -> Path:
    """Write ``frames`` simulated Eiger-like frames (one HDF5 chunk per frame) to ``path``."""
    from lightpipe.simulators.frames import FrameSimParams, FrameSimulation

    ny, nx = shape
    side = min(shape)
    # a photon-counting detector: no dark offset, no read noise, mostly small counts
    sim = FrameSimulation(FrameSimParams(
        frames=DISTINCT_FRAMES, darks=0, flats=0, shape=shape, photons=20.0, dark_level=0.0, read_noise=0.0,
        rings_px=[0.1 * side, 0.2 * side, 0.3 * side], seed=1,
    ))
    base = [sim.frame(i)[1] for i in range(DISTINCT_FRAMES)]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(DATASET, (frames, ny, nx), np.uint16, chunks=(1, ny, nx), **COMPRESSIONS[compression])
        for i in range(frames):
            ds[i] = base[i % DISTINCT_FRAMES]
    return path


def noop_pipeline(path: Path) -> Any:
    """Read every frame, pass it through ``identity``, keep one float per frame (see module docstring)."""
    from lightpipe.core.pipeline import load_pipeline

    return load_pipeline({
        "version": 1,
        "name": "overhead",
        "source": {"use": "hdf5", "params": {"path": str(path), "dataset": DATASET}},
        "stages": {
            "identity": {"use": "identity"},
            "probe": {"use": "roi_sum", "inputs": {"frame": "identity.frame"}, "params": {"y": [0, 1], "x": [0, 1]}},
        },
        "sinks": [{"use": "nexus", "fields": ["probe.sum"], "params": {"compression": "none"}}],
        "engine": {"chunk_size": CHUNK_SIZE},
    })


def environment_at_start(names: list[str]) -> dict[str, str | None]:
    """Values of ``names`` in the environment this process started with (Linux ``/proc/self/environ``).

    That is what glibc's allocator and the OpenMP runtime read, once, at start:
    a variable put in ``os.environ`` later shows there but changes nothing.
    """
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:  # not Linux: the best this process can see
        return {k: os.environ.get(k) for k in names}
    start = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k: start[k.encode()].decode() if k.encode() in start else None for k in names}


def _faults() -> int:
    """Minor page faults of this process so far (each is a page the kernel had to map and zero)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _raw_getitem(path: Path) -> float:
    """Seconds for ``for i in range(n): ds[i]``: the reference."""
    t0 = time.perf_counter()
    with h5py.File(path, "r", locking=False) as f:
        ds = f[DATASET]
        for i in range(ds.shape[0]):
            ds[i]
    return time.perf_counter() - t0


def _raw_read_direct(path: Path) -> float:
    """Seconds to read every frame into one reused buffer: h5py's floor, no memory allocated per frame."""
    t0 = time.perf_counter()
    with h5py.File(path, "r", locking=False) as f:
        ds = f[DATASET]
        frame = np.empty(ds.shape[1:], ds.dtype)
        for i in range(ds.shape[0]):
            ds.read_direct(frame, np.s_[i])
    return time.perf_counter() - t0


#: The reference loops, by runner name.
RAW_LOOPS: dict[str, Callable[[Path], float]] = {"raw ds[i]": _raw_getitem, "raw read_direct": _raw_read_direct}


def _lightpipe(engine: Any, path: Path, out: Path) -> tuple[float, float]:
    """Seconds for ``engine`` to run the no-op pipeline, and the seconds its workers spent reading."""
    pipeline = noop_pipeline(path)
    with h5py.File(path, "r", locking=False) as f:
        n = f[DATASET].shape[0]
    t0 = time.perf_counter()
    report = engine.run(pipeline, out)
    seconds = time.perf_counter() - t0
    scan = report.scans[0]
    if scan.ledger.written != n or scan.ledger.failed:
        raise RuntimeError(f"{engine.name} engine wrote {scan.ledger.written} of {n} frames; failed: {scan.ledger.failed[:3]}")
    return seconds, scan.stage_seconds.get("source", 0.0)


def measure(runner: str, path: Path, warm: Path, repeat: int, out: Path) -> dict[str, Any]:
    """Time ``runner`` in this process: once on ``warm``, then ``repeat`` times on ``path``.

    Returns the best time, the seconds spent reading in that run (lightpipe's
    own source timing), minor page faults per frame of the reading processes,
    and for Dask the cluster start-up time and the values that the engine's
    :data:`~lightpipe.engines.dask.WORKER_ENV` variables had when the workers started.
    """
    with h5py.File(path, "r", locking=False) as f:
        frames = f[DATASET].shape[0]
    result: dict[str, Any] = {}
    faults: Callable[[], int] = _faults
    engine: Any = None
    if runner == "local":
        from lightpipe.engines.local import LocalEngine

        engine = LocalEngine(workers=1)
    elif runner == "dask":
        from lightpipe.engines.dask import WORKER_ENV, DaskEngine

        t0 = time.perf_counter()
        engine = DaskEngine(workers=DASK_WORKERS, threads_per_worker=1)
        engine.client.wait_for_workers(DASK_WORKERS)
        result["startup_s"] = time.perf_counter() - t0
        client = engine.client
        seen = client.run(environment_at_start, list(WORKER_ENV))
        result["worker_env"] = {k: ",".join(sorted({"unset" if e[k] is None else e[k] for e in seen.values()}))
                                for k in WORKER_ENV}

        def worker_faults() -> int:  # the reading happens in the workers
            return sum(client.run(_faults).values())

        faults = worker_faults

    elif runner not in RAW_LOOPS:
        raise ValueError(f"unknown runner {runner!r}; known: {', '.join(RUNNERS)}")

    def once(p: Path, o: Path) -> tuple[float, float]:
        if engine is not None:
            return _lightpipe(engine, p, o)
        seconds = RAW_LOOPS[runner](p)
        return seconds, seconds

    try:
        once(warm, out / "warm")
        before = faults()
        result["seconds"], result["read_s"] = min(once(path, out / f"run-{k}") for k in range(repeat))
        result["faults_per_frame"] = (faults() - before) / (repeat * frames)
    finally:
        if engine is not None:
            engine.close()
    return result


def measure_in_fresh_process(runner: str, path: Path, warm: Path, repeat: int, out: Path) -> dict[str, Any]:
    """Run :func:`measure` in a new Python process and return its figures."""
    cmd = [sys.executable, __file__, "--measure", runner, str(path), str(warm), str(repeat), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"runner {runner!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(frames: int, shape: tuple[int, int], repeat: int, workdir: str | None) -> dict[str, Any]:
    """Write the files, time every runner on each, and return the figures."""
    rows: list[dict[str, Any]] = []
    startups: list[float] = []
    worker_env: dict[str, str] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lightpipe-overhead-", dir=workdir) as tmp:
        root = Path(tmp)
        for compression in COMPRESSIONS:
            path = write_stack(root / f"frames-{compression}.h5", frames, shape, compression)
            warm = write_stack(root / f"warm-{compression}.h5", 2 * CHUNK_SIZE, shape, compression)
            figures = {}
            for runner in RUNNERS:
                out = root / f"out-{compression}-{runner.replace(' ', '_')}"
                figures[runner] = measure_in_fresh_process(runner, path, warm, repeat, out)
            reference = figures["raw ds[i]"]["seconds"]
            for runner, fig in figures.items():
                if "startup_s" in fig:
                    startups.append(fig["startup_s"])
                    worker_env = fig["worker_env"]
                target = TARGETS.get(runner)
                ratio = reference / fig["seconds"]
                rows.append({
                    "compression": compression,
                    "file_bytes": path.stat().st_size,
                    "runner": runner,
                    "seconds": fig["seconds"],
                    "frames_per_s": frames / fig["seconds"],
                    "ratio_vs_raw": ratio,
                    "target": target,
                    "meets_target": None if target is None else ratio >= target,
                    "read_ms_per_frame": 1e3 * fig["read_s"] / frames,
                    "faults_per_frame": fig["faults_per_frame"],
                })
    return {
        "benchmark": "overhead",
        "frames": frames,
        "shape": list(shape),
        "dtype": "uint16",
        "chunk_size": CHUNK_SIZE,
        "repeat": repeat,
        "dask_workers": DASK_WORKERS,
        "dask_worker_env": worker_env,
        "dask_startup_s": min(startups),
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
        "results": rows,
    }


def table(figures: dict[str, Any]) -> Any:
    """The figures as a rich table."""
    from rich.markup import escape
    from rich.table import Table

    ny, nx = figures["shape"]
    t = Table(title=f"Engine overhead: {figures['frames']} frames of {ny}x{nx} uint16 through the identity stage "
                    f"(best of {figures['repeat']})")
    for col in ("file", "MB", "runner", "time s", "frames/s", "MB/s", "vs ds[i]", "target", "read ms/frame",
                "faults/frame"):
        t.add_column(escape(col), justify="left" if col in ("file", "runner") else "right", no_wrap=True)
    frame_mb = ny * nx * 2 / 1e6
    for r in figures["results"]:
        verdict = "" if r["target"] is None else f"{'[green]' if r['meets_target'] else '[red]'}>= {r['target']:.1f}"
        t.add_row(r["compression"], f"{r['file_bytes'] / 1e6:.0f}", escape(r["runner"]), f"{r['seconds']:.3f}",
                  f"{r['frames_per_s']:.0f}", f"{r['frames_per_s'] * frame_mb:.0f}", f"{r['ratio_vs_raw']:.2f}x",
                  verdict, f"{r['read_ms_per_frame']:.2f}", f"{r['faults_per_frame']:.0f}")
    return t


NOTES = (
    "Local engine: 1 worker. Dask engine: LocalCluster of {workers} single-threaded worker processes; the engine's "
    "worker variables as the worker processes started with them (what glibc reads): {env}; its start-up "
    "({startup:.2f} s) is not in the times. Pipeline: hdf5 -> identity -> roi_sum of 1 pixel -> NeXus sink writing one float per frame, chunks of {chunk} frames. Files are in the page cache: this is "
    "CPU cost, not disk speed. read ms/frame: time spent reading per frame (lightpipe: its own source timing, summed "
    "over workers). faults/frame: minor page faults per frame in the reading processes (Dask: the workers). {cpus} "
    "cores; load average {load0:.1f} before, {load1:.1f} after (other processes share the cores)."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:  # internal: one runner in this fresh process, figures as JSON
        runner, path, warm, repeat, out = argv[1:6]
        print(json.dumps(measure(runner, Path(path), Path(warm), int(repeat), Path(out))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames in each file (default 200)")
    parser.add_argument("--shape", type=int, nargs=2, default=EIGER_4M, metavar=("NY", "NX"),
                        help="frame shape (default Eiger 4M: 2162 2068)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each runner; the best counts (default 3)")
    parser.add_argument("--workdir", help="folder for the temporary files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    frames, shape, repeat = (2 * CHUNK_SIZE, (128, 128), 1) if args.quick else (args.frames, tuple(args.shape), args.repeat)
    if frames < 1 or min(shape) < 2 or repeat < 1:
        parser.error("--frames and --repeat must be at least 1, and --shape at least 2 2")
    figures = run(frames, shape, repeat, args.workdir)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 130)
    console.print(table(figures))
    env = " ".join(f"{k}={v}" for k, v in figures["dask_worker_env"].items())
    console.print(NOTES.format(workers=figures["dask_workers"], env=env,
                               startup=figures["dask_startup_s"],
                               chunk=figures["chunk_size"], cpus=figures["cpu_count"],
                               load0=figures["load_average"][0], load1=figures["load_average"][1]), markup=False)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
