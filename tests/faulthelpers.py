"""Fault injection for the cluster tests: kill -9 Dask workers and clients, attached clusters.

Everything runs on 127.0.0.1 and every process started here is stopped by its
own id when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))


def wait_until(predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    """Poll ``predicate`` every 50 ms until it is true (AssertionError after ``timeout``)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def worker_pids(client) -> dict[str, int]:
    """Worker address -> process id."""
    return client.run(os.getpid)


def kill_workers(client, n: int | None = None) -> list[int]:
    """SIGKILL ``n`` workers (all by default) of ``client``'s cluster; their pids."""
    pids = list(worker_pids(client).values())[: n if n is not None else None]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


class LogEvent(logging.Handler):
    """An Event set when a record of ``logger`` contains ``text``."""

    def __init__(self, logger: str, text: str):
        super().__init__(logging.INFO)
        self.text, self.event, self.messages = text, threading.Event(), []
        self._logger = logging.getLogger(logger)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.messages.append(msg)
        if self.text in msg:
            self.event.set()

    def __enter__(self) -> LogEvent:
        self._logger.addHandler(self)
        self._old_level = self._logger.level
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)


@contextlib.contextmanager
def immutable(path) -> Iterator[None]:
    """``path`` and everything below it unwritable, even by root (chattr +i); the test is
    skipped where chattr +i is not available."""
    import pytest

    if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def attached_cluster(folder: Path, n_workers: int = 2, nanny: bool = True,
                     memory_limit: str = "2GiB") -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A ``dask scheduler`` and ``n_workers`` single-threaded ``dask worker`` processes.

    Yields the scheduler address and the worker processes (each a nanny, or
    the worker itself with ``nanny=False``).  All are stopped on exit.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sfile = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    procs: list[subprocess.Popen] = []
    log = open(folder / "cluster.log", "ab")
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sfile)], stdout=log, stderr=log, env=env))
        wait_until(lambda: sfile.exists() and sfile.stat().st_size > 0, 60, "the scheduler")
        address = json.loads(sfile.read_text())["address"]
        workers = [subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--memory-limit", memory_limit,
             "--nanny" if nanny else "--no-nanny"], stdout=log, stderr=log, env=env)
            for _ in range(n_workers)]
        procs.extend(workers)
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(n_workers, timeout=90)
        yield address, workers
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()
