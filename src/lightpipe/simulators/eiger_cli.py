"""``lightpipe simulate eiger``: the EIGER simulator from the command line.

The options choose the frames (an HDF5 file or a registered simulator source),
the ports, the stream version and encoding and the frame rate; the command
then serves the SIMPLON REST API until Ctrl-C, or acquires ``--series``
series by itself and exits. The REST API needs the ``server`` extra
(``pip install 'lightpipe[server]'``).
"""
from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from lightpipe.core.errors import SourceError

if TYPE_CHECKING:
    from lightpipe.simulators.eiger_frames import FrameSource


def add_eiger_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lightpipe simulate eiger``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=None,
                        help="ZeroMQ stream port (default 9999 for v1, 31001 for v2; 0: any free port)")
    parser.add_argument("--rest-port", type=int, default=8089,
                        help="SIMPLON REST port (default 8089; 0: any free port)")
    parser.add_argument("--format", choices=["v1", "v2"], default="v1",
                        help="stream v1 (JSON + binary, 'legacy') or v2 (CBOR, 'cbor'); default v1")
    parser.add_argument("--encoding", default=None,
                        help="'bs16-lz4<' (bitshuffle-LZ4 on the frames' bit depth, the default), 'lz4<' or '<'; "
                             "v2 sends the same compression in its own framing")
    parser.add_argument("--header-detail", choices=["all", "basic", "none"], default="basic")
    parser.add_argument("--rate", type=float, default=0.0, metavar="HZ",
                        help="frames per second (default 0: as fast as possible)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_file", metavar="FILE.h5", help="stream the frames of an HDF5 file")
    source.add_argument("--simulator", default=None, metavar="NAME",
                        help="stream the data frames of a registered source (default simulated_frames)")
    parser.add_argument("--dataset", help="3-D dataset of --from (default /entry/data/data, or DECTRIS data links)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the --simulator source, value in YAML, e.g. shape=[512,512]")
    parser.add_argument("--nimages", type=int, default=100, help="frames per trigger (default 100)")
    parser.add_argument("--ntrigger", type=int, default=1, help="triggers per series (default 1)")
    parser.add_argument("--series", type=int, default=0,
                        help="acquire this many series at once, then exit (default 0: wait for REST commands)")


def _frames_from_args(args: argparse.Namespace) -> FrameSource:
    import yaml

    from lightpipe.simulators.eiger_frames import FrameSource

    if args.from_file:
        if args.param:
            raise SourceError("--param sets parameters of a --simulator source, not of --from FILE")
        return FrameSource.from_hdf5(args.from_file, args.dataset)
    if args.dataset:
        raise SourceError("--dataset names a dataset of --from FILE.h5")
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SourceError(f"--param {item!r} is not KEY=VALUE")
        params[key] = yaml.safe_load(text)
    return FrameSource.from_simulator(args.simulator or "simulated_frames", params)


def run_eiger(args: argparse.Namespace) -> int:
    """Run ``lightpipe simulate eiger``: serve until Ctrl-C, or acquire ``--series`` series and exit."""
    # imported here, not at the top: every ``lightpipe`` command builds this parser, few run it
    from lightpipe.simulators.eiger import EigerSimulator

    simulator = EigerSimulator(_frames_from_args(args), host=args.host, stream_port=args.port,
                               rest_port=args.rest_port, format=args.format, encoding=args.encoding,
                               header_detail=args.header_detail, rate_hz=args.rate)
    simulator.set_config("nimages", args.nimages)
    simulator.set_config("ntrigger", args.ntrigger)
    with simulator:
        ny, nx = simulator.frames.shape
        rate = f"{simulator.rate_hz:g} Hz" if simulator.rate_hz else "as fast as possible"
        print(f"EIGER simulator: {len(simulator.frames)} frames of {ny}x{nx} {simulator.frames.dtype}, {rate}",
              flush=True)
        print(f"stream {args.format} on {simulator.stream_endpoint}", flush=True)
        print(f"SIMPLON REST on {simulator.rest_url}/detector/api/{simulator.api_version}/", flush=True)
        for _ in range(args.series):
            series = simulator.acquire(args.nimages, args.ntrigger)
            print(f"series {series}: {args.nimages * args.ntrigger} frames sent", flush=True)
        while args.series == 0:
            time.sleep(3600)
    return 0
