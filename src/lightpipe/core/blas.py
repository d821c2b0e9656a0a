"""One BLAS thread count wherever stages run, so their results are the same bits on every engine."""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import ThreadpoolController

log = logging.getLogger(__name__)


#: BLAS threads every stage runs with, on every engine and in the driver. OpenBLAS and MKL cut a
#: matrix product differently for different thread counts, and a different cut sums in a different
#: order: a 300 x 300 product on 1 and on 2 OpenBLAS threads differs in the last bits. A Dask worker
#: starts with one thread (``OMP_NUM_THREADS=1``), this process with one per core; fixing the count
#: where stages run makes their results the same on every engine by design. One, because engines
#: already parallelise over events: BLAS threads on top would compete with the workers for the cores.
STAGE_BLAS_THREADS = 1


class BlasThreads:
    """Holds the BLAS libraries of this process at :data:`STAGE_BLAS_THREADS` while any stage runs.

    BLAS thread counts are settings of the whole process, so the limit is
    counted: the first of several threads running stages (the local engine's
    workers, a Dask worker's threads) sets it, the last to leave restores what
    the process had, and a user's session gets its own setting back after a
    run. Libraries are found with threadpoolctl; the list is refreshed when
    modules were imported since, because a stage may load a BLAS of its own
    (SciPy's) while it runs.
    """

    def __init__(self, threads: int = STAGE_BLAS_THREADS) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._users = 0
        self._modules = -1
        self._controller: ThreadpoolController | None = None
        self._saved: list[tuple[Any, int]] = []
        self._refused: set[str] = set()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the ``with`` block at the fixed BLAS thread count."""
        with self._lock:
            if self._users == 0:
                self._saved = []
                self._limit_new()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for library, threads in reversed(self._saved):
                        library.set_num_threads(threads)
                    self._saved = []

    def refresh(self) -> None:
        """Limit BLAS libraries loaded since the limit was set (cheap when nothing was imported)."""
        if len(sys.modules) != self._modules:
            with self._lock:
                if self._users:
                    self._limit_new()

    def _limit_new(self) -> None:
        if self._controller is None or len(sys.modules) != self._modules:
            self._modules = len(sys.modules)  # before the scan: an import during it is seen next time
            self._controller = ThreadpoolController()
        held = {library.filepath for library, _ in self._saved}
        for library in self._controller.select(user_api="blas").lib_controllers:
            if library.filepath in held:
                continue
            self._saved.append((library, library.get_num_threads()))
            library.set_num_threads(self.threads)
            if library.get_num_threads() != self.threads and library.filepath not in self._refused:
                # threadpoolctl lets one thread of a process set OpenBLAS's pool, the first that did
                self._refused.add(library.filepath)
                log.warning("BLAS %s keeps %s threads instead of %d: another thread of this process set its "
                            "threads through threadpoolctl first; results may differ from other engines in the last "
                            "bits. Run lightpipe from that thread, or start the process with OPENBLAS_NUM_THREADS=%d",
                            library.filepath, library.get_num_threads(), self.threads, self.threads)


#: The one limit of this process, shared by :func:`run_chunk` and the driver.
BLAS_THREADS = BlasThreads()
