"""The control channel (real ZeroMQ sockets, real threads, a real subprocess) and the status/abort/stop CLI."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq

from lightpipe.cli.control import (
    add_abort_arguments,
    add_status_arguments,
    add_stop_arguments,
    cmd_abort,
    cmd_status,
    cmd_stop,
)
from lightpipe.control import RUNTIME_DIR_ENV, ControlClient, ControlError, ControlServer, runtime_dir
from lightpipe.core.topology import Topology

# A pipeline process in miniature: a topology, a control server, and a loop that feeds the
# counters until someone aborts its scan.
PIPELINE_PROCESS = textwrap.dedent("""
    import time
    from lightpipe.control import ControlServer
    from lightpipe.core.topology import Topology

    topology = Topology("sub-pipe")
    receiver = topology.add("receiver", "receiver", {"endpoint": "tcp://eiger:9999"}, heartbeat_s=0.5)
    sink = topology.add("nexus", "sink", heartbeat_s=0.5)
    topology.begin_scan("scan_0007")
    receiver.set_state("running")
    sink.set_state("running")
    with ControlServer(topology) as server:
        print(server.endpoint, flush=True)
        deadline = time.monotonic() + 30
        while not topology.abort_requested and time.monotonic() < deadline:
            receiver.add_out(10)
            sink.add_in(10)
            sink.add_out(10)
            time.sleep(0.01)
        reason = topology.abort_reason
        receiver.set_state("aborted", reason)
        topology.end_scan("aborted")
    print("aborted:", reason, flush=True)
