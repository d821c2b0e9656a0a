"""Smoke test of benchmarks/: every benchmark runs with --quick and prints sane JSON figures.

This checks that the benchmarks work, not how fast anything is: timings on a
shared test machine mean nothing, so only their presence and sign are checked.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lightpipe.engines.dask import WORKER_ENV

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = [pytest.mark.slow, pytest.mark.dask]


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """The JSON of ``run_all.py --quick --json``: every benchmark, each in its own process."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=480, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for title in ("Engine overhead", "Scaling", "Stream ingest", "Nanosurveyor scenario"):  # ptycho_engines: JSON only
        assert title in done.stderr  # the tables went to stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # one JSON object on the last line


def test_overhead_figures(figures: dict[str, Any]) -> None:
    fig = figures["overhead"]
    assert {"frames", "shape", "chunk_size", "repeat", "dask_workers", "dask_startup_s", "results"} <= set(fig)
    assert fig["dask_startup_s"] > 0
    assert fig["dask_worker_env"].keys() == WORKER_ENV.keys() and fig["dask_worker_env"]["OMP_NUM_THREADS"] == "1"
    rows = fig["results"]
    assert {(r["compression"], r["runner"]) for r in rows} == {
        (c, r) for c in ("none", "bitshuffle-lz4") for r in ("raw ds[i]", "raw read_direct", "local", "dask")
    }
    for r in rows:
        assert r["seconds"] > 0 and r["frames_per_s"] > 0 and r["ratio_vs_raw"] > 0 and r["file_bytes"] > 0
        assert r["frames_per_s"] * r["seconds"] == pytest.approx(fig["frames"])
        assert r["faults_per_frame"] >= 0 and r["read_ms_per_frame"] > 0
        if r["runner"] == "raw ds[i]":
            assert r["ratio_vs_raw"] == 1.0 and r["target"] is None
        if r["runner"] in ("local", "dask"):
            assert r["target"] > 0 and r["meets_target"] == (r["ratio_vs_raw"] >= r["target"])
    sizes = {r["compression"]: r["file_bytes"] for r in rows}
    assert sizes["bitshuffle-lz4"] < sizes["none"]  # the compressed file really is compressed


def test_scaling_figures(figures: dict[str, Any]) -> None:
    fig = figures["scaling"]
    assert {"frames", "shape", "target_shape", "raw", "dask", "par_2", "peff_2", "target_peff"} <= set(fig)
    assert fig["raw"]["seconds"] > 0 and fig["raw"]["frames_per_s"] > 0
    assert [d["workers"] for d in fig["dask"]] == [1, 2]
    one, two = fig["dask"]
    for d in fig["dask"]:
        assert d["seconds"] > 0 and d["frames_per_s"] > 0 and d["startup_s"] > 0 and d["ratio_vs_raw"] > 0
        assert d["stage_ms_per_frame"] > 0
        # the benchmark's premise: one numerical-library thread per worker, from the process's start
        assert d["worker_env"]["OMP_NUM_THREADS"] == "1"
    assert one["par"] == 1.0 and one["peff"] == 1.0
    assert fig["par_2"] == pytest.approx(one["seconds"] / two["seconds"])
    assert fig["peff_2"] == pytest.approx(fig["par_2"] / 2)


def test_the_engines_worker_environment_is_there_when_the_workers_start(figures: dict[str, Any]) -> None:
    assert figures["overhead"]["dask_worker_env"] == WORKER_ENV
    for d in figures["scaling"]["dask"]:
        assert {k: d["worker_env"][k] for k in WORKER_ENV} == WORKER_ENV


def test_stream_ingest_figures(figures: dict[str, Any]) -> None:
    fig = figures["stream_ingest"]
    assert {"frames", "shape", "encoding", "distinct_frames", "repeat", "results"} <= set(fig)
    rows = fig["results"]
    assert {(r["stream"], r["runner"]) for r in rows} == {(v, r) for v in ("v1", "v2") for r in ("raw", "lightpipe")}
    frame_mb = fig["shape"][0] * fig["shape"][1] * 2 / 1e6
    for r in rows:
        assert r["seconds"] > 0 and r["frames_per_s"] * r["seconds"] == pytest.approx(fig["frames"])
        assert r["decoded_mb_per_s"] == pytest.approx(r["frames_per_s"] * frame_mb)
        # compressed on the wire: fewer bytes than decoded, but every frame's blob is there
        assert 0 < r["wire_mb_per_s"] < r["decoded_mb_per_s"] and r["compression_ratio"] > 1
        assert r["receiver_cpu_s"] > 0 and r["sender_cpu_s"] >= 0 and r["faults_per_frame"] >= 0
        if r["runner"] == "raw":
            assert r["ratio_vs_raw"] == 1.0 and r["target"] is None and r["peak_held"] is None
        else:
            assert r["meets_target"] == (r["ratio_vs_raw"] >= r["target"])
            assert 0 <= r["peak_held"] <= fig["frames"] and r["peak_spilled"] == 0
            assert r["stage_ms_per_frame"]["source"] > 0  # the worker decoded the frames


