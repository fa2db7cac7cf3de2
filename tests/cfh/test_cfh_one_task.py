"""Units of small subjects as one task each: the same maps, bit for bit, as one graph a unit.

:func:`~cfhdask.cfh.compute.run_subjects` runs a unit of small subjects as a
single task that builds and computes the subjects' graphs on its worker when
the cohort has a unit per worker thread (:func:`~cfhdask.cfh.compute.whole_units`).
Every metric is computed both ways on a real 2-worker LocalCluster and every
array a subject's group holds is compared, and the log says which way ran.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from cfhstore import make_banded_store

from cfhdask.cfh.autonomy import compute_autonomy
from cfhdask.cfh.compute import MIN_UNIT_BYTES, compute_cfh, subject_units, whole_units
from cfhdask.cfh.vmhc import compute_vmhc
from cfhdask.cluster import waves
from cfhdask.io.store import open_store

WHOLE = "each one task built and computed on a worker"


def _maps(url):
    """Every array of every subject's group but its series, with its values."""
    st = open_store(url)
    out = {}
    for s in st.subjects():
        grp = st._subjects_group()[s]
        for name, arr in grp.arrays():
            if name != "bold":
                out[(s, name)] = np.asarray(arr[...])
    return out


def _run_all(url, client):
    kw = dict(client=client, show_progress=False, overwrite=True)
    compute_cfh(url, block=16, counterpart="subject", kernel="auto", **kw)
    compute_cfh(url, block=16, counterpart="group", **kw)
    compute_vmhc(url, block=16, **kw)
    compute_autonomy(url, block=16, **kw)
    return _maps(url)


def test_units_as_one_task_give_the_same_maps(tmp_path, rng, local_client, monkeypatch, caplog):
    st = make_banded_store(tmp_path / "cohort.zarr", rng)
    with caplog.at_level(logging.INFO, logger="cfhdask"):
        whole = _run_all(st.url, local_client)
    assert caplog.text.count(WHOLE) == 4  # subject-mode CFH, group-mode maps, VMHC, AI
    caplog.clear()
    monkeypatch.setattr(waves, "WHOLE_TASK_BYTES", 0)  # one graph a unit, spread
    with caplog.at_level(logging.INFO, logger="cfhdask"):
        graphs = _run_all(st.url, local_client)
    assert WHOLE not in caplog.text
    assert whole.keys() == graphs.keys()
    assert {name for _, name in whole} == {
        "cfh", "cfh_counterpart", "cfh_r", "cfh_subject", "cfh_subject_counterpart",
        "cfh_subject_r", "vmhc", "vmhc_r", "ai"}
    for key, values in whole.items():
        np.testing.assert_array_equal(values, graphs[key], err_msg=str(key))


@pytest.mark.parametrize(("units", "nbytes", "threads", "expected"), [
    ([["a"], ["b"]], 1000, 2, True),
    ([["a"], ["b"]], 1000, 3, False),  # fewer units than threads: spread each over the cluster
    ([["a"], ["b"]], waves.WHOLE_TASK_BYTES + 1, 1, False),  # large subjects
    ([["a", "b", "c"]], waves.WHOLE_TASK_BYTES, 1, True),
])
def test_whole_units_rule(units, nbytes, threads, expected):
    assert whole_units(units, nbytes, threads) is expected


@pytest.mark.parametrize(("n", "nbytes", "threads", "n_units", "sizes"), [
    (1000, 115_200, 16, 64, {15, 16}),  # 67 units of 15 would leave 3 alone at the end
    (300, 115_200, 16, 80, {3, 4}),  # 75 -> 5 whole waves
    (100, 1000, 4, 16, {6, 7}),
    (24, MIN_UNIT_BYTES, 16, 24, {1}),  # large subjects stay alone
    (17, 1000, 16, 17, {1}),  # fewer subjects than 4 units a thread: one a unit
    (40, 1000, 64, 40, {1}),
])
def test_subject_units_fill_whole_waves_in_order(n, nbytes, threads, n_units, sizes):
    todo = [f"sub-{i:04d}" for i in range(n)]
    units = subject_units(todo, nbytes, threads)
    assert len(units) == n_units
    assert {len(u) for u in units} == sizes
    assert [s for u in units for s in u] == todo
