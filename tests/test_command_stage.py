"""The command stage and sink: external programs run per event and per scan, through real pipeline runs."""
from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from lightpipe.core.errors import PipelineError
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.ports import Port
from lightpipe.core.engine import Engine
from lightpipe.engines.local import LocalEngine
from lightpipe.simulators.frames import FrameSimParams, FrameSimulation
from lightpipe.stages.command import Command

SIM = FrameSimParams(name="cmd", frames=8, darks=0, flats=0, shape=(12, 16), seed=7)
#: Every test program gets the interpreter running the tests, with NumPy and h5py.
ENV = {"PYTHON": sys.executable}


def frames() -> list[np.ndarray]:
    sim = FrameSimulation(SIM)
    return [sim.frame(i)[1] for i in range(SIM.frames)]


def script(tmp_path: Path, name: str, body: str) -> str:
    """Write a shell script and return its quoted path for a command line."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body.strip() + "\n")
    return shlex.quote(str(path))


def pipeline(params: dict[str, Any], use: str = "command", sinks: list[dict[str, Any]] | None = None) -> Any:
    return load_pipeline({
        "version": 1,
        "name": "command-test",
        "source": {"use": "simulated_frames", "params": SIM.model_dump()},
        "stages": {"ext": {"use": use, "params": {"env": ENV, **params}}},
        "sinks": sinks if sinks is not None else [{"use": "nexus", "params": {"compression": "gzip"}}],
        "engine": {"chunk_size": 3},
    })


@pytest.fixture(params=["local", pytest.param("dask", marks=pytest.mark.dask)])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "local":
        return LocalEngine()
    from lightpipe.engines.dask import DaskEngine

    return DaskEngine(client=request.getfixturevalue("dask_client"))


DOUBLE = """
# double.sh INPUT OUTPUT: write twice the input array, as float64
exec "$PYTHON" -c 'import sys, numpy as np; np.save(sys.argv[2], np.load(sys.argv[1]).astype(np.float64) * 2)' "$1" "$2"
"""

FAIL_ON = """
# fail_on.sh INPUT OUTPUT: exit 1 with a message when the frame sums to $TARGET, else copy it
"$PYTHON" -c '
import sys, numpy as np
frame = np.load(sys.argv[1])
if int(frame.sum()) == int(sys.argv[3]):
    sys.exit("bad frame: it sums to " + sys.argv[3])
np.save(sys.argv[2], frame)
' "$1" "$2" "$TARGET"
"""


def test_command_doubles_every_frame(engine: Engine, tmp_path: Path) -> None:
    double = script(tmp_path, "double.sh", DOUBLE)
    with engine:
        report = engine.run(pipeline({"command": f"sh {double} {{input}} {{output}}"}), tmp_path / "out")
    scan = report.scans[0]
    assert scan.ledger.written == SIM.frames and scan.ledger.failed == []
    with h5py.File(tmp_path / "out" / "cmd.nxs", "r") as f:
        written = f["entry/ext/frame"][()]
    assert written.dtype == np.float64
    np.testing.assert_array_equal(written, np.array(frames(), dtype=np.float64) * 2)


def test_a_failing_program_fails_only_its_event(engine: Engine, tmp_path: Path) -> None:
    data = frames()
    sums = [int(f.sum(dtype=np.int64)) for f in data]
    assert len(set(sums)) == len(sums)  # the script can pick out one event by its sum
    bad = 5
    fail_on = script(tmp_path, "fail_on.sh", FAIL_ON)
    params = {"command": f"sh {fail_on} {{input}} {{output}}", "env": {**ENV, "TARGET": str(sums[bad])}}
    with engine:
        report = engine.run(pipeline(params), tmp_path / "out")
    ledger = report.scans[0].ledger
    assert ledger.written == SIM.frames - 1
    assert [(e.index, e.stage) for e in ledger.failed] == [(bad, "ext")]
    message = ledger.failed[0].message
    assert "exited with status 1" in message and f"bad frame: it sums to {sums[bad]}" in message
    with h5py.File(tmp_path / "out" / "cmd.nxs", "r") as f:
        assert f["entry/failed_events/index"][()].tolist() == [bad]
        assert f"bad frame: it sums to {sums[bad]}" in f["entry/failed_events/message"][0].decode()
        assert f["entry/events/status"][()].tolist() == [int(i == bad) for i in range(SIM.frames)]
        kept = f["entry/ext/frame"][()]
    good = [i for i in range(SIM.frames) if i != bad]
    np.testing.assert_array_equal(kept[good], np.array(data)[good])


def test_a_program_past_its_time_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    slow_frame, pid_file = tmp_path / "slow.npy", tmp_path / "sleep.pid"
    np.save(slow_frame, frames()[2], allow_pickle=False)  # byte for byte what the stage writes for event 2
    slow = script(tmp_path, "slow.sh", f"""
