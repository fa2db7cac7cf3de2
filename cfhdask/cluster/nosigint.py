"""Worker preload of the embedded cluster: Ctrl-C belongs to the client alone.

The worker processes of the embedded LocalCluster share the terminal's process
group, so a Ctrl-C (SIGINT to the whole group) reached each of them too: they
died printing ``KeyboardInterrupt`` tracebacks while the client was still
cancelling its work and closing the cluster.  Loaded into every worker process
(restarted ones included) by :func:`cfhdask.cluster.local.start_local_cluster`,
this makes the workers ignore SIGINT; the client handles it (one line, exit 130)
and stops the workers itself when it closes the cluster.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["dask_setup"]


def dask_setup(worker) -> None:
    """Ignore SIGINT in this worker process (a no-op off the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
