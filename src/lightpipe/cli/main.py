"""``lightpipe``: run, validate and inspect pipelines; run the demo; make simulated data.

Heavy modules (Dask, h5py) are imported only by the subcommands that need them.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, Sequence, get_args

from rich.console import Console
from rich.markup import escape

from lightpipe.cli.service import SERVICE_COMMANDS, add_service_commands
from lightpipe.core.errors import LightpipeError
from lightpipe.core.ledger import SCAN_STOPPED

console = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the terminal's width
out = Console(soft_wrap=True)


def _engine_options() -> dict[str, tuple[type, str]]:
    """Every option of every registered engine: its flag type and help (which engines take it, and how)."""
    from lightpipe.core import registry

    engines = registry.load_all("engines")
    found: dict[str, tuple[type, dict[str, list[str]]]] = {}
    for name, cls in engines.items():
        for option, info in cls.Params.model_fields.items():
            kinds = [t for t in (info.annotation, *get_args(info.annotation)) if t in (int, float, str)]
            default = "" if info.default is None else f" (default {info.default})"
            _, helps = found.setdefault(option, (kinds[0] if kinds else str, {}))
            helps.setdefault(f"{info.description}{default}", []).append(name)
    options = {}
    for option, (kind, helps) in found.items():
        if len(helps) == 1 and len(next(iter(helps.values()))) == len(engines):
            text = next(iter(helps))
        else:
            text = "; ".join(f"{', '.join(names)}: {what}" for what, names in helps.items())
        options[option] = (kind, text)
    return options


def _add_engine_args(p: argparse.ArgumentParser, output: str = "results") -> None:
    from lightpipe.core import registry

    p.add_argument("--output", "-o", default=output, help=f"directory for result files (default: {output})")
    p.add_argument("--engine", choices=registry.names("engines"), default="local",
                   help="where stages run (default: local); `lightpipe engines` lists them with their options")
    for option, (kind, text) in _engine_options().items():
        p.add_argument(f"--{option.replace('_', '-')}", dest=f"engine_{option}", metavar=option.upper(), type=kind,
                       default=None, help=text)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lightpipe`` command."""
    parser = argparse.ArgumentParser(prog="lightpipe", description="Beamline data into results while the experiment runs.")
    from lightpipe import __version__

    parser.add_argument("--version", action="version", version=f"lightpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline")
    run.add_argument("pipeline", help="pipeline YAML file")
    run.add_argument("--input", "-i", help="file, glob or folder to read instead of the pipeline's source")
    run.add_argument("--source", help="a live detector instead of the pipeline's source: eiger://HOST:PORT "
                                      "(stream v1) or eiger2://HOST:PORT (stream v2)")
    _add_engine_args(run)

    val = sub.add_parser("validate", help="check pipeline files without running them")
    val.add_argument("pipelines", nargs="+", help="pipeline YAML files")

    from lightpipe.cli.control import add_abort_arguments, add_status_arguments, add_stop_arguments

    add_status_arguments(sub.add_parser("status", help="show running pipelines: components, state, heartbeat, counters"))
    add_abort_arguments(sub.add_parser("abort", help="abort the current scan of a running pipeline"))
    add_stop_arguments(sub.add_parser("stop", help="end a running pipeline: abort its current scan and start no other"))

    from lightpipe.cli.catalog import add_catalog_commands

    add_catalog_commands(sub)
    add_service_commands(sub)

    demo = sub.add_parser("demo", help="simulate a scan, write it as a DECTRIS-style file and process it")
    demo.add_argument("--headless", action="store_true", help="plain output, for scripts")
    demo.add_argument("--frames", type=int, default=1000, help="data frames to simulate (default 1000)")
    _add_engine_args(demo, output="results/demo")

    sim = sub.add_parser("simulate", help="write simulated data")
    sim_sub = sim.add_subparsers(dest="simulated", required=True)
    from lightpipe.core.hdf5 import COMPRESSIONS

    frames = sim_sub.add_parser("frames", help="an NXmx-style HDF5 file of darks, flats and powder-ring frames")
    frames.add_argument("output", help="file to write, e.g. scan_master.h5")
    frames.add_argument("--frames", type=int, default=100)
    frames.add_argument("--darks", type=int, default=10)
    frames.add_argument("--flats", type=int, default=10)
    frames.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"))
    frames.add_argument("--frames-per-file", type=int, default=None, help="split data into linked files (DECTRIS style)")
    frames.add_argument("--compression", choices=COMPRESSIONS, default="bitshuffle")
    frames.add_argument("--seed", type=int, default=0)
    from lightpipe.simulators.eiger_cli import add_eiger_arguments

    add_eiger_arguments(sim_sub.add_parser("eiger", help="an EIGER detector: SIMPLON REST control and its ZeroMQ stream"))
    return parser