# slow.sh INPUT OUTPUT: hang (in a child process) on event 2's frame, else copy the frame
if cmp -s "$1" {shlex.quote(str(slow_frame))}; then
    sleep 60 &
    echo $! > {shlex.quote(str(pid_file))}
    wait
fi
cp "$1" "$2"
""")
    t0 = time.perf_counter()
    with LocalEngine() as engine:
        report = engine.run(pipeline({"command": f"sh {slow} {{input}} {{output}}", "timeout_s": 2}), tmp_path / "out")
    assert time.perf_counter() - t0 < 30
    ledger = report.scans[0].ledger
    assert [e.index for e in ledger.failed] == [2] and ledger.written == SIM.frames - 1
    assert "timed out after 2 s and was killed" in ledger.failed[0].message
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), "the program's child outlived the timeout"


def _state(pid: int) -> str:
    """The process state letter from /proc (``Z`` for a zombie), or ``""`` once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("exit 0", "exited with status 0 but wrote no output.npy"),
        ("echo 'not an array' > \"$2\"", "cannot read the npy file output.npy"),
        ("echo 'no licence for this tool' >&2; kill -TERM $$", "was killed by signal 15"),
        ("\"$PYTHON\" -c 'import sys, numpy as np; np.save(sys.argv[1], np.array([\"a\"]))' \"$2\"", "is not numbers"),
    ],
    ids=["no-output", "unreadable", "signal", "not-numbers"],
)
def test_bad_program_results_fail_the_events_clearly(tmp_path: Path, body: str, expected: str) -> None:
    bad = script(tmp_path, "bad.sh", body)
    # an argument vector, so that the signal ends the program itself rather than a shell around it
    params = {"command": ["sh", shlex.split(bad)[0], "{input}", "{output}"]}
    with LocalEngine() as engine:
        report = engine.run(pipeline(params), tmp_path / "out")
    ledger = report.scans[0].ledger
    assert ledger.written == 0 and len(ledger.failed) == SIM.frames
    assert all(expected in e.message for e in ledger.failed), ledger.failed[0].message
    if "licence" in body:
        assert "no licence for this tool" in ledger.failed[0].message


@pytest.mark.parametrize(("input_format", "output_format"), [("npy", "npy"), ("tiff", "tiff"), ("edf", "edf")])
def test_file_formats_round_trip(tmp_path: Path, input_format: str, output_format: str) -> None:
    params = {"command": ["cp", "{input}", "{output}"], "input_format": input_format, "output_format": output_format}
    with LocalEngine() as engine:
        report = engine.run(pipeline(params), tmp_path / "out")
    assert report.scans[0].ledger.written == SIM.frames
    with h5py.File(tmp_path / "out" / "cmd.nxs", "r") as f:
        written = f["entry/ext/frame"][()]
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, np.array(frames()))


class FrameTotals(Command):
    """Total and brightest pixel of each frame, computed by an external program."""

    outputs = {
        "total": Port(ndim=0, dtype="float", unit="counts", description="Sum of the pixels"),
        "peak": Port(ndim=0, dtype="int", unit="counts", description="Brightest pixel"),
    }


