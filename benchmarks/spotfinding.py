"""Spot finding on EIGER 16M-sized rotation images: lightpipe's ``dispersion_spots`` against ``dials.find_spots``.

Both read the same miniCBF files (simulated lysozyme rotation images of
4371 x 4150 pixels, the EIGER 16M's shape) and find spots with the same
parameters (DIALS's dispersion algorithm, per image). lightpipe runs the
pipeline ``image_series -> dispersion_spots -> spot_table -> nexus`` on the
local engine (one worker) and on a Dask LocalCluster of two single-threaded
workers; DIALS runs ``dials.find_spots`` with ``nproc=1`` and ``nproc=2``.
The figure is images/s per worker, to set beside Spark-DIALS's Table 5
(seed 001: 1,800 EIGER 16M images in 56-135 s on 30-120 cores, 0.11-0.44
images/s per core). DIALS's start-up (Python imports, reading the
experiment) is measured on one image and reported apart. Both find the
spots of each image on its own (DIALS's ``spotfinder.force_2d=True``,
``spot_table``'s ``join_images: false``); ``images/s`` of
DIALS is over the whole program, start-up included, and ``without start-up``
leaves it out.

Run ``python benchmarks/spotfinding.py`` (``--quick``: small images, a few
seconds; ``--json``: the figures as one JSON object on the last line of
stdout). Other processes on the machine take cores from both sides alike;
the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Spark-DIALS, Table 5 of seed 001: (cores, spot-finding seconds) for 1,800 images, original DIALS and Spark-DIALS.
SPARK_DIALS = {"images": 1800, "dials": [(30, 135), (60, 126), (90, 123), (120, 126)],
               "spark_dials_local": [(30, 86), (60, 63), (90, 56), (120, 57)]}


def _pipeline(glob: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"version": 2, "name": "spotfinding-bench", "source": {"use": "image_series", "params": {"path": glob}},
            # spots per image on both sides: DIALS with force_2d=True, spot_table without joining images
            "stages": {"spots": {"use": "dispersion_spots", "params": params},
                       "table": {"use": "spot_table", "params": {"join_images": False}}},
            "sinks": [{"use": "nexus", "fields": ["table.spot_count", "table.image", "table.spot_x",
                                                  "table.spot_y", "table.spot_intensity"]}]}


def _run(engine: Any, doc: dict[str, Any], out: Path) -> tuple[float, int]:
    """Seconds of one run and the spots it found."""
    import h5py

    from lightpipe.core.pipeline import load_pipeline

    pipeline = load_pipeline(doc)
    start = time.perf_counter()
    report = engine.run(pipeline, out)
    seconds = time.perf_counter() - start
    [scan] = report.scans
    assert scan.ledger.failed == [], scan.ledger.failed
    with h5py.File(scan.files[0]) as f:
        return seconds, int(f["entry/table/spot_count"][()].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="rotation images to time (default 8)")
    parser.add_argument("--quick", action="store_true", help="four 512 x 512 images, a few seconds")
    parser.add_argument("--json", action="store_true", help="figures as JSON on the last line of stdout")
    parser.add_argument("--workdir", default=None, help="where the images and results go (default a temporary folder)")
    args = parser.parse_args()
    out = sys.stderr if args.json else sys.stdout

    from lightpipe.engines.dask import DaskEngine, make_cluster
    from lightpipe.engines.local import LocalEngine
    from lightpipe.techniques.mx.dials import dials_python, dials_version, find_spots_with_dials
    from lightpipe.techniques.mx.simulate import RotationSimParams, RotationSimulation
    from lightpipe.techniques.mx.stages import DispersionParams
    from lightpipe.techniques.mx.writers import write_cbf_series

    shape, n = ((512, 512), 4) if args.quick else ((4371, 4150), args.images)
    # a 16M detector at 0.2 m sees to about 1.6 angstrom: several hundred spots per image
    sim = RotationSimulation(RotationSimParams(name="bench", images=n, shape=shape, distance_m=0.2 if not args.quick
                                               else 0.08, omega_increment_deg=0.1 if not args.quick else 0.5))
    params = DispersionParams()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spotfinding-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        files = write_cbf_series(work / "cbf", sim)
        print(f"wrote {n} images of {shape[0]} x {shape[1]} in {time.perf_counter() - t:.1f} s", file=out)
        glob = str(work / "cbf" / "*.cbf")
        doc = _pipeline(glob, params.model_dump())
        warm = _pipeline(str(files[0]), params.model_dump())
        figures: dict[str, Any] = {"benchmark": "spotfinding", "images": n, "shape": list(shape),
                                   "load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
        with LocalEngine() as engine:
            _run(engine, warm, work / "warm")
            seconds, spots = _run(engine, doc, work / "local")
        figures["lightpipe_local"] = {"workers": 1, "seconds": seconds, "images_per_s": n / seconds,
                                      "images_per_s_per_worker": n / seconds, "spots": spots}
        client, cluster = make_cluster(None, 2, 1)
        try:
            with DaskEngine(client=client, chunk_size=1) as engine:
                _run(engine, warm, work / "warm-dask")
                seconds, dask_spots = _run(engine, doc, work / "dask")
        finally:
            client.close()
            cluster.close()
        figures["lightpipe_dask"] = {"workers": 2, "seconds": seconds, "images_per_s": n / seconds,
                                     "images_per_s_per_worker": n / seconds / 2, "spots": dask_spots}
        if dials_python() is None:
            figures["dials"] = None
            print("dials.find_spots is not installed (apt-get install python3-dials): no reference", file=out)
        else:
            figures["dials_version"] = dials_version()
            start_up = find_spots_with_dials(files[:1], work / "dials-1", params).seconds
            figures["dials_one_image_seconds"] = start_up
            for nproc in (1, 2):
                found = find_spots_with_dials(files, work / f"dials-{nproc}", params, nproc=nproc)
                without = max(found.seconds - start_up, 1e-9) * n / max(n - 1, 1)
                figures[f"dials_nproc{nproc}"] = {
                    "seconds": found.seconds, "images_per_s": n / found.seconds,
                    "images_per_s_per_worker": n / found.seconds / nproc,
                    "images_per_s_per_worker_without_start_up": n / without / nproc, "spots": len(found.x)}
            for name in ("local", "dask"):
                ours = figures[f"lightpipe_{name}"]
                ref = figures[f"dials_nproc{ours['workers']}"]
                ours["ratio_to_dials"] = ours["images_per_s"] / ref["images_per_s"]
                ours["ratio_to_dials_without_start_up"] = (ours["images_per_s_per_worker"]
                                                           / ref["images_per_s_per_worker_without_start_up"])
        figures["spark_dials_images_per_s_per_core"] = {
            f"{kind} {cores} cores": SPARK_DIALS["images"] / seconds / cores
            for kind in ("dials", "spark_dials_local") for cores, seconds in SPARK_DIALS[kind]}
        print(f"load average {figures['load_average'][0]:.2f} on {figures['cpus']} CPUs", file=out)
        for key in ("lightpipe_local", "lightpipe_dask", "dials_nproc1", "dials_nproc2"):
            row = figures.get(key)
            if row:
                print(f"{key:16s} {row['seconds']:7.2f} s  {row['images_per_s']:6.2f} images/s  "
                      f"{row['images_per_s_per_worker']:6.2f} per worker  {row['spots']} spots", file=out)
        for name in ("local", "dask"):
            ratio = figures[f"lightpipe_{name}"].get("ratio_to_dials")
            if ratio is not None:
                print(f"lightpipe {name} / DIALS {figures['dials_version']}: {ratio:.2f}x "
                      f"({figures[f'lightpipe_{name}']['ratio_to_dials_without_start_up']:.2f}x without DIALS's "
                      "start-up)", file=out)
        if args.json:
            print(json.dumps(figures))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
