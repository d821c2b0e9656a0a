"""Live stream ingest: Eiger 4M frames from the EIGER simulator through the ``eiger`` source, against raw ZeroMQ.

What it measures
    Frames per second of a no-op pipeline fed by a live DECTRIS stream. The
    EIGER simulator streams Eiger 4M frames (2162 x 2068 uint16, bitshuffle-LZ4
    ``bs16-lz4<``, as an EIGER sends them) as fast as it can; the pipeline's
    ``eiger`` source receives them (its one receiver thread checks the protocol
    and the MD5 of each frame and holds the frames, still compressed), the local
    engine decodes each frame in the chunk that processes it and passes it
    through ``identity``; a ``roi_sum`` over one pixel feeds a NeXus sink that
    writes that one float per frame (as in ``overhead.py``: the least a sink can
    keep while still pulling every frame through the stage). Stream v1
    (SIMPLON, multipart JSON + binary) and stream v2 (CBOR) are both measured.

Reference
    In the same run, from the same simulator, the same number of frames: the
    loop a user would write without lightpipe, with pyzmq, the standard
    library's ``json`` (v1) or ``cbor2`` (v2) and the ``bitshuffle`` package
    itself: ``parts = pull.recv_multipart()``, read the message, take the
    bitshuffle-LZ4 blob out of it (v1 checks its MD5, as lightpipe's receiver
    does), ``bitshuffle.decompress_lz4(...)`` on what follows its 12-byte HDF5
    filter header. No lightpipe code is in the loop. ``vs raw`` is lightpipe's
    frames/s divided by the raw loop's (target >= 0.8).

Conditions
    The simulator runs in its own process (``lightpipe simulate eiger``),
    driven over its SIMPLON REST API as a beamline control system drives a
    DCU, so sender and receiver never share a GIL. A few distinct frames are
    simulated and cycled; the simulator encodes each once, when the first
    series is armed, and then only sends: the time is not spent compressing.
    Both runners decode with the same bitshuffle, which runs on OpenMP
    threads, one per core unless ``OMP_NUM_THREADS`` says otherwise (the
    value in effect is printed). The raw loop's threads wait for the next
    frame as libgomp's default has them, spinning; lightpipe's sleep
    (``OMP_WAIT_POLICY=PASSIVE``, which lightpipe sets itself before it loads
    bitshuffle: ``lightpipe.sources.dectris.compression.OPENMP_WAIT_POLICY``). A series is timed from its
    ``trigger`` (its header has arrived, the receiver is connected) to the
    last frame decoded (raw) or the result file closed (lightpipe). Each runner runs in a fresh Python process (imports,
    allocator state), first on a short warm-up series, then ``--repeat``
    times; the best counts. The sender costs CPU too: the simulator's CPU
    seconds during each timed series are reported beside the receiving
    process's, because on a 2-core machine they compete for the same cores.

Run ``python benchmarks/stream_ingest.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: DECTRIS Eiger 4M frame shape (y, x).
EIGER_4M = (2162, 2068)
ENCODING = "bs16-lz4<"
FORMATS = ("v1", "v2")
#: The stream config ``format`` of each stream version.
FORMAT_NAMES = {"v1": "legacy", "v2": "cbor"}
RUNNERS = ("raw", "lightpipe")
TARGET = 0.8
CHUNK_SIZE = 16
WARM_FRAMES = 16
#: A new receiver may connect before the simulator's PUSH socket has noticed that the previous one left;
#: a header sent in that moment would go to the closed connection. This pause lets it notice.
RECONNECT_PAUSE_S = 0.3
#: The pipeline gives up when no series comes this long (the acquisition failed).
IDLE_TIMEOUT_S = 60.0


class Detector:
    """The SIMPLON REST API of a running simulator: configuration, commands, and its process's CPU time.

    Parameters
    ----------
    rest
        Base URL of the REST server, e.g. ``http://127.0.0.1:8089``.
    version
        The API version in the paths.
    pid
        Process id of the simulator (for :meth:`cpu_seconds`).
    """

    def __init__(self, rest: str, version: str, pid: int) -> None:
        self.rest, self.version, self.pid = rest, version, pid

    def _put(self, path: str, value: Any = None) -> Any:
        body = b"" if value is None else json.dumps({"value": value}).encode()
        request = urllib.request.Request(f"{self.rest}/{path}", data=body, method="PUT",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=900) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"the simulator refused PUT {path}: {exc.read().decode(errors='replace')}") from exc

    def config(self, name: str, value: Any) -> None:
        """Set a detector configuration value (``nimages``, ``frame_time``, ...)."""
        self._put(f"detector/api/{self.version}/config/{name}", value)

    def stream_config(self, name: str, value: Any) -> None:
        """Set a stream configuration value (``format``, ``header_detail``, ...)."""
        self._put(f"stream/api/{self.version}/config/{name}", value)

    def command(self, name: str) -> Any:
        """Run ``arm``, ``trigger``, ``disarm``, ...; ``trigger`` returns once every frame is sent."""
        return self._put(f"detector/api/{self.version}/command/{name}")

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of the simulator process so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def as_args(self) -> dict[str, Any]:
        """The arguments that rebuild this object in another process."""
        return {"rest": self.rest, "version": self.version, "pid": self.pid}


class SimulatorProcess:
    """``lightpipe simulate eiger`` in a process of its own, serving its REST API until stopped.

    Parameters
    ----------
    shape
        Frame shape (y, x).
    distinct
        Distinct frames simulated and cycled.
    log
        File for the simulator's messages (shown when it fails).
    params
        Further parameters of the ``simulated_frames`` source (photons, rings, ...).
    """

    def __init__(self, shape: tuple[int, int], distinct: int, log: Path, **params: Any) -> None:
        self.params = {"frames": distinct, "darks": 0, "flats": 0, "shape": list(shape), **params}
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.detector: Detector | None = None

    def __enter__(self) -> SimulatorProcess:
        cmd = [sys.executable, "-m", "lightpipe.cli.main", "simulate", "eiger", "--port", "0", "--rest-port", "0",
               "--encoding", ENCODING, "--rate", "0", "--nimages", "1", "--simulator", "simulated_frames",
               *[a for k, v in self.params.items() for a in ("--param", f"{k}={json.dumps(v)}")]]
        with open(self.log, "w") as err:
            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.process.stdout is not None
        rest = version = None
        while not (self.endpoint and rest):
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(10)
                raise RuntimeError(f"the EIGER simulator exited (code {self.process.returncode}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            if m := re.match(r"stream v\d on (\S+)", line):
                self.endpoint = m[1]
            elif m := re.match(r"SIMPLON REST on (http://[^/]+)/detector/api/([^/]+)/", line):
                rest, version = m[1], m[2]
        assert version is not None
        self.detector = Detector(rest, version, self.process.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Acquisition(threading.Thread):
    """One series, acquired over REST on a thread while this process receives it.

    Sets ``nimages`` (and the frame rate, if given: 0 sends as fast as
    possible), arms (the simulator sends the header once a receiver is
    connected), notes the time and the sender's CPU, triggers (returns when
    every frame is sent), notes the time again, and disarms (the end of series).
    """

    def __init__(self, detector: Detector, nimages: int, rate_hz: float | None = None) -> None:
        super().__init__(name="acquisition", daemon=True)
        self.detector = detector
        self.nimages = nimages
        self.rate_hz = rate_hz
        self.triggered = self.sent = 0.0
        self.sender_cpu0 = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.detector.config("nimages", self.nimages)
            if self.rate_hz is not None:  # SIMPLON has no "as fast as possible": a frame time far below any send time
                self.detector.config("frame_time", 1.0 / self.rate_hz if self.rate_hz > 0 else 1e-9)
            self.detector.command("arm")
            self.sender_cpu0 = self.detector.cpu_seconds()
            self.triggered = time.perf_counter()
            self.detector.command("trigger")
            self.sent = time.perf_counter()
            self.detector.command("disarm")
        except BaseException as exc:  # the measuring thread reports it
            self.error = exc

    def receive(self, sock: Any) -> list[bytes]:
        """The next message on ``sock``; raise what went wrong if the acquisition failed instead."""
        while not sock.poll(1000):
            if not self.is_alive():
                self.finish()
                raise RuntimeError(f"the acquisition of {self.nimages} frames ended but the stream stopped")
        return sock.recv_multipart()

    def finish(self) -> None:
        """Wait for the disarm; raise what went wrong on the thread."""
        self.join(60)
        if self.error is not None:
            raise RuntimeError(f"acquisition of {self.nimages} frames failed: {self.error}") from self.error
        if self.is_alive():
            raise RuntimeError(f"acquisition of {self.nimages} frames did not finish")


def process_usage() -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and minor page faults of this process so far."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_minflt


def noop_pipeline(endpoint: str, version: str) -> Any:
    """Receive one series, decode every frame, pass it through ``identity``, keep one float per frame."""
    from lightpipe.core.pipeline import load_pipeline

    return load_pipeline({
        "version": 1,
        "name": "stream-ingest",
        "source": {"use": "eiger", "params": {"endpoint": endpoint, "version": version, "max_scans": 1,
                                              "idle_timeout_s": IDLE_TIMEOUT_S}},
        "stages": {
            "identity": {"use": "identity"},
            "probe": {"use": "roi_sum", "inputs": {"frame": "identity.frame"}, "params": {"y": [0, 1], "x": [0, 1]}},
        },
        "sinks": [{"use": "nexus", "fields": ["probe.sum"], "params": {"compression": "none"}}],
        "engine": {"chunk_size": CHUNK_SIZE},
    })


def bslz4_frame(blob: bytes, shape: tuple[int, int], dtype: Any) -> Any:
    """A bitshuffle-LZ4 frame in the HDF5 filter framing, decoded by the ``bitshuffle`` package itself."""
    import bitshuffle
    import numpy as np

    _, block_bytes = struct.unpack_from(">QI", blob)  # uncompressed size, block size: the filter's header
    dtype = np.dtype(dtype)
    return bitshuffle.decompress_lz4(np.frombuffer(blob, np.uint8, offset=12), shape, dtype,
                                     block_bytes // dtype.itemsize)


def raw_v1(parts: list[bytes]) -> tuple[str, Any, int]:
    """Read a stream v1 message with ``json``: its kind, an image's frame (MD5 checked) and compressed bytes."""
    head = json.loads(parts[0])
    kind = head["htype"].split("-", 1)[0]
    if kind != "dimage":
        return kind, None, 0
    info = json.loads(parts[1])
    if hashlib.md5(parts[2]).hexdigest() != head["hash"]:
        raise RuntimeError(f"frame {head['frame']}: MD5 mismatch")
    width, height = info["shape"]
    return kind, bslz4_frame(parts[2], (height, width), info["type"]), len(parts[2])