def test_json_output_gives_named_scalars(tmp_path: Path) -> None:
    totals = script(tmp_path, "totals.sh", """
# totals.sh INPUT OUTPUT: write {"total": ..., "peak": ...} of the frame as JSON
exec "$PYTHON" -c '
import json, sys, numpy as np
frame = np.load(sys.argv[1]).astype(np.float64)
json.dump({"total": frame.sum(), "peak": int(frame.max()), "tool": "totals 1.0"}, open(sys.argv[2], "w"))
' "$1" "$2"
""")
    params = {"command": f"sh {totals} {{input}} {{output}}", "output_format": "json"}
    with LocalEngine() as engine:
        report = engine.run(pipeline(params, use=f"{__name__}:FrameTotals"), tmp_path / "out")
    assert report.scans[0].ledger.written == SIM.frames
    with h5py.File(tmp_path / "out" / "cmd.nxs", "r") as f:
        total, peak = f["entry/ext/total"][()], f["entry/ext/peak"][()]
    data = np.array(frames(), dtype=np.float64)
    np.testing.assert_array_equal(total, data.sum(axis=(1, 2)))
    np.testing.assert_array_equal(peak, data.max(axis=(1, 2)))
    assert peak.dtype.kind == "i"


def test_json_without_the_outputs_fails_the_event(tmp_path: Path) -> None:
    params = {"command": "echo '{{\"sum\": 1}}' > {output}", "output_format": "json"}
    with LocalEngine() as engine:
        report = engine.run(pipeline(params, use=f"{__name__}:FrameTotals"), tmp_path / "out")
    failed = report.scans[0].ledger.failed
    assert len(failed) == SIM.frames
    assert "lacks the entries ['peak', 'total'] (it has ['sum'])" in failed[0].message


def test_keep_files_leaves_each_events_folder(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    params = {"command": "cp {input} {output} && echo {scan} > scan.txt", "scratch_dir": str(scratch)}
    with LocalEngine() as engine:
        engine.run(pipeline(params), tmp_path / "out")
    assert list(scratch.iterdir()) == []  # removed after each event by default
    with LocalEngine() as engine:
        engine.run(pipeline({**params, "keep_files": True}), tmp_path / "out")
    folders = sorted(scratch.iterdir())
    assert len(folders) == SIM.frames
    for folder in folders:
        assert {p.name for p in folder.iterdir()} == {"input.npy", "output.npy", "program.stdout",
                                                      "program.stderr", "scan.txt"}
        assert (folder / "scan.txt").read_text() == "cmd\n"  # {scan}, in the event folder as working directory
    assert sorted(int(np.load(f / "input.npy").sum(dtype=np.int64)) for f in folders) == sorted(
        int(f.sum(dtype=np.int64)) for f in frames())


def test_a_program_that_cannot_start_fails_the_events(tmp_path: Path) -> None:
    params = {"command": [str(tmp_path / "no-such-tool"), "{input}", "{output}"]}
    with LocalEngine() as engine:
        report = engine.run(pipeline(params), tmp_path / "out")
    failed = report.scans[0].ledger.failed
    assert len(failed) == SIM.frames and "cannot start" in failed[0].message and "no-such-tool" in failed[0].message


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("tool {frame} {input}", r"unknown placeholder \{frame\} in 'tool \{frame\} \{input\}'; the placeholders are "
                                 r"\{input\}, \{output\}, \{index\}, \{scan\}, \{workdir\}"),
        ("awk '{print}' {input}", r"unknown placeholder \{print\}.*write a literal brace as '\{\{'"),
        ("tool {input", r"expected '\}' before end of string in 'tool \{input'"),
        ("  ", "the command is empty"),
        (["tool", "{scan:d}"], r"cannot fill in '\{scan:d\}'"),
    ],
)
def test_bad_command_templates_are_refused_when_the_pipeline_loads(command: Any, message: str) -> None:
    with pytest.raises(PipelineError, match=message) as info:
        pipeline({"command": command})
    assert info.value.field is not None and info.value.field.startswith("stages.ext.params.command")


# -- the command sink -------------------------------------------------------------------------------

