"""Stopping the child processes that tests start by hand (Dask schedulers and workers, servers)."""

from __future__ import annotations

import subprocess

#: Seconds a child is given to stop after SIGTERM before it is killed.
TERMINATE_GRACE_S = 10.0


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process``: SIGTERM, then SIGKILL if it has not exited within :data:`TERMINATE_GRACE_S`.

    A ``dask worker`` closing on SIGTERM can wait on its scheduler connection for longer than a
    test should; killing it then still leaves no process behind for the next test.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
