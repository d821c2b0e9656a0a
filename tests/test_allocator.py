"""The allocator settings stop a thread's buffers from being page-faulted in again on every allocation."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lightpipe.core.allocator import tune_allocator

# A thread other than the main one fills ten 3 MB buffers and frees them, 20 times, as a
# ptychography part does with its chunk temporaries in its Dask actor thread; prints the
# minor page faults. (Below 4 MB NumPy asks for no transparent huge pages: 4 KiB faults.)
THREAD_LOOP = """
import resource, sys, threading
import numpy as np
from lightpipe.core.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
def loop():
    for _ in range(20):
        buffers = [np.ones(375_000) for _ in range(10)]  # touches every page
        del buffers
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = threading.Thread(target=loop)
before = faults()
t.start(); t.join()
print(faults() - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", THREAD_LOOP, mode], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_tuned_allocator_reuses_a_threads_buffers() -> None:
    assert tune_allocator()
    untuned, tuned = _faults("default"), _faults("tuned")
    pages = 30_000_000 // 4096
    assert untuned > 8 * pages  # glibc's defaults fault the buffers in again, cycle after cycle
    assert tuned < 3 * pages  # tuned: faulted in once, then reused