def raw_v2(parts: list[bytes]) -> tuple[str, Any, int]:
    """Read a stream v2 message with ``cbor2``: its kind, an image's frame and its compressed bytes.

    An image's ``data`` maps a channel to tag 40 ``[dims, typed array]``; the typed
    array (tag 69, little-endian uint16) holds tag 56500 ``["bslz4", 2, blob]``.
    """
    import cbor2

    msg = cbor2.loads(parts[0])
    if msg["type"] != "image":
        return msg["type"], None, 0
    dims, typed = next(iter(msg["data"].values())).value
    algorithm, _, blob = typed.value.value
    if typed.tag != 69 or algorithm != "bslz4":
        raise RuntimeError(f"this loop reads bslz4 uint16 frames, got tag {typed.tag} {algorithm}")
    return "image", bslz4_frame(blob, tuple(dims), "<u2"), len(blob)


def _raw_series(sock: Any, read: Any, detector: Detector, nimages: int) -> dict[str, Any]:
    """Receive and decode one series with the plain loop; figures of that series."""
    acquisition = Acquisition(detector, nimages)
    acquisition.start()
    frames = wire = blob = 0
    usage0 = None
    while True:
        parts = acquisition.receive(sock)
        kind, frame, nbytes = read(parts)
        if usage0 is None:  # the header: the series starts here
            usage0 = process_usage()
        if frame is not None:
            frames += 1
            wire += sum(len(p) for p in parts)
            blob += nbytes
        elif kind in ("dseries_end", "end"):
            break
    end = time.perf_counter()
    cpu, faults = (b - a for a, b in zip(usage0, process_usage()))
    acquisition.finish()
    if frames != nimages:
        raise RuntimeError(f"the raw loop decoded {frames} of {nimages} frames")
    return {"seconds": end - acquisition.triggered, "wire_bytes": wire, "blob_bytes": blob,
            "receiver_cpu_s": cpu, "faults_per_frame": faults / nimages,
            "sender_cpu_s": detector.cpu_seconds() - acquisition.sender_cpu0}


