"""Ptychography algorithms: time per iteration, and the object error of DM:100, ML:50 with each FFT and thread count.

What it measures
    Seconds per iteration of the difference map (DM), alternating projections
    (AP), maximum likelihood (ML) and sequential ePIE algorithms of
    :mod:`lightpipe.techniques.ptychography.algorithms` on 1024 frames of 128 x 128
    (``--frames``), with probe refinement on, on NumPy arrays, one chunk of
    frames per core (ePIE: one view at a time); then the chain ``DM:100, ML:50``
    from a probe guess with SciPy's and pyFFTW's FFTs on 1 and 2 threads, the
    error of the object and probe against the truth, after DM alone and after
    the chain, and whether ML stalled; and ``ePIE:100`` from the same guess,
    its object and probe errors beside DM's after as many iterations.

Reference
    The FFT work itself, in the same run: the time of as many bare FFT pairs
    (forward + inverse, batched over all frames, 128 x 128 complex64,
    ``norm="ortho"``) as there are frames, in ``numpy.fft`` and in ``scipy.fft``
    (``workers`` = every core), and with pyFFTW when it is installed (one plan,
    in place, every core). ``vs <library>`` is the algorithm's wall-clock time per
    iteration divided by that library's time for the pairs; ``vs same FFTs`` divides
    by the time of the FFT pairs the algorithm itself does per iteration, in the
    library it uses (DM, AP and ePIE one pair per frame, ML two: its gradient
    pass and its line search); ``CPU vs <library>`` is the ratio of CPU seconds (all
    threads), which other processes sharing the cores change less than wall-clock time.

Data
    The scan simulator of :mod:`lightpipe.techniques.ptychography.simulate`
    gives the probe (a defocused zone plate with a central stop), the object
    (scikit-image test images: camera for the amplitude 0.6-1, astronaut for the
    phase 0-1.5 rad), a raster of positions with 0.5 px random jitter at 60 %
    overlap, and 1e7 photons per frame. The diffraction patterns are computed
    here at the positions rounded to whole pixels, as the algorithms model them
    (they do not shift the probe by sub-pixel amounts), with Poisson noise and
    no detector effects (the pre-processing stages remove those). The probe
    guess is the simulator's zone-plate model 20 % out of focus.

Object and probe errors
    The chain runs on ``--seeds`` scans that differ in their Poisson noise and
    jitter only (default 3) with the default FFT library and threads: tiny
    differences grow over 150 iterations, and the final error moved between
    0.6 % and 2 % from one noise draw to the next, so one seed alone would say
    little. The FFT-and-thread matrix runs on the first scan. ``error`` is
    :func:`lightpipe.techniques.ptychography.metrics.object_error`
    on the pixels lit at 10 % or more of the maximum: the relative RMS error
    after removing what ptychography cannot determine (a global complex factor,
    a linear phase ramp and a sub-pixel shift of object and probe together).
    ``phase only`` is the relative RMS error after removing the global phase
    alone: it also counts those ambiguities, and is printed for comparison. The
    probe error is the same measure on the probe pixels above 10 % of its peak
    amplitude.

Smoothness prior
    ``--smoothness 0,0.001,...`` instead runs DM:100 once per seed and ML:50 from
    there with each weight of ML's smoothness prior, and prints the object
    errors: how the default of ``MaximumLikelihood(smoothness=...)`` was chosen.

Peers
    PtyPy, the reference peer, is not on PyPI (``pip download ptypy`` finds no
    distribution; it installs from its git repository or conda), so it cannot
    run here; the benchmark says so and whether it is importable.

Conditions
    Other processes share the 2 cores (the load average is printed): the best
    of ``--repeat`` iterations counts for every algorithm and reference.

Run ``python benchmarks/ptycho_engines.py`` (``--help`` for options; ``--quick``
runs tiny settings in well under a minute).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

#: Most seconds per iteration on 1024 frames of 128 x 128, on the 2-core machine.
TARGETS = {"DM": 0.25, "AP": None, "ML": 0.5, "ePIE": None}
#: FFT pairs (forward + inverse) per frame in one iteration of each algorithm, with probe refinement.
FFT_PAIRS = {"DM": 1, "AP": 1, "ML": 2, "ePIE": 1}
#: Largest acceptable object error after DM:100, ML:50.
TARGET_ERROR = 0.02
CHAIN = "DM:100, ML:50"
EPIE_CHAIN = "ePIE:100"
FRAME = 128
PHOTONS = 1e7
OVERLAP = 0.6
#: The probe guess is the zone-plate model at this multiple of the true defocus.
GUESS_DEFOCUS = 1.2


def make_scan(frames: int, seed: int = 0) -> dict[str, Any]:
    """Simulate the scan (see the module notes): intensities, positions, probe guess and truth."""
    from lightpipe.techniques.ptychography.optics import zone_plate_probe
    from lightpipe.techniques.ptychography.simulate import PtychoSimParams, PtychoSimulation

    params = PtychoSimParams(frame_shape=(FRAME, FRAME), n_positions=frames, overlap=OVERLAP,
                             photons_per_frame=PHOTONS, frame_dtype="uint32", seed=seed)
    sim = PtychoSimulation(params)
    truth = sim.truth()
    corners = np.rint(truth["positions_px"]).astype(int)
    obj, probe = truth["object"], truth["probe"]
    rng = np.random.default_rng(seed)
    intensities = np.empty((frames, FRAME, FRAME), np.float32)
    for start in range(0, frames, 64):
        rows = range(start, min(start + 64, frames))
        patches = np.stack([obj[y:y + FRAME, x:x + FRAME] for y, x in corners[rows.start:rows.stop]])
        far = np.abs(np.fft.fft2(probe * patches, norm="ortho")) ** 2
        intensities[rows.start:rows.stop] = rng.poisson(np.fft.fftshift(far, axes=(-2, -1)))
    guess = zone_plate_probe(params.frame_shape, sim.object_pixel_size_m, params.energy_ev, params.outer_zone_width_m,
                             params.central_stop_fraction, params.defocus_m * GUESS_DEFOCUS)
    return {
        "intensities": intensities,
        "positions_px": corners.astype(float),
        "guess": guess.astype(np.complex64),
        "object": obj,
        "probe": probe,
        "lit": truth["illumination"] >= 0.1 * truth["illumination"].max(),
        "probe_diameter_px": truth["probe_diameter_px"],
        "step_px": truth["step_px"],
    }


def _best(run: Callable[[], None], repeat: int) -> dict[str, float]:
    """Best wall-clock seconds of ``repeat`` calls of ``run``, and the mean CPU seconds (all threads) per call."""
    best, cpu0 = float("inf"), time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "cpu_seconds": (time.process_time() - cpu0) / repeat}


def fft_references(frames: int, repeat: int) -> dict[str, dict[str, float]]:
    """Seconds (wall, best) and CPU seconds (mean) for ``frames`` bare FFT pairs (128 x 128 complex64) per library."""
    import scipy.fft

    rng = np.random.default_rng(1)
    waves = (rng.standard_normal((frames, FRAME, FRAME)) + 1j * rng.standard_normal((frames, FRAME, FRAME)))
    waves = waves.astype(np.complex64)
    cores = os.cpu_count() or 1
    out = {
        "numpy.fft": _best(lambda: np.fft.ifft2(np.fft.fft2(waves, norm="ortho"), norm="ortho"), repeat),
        "scipy.fft": _best(lambda: scipy.fft.ifft2(scipy.fft.fft2(waves, norm="ortho", workers=cores), norm="ortho",
                                                   workers=cores, overwrite_x=True), repeat),
    }
    if importlib.util.find_spec("pyfftw") is not None:
        import pyfftw

        buffer = pyfftw.empty_aligned(waves.shape, dtype="complex64")
        buffer[...] = waves
        plans = [pyfftw.FFTW(buffer, buffer, axes=(-2, -1), direction=d, flags=("FFTW_ESTIMATE",), threads=cores,
                             ortho=True, normalise_idft=False) for d in ("FFTW_FORWARD", "FFTW_BACKWARD")]
        out["pyfftw"] = _best(lambda: [p() for p in plans], repeat)
    return out


def time_algorithms(scan: dict[str, Any], repeat: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Wall seconds of ``repeat`` iterations of each algorithm and their mean CPU seconds (after warm-up, probe
    refinement on), and the state's settings."""
    from lightpipe.techniques.ptychography.algorithms import ReconstructionState, iterate

    state = ReconstructionState(scan["intensities"], scan["positions_px"], scan["guess"])
    iterate(state, "DM", 3)  # exit waves made, probe refinement started (iteration 2)
    seconds = {}
    for algorithm in ("DM", "AP", "ML", "ePIE"):
        iterate(state, algorithm, 1)  # the algorithm's start-up (ML: its memory and caches) is not timed
        cpu0 = time.process_time()
        records = iterate(state, algorithm, repeat)
        cpu = (time.process_time() - cpu0) / repeat
        seconds[algorithm] = {"seconds": [r.seconds for r in records], "cpu_seconds": cpu}
    settings = {"fft_library": state.fft.name, "threads": state.threads, "chunk_frames": state.chunk_frames,
                "object_shape": list(state.object_shape)}
    return seconds, settings