def test_nanosurveyor_figures(figures: dict[str, Any]) -> None:
    fig = figures["nanosurveyor"]
    assert {"scenario", "sweep", "raw", "highest_sustained_hz", "capacity_hz", "ratio_vs_raw"} <= set(fig)
    scenario, fastest, raw = fig["scenario"], fig["sweep"][-1], fig["raw"]
    assert scenario["rate_hz"] > 0 and fastest["rate_hz"] == 0 and raw["runner"] == "raw"
    for r in (scenario, *fig["sweep"], raw):
        assert r["seconds"] > 0 and r["processed_hz"] * r["seconds"] == pytest.approx(r["frames"])
        assert r["send_hz"] > 0 and r["lag_at_end_s"] >= 0
        # the file closes after the last frame is sent, so processing is never faster than sending
        assert r["processed_hz"] <= r["send_hz"]
    assert fastest["sustained"] is None and raw["sustained"] is None  # as fast as possible: capacity, not a rate kept
    assert scenario["sustained"] == (scenario["lag_at_end_s"] <= fig["lag_limit_s"])
    assert fig["highest_sustained_hz"] in (None, *[r["rate_hz"] for r in (scenario, *fig["sweep"]) if r["sustained"]])
    assert fig["ratio_vs_raw"] == pytest.approx(fastest["processed_hz"] / raw["processed_hz"])
    assert {"source", "photons", "downsampled", "scalars", "average"} <= set(scenario["stage_ms_per_frame"])


def test_ptycho_engines_figures(figures: dict[str, Any]) -> None:
    fig = figures["ptycho_engines"]
    assert {e["engine"] for e in fig["engines"]} == {"DM", "AP", "ML"}
    for e in fig["engines"]:
        assert e["seconds_per_iteration"] > 0 and all(r > 0 for r in e["ratio_vs"].values())
    assert all(v["seconds"] > 0 for v in fig["fft_pairs_s"].values())
    [run] = fig["reconstruction"]  # one noise seed with --quick
    assert 0 <= run["object_error"] < 1 and run["seed"] == 0 and "peers" in fig


def test_api_load_figures(figures: dict[str, Any]) -> None:
    fig = figures["api_load"]
    assert fig["api"] and fig["writes"] and len(fig["api"]) == len(fig["writes"])  # each database measured
    for run in fig["api"]:
        assert run["errors"] == 0, run["error_examples"]  # a smoke run's load is light: any error is a bug
        # each client's first request comes before the clock: reported, not counted in the run's requests
        assert run["kinds"]["first"]["requests"] == run["clients"]
        assert run["requests"] == sum(k["requests"] for name, k in run["kinds"].items() if name != "first") > 0
        assert {"status", "list", "results"} <= set(run["kinds"])
        for kind in run["kinds"].values():
            assert 0 < kind["p50_s"] <= kind["p99_s"] <= kind["max_s"] and kind["per_s"] > 0
        for kind in ("status", "list", "results"):  # the service's own histogram saw the same requests
            assert run["kinds"][kind]["server_mean_s"] > 0
        assert run["meets_target"] == (run["kinds"]["status"]["p99_s"] < fig["target_status_p99_s"])
        assert 0 < run["server_cpu_ms_per_request"] == pytest.approx(1000 * run["server_cpu_s"] / run["requests"])
    for w in fig["writes"]:
        assert w["errors"] == 0 and w["transactions"] > 0 and 0 < w["flush_p50_s"] <= w["flush_p99_s"]
        assert w["transactions_per_s"] == pytest.approx(w["transactions"] / w["seconds"])


def test_service_overhead_figures(figures: dict[str, Any]) -> None:
    fig = figures["service_overhead"]
    for r in fig["run"] + fig["service"]:  # both processed the whole scan, and start-up is outside the scan
        assert r["state"] == "completed" and r["written"] == fig["events"]
        assert 0 < r["scan_s"] < r["wall_s"] and r["startup_s"] == pytest.approx(r["wall_s"] - r["scan_s"])
    best_run, best_service = min(r["scan_s"] for r in fig["run"]), min(r["scan_s"] for r in fig["service"])
    assert fig["ratio"] == pytest.approx(best_run / best_service)
    assert fig["meets_target"] == (fig["ratio"] >= fig["target_ratio"])
