"""Tasks pinned loosely to a worker keep running when every worker has left.

The group sum pins each worker's share of the block pairs to that worker
with ``workers=[address], allow_other_workers=True`` (see
:func:`cfhdask.cfh.group.worker_parts`): elsewhere only if it is lost.  In
distributed (checked up to 2026.6) such a task that becomes ready while no
worker is running (the last one is retiring at its ``--lifetime``, paused, or
gone before its SLURM replacement has joined) goes to ``no-worker``, and a
worker joining later never picks it up:
``Scheduler.bulk_schedule_unrunnable_after_adding_worker`` ignores
``loose_restrictions`` and only wakes tasks allowed on *that* worker.  The run
then hangs forever (dask/distributed#7346 describes the strict case).

:class:`LooseRestrictionsRescue`, a scheduler plugin, sends those tasks to
``processing`` as soon as a worker runs again (when one joins, and every
:data:`RESCUE_INTERVAL_S` seconds for a worker that unpauses); the
scheduler then places them by its usual rules, on any running worker.
"""

from __future__ import annotations

import logging
import time

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["RESCUE_INTERVAL_S", "LooseRestrictionsRescue", "rescue_loose_restrictions"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the scheduler's unrunnable tasks.
RESCUE_INTERVAL_S = 1.0


class LooseRestrictionsRescue(SchedulerPlugin):
    """Scheduler plugin: loosely restricted ``no-worker`` tasks go to any running worker.

    Parameters
    ----------
    interval : float
        Seconds between two looks (besides one at each worker that joins).
    """

    name = "cfhdask-loose-restrictions"
    idempotent = True  # registered once per scheduler, however many runs ask

    def __init__(self, interval: float = RESCUE_INTERVAL_S):
        self.interval = float(interval)
        self.rescued = 0
        self._scheduler = None
        self._callback = None

    async def start(self, scheduler) -> None:
        from tornado.ioloop import PeriodicCallback

        self._scheduler = scheduler
        self._callback = PeriodicCallback(self.rescue, self.interval * 1000)
        self._callback.start()

    async def close(self) -> None:
        if self._callback is not None:
            self._callback.stop()

    def add_worker(self, scheduler, worker: str) -> None:
        self._scheduler = scheduler
        self.rescue()

    def rescue(self) -> int:
        """Send the stuck tasks to ``processing`` if a worker runs; how many were sent."""
        s = self._scheduler
        if s is None or not s.running:
            return 0
        stuck = [ts for ts in s.unrunnable if ts.loose_restrictions]
        if not stuck:
            return 0
        stuck.sort(key=lambda ts: ts.priority, reverse=True)  # recommendations run LIFO
        s.transitions({ts.key: "processing" for ts in stuck},
                      stimulus_id=f"cfhdask-loose-restrictions-{time.time()}")
        self.rescued += len(stuck)
        return len(stuck)


def rescue_loose_restrictions(client) -> bool:
    """Install :class:`LooseRestrictionsRescue` on ``client``'s scheduler (once).

    Returns whether it is installed.  A scheduler that cannot import cfhdask
    (a remote one in another environment) gets a warning instead: the run
    works, but may hang if every worker leaves at once.
    """
    try:
        client.register_plugin(LooseRestrictionsRescue())
    except Exception as exc:  # e.g. ModuleNotFoundError raised by a remote scheduler
        log.warning("Could not install the %s scheduler plugin (%s): tasks pinned to a worker "
                    "may wait forever if every worker leaves at once",
                    LooseRestrictionsRescue.name, str(exc).splitlines()[0] if str(exc) else
                    type(exc).__name__)
        return False
    return True