""")


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(directory))
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that table cells are not cut
    return directory


def _topology(name: str = "powder") -> Topology:
    topology = Topology(name)
    receiver = topology.add("receiver", "receiver", {"endpoint": "tcp://eiger:9999"})
    receiver.set_state("running")
    receiver.add_out(64)
    topology.add("buffer", "buffer", heartbeat_s=None).set_fill(0.5)
    topology.add("sink:nexus", "sink").add_failed(2)
    return topology


def _args(add: object, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)  # type: ignore[operator]
    return parser.parse_args(list(argv))


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_status_and_abort_roundtrip_and_the_run_file(rundir: Path) -> None:
    assert runtime_dir() == rundir
    topology = _topology()
    client = ControlClient()
    with ControlServer(topology) as server:
        assert server.endpoint.startswith("tcp://127.0.0.1:")
        assert server.run_file == rundir / f"{os.getpid()}.json"
        record = json.loads(server.run_file.read_text())
        assert record["endpoint"] == server.endpoint and record["pipeline"] == "powder"
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        runs = client.discover()
        assert [(r.endpoint, r.pipeline, r.pid) for r in runs] == [(server.endpoint, "powder", os.getpid())]

        snap = client.status(server.endpoint)
        assert [c["name"] for c in snap["components"]] == ["receiver", "buffer", "sink:nexus"]
        assert snap["components"][0]["events_out"] == 64 and snap["components"][1]["fill"] == 0.5
        assert snap["components"][2]["failed"] == 2 and snap["pipeline"] == "powder"

        with pytest.raises(ControlError, match="refused: pipeline 'powder' is not processing a scan"):
            client.abort(server.endpoint, "between scans", token=server.token)
        assert not topology.abort_requested
        topology.begin_scan("scan_0001")
        # only the user who started the pipeline can read its token, and only the token lets an abort through
        assert runs[0].token == server.token and stat.S_IMODE(os.stat(rundir / f"{os.getpid()}.token").st_mode) == 0o600
        for wrong in ("", "guess", server.token[:-1]):
            with pytest.raises(ControlError, match="abort needs this pipeline's token"):
                client.abort(server.endpoint, "someone else", token=wrong)
        reply = client.request(server.endpoint, {"command": "abort", "reason": "x", "token": 12})
        assert reply["ok"] is False and "abort needs this pipeline's token" in reply["error"]
        assert not topology.abort_requested  # the scan goes on
        assert client.abort(server.endpoint, "beam lost", token=server.token) == {"ok": True, "scan": "scan_0001"}
        assert topology.abort_requested and topology.abort_reason == "beam lost"
        assert client.status(server.endpoint)["abort"]["reason"] == "beam lost"
    assert not server.run_file.exists() and not (rundir / f"{os.getpid()}.token").exists()
    assert client.discover() == []
    with pytest.raises(ControlError, match="no answer"):
        client.status(server.endpoint, timeout_s=0.2)


def test_stop_needs_the_token_aborts_the_scan_and_outlasts_it(rundir: Path) -> None:
    topology = _topology()
    changes: list[tuple[str, str | None]] = []
    topology.subscribe(lambda change: changes.append((change["type"], change.get("scan"))))
    client = ControlClient()
    with ControlServer(topology) as server:
        topology.begin_scan("scan_0001")
        for wrong in ("", "guess", server.token[:-1]):
            with pytest.raises(ControlError, match="stop needs this pipeline's token.*`lightpipe stop`"):
                client.stop(server.endpoint, "someone else", token=wrong)
        reply = client.request(server.endpoint, {"command": "stop", "reason": ["x"], "token": server.token})
        assert reply == {"ok": False, "error": "\"reason\" must be a string, got list"}
        assert not topology.stop_requested and not topology.abort_requested
        assert client.status(server.endpoint)["stop"] == {"requested": False, "reason": "", "at": None}

        assert client.stop(server.endpoint, "end of shift", token=server.token) == {"ok": True, "scan": "scan_0001"}
        assert topology.stop_requested and topology.stop_event.is_set() and topology.stop_reason == "end of shift"
        assert topology.abort_requested and topology.abort_reason == "end of shift"  # the scan is aborted
        snap = client.status(server.endpoint)
        assert snap["stop"]["requested"] and snap["stop"]["reason"] == "end of shift"
        assert snap["stop"]["at"] == pytest.approx(time.time(), abs=5)
        topology.end_scan("aborted")
        # unlike an abort, the stop stays: asked again between scans it is not refused, and a scan that
        # begins anyway (one the engine had taken already) is aborted at once
        assert client.stop(server.endpoint, "again", token=server.token) == {"ok": True, "scan": None}
        assert topology.stop_reason == "end of shift" and not topology.abort_requested
        topology.begin_scan("scan_0002")
        assert topology.abort_requested and topology.abort_reason == "end of shift"
    assert changes == [("scan", "scan_0001"), ("stop", "scan_0001"), ("abort", "scan_0001"), ("scan", "scan_0001"),
                       ("scan", "scan_0002"), ("abort", "scan_0002")]


def test_discover_cleans_stale_files_and_skips_other_hosts(rundir: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    rundir.mkdir(parents=True)
    stale = rundir / f"{dead_pid}.json"
    stale.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:1", "pipeline": "old", "pid": dead_pid,
                                 "host": host, "started_at": 1.0}))
    elsewhere = rundir / "1.json"
    elsewhere.write_text(json.dumps({"endpoint": "tcp://10.0.0.9:5000", "pipeline": "other", "pid": 1,
                                     "host": host + "-elsewhere", "started_at": 2.0}))
    garbage = rundir / "junk.json"
    garbage.write_text("{not json")
    with ControlServer(_topology("a")) as first, ControlServer(_topology("b")) as second:
        assert first.run_file.name == f"{os.getpid()}.json" and second.run_file.name == f"{os.getpid()}-2.json"
        runs = ControlClient.discover()
        assert sorted(r.pipeline for r in runs) == ["a", "b"]
        assert {r.endpoint for r in runs} == {first.endpoint, second.endpoint}
    assert not stale.exists()  # its process is gone
    assert elsewhere.exists() and garbage.exists()  # not ours to judge


def test_server_setup_errors_say_what_to_do(rundir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ControlServer(_topology()) as server:
        with pytest.raises(ControlError, match="cannot bind the control channel to 'tcp://127.0.0.1:.*give a free"):
            ControlServer(_topology(), bind=server.endpoint)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(not_a_dir))
    with pytest.raises(ControlError, match=f"cannot announce the pipeline in {not_a_dir}: .*set {RUNTIME_DIR_ENV}"):
        ControlServer(_topology())
    with ControlServer(_topology(), directory=rundir) as server:  # the failures left no claims behind
        assert server.run_file.name == f"{os.getpid()}.json"


def test_a_dead_endpoint_gives_a_clear_error_after_the_timeout() -> None:
    client = ControlClient()
    t0 = time.monotonic()
    with pytest.raises(ControlError, match=r"no answer from the pipeline at tcp://127\.0\.0\.1:\d+ within 0.3 s"):
        client.status(_free_endpoint(), timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ControlError, match="cannot reach a pipeline at 'nowhere'"):
        client.status("nowhere")


def test_bad_requests_get_ok_false_and_the_server_goes_on(rundir: Path) -> None:
    topology = _topology()
    with ControlServer(topology) as server:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        replies = []
        for request in ([b"not json"], [b"\xff\xfe"], [b"[1, 2]"], [b'{"command": "reboot"}'],
                        [b'{"command": "status"}', b"extra"],
                        [json.dumps({"command": "abort", "reason": 3, "token": server.token}).encode()]):
            sock.send_multipart(request)
            replies.append(json.loads(sock.recv()))
        sock.close()
        assert all(r["ok"] is False for r in replies)
        errors = [r["error"] for r in replies]
        assert "not JSON" in errors[0] and "not JSON" in errors[1]
        assert "JSON object with a \"command\" field" in errors[2]
        assert errors[3] == "unknown command 'reboot'; known commands: status, abort, stop"
        assert "one JSON message, got 2 frames" in errors[4]
        assert "\"reason\" must be a string, got int" in errors[5]
        assert ControlClient().status(server.endpoint)["pipeline"] == "powder"
        assert not topology.abort_requested


def test_cli_status_and_abort_in_process(rundir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_status(_args(add_status_arguments)) == 1
    assert "no running pipeline found on this host" in capsys.readouterr().err
    assert cmd_abort(_args(add_abort_arguments)) == 1
    assert cmd_stop(_args(add_stop_arguments)) == 1
    assert "no running pipeline found on this host" in capsys.readouterr().err
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            _args(add_status_arguments, "--timeout", bad)
        assert "expected a positive number of seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args(add_status_arguments, "--watch", "--json")
    assert "not allowed with argument" in capsys.readouterr().err

    topology = _topology()
    topology.begin_scan("scan_0003")
    late = topology.add("worker-1", "worker", heartbeat_s=0.01)
    late.set_state("running")
    time.sleep(0.1)
    with ControlServer(topology) as server:
        assert cmd_status(_args(add_status_arguments)) == 0
        text = capsys.readouterr().out
        for name in ("receiver", "buffer", "sink:nexus", "worker-1", "powder", "scan scan_0003: running"):
            assert name in text
        assert "missed heartbeats" in text and "50%" in text

        assert cmd_status(_args(add_status_arguments, "--json", "--pid", str(os.getpid()))) == 0
        [answer] = json.loads(capsys.readouterr().out)
        assert answer["endpoint"] == server.endpoint and answer["components"][3]["state"] == "failed"

        assert cmd_status(_args(add_status_arguments, "--pid", "1")) == 1
        assert f"no running pipeline has pid 1; running: powder (pid {os.getpid()})" in capsys.readouterr().err

        token = server.run_file.with_suffix(".token")
        token.rename(token.with_suffix(".hidden"))  # as for another user's pipeline: no token to read
        assert cmd_abort(_args(add_abort_arguments, "--reason", "not mine")) == 1
        assert "an abort needs the pipeline's token" in capsys.readouterr().err and not topology.abort_requested
        token.with_suffix(".hidden").rename(token)
        assert cmd_abort(_args(add_abort_arguments, "--endpoint", server.endpoint, "--reason", "detector fault")) == 0
        assert "abort requested: scan scan_0003" in capsys.readouterr().out
        assert topology.abort_requested and topology.abort_reason == "detector fault"
        topology.end_scan("aborted")

        assert cmd_abort(_args(add_abort_arguments)) == 1  # no scan runs now
        assert "is not processing a scan" in capsys.readouterr().err

        token.rename(token.with_suffix(".hidden"))
        assert cmd_stop(_args(add_stop_arguments)) == 1
        assert "a stop needs the pipeline's token" in capsys.readouterr().err and not topology.stop_requested
        token.with_suffix(".hidden").rename(token)
        assert cmd_stop(_args(add_stop_arguments, "--pid", str(os.getpid()))) == 0  # between scans: the run ends
        assert "stop requested: powder (pid" in capsys.readouterr().out
        assert topology.stop_requested and topology.stop_reason.startswith("lightpipe stop by ")
        assert cmd_status(_args(add_status_arguments)) == 0
        assert "stop requested: lightpipe stop by" in capsys.readouterr().out

    # an announced pipeline whose process lives but whose channel does not answer
    rundir.mkdir(exist_ok=True)
    (rundir / "hung.json").write_text(json.dumps({"endpoint": _free_endpoint(), "pipeline": "hung",
                                                  "pid": os.getpid(), "host": socket.gethostname(),
                                                  "started_at": 0.0}))
    assert cmd_status(_args(add_status_arguments, "--timeout", "0.2")) == 1
    assert "hung (pid" in capsys.readouterr().out


def test_status_and_abort_of_a_pipeline_in_another_process(rundir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {**os.environ, RUNTIME_DIR_ENV: str(rundir)}
    proc = subprocess.Popen([sys.executable, "-c", PIPELINE_PROCESS], stdout=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = proc.stdout.readline().strip() if proc.stdout else ""
        assert endpoint.startswith("tcp://"), "the pipeline process did not start"
        with ControlServer(_topology("local-pipe")):
            assert cmd_status(_args(add_status_arguments)) == 0
            text = capsys.readouterr().out
            assert "sub-pipe" in text and "local-pipe" in text and "scan scan_0007" in text
            assert "nexus" in text and "receiver" in text

            assert cmd_abort(_args(add_abort_arguments)) == 1  # two pipelines: which one?
            err = capsys.readouterr().err
            assert "several pipelines are running; choose one with --pid" in err
            assert f"--pid {proc.pid}" in err and f"--pid {os.getpid()}" in err

            assert cmd_abort(_args(add_abort_arguments, "--pid", str(proc.pid), "--reason", "beam lost")) == 0
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out.strip() == "aborted: beam lost"
    assert ControlClient.discover() == []


def test_status_watch_refreshes_until_interrupted(rundir: Path) -> None:
    env = {**os.environ, RUNTIME_DIR_ENV: str(rundir), "COLUMNS": "200"}
    watcher = textwrap.dedent("""
        import argparse, sys
        from lightpipe.cli.control import add_status_arguments, cmd_status
        parser = argparse.ArgumentParser()
        add_status_arguments(parser)
        print("watching", flush=True)
        sys.exit(cmd_status(parser.parse_args(["--watch", "--interval", "0.05"])))
    """)
    with ControlServer(_topology("watched")):
        proc = subprocess.Popen([sys.executable, "-c", watcher], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "watching\n"
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "watched" in out and "sink:nexus" in out
