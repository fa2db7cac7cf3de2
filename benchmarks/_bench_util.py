"""Shared helpers of the benchmark scripts: peak memory and CPU time of a process tree,
median timings."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil


class PeakMemory:
    """Peak summed RSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class CpuTime:
    """CPU seconds (user + system) of this process and its children over a block.

    Less sensitive than wall time to other work on a shared machine; the
    children (Dask workers) are those alive at the start and at the end.
    """

    def __init__(self, children: bool = True):
        self.children = children
        self.seconds = 0.0

    def _total(self) -> dict[int, float]:
        me = psutil.Process()
        procs = [me] + (me.children(recursive=True) if self.children else [])
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def __enter__(self) -> CpuTime:
        self._start = self._total()
        return self

    def __exit__(self, *exc) -> None:
        end = self._total()
        self.seconds = sum(v - self._start.get(pid, 0.0) for pid, v in end.items())


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
