"""A rich progress display for runs: events done/total, events/s, buffer fill, failures."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lightpipe.core.hooks import ChunkDone, RunHooks


class RunDisplay(RunHooks):
    """Shows one bar per scan pass while a pipeline runs: a run hook; use it as a context manager.

    Columns: events done/total, events/s, fill of the in-flight window, failed events,
    and for a live source the lag behind the detector and the frames waiting.

    Parameters
    ----------
    console
        Where to draw; a non-terminal console gets a plain final line per pass.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TextColumn("{task.fields[rate]:>8.1f} ev/s"),
            TextColumn("buffer {task.fields[fill]:>4.0%}"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[lag]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[tuple[str, int], Any] = {}

    def __enter__(self) -> RunDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def chunk_done(self, chunk: ChunkDone) -> None:
        p = chunk.progress
        key = (p.scan, p.pass_number)
        if key not in self._tasks:
            label = f"{p.scan} pass {p.pass_number + 1}/{p.passes}"
            self._tasks[key] = self._progress.add_task(label, total=p.total, rate=0.0, fill=0.0, failed=0, lag="")
        task_id = self._tasks[key]
        task = self._progress.tasks[task_id]
        elapsed = task.elapsed or 0.0
        rate = p.done / elapsed if elapsed > 0 else 0.0
        lag = ""
        if "lag_s" in p.source:  # a live source: how far behind the detector, and what waits on disk
            lag = f"lag {p.source['lag_s']:.1f} s, {p.source.get('held', 0)} held, {p.source.get('on_disk', 0)} on disk"
        self._progress.update(task_id, completed=p.done, rate=rate, fill=p.buffer_fill, failed=len(p.ledger.failed),
                              lag=lag)
