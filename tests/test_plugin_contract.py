"""The plug-in contract: run hooks, engines as entry points, parallel parts, engine options on the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lightpipe import load_pipeline
from lightpipe.cli.main import main
from lightpipe.core.hooks import ChunkDone, RunHooks, RunStarted
from lightpipe.core.parts import PartGroup, ThreadPartRunner
from lightpipe.core.report import RunReport, ScanReport
from lightpipe.engines.dask import ActorPartRunner, DaskEngine
from lightpipe.engines.local import LocalEngine

ROOT = Path(__file__).parents[1]
PIPELINE = ROOT / "pipelines" / "dark-flat-correction.yaml"
SMALL = {"frames": 45, "darks": 9, "flats": 7, "shape": [48, 56], "seed": 5, "rings_px": [8.0, 16.0]}


def _failing_pipeline() -> Any:
    """dark-flat-correction on simulated frames, with a stage that refuses the brightest events."""
    doc = dict(load_pipeline(PIPELINE).document)
    doc["source"] = {"use": "simulated_frames", "params": SMALL}
    stages = list(doc["stages"].items())
    at = [k for k, _ in stages].index("normalised") + 1
    picky = {"use": "stages_for_tests:RefuseBright", "inputs": {"frame": "normalised.frame", "monitor": "source.monitor"}}
    doc["stages"] = dict(stages[:at] + [("picky", picky)] + stages[at:])
    doc["sinks"] = [{"use": "nexus", "fields": ["picky.frame"]}]
    return load_pipeline(doc)


class Recorder(RunHooks):
    """Records every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def run_started(self, run: RunStarted) -> None:
        self.calls.append(("run_started", run.engine["engine"]))

    def run_finished(self, report: RunReport) -> None:
        self.calls.append(("run_finished", len(report.scans)))

    def scan_started(self, scan: Any, passes: int) -> None:
        self.calls.append(("scan_started", (scan.name, passes)))

    def scan_finished(self, report: ScanReport) -> None:
        self.calls.append(("scan_finished", report.ledger.state))

    def events_submitted(self, scan: str, events: int, in_flight: int, window: int, source: dict[str, Any]) -> None:
        self.calls.append(("events_submitted", events))

    def chunk_done(self, chunk: ChunkDone) -> None:
        self.calls.append(("chunk_done", chunk))

    def events_written(self, sink: int, name: str, events: int) -> None:
        self.calls.append(("events_written", (name, events)))

    def event_failed(self, scan: str, index: int, stream: str, stage: str, message: str) -> None:
        self.calls.append(("event_failed", (index, stage)))

    def workers_changed(self, seen: dict[str, float]) -> None:
        self.calls.append(("workers_changed", sorted(seen)))

    def named(self, name: str) -> list[Any]:
        return [arg for n, arg in self.calls if n == name]


class Broken(RunHooks):
    """A subscriber that raises on every chunk: the scan must not notice."""

    def chunk_done(self, chunk: ChunkDone) -> None:
        raise RuntimeError("a broken subscriber")


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_hooks_report_the_run_chunk_by_chunk(tmp_path: Path, engine: str, request: Any) -> None:
    recorder = Recorder()
    eng = (LocalEngine(chunk_size=4) if engine == "local"
           else DaskEngine(client=request.getfixturevalue("dask_client"), chunk_size=4))
    with eng:
        report = eng.run(_failing_pipeline(), tmp_path, hooks=[Broken(), recorder])
    (scan,) = report.scans
    names = [n for n, _ in recorder.calls]
    assert names[0] == "run_started" and names[1] == "scan_started" and names[-1] == "run_finished"
    assert names[-2] == "scan_finished" and recorder.named("scan_finished") == ["completed"]
    assert recorder.named("run_started") == [engine]
    chunks: list[ChunkDone] = recorder.named("chunk_done")
    # every event of every pass comes back in one chunk, in order, with the worker that ran it
    for number in {c.pass_number for c in chunks}:
        mine = [c for c in chunks if c.pass_number == number]
        assert [c.start for c in mine] == sorted(c.start for c in mine)
        assert mine[-1].progress.done == mine[-1].progress.total
    assert all(c.worker and c.started <= c.finished for c in chunks)
    if engine == "dask":
        assert {c.worker.split("/")[0] for c in chunks} != {f"{os.uname().nodename}:{os.getpid()}"}
    # the stage counts add up to the ledger: picky saw every data event and failed the bright ones
    failed = recorder.named("event_failed")
    assert sorted(i for i, _ in failed) == sorted(f.index for f in scan.ledger.failed) and failed
    assert {stage for _, stage in failed} == {"picky"}
    assert sum(c.stages["picky"].events_in for c in chunks if "picky" in c.stages) == 45
    assert sum(c.stages["picky"].failed for c in chunks if "picky" in c.stages) == len(failed)
    assert sum(n for name, n in recorder.named("events_written")) == 45
    assert sum(recorder.named("events_submitted")) == scan.ledger.received


