"""The Nanosurveyor scenario with the reconstruction: a 40 x 40 ptychography scan streamed at 10 Hz, to the final image.

The seed
    Daurer et al., "Nanosurveyor: a framework for real-time data processing"
    (Adv. Struct. Chem. Imag. 2017), section 4.2: a simulated 40 x 40 scan sent
    at 10 Hz through pre-processing and a streaming reconstruction; the
    complete reconstruction came about 5 minutes after the scan started, a
    pipeline rate of about 2 Hz.

What it measures
    ``pipelines/ptycho-stream.yaml`` as it stands, on the local engine, with
    its simulated source set to ``--positions`` positions arriving at
    ``--rate`` Hz (the source's acquisition clock: each frame becomes readable
    when the detector would have delivered it). The frames are the
    simulator's default 128 x 128 uint16; the pipeline pre-processes them to a
    72 x 72 window, maps STXM and DPC, and ``ptycho_reconstruction`` iterates
    (``DM:100, ML:50``) while they arrive, keeping the last 10 ML iterations
    for after the last frame. Reported:

    * whether processing kept up: the source's largest lag during the scan
      (the oldest frame waiting) and the lag at the end (last frame readable
      to every frame pre-processed and fed to the reconstruction);
    * the time from the last frame to the final image: the CXI file with
      object, probe, positions and error curves closed;
    * the whole pipeline's time, first frame to final image (the paper: about
      5 minutes for the same scan), and the object error against the
      simulation's truth (:func:`~lightpipe.techniques.ptychography.metrics.object_error`
      on the truth resampled to the reconstruction's grid, over the pixels lit
      at >= 30 % of the most lit);
    * the iterations run while frames arrived and after the last one.

Reference (same run)
    A batch reconstruction of the same pre-processed frames, read back from
    the CXI file, with the same chain from the same kind of initial probe, as
    a pipeline would run it only after the scan: its time after the last frame
    and its object error. ``batch / streaming`` is how much sooner streaming
    gives the final image.

Run ``python benchmarks/ptycho_stream.py`` (about 3.5 minutes; ``--help`` for
options, ``--quick`` for a smoke run of a few seconds).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lightpipe.core.sink import Sink

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "ptycho-stream.yaml"
#: Nanosurveyor's scan: 40 x 40 positions at 10 Hz.
POSITIONS = 1600
RATE_HZ = 10.0
#: What the paper reports for the whole pipeline on this scan.
NANOSURVEYOR_TOTAL_S = 300.0
NANOSURVEYOR_HZ = 2.0
#: The issue's target: the final image at most this long after the last frame.
TARGET_S = 10.0
#: Object pixels lit at least this fraction of the most lit count in the error.
LIT_FRACTION = 0.3
#: Processing kept up when the last frame was fed to the reconstruction within this long of arriving.
KEEP_UP_S = 2.0


class Timeline(Sink):
    """Record when the scan opens, when each intermediate result arrives, and when the sinks before this one closed.

    Listed last, its ``close`` runs after the CXI sink has closed its file.
    """

    name = "timeline"
    opened: ClassVar[list[float]] = []
    updates: ClassVar[list[tuple[float, int, int]]] = []
    closed: ClassVar[list[float]] = []

    def open(self, scan: Any) -> None:
        Timeline.opened.append(time.monotonic())

    def write(self, events: list[Any]) -> None:
        pass

    def update(self, results: dict[str, Any]) -> None:
        if "recon.frames" in results:
            Timeline.updates.append((time.monotonic(), int(results["recon.frames"]), len(results["recon.iteration"])))

    def close(self, results: dict[str, Any], ledger: Any) -> list[Path]:
        Timeline.closed.append(time.monotonic())
        return []


def pipeline_doc(positions: int, rate_hz: float, chain: str | None, final: int | None) -> dict[str, Any]:
    """``pipelines/ptycho-stream.yaml`` with its source streaming ``positions`` frames at ``rate_hz``."""
    from lightpipe.core.pipeline import load_pipeline

    doc = copy.deepcopy(load_pipeline(PIPELINE).document)
    doc["source"]["params"] = {**doc["source"]["params"], "n_positions": positions, "rate_hz": rate_hz}
    recon = doc["stages"]["recon"]["params"]
    if chain is not None:
        recon["chain"] = chain
    if final is not None:
        recon["final_iterations"] = final
    for sink in doc["sinks"]:
        if sink["use"] == "lavue":  # any free port: a fixed one may be taken on this machine
            sink["params"] = {**sink.get("params", {}), "port": 0}
    return doc


def truth_error(obj: np.ndarray, positions_px: np.ndarray, pixel_m: float, window: int, sim: Any) -> float:
    """Object error of a reconstruction against the simulation's truth, resampled to the reconstruction's grid.

    The two grids are matched by the probe's centre at each position:
    ``(p_r + window / 2) * pixel_m`` and ``(p_t + n / 2) * truth_pixel`` are the
    same point of the sample. The truth is smoothed to the reconstruction's
    resolution before it is sampled; :func:`object_error` removes what is left
    of shift, phase ramp and complex factor.
    """
    from scipy import ndimage

    from lightpipe.techniques.ptychography.metrics import object_error

    truth = sim.truth()
    pixel_t = sim.object_pixel_size_m[0]
    n = sim.params.frame_shape[0]
    offset = np.mean((truth["positions_px"] + n / 2) * pixel_t - (positions_px + window / 2) * pixel_m, axis=0)
    rows, cols = np.indices(obj.shape, dtype=np.float64)
    at = [(rows * pixel_m + offset[0]) / pixel_t, (cols * pixel_m + offset[1]) / pixel_t]
    sigma = 0.5 * pixel_m / pixel_t
    real = ndimage.map_coordinates(ndimage.gaussian_filter(truth["object"].real, sigma), at, order=3, mode="nearest")
    imag = ndimage.map_coordinates(ndimage.gaussian_filter(truth["object"].imag, sigma), at, order=3, mode="nearest")
    lit = ndimage.map_coordinates(truth["illumination"], at, order=1, mode="constant")
    return float(object_error(obj, real + 1j * imag, lit >= LIT_FRACTION * lit.max()))


def batch_reference(cxi: Path, results: dict[str, Any], recon: dict[str, Any], sim: Any, window: int) -> dict[str, Any]:
    """The same chain on the same frames, with the same initial probe and beamstop mask, started after the scan."""
    from lightpipe.techniques.ptychography.cxi import read_cxi
    from lightpipe.techniques.ptychography.algorithms import reconstruct
    from lightpipe.techniques.ptychography.probe import probe_from_intensity

    data = read_cxi(cxi)
    assert data.data is not None
    pixel = results["recon.object_pixel_size_m"]
    ny, nx = data.frame_shape
    rows, cols = np.indices((ny, nx))
    mask = np.hypot(rows - ny // 2, cols - nx // 2) > recon.get("beamstop_radius_px", 0.0)
    t0 = time.perf_counter()
    probe = probe_from_intensity(data.data.mean(axis=0), recon["defocus_m"], sim.wavelength_m, pixel)
    result = reconstruct(data.data, results["recon.positions_px"], probe, chain=recon["chain"], mask=mask)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "iterations": len(result.history),
            "object_error": truth_error(np.asarray(result.object), results["recon.positions_px"], float(pixel[0]),
                                        window, sim)}


def measure(positions: int, rate_hz: float, chain: str | None, final: int | None, workers: int,
            out: Path) -> dict[str, Any]:
    """Stream the scan through the pipeline, then run the batch reference; the figures."""
    from lightpipe.core.pipeline import load_pipeline
    from lightpipe.engines.local import LocalEngine
    from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation

    doc = pipeline_doc(positions, rate_hz, chain, final)
    doc["sinks"].append({"use": f"{__name__}:Timeline", "fields": ["recon.frames"]})
    pipeline = load_pipeline(doc)
    params = PtychoSimParams(**doc["source"]["params"])
    sim = PtychoSimulation(params)
    events = params.darks + params.n_positions
    recon_params = doc["stages"]["recon"]["params"]
    window = int(doc["stages"]["window"]["params"]["shape"][0])
    peak = {"lag_s": 0.0, "held": 0}
    fed = {"at": 0.0}

    def progress(p: Any) -> None:
        for key in peak:
            peak[key] = max(peak[key], p.source.get(key, 0))
        if p.pass_number == p.passes - 1 and p.done == p.total:
            fed["at"] = time.monotonic()

    for lst in (Timeline.opened, Timeline.updates, Timeline.closed):
        lst.clear()
    load_before = os.getloadavg()[0]
    with LocalEngine(workers=workers) as engine:
        report = engine.run(pipeline, out, progress=progress)
    (scan,) = report.scans
    if scan.ledger.state != "completed" or scan.ledger.failed:
        raise RuntimeError(f"the scan ended {scan.ledger.state} ({scan.ledger.error}); failed: {scan.ledger.failed[:3]}")
    r = scan.results
    # the source's clock starts at its first read, just after the sinks open: the last frame came no earlier
    first_frame = Timeline.opened[0] + 1.0 / rate_hz
    last_frame = Timeline.opened[0] + events / rate_hz
    final_image = Timeline.closed[0]
    during = [u for u in Timeline.updates if u[0] <= last_frame]
    streamed_iterations = during[-1][2] if during else 0
    streaming = {
        "final_image_after_last_frame_s": final_image - last_frame,
        "lag_at_end_s": max(fed["at"] - last_frame, 0.0),
        "peak_lag_s": float(peak["lag_s"]),
        "peak_held": int(peak["held"]),
        "kept_up": bool(fed["at"] - last_frame <= KEEP_UP_S),
        "first_frame_to_final_image_s": final_image - first_frame,
        "updates_during_scan": len(during),
        "frames_in_last_update_during_scan": during[-1][1] if during else 0,
        "iterations_during_scan": streamed_iterations,
        "iterations_after_scan": len(r["recon.iteration"]) - streamed_iterations,
        "seconds_per_iteration_after_scan": float(np.mean(r["recon.seconds"][streamed_iterations:]))
        if len(r["recon.iteration"]) > streamed_iterations else 0.0,
        "object_error": truth_error(r["recon.object"], r["recon.positions_px"], float(r["recon.object_pixel_size_m"][0]),
                                    window, sim),
        "diverged": bool(r["recon.diverged"]),
        "stage_ms_per_frame": {k: 1e3 * v / events for k, v in scan.stage_seconds.items()},
    }
    batch = batch_reference(out / f"{params.name}.cxi", r, recon_params, sim, window)
    return {
        "benchmark": "ptycho_stream",
        "positions": positions,
        "rate_hz": rate_hz,
        "scan_s": events / rate_hz,
        "frame_shape": list(params.frame_shape),
        "reconstructed_shape": list(r["recon.probe"].shape),
        "chain": recon_params["chain"],
        "final_iterations": recon_params["final_iterations"],
        "iterations_per_update": recon_params["iterations_per_update"],
        "chunk_size": pipeline.engine.chunk_size,
        "chunk_seconds": pipeline.engine.chunk_seconds,
        "streaming": streaming,
        "batch": batch,
        "batch_vs_streaming": batch["seconds"] / streaming["final_image_after_last_frame_s"],
        "target_s": TARGET_S,
        "meets_target": bool(streaming["kept_up"] and streaming["final_image_after_last_frame_s"] <= TARGET_S),
        "nanosurveyor_total_s": NANOSURVEYOR_TOTAL_S,
        "vs_nanosurveyor": NANOSURVEYOR_TOTAL_S / streaming["first_frame_to_final_image_s"],
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def table(fig: dict[str, Any]) -> Any:
    """The figures as a rich table."""
    from rich.table import Table

    s, b = fig["streaming"], fig["batch"]
    ny, nx = fig["frame_shape"]
    my, mx = fig["reconstructed_shape"]
    t = Table(title=f"ptycho_stream: {fig['positions']} positions at {fig['rate_hz']:g} Hz ({fig['scan_s']:.0f} s), "
                    f"{ny}x{nx} frames -> {my}x{mx}, chain {fig['chain']} (last {fig['final_iterations']} after the "
                    "scan), local engine")
    t.add_column("figure", justify="left", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("reference", justify="left")
    rows = [
        ("kept up with the scan", "yes" if s["kept_up"] else "no", f"lag at end {s['lag_at_end_s']:.2f} s, "
         f"peak lag {s['peak_lag_s']:.2f} s, peak frames waiting {s['peak_held']}"),
        ("last frame -> final image (CXI closed)", f"{s['final_image_after_last_frame_s']:.1f} s",
         f"target <= {fig['target_s']:g} s: {'met' if fig['meets_target'] else 'missed'}"),
        ("first frame -> final image", f"{s['first_frame_to_final_image_s']:.0f} s",
         f"Nanosurveyor ~{fig['nanosurveyor_total_s']:.0f} s ({fig['vs_nanosurveyor']:.1f}x)"),
        ("batch reconstruction after the scan", f"{b['seconds']:.1f} s",
         f"same frames and chain: {fig['batch_vs_streaming']:.1f}x the streaming wait"),
        ("object error, streaming", f"{s['object_error']:.3f}", f"batch {b['object_error']:.3f}"),
        ("iterations during / after the scan", f"{s['iterations_during_scan']} / {s['iterations_after_scan']}",
         f"{s['updates_during_scan']} live updates, the last during the scan on "
         f"{s['frames_in_last_update_during_scan']} frames; {s['seconds_per_iteration_after_scan']:.2f} s per "
         "iteration after the scan"),
    ]
    for row in rows:
        t.add_row(*row)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=POSITIONS, help="scan positions (default 40 x 40 = 1600)")
    parser.add_argument("--rate", type=float, default=RATE_HZ, help="frames per second (default 10)")
    parser.add_argument("--chain", help="algorithm chain instead of the pipeline's (DM:100, ML:50)")
    parser.add_argument("--final", type=int, help="iterations kept for after the last frame (pipeline: 20)")
    parser.add_argument("--workers", type=int, default=1, help="local engine worker threads (default 1)")
    parser.add_argument("--workdir", help="folder for the result files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.positions, args.rate, args.chain, args.final = 36, 20.0, "DM:10, ML:4", 4
    if args.positions < 4 or args.rate <= 0 or args.workers < 1:
        parser.error("--positions must be at least 4, --rate above 0, --workers at least 1")
    with tempfile.TemporaryDirectory(prefix="lightpipe-ptycho-stream-", dir=args.workdir) as tmp:
        figures = measure(args.positions, args.rate, args.chain, args.final, args.workers, Path(tmp))

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 150)
    console.print(table(figures))
    console.print(
        f"Kept up: the last frame pre-processed and fed to the reconstruction within {KEEP_UP_S:g} s of arriving "
        f"(frames go in chunks of what arrived in {figures['chunk_seconds']:g} s, at most {figures['chunk_size']}). "
        f"Stage ms/frame: {', '.join(f'{k} {v:.2f}' for k, v in figures['streaming']['stage_ms_per_frame'].items())}"
        f". {figures['cpu_count']} cores, load average {figures['load_average'][0]:.1f} before, "
        f"{figures['load_average'][1]:.1f} after (other processes share the cores).", markup=False)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
