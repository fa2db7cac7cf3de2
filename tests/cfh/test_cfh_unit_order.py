"""The units of a cohort run in submission order on the cluster, not interleaved.

When workers leave mid-run (``--lifetime``) and their in-memory results are
recomputed, units interleaved task by task would all stay half done; run in
order, the oldest ones finish and are written.  Real 2-worker LocalCluster.
"""

from __future__ import annotations

import time

import dask

from cfhdask.cfh.compute import run_subjects

N_UNITS, STEPS, STEP_S = 8, 3, 0.15


def _step(previous, subject):
    started = time.time()
    time.sleep(STEP_S)
    return [*previous, (subject, started)]


class _Record:
    """``write`` of :func:`run_subjects`: appends when each unit began and was written."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, subject, res):
        with open(self.path, "a") as f:
            f.write(f"{subject} {res['steps'][0][1]!r} {time.time()!r}\n")
        return "recorded"


def _chain(subject):
    out = []
    for _ in range(STEPS):  # each step needs the previous one: a unit is a chain
        out = dask.delayed(_step, pure=False)(out, subject)
    return {"steps": out}


def test_units_finish_in_the_order_they_were_submitted(local_client, tmp_path):
    todo = [f"sub-{i:02d}" for i in range(N_UNITS)]
    record = tmp_path / "written.txt"
    run_subjects(todo, local_client, _chain, _Record(record), show_progress=False,
                 subject_bytes=16 * 2**20)  # one subject a unit, every unit in flight
    rows = [line.split() for line in record.read_text().splitlines()]
    began = {s: float(b) for s, b, _ in rows}
    written = {s: float(w) for s, _, w in rows}
    assert sorted(began) == todo
    # 2 workers, about 2 tasks queued each: 4 units run at once and the first ones are
    # written before the last ones begin (interleaved task by task, every unit began
    # before any was written, and all were written at the very end)
    first = min(written.values())
    assert sum(b < first for b in began.values()) <= N_UNITS // 2 + 1, (began, written)
    assert min(written, key=written.get) in todo[:N_UNITS // 2]


def test_unit_graph_orders_units_by_their_position():
    """Units sent together keep the cohort's order: a layer a unit, priority -position."""
    from cfhdask.cfh.compute import _compute_write_unit, _unit_graph

    graph, keys = _unit_graph(print, print, [(3, ["sub-3"]), (4, ["sub-4", "sub-5"])])
    assert len(keys) == len(set(keys)) == 2 and all(k.startswith("_compute_write_unit-")
                                                    for k in keys)
    assert [graph.layers[k].annotations for k in keys] == [{"priority": -3}, {"priority": -4}]
    task = graph.layers[keys[1]][keys[1]]
    assert task.func is _compute_write_unit