def lightpipe_series(engine: Any, pipeline: Any, detector: Detector, nimages: int, out: Path,
                     rate_hz: float | None = None) -> dict[str, Any]:
    """Acquire one series (at ``rate_hz``; ``None`` keeps the detector's) while ``engine`` runs ``pipeline`` on it.

    Returns the series' figures: ``seconds`` from the trigger to the result file
    closed, the ``triggered``, ``sent`` and ``closed`` times (``time.perf_counter``),
    CPU and page faults, the source's peaks, and the seconds per stage.
    """
    peak = {"held": 0, "spilled": 0, "lag_s": 0.0}

    def progress(p: Any) -> None:
        for key in peak:
            peak[key] = max(peak[key], p.source.get(key, 0))

    time.sleep(RECONNECT_PAUSE_S)
    acquisition = Acquisition(detector, nimages, rate_hz)
    acquisition.start()
    usage0 = process_usage()
    report = engine.run(pipeline, out, progress=progress)
    closed = time.perf_counter()
    cpu, faults = (b - a for a, b in zip(usage0, process_usage()))
    acquisition.finish()
    if not report.scans:
        raise RuntimeError(f"no series arrived in {IDLE_TIMEOUT_S:g} s")
    (scan,) = report.scans
    if scan.ledger.written != nimages or scan.ledger.failed:
        raise RuntimeError(f"lightpipe wrote {scan.ledger.written} of {nimages} frames; "
                           f"failed: {scan.ledger.failed[:3]}")
    return {"seconds": closed - acquisition.triggered, "closed": closed, "triggered": acquisition.triggered,
            "sent": acquisition.sent, "receiver_cpu_s": cpu, "faults_per_frame": faults / nimages,
            "sender_cpu_s": detector.cpu_seconds() - acquisition.sender_cpu0, "peak_held": int(peak["held"]),
            "peak_spilled": int(peak["spilled"]), "peak_lag_s": float(peak["lag_s"]),
            "stage_s": dict(scan.stage_seconds)}


