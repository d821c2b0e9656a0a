"""``lightpipe demo``: simulate a scan, write it as a DECTRIS-style file, process it, show the result."""
from __future__ import annotations

import argparse
import time
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

from rich.console import Console


def run_demo(
    args: argparse.Namespace,
    make_engine: Callable[[argparse.Namespace], Any],
    console: Console,
    out: Console,
    report: Callable[[Any, str, float], None],
) -> int:
    """Run the demo end to end; returns the exit status."""
    from lightpipe.cli.progress import RunDisplay
    from lightpipe.core.pipeline import load_pipeline
    from lightpipe.simulators.frames import FrameSimParams, write_nxmx
    from lightpipe.sources.hdf5 import hdf5_defaults

    output = Path(args.output)
    raw = output / "raw" / "demo_master.h5"
    params = FrameSimParams(name="demo", frames=args.frames, darks=20, flats=0, shape=(512, 512), photons=40.0)
    say = out.print
    say(f"[bold]lightpipe demo[/]: simulating a powder scan of {args.frames} frames of 512x512 pixels "
        "(20 darks, 3 rings, Poisson noise, bad pixels)")
    t0 = time.perf_counter()
    if args.headless:
        write_nxmx(raw, params, frames_per_file=250)
    else:
        with console.status("writing a DECTRIS-style master file with bitshuffle-LZ4 data files ..."):
            write_nxmx(raw, params, frames_per_file=250)
    say(f"wrote {raw} and its linked data files in {time.perf_counter() - t0:.1f} s")

    pipeline = load_pipeline(str(files("lightpipe.cli") / "demo.yaml"))
    pipeline = pipeline.with_source("hdf5", hdf5_defaults(str(raw)))
    say(f"running pipeline [bold]{pipeline.name}[/]: {' -> '.join(pipeline.stages)} on the {args.engine} engine")
    t0 = time.perf_counter()
    with make_engine(args) as engine:
        if args.headless or args.quiet:
            result = engine.run(pipeline, output)
        else:
            with RunDisplay(console) as display:
                result = engine.run(pipeline, output, hooks=[display])
    report(result, args.engine, time.perf_counter() - t0)
    scan = result.scans[0]
    total = sum(scan.stage_seconds.values()) or 1.0
    say("time per stage: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(scan.stage_seconds.items(), key=lambda kv: -kv[1])))
    say(f"NeXus result: {scan.files[0]}")
    say("look at it with: silx view " + str(scan.files[0]) + "   (or any h5web viewer)")
    return 0 if scan.ledger.written == scan.ledger.received else 1