def errors(scan: dict[str, Any], obj: np.ndarray, probe: np.ndarray, origin: Any) -> dict[str, float]:
    """Object error (aligned and phase only) and probe error of a reconstruction against the truth."""
    from lightpipe.techniques.ptychography.metrics import align_object, probe_error

    truth, lit = scan["object"], scan["lit"]
    recon = np.ones(truth.shape, np.complex64)  # the simulator's object has a margin beyond the last window
    oy, ox = (int(v) for v in origin)
    recon[oy:oy + obj.shape[0], ox:ox + obj.shape[1]] = obj
    aligned = align_object(recon, truth, lit)
    a, b = recon[lit], truth[lit]
    phase = np.vdot(a, b) / abs(np.vdot(a, b))
    beam = np.abs(scan["probe"]) >= 0.1 * np.abs(scan["probe"]).max()
    return {"object_error": aligned.error,
            "object_error_phase_only": float(np.linalg.norm(a * phase - b) / np.linalg.norm(b)),
            "probe_error": probe_error(np.asarray(probe)[0], scan["probe"], beam),
            "shift_px": list(aligned.shift_px), "ramp_rad_per_px": list(aligned.ramp_rad_per_px)}


def run_chain(scan: dict[str, Any], chain: str, target: float | None, seed: int, fft: str = "auto",
              threads: int | None = None) -> dict[str, Any]:
    """Reconstruct with ``chain`` from the probe guess; errors after the first algorithm and at the end, stall."""
    from lightpipe.techniques.ptychography.algorithms import parse_chain, reconstruct

    steps = parse_chain(chain)
    first = steps[0][1] - 1
    snapshot: dict[str, Any] = {}

    def keep(iteration: int, state: Any) -> None:
        if iteration == first:  # the end of the first algorithm (DM:100 of DM:100, ML:50)
            snapshot.update(object=np.array(state.object), probe=np.array(state.probe))

    t0 = time.perf_counter()
    result = reconstruct(scan["intensities"], scan["positions_px"], scan["guess"], chain=chain, fft=fft,
                         threads=threads, callback=keep)
    seconds = time.perf_counter() - t0
    state = result.state
    origin = state.origin_px
    final = errors(scan, result.object, result.probe, origin)
    nll = [v for v in result.neg_log_likelihoods if v is not None]
    return {
        "chain": chain,
        "seed": seed,
        "fft": state.fft.name,
        "threads": state.threads,
        "seconds": seconds,
        **final,
        "first": {"algorithm": steps[0][0], "iterations": steps[0][1],
                  **errors(scan, snapshot["object"], snapshot["probe"], origin)},
        "stalled": result.stalled,
        "stalled_iterations": sum(r.stalled for r in result.history),
        "stall_reason": state.stall_reason,
        "fourier_error_first": result.fourier_errors[0],
        "fourier_error_last": result.fourier_errors[-1],
        "neg_log_likelihood_last": nll[-1] if nll else None,
        "probe_scale": state.probe_scale,
        "target": target,
        "meets_target": None if target is None else bool(final["object_error"] <= target and not result.stalled),
    }