def test_the_status_channel_reports_finished_scans(tmp_path: Path) -> None:
    from lightpipe.control import ControlClient, ControlServer
    from lightpipe.core.topology import Topology

    pipeline = _failing_pipeline()
    topology = Topology(pipeline.name)
    with LocalEngine() as engine, ControlServer(topology, directory=tmp_path / "run") as server:
        engine.run(pipeline, tmp_path, topology=topology, hooks=[server])
        status = ControlClient().status(server.endpoint)
    (scan,) = status["scans"]
    assert scan["state"] == "completed" and scan["received"] == 61 and scan["failed"] > 0
    assert scan["files"] and Path(scan["files"][0]).is_file()


class Counter:
    """A stateful part: remembers its total between calls."""

    def __init__(self, start: int) -> None:
        self.total = start

    def add(self, n: int) -> tuple[int, int]:
        self.total += n
        return self.total, os.getpid()


def test_parts_on_threads_keep_their_state() -> None:
    with ThreadPartRunner().start(Counter, [0, 100, 200], threads_per_part=1) as group:
        assert isinstance(group, PartGroup)
        first = group.call("add", [(1,), (2,), (3,)])
        second = group.call("add", [(1,), (1,), (1,)])
    assert [t for t, _ in first] == [1, 102, 203] and [t for t, _ in second] == [2, 103, 204]
    assert {pid for _, pid in second} == {os.getpid()}


@pytest.mark.dask
def test_parts_on_dask_run_as_actors_on_that_clusters_workers(dask_client: Any) -> None:
    workers = set(dask_client.scheduler_info()["workers"])
    with ActorPartRunner(dask_client).start(Counter, [0, 100]) as group:
        assert set(group.workers) == workers  # two parts, two workers: one each
        results = group.call("add", [(5,), (6,)])
        again = group.call("add", [(1,), (1,)])
    assert [t for t, _ in results] == [5, 106] and [t for t, _ in again] == [6, 107]
    assert os.getpid() not in {pid for _, pid in results}


def test_a_stage_gets_the_part_runner_of_its_engine(request: Any) -> None:
    local = LocalEngine()
    assert isinstance(local.part_runner(), ThreadPartRunner)
    with DaskEngine(client=request.getfixturevalue("dask_client")) as dask:
        runner = dask.part_runner()
        assert isinstance(runner, ActorPartRunner) and runner.client is dask.client


def _third_party_engine(root: Path) -> dict[str, str]:
    """A package with one engine class and one entry point, installed by a dist-info folder on PYTHONPATH."""
    root.mkdir()
    (root / "inorder_engine.py").write_text(textwrap.dedent('''
        """A third-party engine: chunks one after the other, counted in a file."""
        from pathlib import Path

        from lightpipe.core.chunk import run_chunk
        from lightpipe.core.engine import Engine, EngineParams
        from lightpipe.core.stage import param


        class InOrderParams(EngineParams):
            tally: str = param("", "File that counts the chunks run")


        class InOrder(Engine):
            """Runs chunks in order and counts them."""

            name = "in_order"
            Params = InOrderParams

            def __init__(self, tally="", window=None, chunk_size=None):
                super().__init__(window=window, chunk_size=chunk_size)
                self.tally = tally

            def execute(self, tasks, max_tasks, policy):
                for task in tasks:
                    if self.tally:
                        with open(self.tally, "a") as f:
                            f.write("chunk\\n")
                    yield run_chunk(task)
    '''))
    info = root / "inorder_engine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: inorder-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lightpipe.engines]\nin_order = inorder_engine:InOrder\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def test_a_third_party_engine_is_one_class_and_one_entry_point(tmp_path: Path) -> None:
    env = _third_party_engine(tmp_path / "site")
    raw = tmp_path / "scan_master.h5"
    lightpipe = [sys.executable, "-m", "lightpipe.cli.main"]
    subprocess.run([*lightpipe, "simulate", "frames", str(raw), "--frames", "20", "--darks", "4", "--flats", "4",
                    "--shape", "160", "160"], env=env, check=True, capture_output=True)  # the ROI fits
    helped = subprocess.run([*lightpipe, "run", "--help"], env=env, capture_output=True, text=True, check=True)
    assert "in_order" in helped.stdout and "--tally" in helped.stdout
    tally = tmp_path / "tally.txt"
    done = subprocess.run([*lightpipe, "run", str(PIPELINE), "--input", str(raw), "-o", str(tmp_path / "out"),
                           "--engine", "in_order", "--tally", str(tally), "--chunk-size", "4", "--quiet"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "in_order engine" in done.stdout and "completed" in done.stdout
    assert len(tally.read_text().splitlines()) >= 28 // 4  # it ran the chunks: 20 data + 4 darks + 4 flats


@pytest.mark.parametrize(("flags", "message"), [
    (["--cluster", "tcp://nowhere:8786"], "--cluster is an option of the dask engine, not of local"),
    (["--workers", "0"], "--workers: Input should be greater than or equal to 1"),
    (["--engine", "dask", "--threads-per-worker", "-1"], "--threads-per-worker"),
])
def test_engine_options_are_checked_against_the_engine(tmp_path: Path, flags: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", str(PIPELINE), "-o", str(tmp_path), "--quiet", *flags])
    assert status == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_an_unknown_engine_is_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", str(PIPELINE), "--engine", "spark"])
    err = capsys.readouterr().err
    assert "invalid choice: 'spark'" in err and "local" in err and "dask" in err
