"""``lightpipe status``, ``abort`` and ``stop``: watch running pipelines on this host, end a scan or a run.

The subcommands talk to each pipeline's control channel
(:mod:`lightpipe.control`); they find the pipelines in the runtime directory
unless given ``--endpoint``. Each exits with status 1 when there is nothing to
talk to, a pipeline does not answer, or it refuses.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lightpipe.control import ControlClient, ControlError, RunInfo, runtime_dir

STATE_STYLES = {"running": "green", "idle": "cyan", "starting": "yellow", "stopping": "yellow",
                "stopped": "dim", "aborted": "magenta", "failed": "bold red"}


@dataclass
class _Target:
    """A pipeline to talk to: found in the runtime directory, or given by its endpoint."""

    endpoint: str
    run: RunInfo | None = None

    @property
    def label(self) -> str:
        if self.run is None:
            return self.endpoint
        return f"{self.run.pipeline} (pid {self.run.pid}, {self.endpoint})"


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, e.g. 0.5, got {text!r}")
    return value


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pid", type=int, help="the pipeline run by this process (see `lightpipe status`)")
    which.add_argument("--endpoint", help="the pipeline's control endpoint, e.g. tcp://127.0.0.1:5555 "
                       "(for a pipeline not announced in the runtime directory)")
    parser.add_argument("--timeout", type=_seconds, default=2.0, metavar="SECONDS",
                        help="how long to wait for a pipeline's answer (default 2)")


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``lightpipe status`` to ``parser``."""
    _add_target_arguments(parser)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--watch", "-w", action="store_true", help="refresh until Ctrl-C")
    how.add_argument("--json", action="store_true", help="print the topology of each pipeline as JSON")
    parser.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                        help="seconds between refreshes with --watch (default 1)")


def add_abort_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``lightpipe abort`` to ``parser``."""
    _add_target_arguments(parser)
    parser.add_argument("--reason", help="why, recorded with the aborted scan (default: who aborted)")


def add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``lightpipe stop`` to ``parser``."""
    _add_target_arguments(parser)
    parser.add_argument("--reason", help="why, recorded with the aborted scan and in the status "
                        "(default: who stopped it)")


def _targets(args: argparse.Namespace) -> tuple[list[_Target], str]:
    """The pipelines that ``args`` name (all running ones by default), or none and why."""
    if args.endpoint:
        return [_Target(args.endpoint)], ""
    runs = ControlClient.discover()
    if not runs:
        return [], (f"no running pipeline found on this host (looked in {runtime_dir()}); "
                    "start one with `lightpipe run`, or give --endpoint")
    if args.pid is None:
        return [_Target(r.endpoint, r) for r in runs], ""
    chosen = [_Target(r.endpoint, r) for r in runs if r.pid == args.pid]
    if not chosen:
        return [], f"no running pipeline has pid {args.pid}; running: " + ", ".join(
            f"{r.pipeline} (pid {r.pid})" for r in runs)
    return chosen, ""


def _ask(client: ControlClient, targets: list[_Target], timeout_s: float) -> list[dict[str, Any]]:
    """Each target's topology with its ``endpoint``, or a dict with an ``error``."""
    answers = []
    for t in targets:
        try:
            answers.append({**client.status(t.endpoint, timeout_s), "endpoint": t.endpoint})
        except ControlError as exc:
            answer: dict[str, Any] = {"endpoint": t.endpoint, "error": str(exc)}
            if t.run is not None:
                answer.update(pipeline=t.run.pipeline, pid=t.run.pid, host=t.run.host)
            answers.append(answer)
    return answers


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def _rate(rate: float) -> str:
    return f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.1f}/s"


