"""Tomography: seconds per 512 x 512 slice by FBP from 720 projections, against astra-toolbox (CPU) and algotom.

What it measures
    The same sinograms (exact line integrals of the simulator's phantom, 720
    projections over 0-180 deg, 512 detector columns, the axis at the middle)
    reconstructed by FBP with a ramp filter into 512 x 512 slices:

    * lightpipe: ``techniques.tomo.parts.reconstruct_in_parts`` (what the
      ``tomo_reconstruction`` stage runs), blocks of slices on threads of this
      process, one per core (and, for information, on one thread);
    * astra-toolbox: its CPU ``FBP`` algorithm with a ``linear`` parallel-beam
      projector, slice by slice (it runs on one core);
    * algotom: ``rec.reconstruction.fbp_reconstruction(..., gpu=False)``, its
      Numba back projection on every core, slice by slice.

    Each reports seconds per slice (wall clock, the best of ``--repeat`` runs
    after one untimed warm-up that builds astra's objects and compiles
    algotom's Numba code) and the normalised error of its middle slice against
    the phantom inside the reconstruction circle (each program orients its
    slices its own way: the error is the smallest over the square's eight
    symmetries). The figure is lightpipe's seconds over the best peer's.

Run ``python benchmarks/tomo.py`` (``--quick``: 128 columns, 180 projections;
``--json``: the figures as JSON on the last line of stdout).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import numpy as np

#: Most lightpipe's seconds per slice may be, as a multiple of the best peer's.
TARGET = 1.0


def sinograms(columns: int, projections: int, slices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(slices, projections, columns)`` sinograms of the phantom, the angles (rad), the truth slices, the centre."""
    from lightpipe.techniques.tomo.simulate import TomoSimParams, TomoSimulation

    rows = max(slices, 3)
    sim = TomoSimulation(TomoSimParams(shape=(rows, columns), projections=projections, endpoint=False,
                                       centre_offset_px=0.0))
    stack = np.stack([sim.line_integrals(a) for a in sim.angles_deg], axis=1).astype(np.float32)
    return stack[:slices], np.radians(sim.angles_deg), sim.volume()[:slices], sim.centre


def best_time(run: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    """Warm up once, then the best of ``repeat`` timed runs, and the last result."""
    result = run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def error(image: np.ndarray, truth: np.ndarray) -> float:
    """Normalised error inside the reconstruction circle, the smallest over the square's symmetries."""
    from lightpipe.techniques.tomo.geometry import circle

    mask = circle(truth.shape[0])
    norm = np.linalg.norm(truth[mask])
    candidates = [np.rot90(image, k) for k in range(4)]
    candidates += [np.fliplr(c) for c in candidates]
    return float(min(np.linalg.norm((c - truth)[mask]) / norm for c in candidates))


def lightpipe_runner(sino: np.ndarray, angles: np.ndarray, centre: float, cores: int | None) -> Callable[[], np.ndarray]:
    from lightpipe.core.parts import ThreadPartRunner, available_cores
    from lightpipe.techniques.tomo.parts import Recipe, reconstruct_in_parts

    recipe = Recipe("fbp", "ramp", 1, centre, sino.shape[-1], 0)
    parts = cores or available_cores()
    return lambda: reconstruct_in_parts(sino, angles, recipe, ThreadPartRunner(parts), parts)


def astra_runner(sino: np.ndarray, angles: np.ndarray) -> tuple[Callable[[], np.ndarray], str]:
    import astra

    n = sino.shape[-1]
    volume_geometry = astra.create_vol_geom(n, n)
    projection_geometry = astra.create_proj_geom("parallel", 1.0, n, angles)
    projector = astra.create_projector("linear", projection_geometry, volume_geometry)

    def one(sinogram: np.ndarray) -> np.ndarray:
        sid = astra.data2d.create("-sino", projection_geometry, sinogram)
        rid = astra.data2d.create("-vol", volume_geometry)
        config = astra.astra_dict("FBP")
        config.update(ProjectorId=projector, ProjectionDataId=sid, ReconstructionDataId=rid,
                      option={"FilterType": "Ram-Lak"})
        algorithm = astra.algorithm.create(config)
        astra.algorithm.run(algorithm)
        image = astra.data2d.get(rid)
        astra.algorithm.delete(algorithm)
        astra.data2d.delete([sid, rid])
        return image

    return (lambda: np.stack([one(s) for s in sino])), str(astra.__version__)


def algotom_runner(sino: np.ndarray, centre: float) -> tuple[Callable[[], np.ndarray], str]:
    from importlib.metadata import version

    import algotom.rec.reconstruction as rec

    def run() -> np.ndarray:
        return np.stack([rec.fbp_reconstruction(s, centre, ratio=1.0, filter_name=None, apply_log=False, gpu=False)
                         for s in sino])

    return run, version("algotom")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 columns, 180 projections, 4 slices")
    parser.add_argument("--json", action="store_true", help="figures as JSON on the last line of stdout")
    parser.add_argument("--slices", type=int, default=8, help="slices reconstructed per run (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best counts (default 3)")
    args = parser.parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    columns, projections, slices = (128, 180, 4) if args.quick else (512, 720, args.slices)
    sino, angles, truth, centre = sinograms(columns, projections, slices)
    middle = slices // 2
    figures: dict[str, Any] = {"columns": columns, "projections": projections, "slices": slices}
    rows = []
    for label, cores in (("lightpipe", None), ("lightpipe_1_thread", 1)):
        seconds, volume = best_time(lightpipe_runner(sino, angles, centre, cores), args.repeat)
        figures[label] = {"s_per_slice": seconds / slices, "error": error(volume[middle], truth[middle])}
        rows.append((label, figures[label]))
    peers: dict[str, Callable[[], tuple[Callable[[], np.ndarray], str]]] = {
        "astra": lambda: astra_runner(sino, angles), "algotom": lambda: algotom_runner(sino, centre)}
    for name, build in peers.items():
        try:
            run, peer_version = build()
        except ImportError as exc:
            figures[name] = {"unavailable": f"{exc}; install it with: pip install {name}" +
                             ("-toolbox" if name == "astra" else "")}
            print(f"{name}: not measured: {figures[name]['unavailable']}", file=out)
            continue
        seconds, volume = best_time(run, args.repeat)
        figures[name] = {"s_per_slice": seconds / slices, "error": error(volume[middle], truth[middle]),
                         "version": peer_version}
        rows.append((f"{name} {peer_version}", figures[name]))
    measured = [figures[p]["s_per_slice"] for p in peers if "s_per_slice" in figures[p]]
    if measured:
        figures["ratio_to_best_peer"] = figures["lightpipe"]["s_per_slice"] / min(measured)
        figures["target"] = TARGET
        figures["meets_target"] = figures["ratio_to_best_peer"] <= TARGET
    print(f"FBP of {slices} slices of {columns} x {columns} from {projections} projections (ramp filter)", file=out)
    print(f"{'program':<28}{'s/slice':>10}{'error':>9}", file=out)
    for label, values in rows:
        print(f"{label:<28}{values['s_per_slice']:>10.4f}{values['error']:>9.4f}", file=out)
    if measured:
        print(f"lightpipe / best peer: {figures['ratio_to_best_peer']:.2f} (target <= {TARGET})", file=out)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