def sweep_smoothness(frames: int, chain: str, values: list[float], seeds: int) -> list[dict[str, Any]]:
    """Object errors after ``chain`` (DM then ML) for each weight of ML's smoothness prior, the DM part run once."""
    from lightpipe.techniques.ptychography.algorithms import (
        MaximumLikelihood,
        ReconstructionState,
        iterate,
        parse_chain,
        reconstruct,
    )

    (dm, dm_count), (ml, ml_count) = parse_chain(chain)
    assert dm == "DM" and ml == "ML", "the sweep runs a chain 'DM:n, ML:m'"
    rows = []
    for seed in range(seeds):
        scan = make_scan(frames, seed)
        start = reconstruct(scan["intensities"], scan["positions_px"], scan["guess"], chain=f"DM:{dm_count}")
        for value in values:
            # ML takes over DM's object and probe, as in the chain (probe refinement on, fresh ML memory)
            state = ReconstructionState(scan["intensities"], scan["positions_px"], start.probe, start.object)
            records = iterate(state, MaximumLikelihood(smoothness=value), ml_count, probe_update_start=0)
            rows.append({"seed": seed, "smoothness": value,
                         **errors(scan, state.object, state.probe, start.state.origin_px),
                         "stalled": any(r.stalled for r in records)})
    return rows