def measure(runner: str, version: str, endpoint: str, detector: Detector, frames: int, repeat: int,
            out: Path) -> dict[str, Any]:
    """Time ``runner`` in this process: a warm-up series, then ``repeat`` series of ``frames``; the best counts."""
    series: list[dict[str, Any]] = []
    if runner == "raw":
        import zmq

        read = raw_v1 if version == "v1" else raw_v2
        sock = zmq.Context.instance().socket(zmq.PULL)
        sock.connect(endpoint)
        try:
            _raw_series(sock, read, detector, WARM_FRAMES)
            series = [_raw_series(sock, read, detector, frames) for _ in range(repeat)]
        finally:
            sock.close(linger=0)
    elif runner == "lightpipe":
        from lightpipe.engines.local import LocalEngine

        pipeline = noop_pipeline(endpoint, version)
        with LocalEngine() as engine:
            lightpipe_series(engine, pipeline, detector, WARM_FRAMES, out / "warm")
            series = [lightpipe_series(engine, pipeline, detector, frames, out / f"run-{k}") for k in range(repeat)]
    else:
        raise ValueError(f"unknown runner {runner!r}; known: {', '.join(RUNNERS)}")
    return min(series, key=lambda s: s["seconds"])


def measure_in_fresh_process(runner: str, version: str, endpoint: str, detector: Detector, frames: int, repeat: int,
                             out: Path) -> dict[str, Any]:
    """Run :func:`measure` in a new Python process and return its figures."""
    job = {"runner": runner, "version": version, "endpoint": endpoint, "detector": detector.as_args(),
           "frames": frames, "repeat": repeat, "out": str(out)}
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"runner {runner} ({version}) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(frames: int, shape: tuple[int, int], distinct: int, repeat: int, versions: list[str],
        workdir: str | None) -> dict[str, Any]:
    """Start the simulator, time both runners on each stream version, and return the figures."""
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    side = min(shape)
    with tempfile.TemporaryDirectory(prefix="lightpipe-stream-", dir=workdir) as tmp:
        root = Path(tmp)
        # a photon-counting detector: no dark offset, no read noise, mostly small counts (as overhead.py)
        with SimulatorProcess(shape, distinct, root / "simulator.log", photons=20.0, dark_level=0.0, read_noise=0.0,
                              rings_px=[0.1 * side, 0.2 * side, 0.3 * side], seed=1) as sim:
            assert sim.detector is not None
            for version in versions:
                sim.detector.stream_config("format", FORMAT_NAMES[version])
                figures = {}
                for runner in RUNNERS:
                    out = root / f"out-{version}-{runner}"
                    figures[runner] = measure_in_fresh_process(runner, version, sim.endpoint, sim.detector, frames,
                                                               repeat, out)
                    shutil.rmtree(out, ignore_errors=True)
                raw = figures["raw"]
                for runner, fig in figures.items():
                    seconds = fig["seconds"]
                    ratio = raw["seconds"] / seconds
                    rows.append({
                        "stream": version,
                        "runner": runner,
                        "seconds": seconds,
                        "frames_per_s": frames / seconds,
                        # the same frames in the same order for both runners: the raw loop counted the bytes
                        "wire_mb_per_s": raw["wire_bytes"] / seconds / 1e6,
                        "decoded_mb_per_s": frames * shape[0] * shape[1] * 2 / seconds / 1e6,
                        "ratio_vs_raw": ratio,
                        "target": None if runner == "raw" else TARGET,
                        "meets_target": None if runner == "raw" else ratio >= TARGET,
                        "receiver_cpu_s": fig["receiver_cpu_s"],
                        "sender_cpu_s": fig["sender_cpu_s"],
                        "faults_per_frame": fig["faults_per_frame"],
                        "peak_held": fig.get("peak_held"),
                        "peak_spilled": fig.get("peak_spilled"),
                        "stage_ms_per_frame": {k: 1e3 * v / frames for k, v in fig.get("stage_s", {}).items()},
                        "compression_ratio": frames * shape[0] * shape[1] * 2 / raw["blob_bytes"],
                    })
    return {
        "benchmark": "stream_ingest",
        "frames": frames,
        "shape": list(shape),
        "dtype": "uint16",
        "encoding": ENCODING,
        "distinct_frames": distinct,
        "chunk_size": CHUNK_SIZE,
        "repeat": repeat,
        "cpu_count": os.cpu_count(),
        # the raw loop's bitshuffle decodes on OpenMP threads, as many as cores unless this says otherwise
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # the raw loop's process never imports lightpipe: its OpenMP threads wait as libgomp's default has them
        "raw_omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default (spin, then sleep)"),
        "load_average": [load_before, os.getloadavg()[0]],
        "results": rows,
    }