def _flag_problems(exc: Any) -> str:
    """A pydantic ``ValidationError`` of options given as flags, one ``--flag: why (got value)`` each."""
    return "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']} (got {e['input']!r})" for e in exc.errors())


def _engine(args: argparse.Namespace) -> Any:
    """The engine ``--engine`` names, built from the engine options given on the command line."""
    from pydantic import ValidationError

    from lightpipe.core import registry
    from lightpipe.engines import engine_class

    cls = engine_class(args.engine)
    given = {k.removeprefix("engine_"): v for k, v in vars(args).items() if k.startswith("engine_") and v is not None}
    for option in given:
        if option not in cls.Params.model_fields:
            owners = [n for n, c in registry.load_all("engines").items() if option in c.Params.model_fields]
            flag = f"--{option.replace('_', '-')}"
            raise LightpipeError(f"{flag} is an option of the {' and '.join(owners)} engine, not of {args.engine}; "
                                 f"add --engine {owners[0]} or drop {flag}")
    try:
        return cls.from_options(given)
    except ValidationError as exc:
        raise LightpipeError(f"bad option of the {args.engine} engine: {_flag_problems(exc)}") from exc


def _apply_input(pipeline: Any, path: str | None) -> Any:
    if path is None:
        return pipeline
    from lightpipe.core.source import source_for_input

    source = pipeline.document["source"]
    return pipeline.with_source(*source_for_input(path, source["use"], dict(source.get("params", {}))))


def _apply_live_source(pipeline: Any, url: str | None) -> Any:
    if url is None:
        return pipeline
    scheme, sep, address = url.partition("://")
    versions = {"eiger": "v1", "eiger2": "v2"}
    if not sep or scheme not in versions or ":" not in address:
        raise LightpipeError(f"--source {url!r}: write eiger://HOST:PORT (stream v1) or eiger2://HOST:PORT (stream v2)")
    keep = pipeline.document["source"].get("params", {}) if pipeline.document["source"]["use"] == "eiger" else {}
    return pipeline.with_source("eiger", {**keep, "endpoint": f"tcp://{address}", "version": versions[scheme]})


def _report(report: Any, engine: str, seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"lightpipe run ({engine} engine, {seconds:.1f} s)")
    for col in ("scan", "state", "received", "written", "failed", "events/s", "file"):
        table.add_column(col, justify="right" if col not in ("scan", "state", "file") else "left")
    for s in report.scans:
        rate = s.ledger.received / s.seconds if s.seconds else 0.0
        files = ", ".join(str(f) for f in s.files)
        table.add_row(s.scan, s.ledger.state, str(s.ledger.received), str(s.ledger.written), str(len(s.ledger.failed)),
                      f"{rate:.0f}", files)
    out.print(table)
    for s in report.scans:
        if s.ledger.error:
            # an abort's error already reads "scan aborted: <reason>": say the state once, then the reason
            why = s.ledger.error.removeprefix(f"scan {s.ledger.state}: ")
            console.print(f"[red]scan {escape(s.scan)} {s.ledger.state}:[/] {escape(why)}")
        failed = [f for f in s.ledger.failed if f.stage != SCAN_STOPPED]
        for f in failed[:10]:
            console.print(f"[red]failed[/] event {f.index} ({f.stream}) in {f.stage}: {escape(f.message)}")
        if len(failed) > 10:
            console.print(f"[red]... and {len(failed) - 10} more failed events, listed in the result file")
        if len(failed) < len(s.ledger.failed):
            console.print(f"{len(s.ledger.failed) - len(failed)} events in flight when the scan stopped were not "
                          "processed (status 2 in the result file)")


@contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
    """Make SIGTERM stop a run as Ctrl-C does: the first SIGINT or SIGTERM raises ``KeyboardInterrupt``.

    The exception carries the signal's name (the scan's file records it). Later
    signals are ignored with a note, so that the scan being closed can finish
    writing its file; ``kill -9`` still ends the process at once. Yields the
    signals received, in order. Outside the main thread, changes nothing.
    """
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            console.print(f"[yellow]{signal.Signals(signum).name}: closing the scan's files, one moment[/]")
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from lightpipe.cli.progress import RunDisplay
    from lightpipe.core.hooks import RunHooks
    from lightpipe.core.pipeline import load_pipeline
    from lightpipe.core.report import RunReport, ScanReport

    if args.input and args.source:
        raise LightpipeError("give --input (files) or --source (a live detector), not both")
    from lightpipe.control import ControlServer
    from lightpipe.core.topology import Topology

    class Finished(RunHooks):
        """Every scan that ended, the interrupted one too (the run's own report is lost with the interrupt)."""

        def __init__(self) -> None:
            self.report = RunReport()

        def scan_finished(self, report: ScanReport) -> None:
            self.report.scans.append(report)

    pipeline = _apply_live_source(_apply_input(load_pipeline(Path(args.pipeline)), args.input), args.source)
    topology = Topology(pipeline.name)
    finished = Finished()
    t0 = time.perf_counter()
    with _signals_interrupt() as received:
        try:
            # the control channel lets `lightpipe status`, `abort` and `stop` reach this run
            with _engine(args) as engine, ControlServer(topology) as control:
                if args.quiet:
                    report = engine.run(pipeline, args.output, topology=topology, hooks=[control, finished])
                else:
                    with RunDisplay(console) as display:
                        report = engine.run(pipeline, args.output, topology=topology,
                                            hooks=[control, display, finished])
        except KeyboardInterrupt as exc:
            name = str(exc) or "SIGINT"
            _report(finished.report, args.engine, time.perf_counter() - t0)
            stopped = [s for s in finished.report.scans if s.ledger.state == "interrupted"]
            where = f": scan {escape(stopped[0].scan)} closed as interrupted" if stopped else ""
            console.print(f"[yellow]{name}[/]{where}; the result file says so and keeps what was processed")
            for f in finished.report.files:
                out.print(f"result: {f}")
            return 128 + (received[0] if received else signal.SIGINT)
    _report(report, args.engine, time.perf_counter() - t0)
    if topology.stop_requested:
        done = len(report.scans)
        console.print(f"[yellow]stopped on request[/] ({escape(topology.stop_reason or 'no reason given')}) after "
                      f"{done} scan{'' if done == 1 else 's'}")
    for f in report.files:
        out.print(f"result: {f}")
    return 1 if any(s.ledger.state == "failed" for s in report.scans) else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from lightpipe.core.pipeline import load_pipeline

    status = 0
    for path in args.pipelines:
        try:
            p = load_pipeline(Path(path))  # a Path: always a file, whatever its suffix
        except LightpipeError as exc:
            console.print(f"[red]invalid[/] {escape(str(exc))}")
            status = 1
        except Exception as exc:  # a check that crashed must not hide the other files' verdicts
            console.print(f"[red]invalid[/] {escape(path)}: lightpipe could not check it ({type(exc).__name__}: "
                          f"{escape(str(exc))}); this is a bug in lightpipe, please report it with the file")
            status = 1
        else:
            out.print(f"[green]ok[/] {path}: {p.name}, {len(p.stages)} stages, {len(p.sinks)} sinks")
    return status


def cmd_catalog(args: argparse.Namespace) -> int:
    from lightpipe.cli.catalog import cmd_catalog as catalog

    return catalog(args, out, console)


def cmd_demo(args: argparse.Namespace) -> int:
    from lightpipe.cli.demo import run_demo

    return run_demo(args, _engine, console, out, _report)


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.simulated == "eiger":
        from lightpipe.simulators.eiger_cli import run_eiger

        return run_eiger(args)
    from lightpipe.simulators.frames import FrameSimParams, write_nxmx

    from pydantic import ValidationError

    try:
        params = FrameSimParams(name=Path(args.output).stem, frames=args.frames, darks=args.darks, flats=args.flats,
                                shape=tuple(args.shape), seed=args.seed)
    except ValidationError as exc:
        raise LightpipeError(f"cannot simulate these frames: {_flag_problems(exc)}") from exc
    path = write_nxmx(args.output, params, compression=args.compression, frames_per_file=args.frames_per_file)
    out.print(f"wrote {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from lightpipe.cli.control import cmd_status as status

    return status(args)


def cmd_abort(args: argparse.Namespace) -> int:
    from lightpipe.cli.control import cmd_abort as abort

    return abort(args)


def cmd_stop(args: argparse.Namespace) -> int:
    from lightpipe.cli.control import cmd_stop as stop

    return stop(args)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "stages": cmd_catalog, "sources": cmd_catalog,
            "sinks": cmd_catalog, "engines": cmd_catalog, "demo": cmd_demo, "simulate": cmd_simulate,
            "status": cmd_status, "abort": cmd_abort, "stop": cmd_stop, **SERVICE_COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightpipe`` command."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LightpipeError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