def peers() -> list[dict[str, str]]:
    """Published peers and why they do or do not run here."""
    if importlib.util.find_spec("ptypy") is None:
        status = ("not installable here: PtyPy is not on PyPI (pip finds no distribution); it installs from its git "
                  "repository or conda, which this machine cannot reach")
    else:
        status = "installed, but no runner for it is written in this benchmark yet"
    return [{"peer": "PtyPy", "status": status}]


def fft_matrix() -> list[tuple[str, int]]:
    """The FFT libraries and thread counts the chain runs with on the first scan."""
    libraries = ["scipy"] + (["pyfftw"] if importlib.util.find_spec("pyfftw") is not None else [])
    cores = sorted({1, min(2, os.cpu_count() or 1)})
    return [(lib, n) for lib in libraries for n in cores]


def run(frames: int, repeat: int, chain: str, epie_chain: str, seeds: int) -> dict[str, Any]:
    """Simulate, time the references and the algorithms, run the chains; return the figures."""
    load_before = os.getloadavg()[0]
    full = frames == 1024 and chain == CHAIN  # the targets are set for these settings
    t0 = time.perf_counter()
    scan = make_scan(frames)
    simulate_s = time.perf_counter() - t0
    references = fft_references(frames, repeat)
    seconds, settings = time_algorithms(scan, repeat)
    rows = []  # DM, AP, ML under "engines"; ePIE's timing goes with its run under "epie"
    for engine, measured in seconds.items():
        best, cpu = min(measured["seconds"]), measured["cpu_seconds"]
        target = TARGETS[engine] if full else None
        same = FFT_PAIRS[engine] * references[settings["fft_library"] if settings["fft_library"] in references
                                              else "numpy.fft"]["seconds"]
        rows.append({
            "engine": engine,
            "seconds_per_iteration": best,
            "median_seconds": float(np.median(measured["seconds"])),
            "cpu_seconds_per_iteration": cpu,
            "fft_pairs_per_frame": FFT_PAIRS[engine],
            "ratio_vs_same_ffts": best / same,
            "ratio_vs": {lib: best / ref["seconds"] for lib, ref in references.items()},
            "cpu_ratio_vs": {lib: cpu / ref["cpu_seconds"] for lib, ref in references.items()},
            "target": target,
            "meets_target": None if target is None else best <= target,
        })
    target = TARGET_ERROR if full else None
    matrix = [run_chain(scan, chain, target, 0, fft=lib, threads=n) for lib, n in fft_matrix()]
    default = settings["fft_library"], settings["threads"]
    reference = next((r for r in matrix if (r["fft"], r["threads"]) == default), None)
    noise = [reference if seed == 0 and reference is not None else run_chain(make_scan(frames, seed) if seed else scan,
                                                                             chain, target, seed)
             for seed in range(seeds)]
    epie = {**run_chain(scan, epie_chain, None, 0), "timing": rows.pop()}
    return {
        "benchmark": "ptycho_engines",
        "frames": frames,
        "frame_shape": [FRAME, FRAME],
        "photons_per_frame": PHOTONS,
        "overlap": OVERLAP,
        "probe_diameter_px": scan["probe_diameter_px"],
        "step_px": scan["step_px"],
        "repeat": repeat,
        "simulate_s": simulate_s,
        **settings,
        "fft_pairs_s": references,
        "engines": rows,
        "fft_thread_matrix": matrix,
        "reconstruction": noise,
        "epie": epie,
        "peers": peers(),
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def tables(figures: dict[str, Any]) -> list[Any]:
    """The figures as rich tables."""
    from rich.table import Table

    n = figures["frames"]
    refs = figures["fft_pairs_s"]
    t = Table(title=f"Ptychography algorithms: seconds per iteration on {n} frames of {FRAME}x{FRAME} "
                    f"({figures['fft_library']} FFTs, {figures['threads']} threads, chunks of "
                    f"{figures['chunk_frames']} frames; best of {figures['repeat']})")
    t.add_column("algorithm / reference", no_wrap=True)
    for col in ("s/iteration", "median s", "CPU s", "FFT pairs", "vs same FFTs", "vs numpy.fft", "vs scipy.fft",
                "CPU vs scipy.fft", "target"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in [*figures["engines"], figures["epie"]["timing"]]:
        verdict = "" if r["target"] is None else f"{'[green]' if r['meets_target'] else '[red]'}<= {r['target']:.2f} s"
        t.add_row(r["engine"], f"{r['seconds_per_iteration']:.3f}", f"{r['median_seconds']:.3f}",
                  f"{r['cpu_seconds_per_iteration']:.3f}", f"{r['fft_pairs_per_frame']} x {n}",
                  f"{r['ratio_vs_same_ffts']:.2f}x", f"{r['ratio_vs']['numpy.fft']:.2f}x",
                  f"{r['ratio_vs']['scipy.fft']:.2f}x", f"{r['cpu_ratio_vs']['scipy.fft']:.2f}x", verdict)
    for lib, ref in refs.items():
        t.add_row(f"{n} FFT pairs, {lib}", f"{ref['seconds']:.3f}", "", f"{ref['cpu_seconds']:.3f}", "", "",
                  f"{ref['seconds'] / refs['numpy.fft']['seconds']:.2f}x",
                  f"{ref['seconds'] / refs['scipy.fft']['seconds']:.2f}x",
                  f"{ref['cpu_seconds'] / refs['scipy.fft']['cpu_seconds']:.2f}x", "")
    runs = figures["fft_thread_matrix"] + figures["reconstruction"][1:] + [figures["epie"]]
    c = Table(title=f"{figures['reconstruction'][0]['chain']} and {figures['epie']['chain']} from a zone-plate probe "
                    f"guess {GUESS_DEFOCUS:.1f}x out of focus ({figures['photons_per_frame']:.0e} photons/frame, "
                    f"{figures['overlap']:.0%} overlap); errors after the first algorithm, then at the end")
    for col in ("chain", "noise seed", "FFT", "threads", "time s", "first: object", "probe", "object error",
                "phase only", "probe error", "Fourier error", "NLL/pixel", "stalled", "target"):
        c.add_column(col, justify="right", no_wrap=True)
    for rec in runs:
        first = rec["first"]
        c.add_row(rec["chain"], str(rec["seed"]), rec["fft"], str(rec["threads"]), f"{rec['seconds']:.1f}",
                  f"{first['algorithm']}: {first['object_error']:.4f}", f"{first['probe_error']:.4f}",
                  f"{rec['object_error']:.4f}", f"{rec['object_error_phase_only']:.4f}", f"{rec['probe_error']:.4f}",
                  f"{rec['fourier_error_first']:.3g} -> {rec['fourier_error_last']:.3g}",
                  "" if rec["neg_log_likelihood_last"] is None else f"{rec['neg_log_likelihood_last']:.3f}",
                  ("[red]yes" if rec["stalled"] else "no"),
                  "" if rec["target"] is None else
                  f"{'[green]' if rec['meets_target'] else '[red]'}<= {rec['target']:.2f}")
    return [t, c]


def sweep_table(rows: list[dict[str, Any]], chain: str) -> Any:
    """The smoothness sweep as a rich table: object error per weight and seed, and their mean."""
    from rich.table import Table

    seeds = sorted({r["seed"] for r in rows})
    t = Table(title=f"{chain}: object error by ML smoothness weight (DM run once per noise seed)")
    t.add_column("smoothness", justify="right")
    for seed in seeds:
        t.add_column(f"seed {seed}", justify="right")
    t.add_column("mean", justify="right")
    t.add_column("probe (mean)", justify="right")
    for value in sorted({r["smoothness"] for r in rows}):
        mine = [r for r in rows if r["smoothness"] == value]
        t.add_row(f"{value:g}", *(f"{r['object_error']:.4f}{' stalled' if r['stalled'] else ''}" for r in mine),
                  f"{np.mean([r['object_error'] for r in mine]):.4f}",
                  f"{np.mean([r['probe_error'] for r in mine]):.4f}")
    return t


NOTES = (
    "FFT pairs: {n} forward + inverse transforms of {f}x{f} complex64, batched (scipy.fft and pyfftw on {cpus} "
    "threads). Algorithms: NumPy arrays, probe refinement on, one FFT per thread (ePIE: one view at a time). 'vs same "
    "FFTs': wall-clock time per iteration over the time of the FFT pairs the algorithm does (DM, AP, ePIE one per "
    "frame, ML two) in its own library; 'vs <library>': over {n} pairs; 'CPU vs': the same with CPU seconds of all "
    "threads, which other processes on the cores change less. Object error: relative RMS error on the pixels lit at "
    ">= 10 % of the maximum, after removing the global complex factor, phase ramp and shift that ptychography cannot "
    "determine; 'phase only' removes the global phase alone; probe error: the same on the probe above 10 % of its "
    "peak. 'stalled': ML changed nothing for several iterations in a row (never silent: logged, and in the result "
    "files). Peers: {peers}. {cpus} cores; load average {load0:.1f} before, {load1:.1f} after (other processes share "
    "the cores)."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1024, help="scan positions (default 1024)")
    parser.add_argument("--repeat", type=int, default=5, help="timed iterations per algorithm and FFT runs; the best "
                                                              "counts (default 5)")
    parser.add_argument("--chain", default=CHAIN, help=f"algorithm chain for the object error (default {CHAIN!r})")
    parser.add_argument("--epie-chain", default=EPIE_CHAIN, help=f"the ePIE run (default {EPIE_CHAIN!r})")
    parser.add_argument("--seeds", type=int, default=3, help="noise draws the chain runs on (default 3)")
    parser.add_argument("--smoothness", help="comma-separated weights of ML's smoothness prior: run the sweep instead")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (tables on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    frames, repeat, chain, epie_chain, seeds = ((64, 2, "DM:10, ML:5", "ePIE:10", 1) if args.quick
                                                else (args.frames, args.repeat, args.chain, args.epie_chain,
                                                      args.seeds))
    if frames < 4 or repeat < 1 or seeds < 1:
        parser.error("--frames must be at least 4, --repeat and --seeds at least 1")

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 180)
    if args.smoothness:
        values = [float(v) for v in args.smoothness.split(",")]
        load = os.getloadavg()[0]
        rows = sweep_smoothness(frames, chain, values, seeds)
        console.print(sweep_table(rows, chain))
        figures: dict[str, Any] = {"benchmark": "ptycho_engines_smoothness", "frames": frames, "chain": chain,
                                   "sweep": rows, "load_average": [load, os.getloadavg()[0]]}
    else:
        figures = run(frames, repeat, chain, epie_chain, seeds)
        for table in tables(figures):
            console.print(table)
        console.print(NOTES.format(n=frames, f=FRAME, cpus=figures["cpu_count"],
                                   peers="; ".join(f"{p['peer']}: {p['status']}" for p in figures["peers"]),
                                   load0=figures["load_average"][0], load1=figures["load_average"][1]), markup=False)
    if args.json:
        print(json.dumps(figures, default=float))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
