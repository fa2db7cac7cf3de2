"""The one refill loop: keep a bounded number of Dask futures in flight, refilled as they end.

Both kinds of cohort-level work go through :func:`run_in_flight`: the units of
ingest and of the per-subject maps (:func:`cfhdask.cluster.waves.run_waves`,
bounded by the workers' memory) and the permutation batches of the group
statistics (:func:`cfhdask.stats.fanout.fan_out`, bounded by the results the
client holds, with a hook for the loss of the workers holding scattered data).
The bound is asked again at every refill, so a cluster that grows gets more
work and one that shrinks is not flooded; the client holds only the futures
in flight.  No I/O here (a graphs-layer module).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from typing import Any

__all__ = ["run_in_flight"]


def run_in_flight(client, items: Iterable[Any], submit: Callable[[Any], Any],
                  finished: Callable[[Any, Any], None], limit: Callable[[], int], *,
                  lost: Callable[[Any], bool] | None = None) -> list[Any]:
    """Run every item on ``client``, at most ``limit()`` in flight at once.

    Parameters
    ----------
    client : distributed.Client
    items : iterable
        The work, in submission order.
    submit : callable
        ``submit(item) -> Future`` (``client.submit`` or ``client.compute``).
    finished : callable
        ``finished(item, future)``, called in this process as each item's
        future ends (in completion order), whatever its status; the future is
        released after the call.
    limit : callable
        ``limit() -> int``: how many futures may be in flight, asked before
        every refill.
    lost : callable, optional
        ``lost(future) -> bool``: the future ended because data it needs can no
        longer be computed (a scatter whose workers all died).  Then, and
        when ``finished`` raises ``CancelledError`` (a result gone with its
        worker before the gather), the loop stops early.  Without ``lost`` the
        ``CancelledError`` is raised as any other exception.

    Returns
    -------
    list
        The items that did not finish, in submission order: empty unless
        ``lost`` stopped the loop (the lost one, those in flight, those never
        submitted).

    On any exception (``KeyboardInterrupt`` included) the futures in flight
    are cancelled and the exception re-raised; they are cancelled too when
    ``lost`` stops the loop.  Dask cannot interrupt a task that is already
    running: such a unit still finishes on its worker after this returns (each
    unit writes whole and marks its completion last, so the store is never
    half-written, and a rerun skips it).
    """
    from distributed import as_completed

    todo = deque(enumerate(items))
    running: dict[Any, tuple[int, Any]] = {}
    queue = as_completed()

    def refill() -> None:
        bound = max(1, int(limit()))
        while todo and len(running) < bound:
            entry = todo.popleft()
            fut = submit(entry[1])
            running[fut] = entry
            queue.add(fut)

    try:
        refill()
        for fut in queue:
            entry = running.pop(fut)
            try:
                if lost is not None and lost(fut):
                    raise CancelledError
                finished(entry[1], fut)
            except CancelledError:
                if lost is None:
                    raise
                left = sorted([entry, *running.values(), *todo], key=lambda e: e[0])
                return [item for _, item in left]
            fut.release()
            refill()
        return []
    finally:
        if running:
            client.cancel(list(running))
