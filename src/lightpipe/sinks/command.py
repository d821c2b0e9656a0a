"""Run an external program once per scan, after the scan's result files are written.

Use it to hand results on: copy them to an archive, start a downstream tool,
notify a facility system. The command template follows the ``command`` stage
(:mod:`lightpipe.stages.command`): one string runs through ``/bin/sh -c`` with
shell-quoted values, a list runs as an argument vector; the placeholders are

``{scan}``
    the scan name;
``{output_dir}``
    the run's output folder, also the program's current directory;
``{files}``
    the files written by the sinks listed before this one (as a whole
    argument of an argument vector, one argument per file).

Examples
--------
::

    sinks:
      - use: nexus
      - use: command
        params:
          command: "rsync -a {files} archive:/data/{scan}/"
          timeout_s: 300
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lightpipe.core.bounds import MAX_SECONDS, ScanFileName, Seconds
from lightpipe.core.errors import StageError
from lightpipe.core.event import Event, Scan
from lightpipe.core.ledger import Ledger
from lightpipe.core.sink import Sink, SinkParams
from lightpipe.programs import check_template, render, run_program

log = logging.getLogger(__name__)

#: Placeholders of the per-scan command template, with a sample value used to check the template.
SCAN_PLACEHOLDERS: dict[str, Any] = {"scan": "scan", "output_dir": "results", "files": ["results/scan.nxs"]}


#: A portable environment variable name (POSIX): what every shell and program can read.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CommandSinkParams(SinkParams):
    """Parameters of the command sink."""

    command: str | list[str] = Field(
        description="Command line run by /bin/sh, or an argument list run without a shell; "
        "placeholders {scan} {output_dir} {files}"
    )
    timeout_s: Seconds = Field(
        600.0, description=f"The program is killed after this many seconds; more than 0, at most {MAX_SECONDS}"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the program: NAME (letters, digits, _) "
        "-> value"
    )
    log: ScanFileName = Field(
        "{scan}_command", description="Stem of the program's .stdout and .stderr files in the output folder, "
        "no / or \\; {scan} is the scan name"
    )

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str | list[str]) -> str | list[str]:
        return check_template(value, SCAN_PLACEHOLDERS)

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        # the operating system refuses such a variable only when the program starts, after the scan
        for name, text in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"environment variable name {name!r} must be letters, digits and _, not starting "
                                 "with a digit, e.g. OMP_NUM_THREADS")
            if "\x00" in text:
                raise ValueError(f"the value of environment variable {name} cannot contain a NUL character")
        return value


class CommandSink(Sink):
    """Run a program once per scan on the files that the sinks before it wrote.

    The program runs when the scan is closed, after every sink listed before
    this one has closed its files. Its standard output and error are kept
    beside the results (``<log>.stdout``, ``<log>.stderr``) and returned as
    this sink's files.

    A program that fails (non-zero exit status, timeout, cannot start) does
    not fail the scan: the result files are already complete, so the failure
    is logged as an error with the exit status and the last lines of standard
    error, and stays on record in the ``.stderr`` file; a status line is
    appended to it. Nothing already written is touched or lost, and later
    scans and sinks still run.

    ``{files}`` are the files returned by the sinks listed before this one.
    """

    name = "command"
    Params = CommandSinkParams

    def open(self, scan: Scan) -> None:
        self.scan = scan

    def write(self, events: list[Event]) -> None:
        """Nothing to do per event: the program runs once the scan is complete."""

    def close(self, results: dict[str, Any], ledger: Ledger) -> list[Path]:
        p = self.params
        # absolute paths: the program runs inside the output folder
        files = [f.resolve() for f in self.earlier_files]
        out_dir = self.output_dir.resolve()
        values = {"scan": self.scan.name, "output_dir": str(out_dir), "files": [str(f) for f in files]}
        command = render(p.command, values)
        stem = out_dir / p.log.format(scan=self.scan.name)
        stem.parent.mkdir(parents=True, exist_ok=True)
        records = [Path(f"{stem}.stdout"), Path(f"{stem}.stderr")]
        try:
            run = run_program(command, cwd=out_dir, env=p.env, timeout_s=p.timeout_s, log_stem=stem)
        except StageError as exc:
            self._record_failure(stem, str(exc), files)
            return records
        if not run.ok:
            self._record_failure(stem, f"{command!r} {run.describe(p.timeout_s)}", files)
        return records

    def _record_failure(self, stem: Path, what: str, files: list[Path]) -> None:
        """Log a failed program as an error and note it at the end of its ``.stderr`` file."""
        log.error("scan %s: the command sink's %s; the result files %s are kept",
                  self.scan.name, what, [str(f) for f in files])
        with open(f"{stem}.stderr", "a") as err:
            err.write(f"\n[lightpipe] {what.splitlines()[0]}\n")