def render(answer: dict[str, Any]) -> RenderableType:
    """One pipeline's topology as a rich table (or a red line if it did not answer)."""
    if "error" in answer:
        who = f"{answer['pipeline']} (pid {answer['pid']})" if "pipeline" in answer else answer["endpoint"]
        return Text(f"{who}: {answer['error']}", style="red")
    scan = answer["scan"]
    if scan["name"] is not None:
        since = time.time() - scan["started_at"]
        scan_line = f"scan {escape(scan['name'])}: {scan['state']} for {_duration(since)}"
    else:
        scan_line = f"waiting for a scan ({scan['scans_done']} done)"
    if answer["abort"]["requested"]:
        scan_line += f"; [magenta]abort requested: {escape(answer['abort']['reason']) or 'no reason given'}[/]"
    stop = answer.get("stop", {})  # absent in the replies of pipelines started by lightpipe before 'stop'
    if stop.get("requested"):
        scan_line += f"; [magenta]stop requested: {escape(stop['reason']) or 'no reason given'}[/]"
    if answer.get("scans"):
        last = answer["scans"][-1]
        scan_line += (f"; last finished: {escape(last['scan'])} {last['state']}, {last['written']:,}/"
                      f"{last['received']:,} written, {last['failed']:,} failed")
    table = Table(title=f"[bold]{escape(answer['pipeline'])}[/] pid {answer['pid']} on {escape(answer['host'])}, "
                        f"up {_duration(answer['uptime_s'])}", caption=scan_line, caption_justify="left")
    for column in ("component", "kind", "state", "heartbeat", "in", "out", "failed", "fill", "rate", "detail"):
        table.add_column(column, justify="right" if column in ("heartbeat", "in", "out", "failed", "fill", "rate")
                         else "left", no_wrap=column != "detail")
    for c in answer["components"]:
        style = STATE_STYLES.get(c["state"], "")
        table.add_row(
            Text(c["name"]), c["kind"], Text(c["state"], style=style), f"{c['heartbeat_age_s']:.1f} s",
            f"{c['events_in']:,}", f"{c['events_out']:,}",
            Text(f"{c['failed']:,}", style="red" if c["failed"] else ""),
            "" if c["fill"] is None else f"{c['fill']:.0%}", _rate(c["rate"]),
            Text(c["detail"], style="red" if c["state"] == "failed" else ""),
        )
    return table


def cmd_status(args: argparse.Namespace) -> int:
    """``lightpipe status``: show every component of each running pipeline."""
    out, err = Console(), Console(stderr=True)
    client = ControlClient()
    if args.watch:
        return _watch(args, client, out)
    targets, why = _targets(args)
    if not targets:
        err.print(escape(why))
        return 1
    answers = _ask(client, targets, args.timeout)
    if args.json:
        sys.stdout.write(json.dumps(answers, indent=2) + "\n")
    else:
        for answer in answers:
            out.print(render(answer))
    return 1 if any("error" in a for a in answers) else 0


def _watch(args: argparse.Namespace, client: ControlClient, out: Console) -> int:
    """Refresh the status until Ctrl-C; pipelines that start or stop meanwhile come and go."""

    def view() -> RenderableType:
        targets, why = _targets(args)
        if not targets:
            return Text(f"{why}; still watching, Ctrl-C to stop", style="yellow")
        return Group(*(render(a) for a in _ask(client, targets, args.timeout)))

    try:
        with Live(view(), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "an unnamed user"


def _command(args: argparse.Namespace, command: str, err: Console) -> tuple[_Target, dict[str, Any]] | None:
    """Send ``abort`` or ``stop`` with its token to the one pipeline ``args`` name; ``None`` once it says why not."""
    targets, why = _targets(args)
    if not targets:
        err.print(escape(why))
        return None
    if len(targets) > 1:
        err.print("several pipelines are running; choose one with --pid:")
        for t in targets:
            err.print(f"  --pid {t.run.pid if t.run else '?'}  {escape(t.label)}")
        return None
    target = targets[0]
    run = target.run or next((r for r in ControlClient.discover() if r.endpoint == target.endpoint), None)
    if run is None or not run.token:
        request = "an abort" if command == "abort" else "a stop"
        err.print(f"[red]error:[/] cannot {command} {escape(target.label)}: {request} needs the pipeline's "
                  f"token, kept beside its run file in {escape(str(runtime_dir()))} and readable only by the user "
                  f"who started it; run `lightpipe {command}` as that user")
        return None
    reason = args.reason if args.reason is not None else f"lightpipe {command} by {_user()}"
    client = ControlClient()
    send = client.stop if command == "stop" else client.abort
    try:
        return target, send(target.endpoint, reason, args.timeout, token=run.token)
    except ControlError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return None


def cmd_abort(args: argparse.Namespace) -> int:
    """``lightpipe abort``: stop the current scan of one running pipeline."""
    answered = _command(args, "abort", Console(stderr=True))
    if answered is None:
        return 1
    target, reply = answered
    Console().print(f"abort requested: scan {escape(reply['scan'])} of {escape(target.label)}; the pipeline stops "
                    "it, clears its buffers and waits for the next scan")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``lightpipe stop``: end a running pipeline: abort its current scan and start no other."""
    answered = _command(args, "stop", Console(stderr=True))
    if answered is None:
        return 1
    target, reply = answered
    scan = f"its scan {escape(reply['scan'])} is aborted and " if reply["scan"] is not None else ""
    Console().print(f"stop requested: {escape(target.label)} ends; {scan}no other scan starts")
    return 0
