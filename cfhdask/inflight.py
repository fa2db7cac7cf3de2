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

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from typing import Any, TypeVar

__all__ = ["REFRESH_S", "release", "run_in_flight", "throttled"]

T = TypeVar("T")

#: Seconds between two reads of the cluster's size while work runs (a scheduler round
#: trip, 10-25 ms of client time: once per finished task it cost seconds per stage).
REFRESH_S = 1.0


def release(futures: Iterable[Any]) -> None:
    """Drop this client's hold on ``futures``: the scheduler forgets what no one else wants,
    finished or not, and stops what it has not run yet.

    Unlike ``Client.cancel`` this leaves nothing behind that a later graph with the same
    keys could inherit: cancelled futures whose keys are submitted again at once can come
    back cancelled, while released keys are simply computed again (or, if still held,
    reused: the same key is the same value).
    """
    for fut in futures:
        fut.release()


def throttled(fn: Callable[[], T], seconds: float = REFRESH_S) -> Callable[[], T]:
    """``fn`` called at most once every ``seconds``; in between, its last value."""
    last: list = []  # [(when, value)]

    def call() -> T:
        now = time.monotonic()
        if not last or now - last[0][0] >= seconds:
            last[:] = [(now, fn())]
        return last[0][1]

    return call


def run_in_flight(client, items: Iterable[Any], submit: Callable[[Any], Any],
                  finished: Callable[[Any, Any, Any], None], limit: Callable[[], int], *,
                  lost: Callable[[Any], bool] | None = None,
                  submit_many: Callable[[list[tuple[int, Any]]], list] | None = None
                  ) -> list[Any]:
    """Run every item on ``client``, at most ``limit()`` in flight at once.

    Parameters
    ----------
    client : distributed.Client
    items : iterable
        The work, in submission order.
    submit : callable
        ``submit(item) -> Future`` (``client.submit`` or ``client.compute``).
    finished : callable
        ``finished(item, future, result)``, called in this process as each
        item's future ends (in completion order), whatever its status; the
        future is released after the call.  ``result`` is the task's result
        when ``future.status`` is ``"finished"`` (else ``None``): the results
        of the futures that ended together are gathered in one call, not one
        round trip to the cluster each.
    limit : callable
        ``limit() -> int``: how many futures may be in flight, asked before
        every refill while items wait to be submitted (wrap a scheduler query
        in :func:`throttled`).
    lost : callable, optional
        ``lost(future) -> bool``: the future ended because data it needs can no
        longer be computed (a scatter whose workers all died).  Then, and
        when ``finished`` raises ``CancelledError`` (a result gone with its
        worker before the gather), the loop stops early.  Without ``lost`` the
        ``CancelledError`` is raised as any other exception.
    submit_many : callable, optional
        ``submit_many([(position, item), ...]) -> [Future, ...]``: every item a
        refill submits, in one call (one graph: the scheduler handles one
        message, not one an item); ``position`` is the item's place in
        ``items``.  Used instead of ``submit`` when given.

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
        if not todo:
            return
        bound = max(1, int(limit()))
        if submit_many is not None:
            entries = [todo.popleft() for _ in range(min(len(todo), bound - len(running)))]
            for entry, fut in zip(entries, submit_many(entries) if entries else [],
                                  strict=True):
                running[fut] = entry
                queue.add(fut)
            return
        while todo and len(running) < bound:
            entry = todo.popleft()
            fut = submit(entry[1])
            running[fut] = entry
            queue.add(fut)

    try:
        refill()
        for batch in queue.batches():
            ended = [(running.pop(fut), fut) for fut in batch]
            results = _results(client, [fut for _, fut in ended])
            for k, (entry, fut) in enumerate(ended):
                try:
                    if lost is not None and lost(fut):
                        raise CancelledError
                    result = None
                    if fut.status == "finished":
                        # gone before the batch gather (its worker lost): CancelledError
                        result = results[fut.key] if fut.key in results else fut.result()
                    finished(entry[1], fut, result)
                except CancelledError:
                    if lost is None:
                        raise
                    rest = [e for e, _ in ended[k:]]
                    left = sorted([*rest, *running.values(), *todo], key=lambda e: e[0])
                    for _, f in ended[k + 1:]:
                        f.release()
                    return [item for _, item in left]
                fut.release()
            refill()
        return []
    finally:
        if running:
            client.cancel(list(running))


def _results(client, futures: list) -> dict:
    """The results of the finished ``futures``, by key, from one gather (``{}`` when that
    gather fails: each is then asked on its own, and its own error surfaces)."""
    done = [f for f in futures if f.status == "finished"]
    if not done:
        return {}
    try:
        return dict(zip([f.key for f in done], client.gather(done), strict=True))
    except Exception:  # noqa: BLE001 - e.g. a result lost with its worker
        return {}
