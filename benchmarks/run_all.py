"""Run every benchmark in this folder with its default settings, one after the other.

Each benchmark runs in its own Python process (they start Dask clusters and
set worker environment variables). Tables go to the terminal; with ``--json``
the figures of all benchmarks are printed as one JSON object on stdout, keyed
by benchmark name.

Run ``python benchmarks/run_all.py`` (``--quick`` for tiny settings).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("overhead", "scaling", "stream_ingest", "nanosurveyor", "ptycho_engines", "result_compression",
              "live_latency", "xrd", "api_load", "service_overhead",
              "tomo", "spotfinding", "peakfinding", "ui_live", "maps", "xrf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    extra = ["--json"] * args.json + ["--quick"] * args.quick
    figures = {}
    for name in BENCHMARKS:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        done = subprocess.run(cmd, stdout=subprocess.PIPE if args.json else None, text=True, check=False)
        if done.returncode != 0:
            print(f"benchmark {name} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
        if args.json:
            figures[name] = json.loads(done.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
