"""Service overhead: the same scan through ``lightpipe submit`` (the service) and through ``lightpipe run``.

What it measures
    A simulated DECTRIS-style scan (``--frames`` frames of ``--shape``
    pixels, 8 darks, bitshuffle-LZ4 in linked data files) is processed by
    ``pipelines/powder-profile.yaml`` two ways, ``--repeat`` times, one after
    the other (which goes first alternates):

    - ``run``: ``lightpipe run powder-profile.yaml --input scan_master.h5``,
      a process of its own, as a user runs it on the command line;
    - ``service``: ``lightpipe submit powder-profile --dataset
      visit1/scan_master.h5 --wait`` against a ``lightpipe serve`` started
      once (its own process): the service starts a job process that runs the
      same pipeline with the job's run hooks (the database recorder, the live
      forwarder, the control channel).

    The throughput of each is frames per second of the **scan**: from the
    result file's ``start_time`` (its sink opened) to its ``end_time`` (it
    closed), the same clock for both. Start-up is reported apart, never in
    the ratio: for ``run`` the process's wall time less the scan, for
    ``service`` the time from ``lightpipe submit`` starting to it returning,
    less the scan (the CLI's start, the job's queueing and process start,
    the pipeline's loading, and ``--wait``'s polling every 0.5 s). The best
    of the repeats counts; every repeat is in the figures.

Reference (same run)
    ``lightpipe run`` on the same file, alternating with the service.

Target
    service / run throughput >= 0.95 (the service issue).

Run ``python benchmarks/service_overhead.py`` (about a minute; ``--quick`` for
a smoke run, ``--json`` for the figures on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from api_load import DATASET, TEMPLATE, Served, make_dataset

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.95
LIGHTPIPE = [sys.executable, "-m", "lightpipe.cli.main"]


def scan_seconds(result: Path) -> tuple[float, str, int]:
    """``(end_time - start_time, state, written)`` of a result file."""
    import h5py

    with h5py.File(result, "r", locking=False) as f:
        start = datetime.fromisoformat(f["entry/start_time"][()].decode())
        end = datetime.fromisoformat(f["entry/end_time"][()].decode())
        return (end - start).total_seconds(), f["entry/process/state"][()].decode(), int(
            f["entry/process"].attrs["written"])


def run_once(folder: Path, k: int) -> dict[str, Any]:
    out = folder / f"run-{k}"
    started = time.perf_counter()
    subprocess.run([*LIGHTPIPE, "run", str(TEMPLATE), "--input", str(folder / "data" / DATASET), "-o", str(out),
                    "-q"], check=True, cwd=folder, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    seconds, state, written = scan_seconds(out / "scan.nxs")
    return {"wall_s": wall, "scan_s": seconds, "startup_s": wall - seconds, "state": state, "written": written}


def service_once(served: Served, token: str) -> dict[str, Any]:
    env = {**os.environ, "LIGHTPIPE_SERVER": served.url, "LIGHTPIPE_TOKEN": token}
    started = time.perf_counter()
    done = subprocess.run([*LIGHTPIPE, "submit", "powder-profile", "--dataset", DATASET, "--wait"], env=env,
                          cwd=served.folder, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"lightpipe submit failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    job = done.stdout.split()[1].rstrip(":")  # "job <id>: powder-profile v1 on ..."
    seconds, state, written = scan_seconds(served.settings.jobs_dir / job / "scan.nxs")
    return {"wall_s": wall, "scan_s": seconds, "startup_s": wall - seconds, "state": state, "written": written,
            "job": job}


def measure(frames: int, shape: tuple[int, int], repeat: int, workdir: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lightpipe-service-overhead-", dir=workdir) as tmp:
        folder = Path(tmp)
        make_dataset(folder / "data", frames, shape, frames_per_file=500)
        served = Served(folder)
        try:
            with served.client() as admin:
                admin.register_pipeline(TEMPLATE.read_text())
            runs: list[dict[str, Any]] = []
            services: list[dict[str, Any]] = []
            run_once(folder, -1)  # warm the page cache and Python's bytecode once before timing
            for k in range(repeat):  # which goes first alternates: neither always follows the other
                if k % 2:
                    services.append(service_once(served, served.admin))
                    runs.append(run_once(folder, k))
                else:
                    runs.append(run_once(folder, k))
                    services.append(service_once(served, served.admin))
        finally:
            served.close()
    events = frames + 8
    for r in runs + services:
        if r["state"] != "completed" or r["written"] != events:
            raise RuntimeError(f"a run did not process the scan: {r}")
    best_run = min(r["scan_s"] for r in runs)
    best_service = min(s["scan_s"] for s in services)
    ratio = best_run / best_service
    return {"frames": frames, "events": events, "shape": list(shape), "repeat": repeat, "run": runs,
            "service": services, "run_events_per_s": events / best_run, "service_events_per_s": events / best_service,
            "ratio": ratio, "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
            "run_startup_s": min(r["startup_s"] for r in runs),
            "service_startup_s": min(s["startup_s"] for s in services)}


def table(fig: dict[str, Any]) -> str:
    lines = [f"Service overhead: powder-profile on {fig['frames']} frames of {fig['shape'][0]} x {fig['shape'][1]} "
             f"(+8 darks), best of {fig['repeat']} (target: service >= {fig['target_ratio']} x run)",
             f"{'how':<9} {'scan s':>8} {'events/s':>9} {'start-up s':>11}   every scan, s"]
    for how in ("run", "service"):
        rows = fig[how]
        best = min(r["scan_s"] for r in rows)
        lines.append(f"{how:<9} {best:>8.2f} {fig['events'] / best:>9.0f} "
                     f"{min(r['startup_s'] for r in rows):>11.2f}   "
                     + ", ".join(f"{r['scan_s']:.2f}" for r in rows))
    lines.append(f"ratio service / run: {fig['ratio']:.3f}; meets target: {fig['meets_target']}; "
                 f"load average {fig['load_before']:.1f} before, {fig['load_after']:.1f} after")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="data frames of the scan (default 2000)")
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best counts (default 3)")
    parser.add_argument("--workdir", help="where the temporary files go")
    parser.add_argument("--quick", action="store_true", help="small settings for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeat = 100, 1
    load_before = os.getloadavg()[0]
    fig = measure(args.frames, tuple(args.shape), args.repeat, args.workdir)
    fig.update(load_before=load_before, load_after=os.getloadavg()[0])
    print(table(fig), file=sys.stderr)
    if args.json:
        print(json.dumps(fig))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
