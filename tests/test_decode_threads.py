"""bitshuffle's OpenMP threads sleep between frames where lightpipe decodes, instead of spinning on cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys

#: Decodes a frame every 2 ms, as a stream at 500 Hz would, and reports CPU and wall seconds.
#: ``lightpipe`` as the argument imports lightpipe's decoders first, as every lightpipe process does.
PROBE = """
import json, resource, sys, time
if sys.argv[1] == "lightpipe":
    import lightpipe.sources.dectris.compression
import bitshuffle, numpy as np
frame = np.random.default_rng(0).poisson(3.0, (512, 512)).astype(np.uint16).ravel()
blob = bitshuffle.compress_lz4(frame, 4096)  # 64 blocks: a team of threads shares them out

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

bitshuffle.decompress_lz4(blob, frame.shape, frame.dtype, 4096)
cpu0, wall0 = cpu(), time.perf_counter()
for _ in range(50):
    assert (bitshuffle.decompress_lz4(blob, frame.shape, frame.dtype, 4096) == frame).all()
    time.sleep(0.002)
print(json.dumps({"cpu": cpu() - cpu0, "wall": time.perf_counter() - wall0}))
"""


def _seconds(importing: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "2"  # a team of two, as on a 2-core beamline PC, whatever this machine has
    done = subprocess.run([sys.executable, "-c", PROBE, importing], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_decoding_threads_sleep_between_frames() -> None:
    plain, lightpipe = _seconds("bitshuffle"), _seconds("lightpipe")
    # bitshuffle alone: the team's second thread spins through the gaps between frames
    assert plain["cpu"] > 0.5 * plain["wall"], plain
    # in a lightpipe process the team sleeps: CPU is the decoding only, a fraction of the time
    assert lightpipe["cpu"] < 0.5 * plain["cpu"], (lightpipe, plain)
