"""glibc allocator settings that let a process reuse frame-sized buffers instead of page-faulting new ones.

Detector frames and the arrays made from them are megabytes each, and a
pipeline allocates and frees them at the frame rate. glibc's defaults hand
such memory back to the kernel as soon as it is freed, so the next buffer of
the same size is page-faulted in again, one 4 KiB page at a time:

- above the mmap threshold (128 KiB until the dynamic threshold grows) every
  buffer is its own ``mmap``, unmapped on ``free``;
- the main heap is trimmed whenever 128 KiB at its top are free (Dask workers
  set ``MALLOC_TRIM_THRESHOLD_=65536``);
- the heaps of threads other than the main one (64 MiB each) are deleted as
  soon as they are empty, whatever the trim threshold. That hit the
  ptychography parts on Dask, whose engines run in an actor thread: 660 000
  page faults and 16 % more time on 544 frames of 128 x 128
  (``benchmarks/ptycho_distributed.py``). Keeping a top pad as large as a heap
  stops it.

The settings here keep up to :data:`TRIM_THRESHOLD` of freed memory per
process for reuse. :data:`ALLOCATOR_ENV` sets them in a process about to
start (glibc reads ``MALLOC_*`` once, at start); :func:`tune_allocator` sets
them in the running process, where it is glibc.
"""
from __future__ import annotations

import ctypes
import functools
import sys

#: Buffers up to this size come from the heap (and are reused); larger ones are their own mmap.
MMAP_THRESHOLD = 64 << 20
#: Freed memory a heap keeps before it is handed back to the kernel.
TRIM_THRESHOLD = 256 << 20
#: Free space kept at the top of a heap when it shrinks: a whole thread heap, so thread heaps are never deleted.
TOP_PAD = 64 << 20

#: The same settings as environment variables, for processes lightpipe starts (Dask workers).
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": str(TOP_PAD),
}

# mallopt parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


@functools.cache
def tune_allocator() -> bool:
    """Apply the allocator settings to this process, if its C library is glibc (once: later calls return at once).

    Returns
    -------
    bool
        ``True`` when glibc accepted every setting, ``False`` on other C
        libraries and systems (nothing is changed there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the symbols this process already has, its C library's among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (musl has mallopt as a no-op)
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
