"""Result-file compression: write time, size and who can read it, for bitshuffle-LZ4, gzip and none.

What it measures
    Two pipelines, each run on the local engine once per compression of the
    NeXus sink (``compression``: ``bitshuffle``, ``gzip``, ``none``), in one
    process, on the same input:

    - ``demo``: the pipeline of ``lightpipe demo`` (``src/lightpipe/cli/demo.yaml``)
      on the demo's DECTRIS-style file of 512 x 512 frames; its result holds per-frame
      radial profiles, the powder sum and the dark, no frames;
    - ``dark-flat-correction``: ``pipelines/dark-flat-correction.yaml`` on simulated
      256 x 256 frames; its result holds every corrected frame (float32), the
      heaviest result an example writes.

    Per run: the wall time of ``engine.run``, the result's size on disk, and
    whether every dataset of two dimensions or more reads in a plain h5py
    process that has not imported hdf5plugin (a fresh ``python -c`` with
    ``hdf5plugin`` blocked and ``HDF5_PLUGIN_PATH`` unset: what a user's h5py,
    Lavue's file view or an h5grove server installed without it sees).

References
    ``h5py write`` writes the same arrays (read back from the result) to a new
    file with the same chunks and filter, in the same process: what HDF5 and
    the filter cost, without lightpipe. The ratio ``run / run(none)`` says what
    a filter adds to the whole run.

Conditions
    The input is written once, before the runs, and sits in the page cache; the
    results are written to ``--workdir`` (the system temp folder by default),
    so the figures are CPU cost (filter, HDF5), not disk speed. Each pipeline
    runs once with every compression before the clock starts (imports, the
    filters loaded), then ``--repeat`` times, the compressions interleaved;
    the best counts.

Run ``python benchmarks/result_compression.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import h5py
import numpy as np

COMPRESSIONS = ("bitshuffle", "gzip", "none")
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

#: Run in a fresh Python that cannot import hdf5plugin: reads every dataset of 2 or more dimensions.
PLAIN_READER = """
import json, sys
sys.modules["hdf5plugin"] = None
import h5py
names, failed = [], {}
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim >= 2 else None)
    for name in names:
        try:
            f[name][()]
        except OSError as error:
            failed[name] = str(error).splitlines()[0][:120]