def table(figures: dict[str, Any]) -> Any:
    """The figures as a rich table."""
    from rich.table import Table

    ny, nx = figures["shape"]
    t = Table(title=f"Stream ingest: {figures['frames']} frames of {ny}x{nx} uint16, {figures['encoding']}, from the "
                    f"EIGER simulator as fast as it sends (best of {figures['repeat']})")
    for col in ("stream", "runner", "time s", "frames/s", "wire MB/s", "decoded MB/s", "vs raw", "target",
                "receiver CPU s", "sender CPU s", "faults/frame", "peak held", "peak spilled"):
        t.add_column(col, justify="left" if col in ("stream", "runner") else "right", no_wrap=True)
    for r in figures["results"]:
        verdict = "" if r["target"] is None else f"{'[green]' if r['meets_target'] else '[red]'}>= {r['target']:.1f}"
        t.add_row(r["stream"], r["runner"], f"{r['seconds']:.3f}", f"{r['frames_per_s']:.0f}",
                  f"{r['wire_mb_per_s']:.0f}", f"{r['decoded_mb_per_s']:.0f}", f"{r['ratio_vs_raw']:.2f}x", verdict,
                  f"{r['receiver_cpu_s']:.2f}", f"{r['sender_cpu_s']:.2f}", f"{r['faults_per_frame']:.0f}",
                  "" if r["peak_held"] is None else str(r["peak_held"]),
                  "" if r["peak_spilled"] is None else str(r["peak_spilled"]))
    return t


