"""Running external programs for stages and sinks: command templates, quoting, time limits, logs.

Shared by the ``command`` stage (one run per event) and the ``command`` sink
(one run per scan).
"""
from __future__ import annotations

import os
import shlex
import signal
import string
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightpipe.core.errors import StageError

#: Lines of the program's standard error quoted when it fails.
STDERR_LINES = 20


def check_template(command: str | list[str], placeholders: Mapping[str, Any]) -> str | list[str]:
    """Check a command template: not empty, only known placeholders, well-formed braces.

    Parameters
    ----------
    command
        A shell command line, or an argument vector.
    placeholders
        Each allowed placeholder with a sample value; the template is rendered
        with them to catch bad format specs.

    Returns
    -------
    str or list of str
        ``command`` unchanged.

    Raises
    ------
    ValueError
        Saying which placeholder or brace is wrong and how to write it.
    """
    parts = [command] if isinstance(command, str) else list(command)
    if not parts or not all(p.strip() for p in parts):
        raise ValueError("the command is empty; give a command line such as 'my_tool {input} {output}'")
    known = ", ".join("{" + name + "}" for name in placeholders)
    for part in parts:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(part) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{exc} in {part!r}; write a literal brace as '{{{{' or '}}}}'") from exc
        for name in fields:
            if name not in placeholders:
                raise ValueError(
                    f"unknown placeholder {{{name}}} in {part!r}; the placeholders are {known} "
                    "(write a literal brace as '{{' or '}}')"
                )
        try:
            part.format(**placeholders)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot fill in {part!r}: {exc}") from exc
    return command


def render(command: str | list[str], values: Mapping[str, Any]) -> str | list[str]:
    """Fill a checked template in: a shell line with quoted values, or an argument vector.

    A list value (such as a list of files) becomes one argument per item when
    it is a whole argument of an argument vector, and space-separated items
    elsewhere.
    """
    if isinstance(command, str):
        quoted = {
            k: " ".join(shlex.quote(str(x)) for x in v) if isinstance(v, list) else
            shlex.quote(v) if isinstance(v, str) else v
            for k, v in values.items()
        }
        return command.format(**quoted)
    argv: list[str] = []
    for part in command:
        whole = part[1:-1] if part.startswith("{") and part.endswith("}") else None
        if whole in values and isinstance(values[whole], list):
            argv.extend(str(x) for x in values[whole])
        else:
            argv.append(part.format(**{k: " ".join(map(str, v)) if isinstance(v, list) else v
                                       for k, v in values.items()}))
    return argv


@dataclass
class ProgramRun:
    """The outcome of one program run.

    Attributes
    ----------
    status
        Exit status; negative when a signal ended the program (``-9`` after a timeout).
    timed_out
        Whether the program was killed for running past its time limit.
    stderr
        The last :data:`STDERR_LINES` lines of its standard error.
    """

    status: int
    timed_out: bool
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out

    def describe(self, limit_s: float) -> str:
        """Why the run failed, with the tail of standard error, in one message."""
        if self.timed_out:
            what = f"timed out after {limit_s:g} s and was killed"
        elif self.status < 0:
            what = f"was killed by signal {-self.status}"
        else:
            what = f"exited with status {self.status}"
        tail = f"; last lines of stderr:\n{self.stderr}" if self.stderr.strip() else "; stderr was empty"
        return what + tail


def tail(path: Path, lines: int = STDERR_LINES, limit: int = 4000) -> str:
    """The last ``lines`` lines of a text file (at most ``limit`` characters), or ``""``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_program(
    command: str | list[str], *, cwd: Path, env: Mapping[str, str], timeout_s: float, log_stem: Path
) -> ProgramRun:
    """Run ``command`` (a shell line or an argument vector) and wait at most ``timeout_s``.

    Standard output and error go to ``<log_stem>.stdout`` and
    ``<log_stem>.stderr``; files rather than pipes, so a chatty program never
    blocks and a killed one leaves what it wrote. The program runs in a session
    of its own, so on timeout the whole process group (the shell and everything
    it started) is killed, not only the shell.

    Raises
    ------
    StageError
        When the program cannot be started at all (not found, not executable).
    """
    with open(f"{log_stem}.stdout", "wb") as out, open(f"{log_stem}.stderr", "wb") as err:
        try:
            proc = subprocess.Popen(
                command, shell=isinstance(command, str), cwd=cwd, env={**os.environ, **env},
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
            )
        except OSError as exc:
            raise StageError(
                f"cannot start {command!r}: {exc}; check the program's path and that it is executable"
            ) from exc
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended between the timeout and the kill
                pass
            proc.wait()
    return ProgramRun(proc.returncode, timed_out, tail(Path(f"{log_stem}.stderr")))