LIST_FILES = """
# list_files.sh OUTPUT_DIR SCAN FILE...: list the files given, one a line, then check they open as HDF5
out=$1; scan=$2; shift 2
for f in "$@"; do echo "$f"; done > "$out/$scan.files"
"$PYTHON" -c 'import sys, h5py; [h5py.File(f, "r").close() for f in sys.argv[1:]]' "$@" && echo "all open" >> "$out/$scan.files"
echo "listed $# files"
"""


@pytest.mark.parametrize("form", ["shell", "argv"])
def test_command_sink_runs_once_per_scan_on_the_written_files(tmp_path: Path, form: str) -> None:
    list_files = script(tmp_path, "list_files.sh", LIST_FILES)
    command: Any = (f"sh {list_files} {{output_dir}} {{scan}} {{files}}" if form == "shell"
                    else ["sh", shlex.split(list_files)[0], "{output_dir}", "{scan}", "{files}"])
    sinks = [{"use": "nexus", "params": {"filename": "{scan} result.nxs"}},
             {"use": "command", "params": {"command": command, "env": ENV}}]
    out = tmp_path / "out"
    with LocalEngine() as engine:
        report = engine.run(pipeline({"command": "cp {input} {output}"}, sinks=sinks), out)
    nexus = out / "cmd result.nxs"
    assert (out / "cmd.files").read_text().splitlines() == [str(nexus.resolve()), "all open"]
    assert [f.resolve() for f in report.files] == [
        p.resolve() for p in (nexus, out / "cmd_command.stdout", out / "cmd_command.stderr")]
    assert (out / "cmd_command.stdout").read_text() == "listed 1 files\n"


def test_a_failing_sink_program_is_logged_and_keeps_the_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = "echo 'archive is full' >&2; exit 3"
    sinks = [{"use": "nexus"}, {"use": "command", "params": {"command": command}}]
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="lightpipe.sinks.command"), LocalEngine() as engine:
        report = engine.run(pipeline({"command": "cp {input} {output}"}, sinks=sinks), out)
    assert report.scans[0].ledger.written == SIM.frames
    with h5py.File(out / "cmd.nxs", "r") as f:
        np.testing.assert_array_equal(f["entry/ext/frame"][()], np.array(frames()))
    assert "exited with status 3" in caplog.text and "archive is full" in caplog.text
    assert str((out / "cmd.nxs").resolve()) in caplog.text
    stderr = (out / "cmd_command.stderr").read_text()
    assert stderr.startswith("archive is full\n")
    assert f"[lightpipe] {command!r} exited with status 3" in stderr


def test_command_sink_refuses_per_event_placeholders() -> None:
    with pytest.raises(PipelineError, match=r"sinks\.0\.params\.command.*unknown placeholder \{input\}.*"
                                            r"\{scan\}, \{output_dir\}, \{files\}"):
        pipeline({"command": "cp {input} {output}"}, sinks=[{"use": "command", "params": {"command": "cp {input} x"}}])


@pytest.mark.parametrize("form", ["shell", "argv"])
def test_paths_with_spaces_and_quotes_reach_the_program_intact(tmp_path: Path, form: str) -> None:
    """Placeholder values are quoted for the shell, and an argument vector is passed as it is."""
    argv_dump = script(tmp_path, "argv.sh", 'printf "%s\\n" "$@" > "$3"; cp "$1" "$2"')
    odd = tmp_path / "odd name's dir"
    command: Any = (f"sh {argv_dump} {{input}} {{output}} {{workdir}}/args.txt" if form == "shell"
                    else ["sh", shlex.split(argv_dump)[0], "{input}", "{output}", "{workdir}/args.txt"])
    with LocalEngine() as engine:
        report = engine.run(pipeline({"command": command, "scratch_dir": str(odd), "keep_files": True}),
                            tmp_path / "out")
    assert report.scans[0].ledger.written == SIM.frames
    folder = sorted(odd.iterdir())[0]
    assert (folder / "args.txt").read_text().splitlines() == [
        str(folder / "input.npy"), str(folder / "output.npy"), str(folder / "args.txt")]
