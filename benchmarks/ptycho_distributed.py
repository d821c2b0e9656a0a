"""Distributed ptychography on Dask: one worker against two, with PAR and PEFF as the SSRF nanoprobe paper defines them.

The seed
    Zhang, Jiang, He and Li, "A distributed software system for integrating
    data-processing pipelines at the SSRF hard X-ray nanoprobe beamline"
    (J. Synchrotron Rad. 31, 2024): scan positions split with k-means, one
    part per GPU, parts reconstructed independently and the object reduced;
    Table 1 gives the time for 2, 4, 6 and 8 A100 GPUs, and the paper defines
    the parallel acceleration ratio ``PAR_p = T1 / Tp`` and the parallel
    efficiency ``PEFF_p = T1 / (p Tp)``. Table 1 has no run on one GPU, so
    its efficiencies are relative to 2 GPUs, ``2 T2 / (p Tp)``, printed with
    the table (:data:`SSRF_TABLE_1`).

What it measures
    :func:`lightpipe.techniques.ptychography.distributed.reconstruct_distributed`
    on one simulated scan (default 1024 positions of 128 x 128 frames, the
    zone-plate probe of the simulator, noise-free intensities, the true probe
    as the guess), chain ``DM:30, ML:10`` merged every 10 iterations, on a
    LocalCluster of 1 single-threaded worker with 1 part (T1) and of 2 with 2
    parts (T2), each built by :func:`lightpipe.engines.dask.make_cluster` as
    ``lightpipe run --engine dask`` builds it, one actor per part
    (:class:`lightpipe.engines.dask.ActorPartRunner`, as the ``dask`` engine
    gives the ``ptycho_distributed`` stage). The algorithms' FFTs are pyFFTW's
    when it is installed, else SciPy's (``--fft`` to choose): the faster the
    FFTs, the larger the share of memory-bound work that two workers sharing
    a cache and memory bus slow each other on. Both clusters start together
    and are timed in turn, ``--repeat`` pairs (the best of each counts, and
    each pair's PEFF is printed), so a change in what else the machine runs
    does not land on T1 or T2 only. A time is the whole call:
    k-means, shipping each part's frames to its worker, building its state,
    every iteration and every merge. The parts share the frames within a
    probe radius of their boundary (``margin``), as SSRF's overlapping parts
    do; that extra work is part of T2. For each p: the object error against
    the truth over the well-lit region (:func:`~lightpipe.techniques.ptychography.metrics.object_error`).

Reference
    :func:`lightpipe.techniques.ptychography.algorithms.reconstruct`, the same
    chain on the whole scan in this process, pinned to one core (the
    single-processor algorithm), and for information on every core.

Where the time goes
    Per p: setup (split, shipping, state), the compute critical path (the
    slowest part of each merge period, summed), the driver's merges, and what
    is left (transfers of objects and probes, scheduling, waiting); the
    workers' CPU seconds, the seconds their threads waited for a core
    (``/proc/*/task/*/schedstat``) and their minor page faults, and the
    driver's CPU seconds. Worker CPU at p=1 over p=2 is the PEFF two
    otherwise idle cores would give.

Run ``python benchmarks/ptycho_distributed.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Any

import numpy as np

from lightpipe.engines.dask import WORKER_ENV, ActorPartRunner, make_cluster
from lightpipe.techniques.ptychography.distributed import reconstruct_distributed
from lightpipe.techniques.ptychography.algorithms import reconstruct
from lightpipe.techniques.ptychography.algorithms.backend import NUMPY_FFTS, choose_numpy_fft
from lightpipe.techniques.ptychography.metrics import object_error
from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation
from scaling import cpu_and_wait

TARGET_PEFF = 0.85

#: SSRF Table 1: algorithm chain, GPUs, load and preprocess time (s), algorithm time (s), all time (s).
SSRF_TABLE_1 = (
    ("DM*100 ML*200", 2, 976.87, 325.43, 1302.3),
    ("DM*100 ML*200", 4, 627.34, 171.24, 798.58),
    ("DM*100 ML*200", 6, 472.56, 120.09, 592.65),
    ("DM*100 ML*200", 8, 392.51, 100.24, 492.75),
    ("DM*200 ML*400 AP*800", 2, 2349.07, 984.23, 3333.30),
    ("DM*200 ML*400 AP*800", 4, 1271.13, 503.72, 1774.85),
    ("DM*200 ML*400 AP*800", 6, 916.85, 347.42, 1264.27),
    ("DM*200 ML*400 AP*800", 8, 722.57, 267.34, 989.91),
)


def ssrf_efficiencies() -> list[dict[str, Any]]:
    """SSRF Table 1 with each row's efficiency relative to the 2-GPU run of its chain, ``2 T2 / (p Tp)``."""
    rows = []
    for chain, gpus, load, algorithm, total in SSRF_TABLE_1:
        base = next(r for r in SSRF_TABLE_1 if r[0] == chain and r[1] == 2)
        rows.append({"chain": chain, "gpus": gpus, "load_s": load, "algorithm_s": algorithm, "all_s": total,
                     "peff_vs_2_algorithm": 2 * base[3] / (gpus * algorithm),
                     "peff_vs_2_all": 2 * base[4] / (gpus * total)})
    return rows


