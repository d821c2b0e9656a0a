"""The Nanosurveyor scenario: a 40 x 40 ptychography scan streamed live at 10 Hz through pre-processing.

The seed
    Daurer, Krishnan, Perciano, Maia, Shapiro, Sethian, Marchesini,
    "Nanosurveyor: a framework for real-time data processing" (Adv. Struct.
    Chem. Imag. 2017), section 4.2: a simulated 40 x 40 scan, 1600 raw frames
    sent by a virtual FCCD at 10 Hz; the complete reconstruction came after
    about 5 minutes, "a streamlining pipeline rate of about 2 Hz, with most of
    the time spent on filtering and cleaning the individual frames". The paper
    does not give the frame size. Its detector is the LBNL fast CCD (its
    ref. 41), a 1920 x 960 pixel sensor in two 960 x 960 halves of which one is
    exposed in frame-store mode, so frames here are 960 x 960 uint16.

What it measures
    The frames come from the EIGER simulator (its own process, stream v1,
    bitshuffle-LZ4, the frame simulator's powder rings: the stages' cost does
    not depend on what the frames show), are received by the ``eiger`` source
    and pre-processed as section 4.1 of the paper describes, with the stages
    lightpipe has: ``threshold`` below one photon, ``crop`` around the centre,
    ``fft_downsample`` (FFT, crop, inverse FFT), ``frame_scalars`` (total and
    centre of mass: the STXM/DPC signals) and ``sum_frames`` over the
    downsampled frames (the mean diffraction pattern, from which an initial
    probe is estimated); a NeXus sink writes the downsampled frames, the
    scalars and the sum. Dark subtraction is left out: a live series has no
    darks (they are their own series), and its cost is one subtraction.

    1. The scenario: 1600 frames at 10 Hz. Reported: the processing rate
       (frames / time from the trigger to the result file closed), the rate
       the simulator achieved, the lag at the end (from the last frame sent
       to the file closed), the largest age of a frame waiting (``lag_s``),
       and the peak of frames held in memory and spilled to disk.
    2. The highest rate sustained: the same pipeline at ``--sweep-rates``
       (each a series of ``--sweep-seconds`` of frames, at most the scenario's)
       until one is not sustained, then as fast as the simulator sends. A rate
       is sustained when the file closes within ``LAG_LIMIT_S`` of the last
       frame sent: results keep up with the detector, nothing piles up.

Reference
    The paper's 2 Hz on the same scan. And, measured in the same run on the
    same stream as fast as it is sent, a plain loop doing the same work with
    no framework: pyzmq receive, ``simplon.decode_message``, decode, the same
    NumPy operations (``fft_downsample`` is the function the stage calls),
    h5py writes of the same datasets with the same filter. ``vs raw`` is the
    pipeline's frames/s divided by that loop's.

Conditions
    The pipeline's series (scenario, sweep, fastest) run one after the other
    in one fresh Python process, the raw loop in another; each first receives
    a short warm-up series. The simulator encodes each of its ``--distinct`` frames
    once, so sending costs little CPU (reported). The local engine runs the
    chunks in the driver's thread (its default, one worker; ``--workers N``
    runs them on N threads); the source's receiver thread and the sender
    process share the cores with it.

This script imports the simulator helpers of ``stream_ingest.py`` beside it.
Run ``python benchmarks/nanosurveyor.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stream_ingest import IDLE_TIMEOUT_S, Acquisition, Detector, SimulatorProcess, lightpipe_series, process_usage

#: FCCD image area in frame-store mode (y, x); see the module docstring.
FCCD = (960, 960)
SCAN_FRAMES = 40 * 40
SCAN_RATE_HZ = 10.0
#: What Nanosurveyor's pipeline reached on this scan (the paper, section 4.2).
NANOSURVEYOR_HZ = 2.0
#: A rate is sustained when the result file closes within this long of the last frame sent.
LAG_LIMIT_S = 1.0
ENGINE_CHUNK = 16
WARM_FRAMES = 16
PHOTON_THRESHOLD = 1.0


def preprocessing(endpoint: str, shape: tuple[int, int], crop: int, target: int) -> Any:
    """The pre-processing pipeline on the live stream at ``endpoint`` (see the module docstring)."""
    from lightpipe.core.pipeline import load_pipeline

    y0, x0 = (shape[0] - crop) // 2, (shape[1] - crop) // 2
    return load_pipeline({
        "version": 1,
        "name": "nanosurveyor",
        "source": {"use": "eiger", "params": {"endpoint": endpoint, "version": "v1", "max_scans": 1,
                                              "idle_timeout_s": IDLE_TIMEOUT_S}},
        "stages": {
            "photons": {"use": "threshold", "params": {"threshold": PHOTON_THRESHOLD}},
            "centre": {"use": "crop", "inputs": {"frame": "photons.frame"},
                       "params": {"y": [y0, y0 + crop], "x": [x0, x0 + crop]}},
            "downsampled": {"use": "fft_downsample", "inputs": {"frame": "centre.frame"},
                            "params": {"shape": [target, target]}},
            "scalars": {"use": "frame_scalars", "inputs": {"frame": "photons.frame"}},
            "average": {"use": "sum_frames", "inputs": {"frame": "downsampled.frame"}},
        },
        "sinks": [{"use": "nexus", "fields": ["downsampled.frame", "scalars.total", "scalars.com_x", "scalars.com_y",
                                              "average.sum", "average.count"]}],
        "engine": {"chunk_size": ENGINE_CHUNK},
    })


def _raw_series(sock: Any, detector: Detector, nimages: int, crop: int, target: int, out: Path) -> dict[str, Any]:
    """The same work in a plain loop: receive, decode, threshold, crop, downsample, scalars, sum, write."""
    import h5py
    import hdf5plugin
    import numpy as np

    from lightpipe.sources.dectris import simplon
    from lightpipe.sources.dectris.messages import Image, SeriesEnd, SeriesHeader
    from lightpipe.stages.fourier import fft_downsample

    acquisition = Acquisition(detector, nimages, 0.0)
    acquisition.start()
    usage0 = process_usage()
    header = simplon.decode_message(acquisition.receive(sock))
    assert isinstance(header, SeriesHeader) and header.frame_shape is not None
    ny, nx = header.frame_shape
    y0, x0 = (ny - crop) // 2, (nx - crop) // 2
    total = None
    with h5py.File(out, "w") as f:
        frames = f.create_dataset("downsampled", (nimages, target, target), np.float32, chunks=(1, target, target),
                                  **hdf5plugin.Bitshuffle(cname="lz4"))
        scalars = {k: np.full(nimages, np.nan) for k in ("total", "com_x", "com_y")}
        rows, cols = np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64)
        while True:
            message = simplon.decode_message(acquisition.receive(sock))
            if isinstance(message, SeriesEnd):
                break
            assert isinstance(message, Image)
            photons = message.decode().astype(np.float32)
            photons[photons < PHOTON_THRESHOLD] = 0
            small = fft_downsample(photons[y0:y0 + crop, x0:x0 + crop], (target, target))
            frames[message.frame] = small
            counts = photons.astype(np.float64)
            s = counts.sum()
            scalars["total"][message.frame] = s
            scalars["com_y"][message.frame] = (counts.sum(axis=1) * rows).sum() / s
            scalars["com_x"][message.frame] = (counts.sum(axis=0) * cols).sum() / s
            total = small.astype(np.float64) if total is None else total + small
        for key, values in scalars.items():
            f[key] = values
        f["sum"] = total
    closed = time.perf_counter()
    cpu, faults = (b - a for a, b in zip(usage0, process_usage()))
    acquisition.finish()
    return {"closed": closed, "triggered": acquisition.triggered, "sent": acquisition.sent, "receiver_cpu_s": cpu,
            "faults_per_frame": faults / nimages, "sender_cpu_s": detector.cpu_seconds() - acquisition.sender_cpu0}


def _sustained(fig: dict[str, Any]) -> bool:
    return fig["closed"] - fig["sent"] <= LAG_LIMIT_S


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One runner's series in this process, after a warm-up series sent as fast as possible.

    The raw loop receives one series as fast as it is sent. The pipeline runs
    the scenario, then the sweep's rates in turn until one is not sustained,
    then one series as fast as it is sent.
    """
    detector = Detector(**job["detector"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    crop, target, frames = job["crop"], job["target"], job["frames"]
    if job["runner"] == "raw":
        import zmq

        sock = zmq.Context.instance().socket(zmq.PULL)
        sock.connect(job["endpoint"])
        try:
            _raw_series(sock, detector, WARM_FRAMES, crop, target, out / "warm.h5")
            return {"fastest": _raw_series(sock, detector, frames, crop, target, out / "raw.h5")}
        finally:
            sock.close(linger=0)
    from lightpipe.engines.local import LocalEngine

    pipeline = preprocessing(job["endpoint"], tuple(job["shape"]), crop, target)
    with LocalEngine(workers=job["workers"]) as engine:
        def series(n: int, rate: float, name: str) -> dict[str, Any]:
            fig = lightpipe_series(engine, pipeline, detector, n, out / name, rate)
            shutil.rmtree(out / name, ignore_errors=True)
            return fig

        series(WARM_FRAMES, 0.0, "warm")
        result: dict[str, Any] = {"scenario": series(frames, job["rate_hz"], "scenario"), "sweep": []}
        for rate, n in job["sweep"]:
            result["sweep"].append(series(n, rate, f"sweep-{rate:g}"))
            if not _sustained(result["sweep"][-1]):
                break
        result["fastest"] = series(frames, 0.0, "fastest")
    return result


def measure_in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure` in a new Python process and return its figures."""
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {job['runner']} runner failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(runner: str, rate_hz: float, frames: int, fig: dict[str, Any]) -> dict[str, Any]:
    """The figures of one series: rates, lag, and what the source held."""
    seconds = fig["closed"] - fig["triggered"]
    lag = fig["closed"] - fig["sent"]
    return {
        "runner": runner,
        "rate_hz": rate_hz,
        "frames": frames,
        "seconds": seconds,
        "send_hz": frames / (fig["sent"] - fig["triggered"]),
        "processed_hz": frames / seconds,
        "lag_at_end_s": lag,
        # as fast as possible, the pipeline cannot keep up by construction: that run measures its capacity
        "sustained": None if rate_hz == 0 else _sustained(fig),
        "receiver_cpu_s": fig["receiver_cpu_s"],
        "sender_cpu_s": fig["sender_cpu_s"],
        "faults_per_frame": fig["faults_per_frame"],
        "peak_held": fig.get("peak_held"),
        "peak_spilled": fig.get("peak_spilled"),
        "peak_lag_s": fig.get("peak_lag_s"),
        "stage_ms_per_frame": {k: 1e3 * v / frames for k, v in fig.get("stage_s", {}).items()},
    }


def run(frames: int, rate_hz: float, sweep_rates: list[float], sweep_seconds: float, shape: tuple[int, int],
        crop: int, target: int, distinct: int, workers: int, workdir: str | None) -> dict[str, Any]:
    """The scenario, the sweep of rates, and the raw loop; the figures."""
    load_before = os.getloadavg()[0]
    plan = [(rate, max(WARM_FRAMES, min(frames, round(rate * sweep_seconds))))
            for rate in sorted(r for r in sweep_rates if r > 0)]
    with tempfile.TemporaryDirectory(prefix="lightpipe-nanosurveyor-", dir=workdir) as tmp:
        root = Path(tmp)
        side = min(shape)
        with SimulatorProcess(shape, distinct, root / "simulator.log", dark_level=0.0, read_noise=2.0,
                              rings_px=[0.1 * side, 0.2 * side, 0.3 * side], seed=3) as sim:
            assert sim.detector is not None
            job = {"endpoint": sim.endpoint, "detector": sim.detector.as_args(), "shape": list(shape), "crop": crop,
                   "target": target, "workers": workers, "frames": frames, "rate_hz": rate_hz, "sweep": plan}
            lightpipe = measure_in_fresh_process({**job, "runner": "lightpipe", "out": str(root / "lightpipe")})
            raw = _row("raw", 0.0, frames,
                       measure_in_fresh_process({**job, "runner": "raw", "out": str(root / "raw")})["fastest"])
    scenario = _row("lightpipe", rate_hz, frames, lightpipe["scenario"])
    fastest = _row("lightpipe", 0.0, frames, lightpipe["fastest"])
    sweep = [_row("lightpipe", rate, n, fig) for (rate, n), fig in zip(plan, lightpipe["sweep"])] + [fastest]
    sustained = [r["rate_hz"] for r in [scenario, *sweep] if r["sustained"]]
    return {
        "benchmark": "nanosurveyor",
        "shape": list(shape),
        "crop": crop,
        "target_shape": [target, target],
        "distinct_frames": distinct,
        "workers": workers,
        "chunk_size": ENGINE_CHUNK,
        "lag_limit_s": LAG_LIMIT_S,
        "scenario": scenario,
        "sweep": sweep,
        "raw": raw,
        "highest_sustained_hz": max(sustained, default=None),
        "capacity_hz": fastest["processed_hz"],
        "ratio_vs_raw": fastest["processed_hz"] / raw["processed_hz"],
        "nanosurveyor_hz": NANOSURVEYOR_HZ,
        "vs_nanosurveyor": scenario["processed_hz"] / NANOSURVEYOR_HZ,
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def table(figures: dict[str, Any]) -> Any:
    """The figures as a rich table."""
    from rich.table import Table

    ny, nx = figures["shape"]
    my, mx = figures["target_shape"]
    t = Table(title=f"Nanosurveyor scenario: {ny}x{nx} uint16 frames streamed live -> threshold, crop "
                    f"{figures['crop']}, fft_downsample {my}x{mx}, frame_scalars, sum_frames -> NeXus "
                    f"(local engine, {figures['workers']} worker{'s' if figures['workers'] > 1 else ''})")
    for col in ("run", "runner", "frames", "asked Hz", "sent Hz", "processed Hz", "lag at end s", "peak lag s",
                "peak held", "peak spilled", "sustained", "receiver CPU s", "sender CPU s", "faults/frame"):
        t.add_column(col, justify="left" if col in ("run", "runner") else "right", no_wrap=True)
    rows = [("scenario", figures["scenario"]), *[("sweep", r) for r in figures["sweep"]], ("reference", figures["raw"])]
    for name, r in rows:
        ok = "-" if r["sustained"] is None else "[green]yes" if r["sustained"] else "[red]no"
        t.add_row(name, r["runner"], str(r["frames"]), f"{r['rate_hz']:g}" if r["rate_hz"] else "max",
                  f"{r['send_hz']:.1f}", f"{r['processed_hz']:.1f}", f"{r['lag_at_end_s']:.2f}",
                  "" if r["peak_lag_s"] is None else f"{r['peak_lag_s']:.2f}",
                  "" if r["peak_held"] is None else str(r["peak_held"]),
                  "" if r["peak_spilled"] is None else str(r["peak_spilled"]), ok,
                  f"{r['receiver_cpu_s']:.1f}", f"{r['sender_cpu_s']:.1f}", f"{r['faults_per_frame']:.0f}")
    return t


NOTES = (
    "processed Hz = frames / (trigger to result file closed); sent Hz: what the simulator achieved; lag at end: last "
    "frame sent to file closed (sustained: <= {limit:g} s); peak lag s: the oldest frame's wait, peak held / spilled: "
    "frames waiting in memory / on disk (the source's own figures); receiver CPU s: the receiving process, all "
    "threads; sender CPU s: the simulator; faults/frame: minor page faults of the receiving process. Highest rate "
    "sustained: {best}. As fast as the simulator sends, lightpipe processed {capacity:.1f} frames/s, the plain loop "
    "{raw:.1f}: {ratio:.2f}x. The scenario ran at {scenario:.1f} Hz: {vs:.1f}x Nanosurveyor's ~{nano:g} Hz on the "
    "same scan. Scenario stage ms/frame (summed over worker threads): {stages}. {distinct} distinct simulated frames "
    "cycled; chunks of {chunk}; {cpus} cores shared by receiver, workers and sender (load average {load0:.1f} "
    "before, {load1:.1f} after)."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:  # internal: one series in this fresh process, figures as JSON
        print(json.dumps(measure(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=SCAN_FRAMES, help="frames of the scan (default 40 x 40 = 1600)")
    parser.add_argument("--rate", type=float, default=SCAN_RATE_HZ, help="scenario frame rate in Hz (default 10)")
    parser.add_argument("--sweep-rates", type=float, nargs="*", default=[20.0, 50.0, 100.0, 200.0], metavar="HZ",
                        help="rates tried for the highest sustained one (default 20 50 100 200), then as fast as "
                             "the simulator sends")
    parser.add_argument("--sweep-seconds", type=float, default=8.0,
                        help="length of each sweep series in seconds, at most --frames frames (default 8)")
    parser.add_argument("--shape", type=int, nargs=2, default=FCCD, metavar=("NY", "NX"),
                        help="frame shape (default the FCCD's 960 960)")
    parser.add_argument("--crop", type=int, default=512, help="side of the square cropped around the centre (512)")
    parser.add_argument("--target", type=int, default=256, help="side of the downsampled frames (default 256)")
    parser.add_argument("--distinct", type=int, default=16, help="distinct simulated frames, cycled (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="local engine worker threads (default 1)")
    parser.add_argument("--workdir", help="folder for result files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.rate, args.sweep_rates, args.shape, args.crop, args.target, args.distinct = (
            24, 200.0, [], (128, 128), 64, 32, 4)
    shape = tuple(args.shape)
    if args.frames < 1 or args.rate <= 0 or args.distinct < 1 or args.workers < 1 or args.sweep_seconds <= 0:
        parser.error("--frames, --distinct and --workers must be at least 1, --rate and --sweep-seconds above 0")
    if not 1 <= args.target <= args.crop <= min(shape):
        parser.error(f"need 1 <= --target ({args.target}) <= --crop ({args.crop}) <= the frame's side ({min(shape)})")
    figures = run(args.frames, args.rate, args.sweep_rates, args.sweep_seconds, shape, args.crop, args.target,
                  args.distinct, args.workers, args.workdir)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 190)
    console.print(table(figures))
    best = figures["highest_sustained_hz"]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in figures["scenario"]["stage_ms_per_frame"].items())
    console.print(NOTES.format(
        limit=figures["lag_limit_s"], best="none of those tried" if best is None else f"{best:.1f} Hz",
        capacity=figures["capacity_hz"], raw=figures["raw"]["processed_hz"], ratio=figures["ratio_vs_raw"],
        scenario=figures["scenario"]["processed_hz"], vs=figures["vs_nanosurveyor"], nano=figures["nanosurveyor_hz"],
        stages=stages, distinct=figures["distinct_frames"], chunk=figures["chunk_size"], cpus=figures["cpu_count"],
        load0=figures["load_average"][0], load1=figures["load_average"][1]), markup=False)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
