"""The exception hierarchy. Every message says what was wrong and what to do next."""
from __future__ import annotations


class LightpipeError(Exception):
    """Base class of every error lightpipe raises on purpose."""


class PipelineError(LightpipeError):
    """A pipeline file that cannot run: unknown stage, bad parameter, broken edge.

    Parameters
    ----------
    message
        What is wrong and what is expected instead.
    file
        The pipeline file, if the pipeline came from one.
    line
        1-based line of the offending field in ``file``.
    field
        Dotted path of the offending field, e.g. ``stages.correct.params.threshold``.
    """

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<pipeline>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


class PipelineErrors(PipelineError):
    """Several problems found in one validation pass, reported together."""

    def __init__(self, errors: list[PipelineError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class PluginError(LightpipeError):
    """A stage, source, sink or engine plug-in that cannot be found or imported."""


class ScanAborted(LightpipeError):
    """The current scan was aborted on request (``lightpipe abort``)."""


class SourceError(LightpipeError):
    """A source that cannot deliver a scan at all (missing file, wrong dataset path)."""


class StageError(LightpipeError):
    """A stage that failed on one event; the event is recorded as failed, the scan goes on."""


class EventError(LightpipeError):
    """One event that does not match what the pipeline expects (shape, dtype, corrupt data)."""