def padded(obj: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``obj`` in the top-left corner of a grid of ones of ``shape`` (the simulator's object grid)."""
    out = np.ones(shape, dtype=np.complex64)
    out[: obj.shape[0], : obj.shape[1]] = obj[: shape[0], : shape[1]]
    return out


def one_run(client: Any, sim: PtychoSimulation, intensities: np.ndarray, parts: int, chain: str, merge_every: int,
            margin: float, fft: str) -> dict[str, Any]:
    """One timed reconstruction with ``parts`` parts on ``client``'s cluster, with its CPU, wait and fault counts."""
    workers0, driver0 = client.run(cpu_and_wait), cpu_and_wait()
    t0 = time.perf_counter()
    result = reconstruct_distributed(intensities, sim.positions_px, sim.probe, chain=chain, parts=parts,
                                     merge_every=merge_every, runner=ActorPartRunner(client), margin_px=margin,
                                     fft=fft)
    seconds = time.perf_counter() - t0
    workers1, driver1 = client.run(cpu_and_wait), cpu_and_wait()
    critical = float(result.part_seconds.max(axis=1).sum())
    return {
        "workers": parts,
        "parts": parts,
        "part_frames": [len(p) for p in result.parts],
        "seconds": seconds,
        "algorithm_s": float(sum(result.period_seconds)),
        "setup_s": result.setup_seconds,
        "critical_path_s": critical,
        "merge_s": result.merge_seconds,
        "other_s": seconds - result.setup_seconds - critical - result.merge_seconds,
        "imbalance_s": float((result.part_seconds.max(axis=1) - result.part_seconds.mean(axis=1)).sum()),
        "part_seconds": result.part_seconds.sum(axis=0).tolist(),
        "worker_cpu_s": sum(workers1[w][0] - workers0[w][0] for w in workers1),
        "worker_wait_s": sum(workers1[w][1] - workers0[w][1] for w in workers1),
        "worker_faults": sum(workers1[w][2] - workers0[w][2] for w in workers1),
        "driver_cpu_s": driver1[0] - driver0[0],
        "object": result.object,
        "fourier_error": result.fourier_errors[-1],
    }


def time_dask(sim: PtychoSimulation, intensities: np.ndarray, chain: str, merge_every: int, margin: float,
              lit: np.ndarray, repeat: int, fft: str) -> list[dict[str, Any]]:
    """T1 and T2 on a 1-worker and a 2-worker cluster, started together and timed in turn ``repeat`` times.

    Timing p=1 and p=2 alternately keeps a change in what else the machine runs
    from landing on one of them only. Each row is the best run; the p=2 row also
    holds the PEFF of each (T1, T2) pair.
    """
    clusters = []
    try:
        for workers in (1, 2):
            t0 = time.perf_counter()
            client, cluster = make_cluster(None, workers, 1)
            clusters.append((client, cluster))
            client.wait_for_workers(workers)
            startup = time.perf_counter() - t0
            # warm-up: imports and first FFT plans in the workers, on a few frames
            reconstruct_distributed(intensities[:8], sim.positions_px[:8], sim.probe, chain="DM:1", parts=workers,
                                    merge_every=1, runner=ActorPartRunner(client), margin_px=margin, fft=fft)
            clusters[-1] = (client, cluster, startup)
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for _ in range(repeat):
            for workers, (client, _, _) in zip((1, 2), clusters):
                runs[workers].append(one_run(client, sim, intensities, workers, chain, merge_every, margin, fft))
    finally:
        for client, cluster, *_ in clusters:
            client.close()
            cluster.close()
    rows = []
    for workers, (_, _, startup) in zip((1, 2), clusters):
        best = min(runs[workers], key=lambda r: r["seconds"])
        best["object_error"] = object_error(padded(best.pop("object"), sim.object_shape), sim.object, lit)
        rows.append({**best, "startup_s": startup})
    rows[1]["peff_pairs"] = [a["seconds"] / (2 * b["seconds"]) for a, b in zip(runs[1], runs[2])]
    return rows


def time_reference(sim: PtychoSimulation, intensities: np.ndarray, chain: str, lit: np.ndarray,
                   cores: set[int] | None, repeat: int, fft: str) -> dict[str, Any]:
    """``reconstruct()`` of the whole scan in this process on ``cores`` (``None``: all); the best of ``repeat``."""
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cores is not None and before is not None:
        os.sched_setaffinity(0, cores)  # ReconstructionState then runs one thread and one-thread FFTs
    try:
        reconstruct(intensities[:8], sim.positions_px[:8], sim.probe, chain="DM:1", fft=fft)
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = reconstruct(intensities, sim.positions_px, sim.probe, chain=chain, fft=fft)
            runs.append((time.perf_counter() - t0, result))
        seconds, result = min(runs, key=lambda r: r[0])
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    return {
        "cores": len(cores) if cores is not None else len(before or ()) or os.cpu_count(),
        "seconds": seconds,
        "object_error": object_error(padded(result.object, sim.object_shape), sim.object, lit),
        "fourier_error": result.fourier_errors[-1],
    }


def run(positions: int, frame: int, chain: str, merge_every: int, all_cores: bool, repeat: int,
        margin_px: float | None, fft: str = "auto") -> dict[str, Any]:
    """Simulate the scan, time the reference and the Dask runs on 1 and 2 workers, and return the figures."""
    load_before = os.getloadavg()[0]
    size = {128: {}, 64: {"distance_m": 1.0, "defocus_m": 2e-4}}.get(frame, {})
    sim = PtychoSimulation(PtychoSimParams(frame_shape=(frame, frame), n_positions=positions, **size))
    intensities = sim.intensities()
    illumination = sim.illumination()
    lit = illumination >= 0.1 * illumination.max()
    margin = sim.probe_diameter_px / 2 if margin_px is None else margin_px
    one_core = {min(os.sched_getaffinity(0))} if hasattr(os, "sched_getaffinity") else None
    fft = choose_numpy_fft(fft)
    references = [time_reference(sim, intensities, chain, lit, one_core, repeat, fft)]
    if all_cores:
        references.append(time_reference(sim, intensities, chain, lit, None, repeat, fft))
    dask = time_dask(sim, intensities, chain, merge_every, margin, lit, repeat, fft)
    one = dask[0]
    for d in dask:
        d["par"] = one["seconds"] / d["seconds"]
        d["peff"] = one["seconds"] / (d["workers"] * d["seconds"])
        d["peff_algorithm"] = one["algorithm_s"] / (d["workers"] * d["algorithm_s"])
        d["work_efficiency"] = one["worker_cpu_s"] / (d["worker_cpu_s"] or math.nan)
        d["ratio_vs_reference"] = references[0]["seconds"] / d["seconds"]
    two = dask[1]
    return {
        "benchmark": "ptycho_distributed",
        "positions": positions,
        "shape": [frame, frame],
        "chain": chain,
        "merge_every": merge_every,
        "fft": fft,
        "repeat": repeat,
        "margin_px": margin,
        "probe_diameter_px": sim.probe_diameter_px,
        "step_px": sim.step_px,
        "object_shape": list(sim.object_shape),
        "reference": references,
        "dask": dask,
        "par_2": two["par"],
        "peff_2": two["peff"],
        # what PEFF_2 would be if nothing else wanted the cores: the extra work that the split costs
        "work_efficiency_2": two["work_efficiency"],
        "peff_2_pairs": two["peff_pairs"],
        # the PEFF if the parts shared no frames: T1 against the largest part's share of the frames
        "duplication_bound_2": positions / (2 * max(two["part_frames"])),
        "target_peff": TARGET_PEFF,
        "meets_target": two["peff"] >= TARGET_PEFF,
        "ssrf_table_1": ssrf_efficiencies(),
        "cpu_count": os.cpu_count(),
        "worker_env": WORKER_ENV,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def table(figures: dict[str, Any]) -> Any:
    """The figures as a rich table."""
    from rich.table import Table

    ny, nx = figures["shape"]
    t = Table(title=f"Distributed ptychography: {figures['positions']} positions {ny}x{nx}, {figures['chain']}, "
                    f"merged every {figures['merge_every']}, {figures['fft']} FFTs (target PEFF_2 >= "
                    f"{figures['target_peff']})")
    for col in ("runner", "p", "frames/part", "time s", "PAR_p", "PEFF_p", "vs ref", "setup s", "compute s",
                "merge s", "other s", "worker CPU s", "wait s", "faults", "driver CPU s", "object err"):
        t.add_column(col, justify="left" if col == "runner" else "right", no_wrap=True)
    for r in figures["reference"]:
        t.add_row(f"reconstruct() {r['cores']} core(s)", "-", str(figures["positions"]), f"{r['seconds']:.2f}",
                  "", "", f"{figures['reference'][0]['seconds'] / r['seconds']:.2f}x", "", "", "", "", "", "", "",
                  "", f"{r['object_error']:.4f}")
    for d in figures["dask"]:
        peff = f"{d['peff']:.2f}"
        if d["workers"] > 1:
            peff = f"{'[green]' if d['peff'] >= figures['target_peff'] else '[red]'}{peff}"
        t.add_row("dask", str(d["workers"]), "/".join(map(str, d["part_frames"])),
                  f"{d['seconds']:.2f}", f"{d['par']:.2f}", peff, f"{d['ratio_vs_reference']:.2f}x",
                  f"{d['setup_s']:.2f}", f"{d['critical_path_s']:.2f}", f"{d['merge_s']:.2f}", f"{d['other_s']:.2f}",
                  f"{d['worker_cpu_s']:.2f}", f"{d['worker_wait_s']:.2f}", f"{d['worker_faults']:,}",
                  f"{d['driver_cpu_s']:.2f}", f"{d['object_error']:.4f}")
    return t


def ssrf_table() -> Any:
    """SSRF Table 1 with efficiencies relative to its 2-GPU runs."""
    from rich.table import Table

    t = Table(title="SSRF Table 1 (8 A100 GPUs; no 1-GPU run, so PEFF relative to 2 GPUs: 2 T2 / (p Tp))")
    for col in ("chain", "GPUs", "load+preprocess s", "algorithm s", "all s", "PEFF algorithm", "PEFF all"):
        t.add_column(col, justify="left" if col == "chain" else "right", no_wrap=True)
    for r in ssrf_efficiencies():
        t.add_row(r["chain"], str(r["gpus"]), f"{r['load_s']:.2f}", f"{r['algorithm_s']:.2f}", f"{r['all_s']:.2f}",
                  f"{r['peff_vs_2_algorithm']:.2f}", f"{r['peff_vs_2_all']:.2f}")
    return t


NOTES = (
    "PAR_p = T1/Tp, PEFF_p = T1/(p Tp) as in the SSRF paper; T = the whole reconstruct_distributed call (k-means, "
    "shipping each part's frames to its worker once, state, iterations, merges), after a warm-up on 8 frames, the "
    "best of {repeat} run(s), p=1 and p=2 timed in turn (PEFF_2 of each pair: {pairs}). PEFF_2 over iterations and "
    "merges only: {peff_alg:.2f}. vs ref = reconstruct() on one core / this time. compute s = slowest part of each "
    "merge period, summed; other s = transfers, scheduling, waiting. worker CPU s / wait s / faults: the workers' "
    "threads' CPU seconds, seconds they were ready but had no core, and the workers' minor page faults; driver CPU "
    "s: this process. Worker CPU at p=1 / at p=2 = {work}: the PEFF two otherwise idle cores would give. Parts share "
    "the frames within {margin:.1f} px of their boundary: with parts of {frames} frames, PEFF_2 can "
    "be at most {bound:.2f}. Workers start with {env} (make_cluster's pre-spawn environment). Each p is its own "
    "LocalCluster of single-threaded workers (start-up {startups}, not in the times); the driver and scheduler share "
    "the machine's {cpus} cores with the workers. Load average {load0:.1f} before, {load1:.1f} after."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=1024, help="scan positions (default 1024)")
    parser.add_argument("--frame", type=int, default=128, choices=(64, 128), help="frame side, px (default 128)")
    parser.add_argument("--chain", default="DM:30, ML:10", help="algorithm chain (default 'DM:30, ML:10')")
    parser.add_argument("--merge-every", type=int, default=10, help="iterations between merges (default 10)")
    parser.add_argument("--all-cores", action="store_true", help="also time reconstruct() on every core")
    parser.add_argument("--margin", type=float, help="px around a part whose positions it shares (default the "
                        "probe radius; 0: parts share no frame)")
    parser.add_argument("--fft", default="auto", choices=("auto", *NUMPY_FFTS),
                        help="FFT library of the algorithms (default auto: pyFFTW when installed, else SciPy)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each runner; the best counts (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (tables on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        positions, frame, chain, merge_every = 64, 64, "DM:4, ML:2", 2
    else:
        positions, frame, chain, merge_every = args.positions, args.frame, args.chain, args.merge_every
    if positions < 16 or merge_every < 1 or args.repeat < 1:
        parser.error("--positions must be at least 16, --merge-every and --repeat at least 1")
    import distributed  # noqa: F401  (configures its loggers on import: quiet them after that)

    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster start and stop chatter buries the tables
    figures = run(positions, frame, chain, merge_every, args.all_cores and not args.quick, args.repeat, args.margin,
                  args.fft)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 220)
    console.print(table(figures))
    two = figures["dask"][1]
    startups = ", ".join(f"p={d['workers']}: {d['startup_s']:.2f} s" for d in figures["dask"])
    pairs = ", ".join(f"{v:.2f}" for v in figures["peff_2_pairs"])
    console.print(NOTES.format(repeat=figures["repeat"], pairs=pairs, peff_alg=two["peff_algorithm"],
                               work=f"{figures['work_efficiency_2']:.2f}",
                               margin=figures["margin_px"], frames="/".join(map(str, two["part_frames"])),
                               bound=figures["duplication_bound_2"], startups=startups,
                               env=" ".join(f"{k}={v}" for k, v in WORKER_ENV.items()), cpus=figures["cpu_count"],
                               load0=figures["load_average"][0], load1=figures["load_average"][1]), markup=False)
    console.print(ssrf_table())
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