NOTES = (
    "raw: pull.recv_multipart() + json (v1, MD5 checked) or cbor2 (v2) + bitshuffle.decompress_lz4() in a plain loop, "
    "no lightpipe code. lightpipe: the eiger source "
    "(one receiver thread: protocol checks, MD5 for v1, frames held compressed) -> local engine, 1 worker, decoding "
    "in the chunk -> identity -> roi_sum of 1 pixel -> NeXus sink writing one float per frame; chunks of {chunk}. "
    "Times run from the trigger to the last frame decoded (raw) or the result file closed (lightpipe). {distinct} "
    "distinct frames cycled, compressed {ratio:.1f}x; wire MB/s counts the compressed bytes received, decoded MB/s "
    "the uncompressed frames; bitshuffle decodes on {omp} OpenMP threads, which wait for the next frame as "
    "{wait} in the raw loop and sleep in lightpipe (it sets OMP_WAIT_POLICY=PASSIVE itself). receiver CPU s: the receiving process, "
    "all threads; sender CPU s: the simulator process in the same time. faults/frame: minor page faults of the "
    "receiving process per frame (each a 4 KiB page the kernel mapped and zeroed because memory was taken fresh "
    "instead of reused). Both share this machine's {cpus} cores (and with other users' processes: load average "
    "{load0:.1f} before, {load1:.1f} after). lightpipe stage ms/frame: {stages}."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:  # internal: one runner in this fresh process, figures as JSON
        job = json.loads(argv[1])
        detector = Detector(**job["detector"])
        print(json.dumps(measure(job["runner"], job["version"], job["endpoint"], detector, job["frames"],
                                 job["repeat"], Path(job["out"]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=400, help="frames in each timed series (default 400)")
    parser.add_argument("--shape", type=int, nargs=2, default=EIGER_4M, metavar=("NY", "NX"),
                        help="frame shape (default Eiger 4M: 2162 2068)")
    parser.add_argument("--distinct", type=int, default=8,
                        help="distinct simulated frames, cycled (default 8); the simulator keeps 256 MiB of encoded "
                             "frames, beyond that it compresses while it sends")
    parser.add_argument("--stream", choices=[*FORMATS, "both"], default="both",
                        help="stream version(s) to measure (default both)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed series of each runner; the best counts (default 3)")
    parser.add_argument("--workdir", help="folder for result files (default: the system temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        frames, shape, distinct, repeat = 24, (128, 128), 4, 1
    else:
        frames, shape, distinct, repeat = args.frames, tuple(args.shape), args.distinct, args.repeat
    if frames < 1 or repeat < 1 or distinct < 1 or min(shape) < 2:
        parser.error("--frames, --repeat and --distinct must be at least 1, and --shape at least 2 2")
    versions = list(FORMATS) if args.stream == "both" else [args.stream]
    figures = run(frames, shape, distinct, repeat, versions, args.workdir)

    from rich.console import Console

    console = Console(stderr=args.json)
    console.width = max(console.width, 170)
    console.print(table(figures))
    stages = "; ".join(f"{r['stream']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stage_ms_per_frame"].items())
                       for r in figures["results"] if r["runner"] == "lightpipe")
    omp = figures["omp_num_threads"] or f"{figures['cpu_count']} (OMP_NUM_THREADS unset: one per core)"
    console.print(NOTES.format(chunk=figures["chunk_size"], distinct=figures["distinct_frames"], omp=omp,
                               wait=figures["raw_omp_wait_policy"],
                               ratio=figures["results"][0]["compression_ratio"], cpus=figures["cpu_count"],
                               load0=figures["load_average"][0], load1=figures["load_average"][1], stages=stages),
                  markup=False)
    if args.json:
        print(json.dumps(figures))  # one JSON object on the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