print(json.dumps({"datasets": len(names), "failed": failed}))
"""


def plain_read(path: Path) -> dict[str, Any]:
    """Read ``path``'s images in a Python that has not imported hdf5plugin; which datasets failed, and why."""
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    done = subprocess.run([sys.executable, "-c", PLAIN_READER, str(path)], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def h5py_write(result: Path, target: Path, compression: str) -> float:
    """Seconds to write ``result``'s datasets to ``target`` with plain h5py, same chunks, filter ``compression``."""
    from lightpipe.core.hdf5 import compression_filters

    arrays: dict[str, tuple[np.ndarray, Any]] = {}
    with h5py.File(result, "r") as f:
        f.visititems(lambda n, o: arrays.update({n: (o[()], o.chunks)}) if isinstance(o, h5py.Dataset) else None)
    filters = compression_filters(compression)  # hdf5plugin imported before the clock starts
    t0 = time.perf_counter()
    with h5py.File(target, "w") as f:
        for name, (data, chunks) in arrays.items():
            if chunks is None or data.ndim == 0:
                f.create_dataset(name, data=data)
            else:
                f.create_dataset(name, data=data, chunks=chunks, **filters)
    return time.perf_counter() - t0


def demo_pipeline(workdir: Path, frames: int) -> Any:
    """The demo's pipeline on the demo's file of ``frames`` frames (written here)."""
    from lightpipe.core.pipeline import load_pipeline
    from lightpipe.simulators.frames import FrameSimParams, write_nxmx
    from lightpipe.sources.hdf5 import hdf5_defaults

    params = FrameSimParams(name="demo", frames=frames, darks=20, flats=0, shape=(512, 512), photons=40.0)
    raw = write_nxmx(workdir / "raw" / "demo_master.h5", params, frames_per_file=250)
    return load_pipeline(str(files("lightpipe.cli") / "demo.yaml")).with_source("hdf5", hdf5_defaults(str(raw)))


def dark_flat_pipeline(frames: int) -> Any:
    """``pipelines/dark-flat-correction.yaml`` on ``frames`` simulated frames."""
    from lightpipe.core.pipeline import load_pipeline

    doc = dict(load_pipeline(PIPELINES / "dark-flat-correction.yaml").document)
    doc["source"] = {**doc["source"], "params": {**doc["source"].get("params", {}), "frames": frames}}
    return load_pipeline(doc)


def with_compression(pipeline: Any, compression: str) -> Any:
    from lightpipe.core.pipeline import load_pipeline

    doc = dict(pipeline.document)
    doc["sinks"] = [{**s, "params": {**s.get("params", {}), "compression": compression}} if s["use"] == "nexus" else s
                    for s in doc["sinks"]]
    return load_pipeline(doc)


def measure(name: str, pipeline: Any, workdir: Path, repeat: int) -> list[dict[str, Any]]:
    """Run ``pipeline`` with each compression, once untimed, then ``repeat`` times interleaved; the figures of each."""
    from lightpipe.engines.local import LocalEngine

    runs = {c: with_compression(pipeline, c) for c in COMPRESSIONS}
    best: dict[str, float] = {}
    results: dict[str, Path] = {}
    for attempt in range(repeat + 1):  # the first round warms up: imports, filters loaded, files cached
        for compression, run in runs.items():
            out = workdir / name / compression / str(attempt)
            t0 = time.perf_counter()
            with LocalEngine() as engine:
                report = engine.run(run, out)
            seconds = time.perf_counter() - t0
            (scan,) = report.scans
            if scan.ledger.failed:
                raise RuntimeError(f"{name} with {compression}: {len(scan.ledger.failed)} events failed")
            if attempt > 0:
                best[compression] = min(seconds, best.get(compression, seconds))
            results[compression] = next(f for f in scan.files if f.suffix == ".nxs")
    figures = []
    for compression in COMPRESSIONS:
        result = results[compression]
        reference = min(h5py_write(result, workdir / name / f"h5py-{compression}-{k}.h5", compression)
                        for k in range(repeat))
        with h5py.File(result, "r") as f:
            images = {}
            f.visititems(lambda n, o: images.update({n: o.nbytes}) if isinstance(o, h5py.Dataset) and o.ndim >= 2
                         else None)
        plain = plain_read(result)
        figures.append({
            "pipeline": name, "compression": compression, "run_s": best[compression],
            "run_vs_none": best[compression] / best["none"], "h5py_write_s": reference,
            "file_mb": result.stat().st_size / 1e6, "image_mb_uncompressed": sum(images.values()) / 1e6,
            "plain_h5py_reads": not plain["failed"], "plain_h5py_failed": sorted(plain["failed"]),
        })
    return figures


def table(figures: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="Result compression: local engine, best of the repeats")
    for column in ("pipeline", "compression", "run s", "run / none", "h5py write s", "file MB",
                   "images MB raw", "h5py without hdf5plugin"):
        t.add_column(column, justify="left" if column in ("pipeline", "compression") else "right")
    for d in figures:
        reads = "reads all" if d["plain_h5py_reads"] else f"fails on {len(d['plain_h5py_failed'])}"
        t.add_row(d["pipeline"], d["compression"], f"{d['run_s']:.2f}", f"{d['run_vs_none']:.2f}",
                  f"{d['h5py_write_s']:.3f}", f"{d['file_mb']:.1f}", f"{d['image_mb_uncompressed']:.1f}", reads)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000, help="demo frames, 512 x 512 (default 1000, as the demo)")
    parser.add_argument("--dark-flat-frames", type=int, default=200,
                        help="dark-flat-correction frames, 256 x 256 (default 200, as the example)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each compression; the best counts")
    parser.add_argument("--workdir", help="folder for the temporary files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    frames, dark_flat_frames, repeat = (40, 20, 1) if args.quick else (args.frames, args.dark_flat_frames, args.repeat)
    if min(frames, dark_flat_frames, repeat) < 1:
        parser.error("--frames, --dark-flat-frames and --repeat must be at least 1")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="result_compression-") as tmp:
        workdir = Path(tmp)
        figures = measure("demo", demo_pipeline(workdir, frames), workdir, repeat)
        figures += measure("dark-flat-correction", dark_flat_pipeline(dark_flat_frames), workdir, repeat)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 120)
    console.print(table(figures))
    console.print(f"demo: {frames} frames of 512 x 512; dark-flat-correction: {dark_flat_frames} frames of 256 x 256; "
                  f"best of {repeat}. 'h5py write s': the same arrays written by plain h5py with the same chunks "
                  "and filter. 'h5py without hdf5plugin': every dataset of 2 or more dimensions read in a fresh "
                  "Python that cannot import hdf5plugin.", markup=False)
    if args.json:
        print(json.dumps({"runs": figures, "frames": frames, "dark_flat_frames": dark_flat_frames,
                          "repeat": repeat}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
