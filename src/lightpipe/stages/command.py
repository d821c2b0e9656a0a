"""Run an external program on every event: plug in code that is not Python (a shell script, a facility tool).

For each event the frame is written to a file in a fresh working folder, the
program is run on it, and the file the program wrote is read back as the
event's output. The program gets its file names through placeholders in a
command template:

``{input}``
    the file holding the event's frame (``input.npy``, ``input.tif`` or ``input.edf``);
``{output}``
    the file the program must write (``output.npy``, ``.tif``, ``.edf`` or ``.json``);
``{index}``
    the event's acquisition index;
``{scan}``
    the scan name;
``{workdir}``
    the event's working folder, also the program's current directory.

A template given as one string is run by ``/bin/sh -c``, so pipes,
redirections and ``$VARIABLES`` work; the placeholder values are shell-quoted
for you, so do not quote them yourself. A template given as a list is run as
an argument vector, without a shell. Either way the template follows Python's
``str.format``: write a literal brace as ``{{`` or ``}}`` (for example a
dict in ``python -c``), and a format spec such as ``{scan:>8}`` works.

Examples
--------
A pipeline stage that runs a shell script on every frame::

    stages:
      denoise:
        use: command
        params:
          command: "/opt/beamline/bin/denoise.sh {input} {output}"
          timeout_s: 30
          env: {OMP_NUM_THREADS: "1"}
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import field_validator

from lightpipe.core.errors import StageError
from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, StageParams, param
from lightpipe.core.xp import to_numpy
from lightpipe.programs import check_template, render, run_program

#: File name suffix of each file format.
SUFFIXES = {"npy": ".npy", "tiff": ".tif", "edf": ".edf", "json": ".json"}

#: Placeholders of the per-event command template, with a sample value used to check the template.
EVENT_PLACEHOLDERS: dict[str, Any] = {
    "input": "/tmp/w/input.npy",
    "output": "/tmp/w/output.npy",
    "index": 0,
    "scan": "scan",
    "workdir": "/tmp/w",
}

def write_array(path: Path, array: np.ndarray, file_format: str) -> None:
    """Write ``array`` as ``npy`` (any shape and dtype), or as a 2-D ``tiff`` or ``edf`` image.

    Boolean images are written as uint8; TIFF has no float64, so float64 goes
    to TIFF as float32.
    """
    if file_format == "npy":
        np.save(path, array, allow_pickle=False)
        return
    if array.ndim != 2:
        raise StageError(f"{file_format} files hold 2-D images but the frame is {array.ndim}-D "
                         f"with shape {array.shape}; use input_format npy")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif file_format == "tiff" and array.dtype == np.float64:
        array = array.astype(np.float32)
    if file_format == "tiff":
        from fabio.tifimage import TifImage

        TifImage(data=array).write(str(path))
    else:
        from fabio.edfimage import EdfImage

        EdfImage(data=array).write(str(path))


def read_array(path: Path, file_format: str) -> np.ndarray:
    """Read an ``npy``, ``tiff`` or ``edf`` file back as a NumPy array."""
    if file_format == "npy":
        return np.load(path, allow_pickle=False)
    import fabio

    return np.asarray(fabio.open(str(path)).data)


class CommandParams(StageParams):
    """Parameters of :class:`Command`."""

    command: str | list[str] = param(
        description="Command line run by /bin/sh, or an argument list run without a shell; "
        "placeholders {input} {output} {index} {scan} {workdir}"
    )
    input_format: Literal["npy", "tiff", "edf"] = param("npy", "File format the frame is written in for the program")
    output_format: Literal["npy", "tiff", "edf", "json"] = param(
        "npy", "File format the program writes; json: an object with one entry per output of the stage"
    )
    timeout_s: float = param(60.0, "The program is killed and the event failed after this time", unit="s", gt=0,
                             le=7 * 86400)
    env: dict[str, str] = param({}, "Extra environment variables for the program")
    keep_files: bool = param(False, "Keep each event's working folder (for debugging) instead of removing it")
    scratch_dir: str | None = param(
        None, "Folder in which the per-event working folders are made; default the system temporary folder"
    )

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str | list[str]) -> str | list[str]:
        return check_template(value, EVENT_PLACEHOLDERS)


class Command(MapStage):
    """Run an external program on each event's frame and read back the array it writes.

    The frame is written to ``{input}`` in ``input_format``; the program must
    write ``{output}`` in ``output_format``, which becomes the ``frame`` output.
    A non-zero exit status, a timeout, or a missing or unreadable output file
    fails that event (the message gives the exit status and the last lines of
    the program's standard error); the scan goes on.

    With ``output_format: json`` the program writes one JSON object holding a
    number or a (nested) list of numbers for each output of the stage. The
    built-in stage has the single output ``frame``; to get named per-event
    scalars, subclass it with your own outputs and name the subclass in the
    pipeline (``use: mytools.stages:Sharpness``)::

        class Sharpness(Command):
            \"\"\"Sharpness and peak count of each frame from the facility tool.\"\"\"

            outputs = {
                "sharpness": Port(ndim=0, dtype="float", description="Image sharpness"),
                "peaks": Port(ndim=0, dtype="int", description="Peaks found"),
            }

    Each event gets a fresh working folder, removed afterwards unless
    ``keep_files`` is set; the stage keeps no other state, so it runs on any
    number of Dask workers.
    """

    name = "command"
    Params = CommandParams
    wants_index = True
    inputs = {"frame": Port(ndim=None, dtype="number", description="Array handed to the program")}
    outputs = {"frame": Port(ndim=None, dtype="number", description="Array the program wrote")}
    #: What the program writes need not be the input frame's pixels: no geometry follows through it.
    frame_outputs: ClassVar[dict[str, str] | None] = {}

    def setup(self, scan: Scan) -> None:
        self._scan = scan.name
        if self.params.scratch_dir is not None:
            os.makedirs(self.params.scratch_dir, exist_ok=True)

    def process(self, frame: Any, index: int) -> dict[str, Any]:
        p = self.params
        # absolute, as the program runs inside it and gets its paths
        workdir = Path(tempfile.mkdtemp(prefix=f"lightpipe-{self.name}-", dir=p.scratch_dir)).resolve()
        try:
            return self._run(np.asarray(to_numpy(frame)), index, workdir)
        finally:
            if not p.keep_files:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, frame: np.ndarray, index: int, workdir: Path) -> dict[str, Any]:
        p = self.params
        source = workdir / f"input{SUFFIXES[p.input_format]}"
        target = workdir / f"output{SUFFIXES[p.output_format]}"
        write_array(source, frame, p.input_format)
        values = {"input": str(source), "output": str(target), "index": index, "scan": self._scan,
                  "workdir": str(workdir)}
        command = render(p.command, values)
        run = run_program(command, cwd=workdir, env=p.env, timeout_s=p.timeout_s, log_stem=workdir / "program")
        kept = f" (files kept in {workdir})" if p.keep_files else ""
        if not run.ok:
            raise StageError(f"command {command!r} {run.describe(p.timeout_s)}{kept}")
        if not target.is_file():
            raise StageError(
                f"command {command!r} exited with status 0 but wrote no {target.name}; make the program write "
                f"its result to {{output}}{kept}" + (f"; last lines of stderr:\n{run.stderr}" if run.stderr else "")
            )
        try:
            out = self._read(target)
        except StageError:
            raise
        except Exception as exc:  # any parse error of a file the program wrote
            raise StageError(f"cannot read the {p.output_format} file {target.name} that {command!r} wrote: "
                             f"{type(exc).__name__}: {exc}{kept}") from exc
        for name, value in out.items():
            if value.dtype.kind not in "biuf":
                raise StageError(f"output {name!r} that {command!r} wrote is not numbers (dtype {value.dtype}): "
                                 f"write a number or an array of numbers{kept}")
        return out

    def _read(self, target: Path) -> dict[str, np.ndarray]:
        if self.params.output_format != "json":
            return {"frame": read_array(target, self.params.output_format)}
        document = json.loads(target.read_text())
        if not isinstance(document, dict):
            raise StageError(f"{target.name} holds a JSON {type(document).__name__}; write an object with the "
                             f"entries {sorted(self.outputs)}")
        missing = sorted(set(self.outputs) - set(document))
        if missing:
            raise StageError(f"{target.name} lacks the entries {missing} (it has {sorted(document)}); the stage's "
                             f"outputs are {sorted(self.outputs)}")
        return {name: np.asarray(document[name]) for name in self.outputs}
