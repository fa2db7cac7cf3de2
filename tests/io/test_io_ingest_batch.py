"""Ingest's batch path: small new subjects prepared, written and published by one task per
batch on a worker, on a real 2-worker LocalCluster.

Checked against the chunked path (one Dask graph per subject, built in the client): the
same arrays, bytes and published attributes; a failing subject alone is reported; a rerun
of a batch (after a lost worker) leaves published subjects untouched; a cancelled batch
stops between subjects.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from faulthelpers import wait_until
from iohelpers import SHAPE, tree_digest, write_nifti

import cfhdask.prep.ingest as ingest_mod
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.nifti import read_header
from cfhdask.io.store import CohortStore, open_store, preprocessing_setting
from cfhdask.prep.ingest import SubjectsFailed, as_subject_inputs, ingest, ingest_batch, load_series

N = 10


@pytest.fixture
def paths(make_bold):
    return [make_bold(f"in/sub-{i:02d}_bold.nii.gz", n_vol=24)[0] for i in range(N)]


def _published(url: str) -> dict:
    """Every complete subject: its series and attributes (the time stamp aside)."""
    store = open_store(url)
    out = {}
    for s in store.subjects():
        attrs = store.subject_attrs(s)
        assert attrs.pop("ingested")
        out[s] = (np.asarray(store.bold(s)), attrs)
    return out


def _bold_bytes(url: str) -> dict[str, str]:
    """sha1 of every file of the subjects' ``bold`` arrays (chunks and metadata)."""
    return {k: v for k, v in tree_digest(url).items() if "/bold/" in k or k.endswith("/bold")}


def test_batches_write_the_same_store_as_chunked_graphs(local_client, paths, mask_file,
                                                        tmp_path, monkeypatch, caplog):
    batched, chunked = str(tmp_path / "batched.zarr"), str(tmp_path / "chunked.zarr")
    with caplog.at_level(logging.INFO, logger="cfhdask.prep.ingest"):
        ingest(paths, batched, mask=mask_file, drop_volumes=2, client=local_client)
    assert f"ingest: {N} subject(s) in 8 batch task(s) on the workers, 0 as chunked graphs" \
        in caplog.text  # 2 threads x BATCHES_PER_THREAD
    caplog.clear()
    monkeypatch.setattr(ingest_mod, "WHOLE_TASK_BYTES", 0)  # every subject is "large"
    with caplog.at_level(logging.INFO, logger="cfhdask.prep.ingest"):
        ingest(paths, chunked, mask=mask_file, drop_volumes=2, client=local_client)
    assert "batch task" not in caplog.text
    a, b = _published(batched), _published(chunked)
    assert sorted(a) == sorted(b) == [f"sub-{i:02d}" for i in range(N)]
    for s in a:
        assert a[s][0].dtype == np.float32 and a[s][0].shape[1] == 22
        np.testing.assert_array_equal(a[s][0], b[s][0])
        assert a[s][1] == b[s][1]
    assert _bold_bytes(batched) == _bold_bytes(chunked)
    ha, hb = (open_store(u).attrs["history"][-1]["parameters"] for u in (batched, chunked))
    assert ha == hb and ha["written"] == sorted(a)
    assert not open_store(batched).incomplete_subjects()


def test_failing_subject_in_a_batch_is_reported_alone(local_client, make_bold, mask_file,
                                                      tmp_path, rng, user_mask, monkeypatch,
                                                      caplog):
    good = [make_bold(f"sub-{i:02d}_bold.nii.gz")[0] for i in (1, 3)]
    data = rng.standard_normal((*SHAPE, 20)).astype(np.float32)
    data[tuple(np.argwhere(user_mask)[3])] = np.nan
    bad = write_nifti(tmp_path / "sub-02_bold.nii.gz", data)
    monkeypatch.setattr(ingest_mod, "cluster_batches", lambda n, capacity: [range(n)])
    url = str(tmp_path / "cohort.zarr")
    with caplog.at_level(logging.DEBUG, logger="cfhdask.prep.ingest"), \
            pytest.raises(SubjectsFailed,
                          match=r"^ingest failed for 1 subject\(s\) \(the others are kept\): "
                                r"sub-02: .*sub-02_bold.nii.gz: 20 NaN") as err:
        ingest([good[0], bad, good[1]], url, mask=mask_file, client=local_client)
    assert "\n" not in str(err.value)
    assert "3 subject(s) in 1 batch task(s)" in caplog.text
    assert "Ingest of sub-02 failed on a worker:\nTraceback" in caplog.text  # worker's own
    assert isinstance(err.value.failures["sub-02"], CfhdaskInputError)
    store = open_store(url)
    assert store.subjects() == ["sub-01", "sub-03"] and store.incomplete_subjects() == []
    assert store.attrs["history"][-1]["parameters"]["failed"] == ["sub-02"]


def _batch_items(paths):
    return [(inp, read_header(inp.bold)) for inp in as_subject_inputs(paths)]


def test_rerun_batch_skips_published_subjects(local_client, paths, mask_file, tmp_path):
    url = str(tmp_path / "cohort.zarr")
    store = ingest(paths[:1], url, mask=mask_file, client=local_client)
    setting = preprocessing_setting(store.subject_attrs("sub-00")["preprocessing"])
    store.begin_subject("sub-02", 24, {"source": "killed"})  # chunks of a killed attempt
    target = CohortStore.open(url, mode="r+").begin_subject("sub-02", 24, {})
    target[: store.voxel_chunk] = np.ones((store.voxel_chunk, 24), np.float32)
    items = _batch_items(paths[1:4])
    args = (load_series, 0, {}, setting)
    first = local_client.submit(ingest_batch, store, items, *args, pure=False).result()
    assert first == [(s, None, "") for s in ("sub-01", "sub-02", "sub-03")]
    store = CohortStore.open(url, mode="r+")
    assert store.subjects() == ["sub-00", "sub-01", "sub-02", "sub-03"]
    assert not store.incomplete_subjects()
    done = tree_digest(url)
    again = local_client.submit(ingest_batch, store, items, *args, pure=False).result()
    assert again == first
    assert tree_digest(url) == done  # nothing rewritten, time stamps included
    ref = str(tmp_path / "ref.zarr")
    ingest(paths[:4], ref, mask=mask_file, client=local_client)
    assert _bold_bytes(url) == _bold_bytes(ref)


def test_cancelled_batch_stops_between_subjects(local_client, paths, mask_file, tmp_path):
    url = str(tmp_path / "cohort.zarr")
    store = ingest(paths[:1], url, mask=mask_file, client=local_client)
    setting = preprocessing_setting(store.subject_attrs("sub-00")["preprocessing"])
    started, go = tmp_path / "started", tmp_path / "go"

    def held(inp, info):  # the first subject waits for the test; pickled by value
        if inp.subject == "sub-01":
            started.touch()
            while not go.exists():
                time.sleep(0.05)
        return load_series(inp, info)

    fut = local_client.submit(ingest_batch, store, _batch_items(paths[1:4]), held, 0, {},
                              setting, pure=False)
    wait_until(started.exists, 60, "the batch's first subject")
    key = fut.key
    fut.cancel()

    def state() -> set[str]:
        return {s for s in local_client.run(
            lambda dask_worker: dask_worker.state.tasks[key].state
            if key in dask_worker.state.tasks else None).values() if s}

    wait_until(lambda: state() <= {"cancelled"} and bool(state()), 30, "the cancellation")
    go.touch()
    wait_until(lambda: "sub-01" in open_store(url).subjects(), 60, "the running subject")
    wait_until(lambda: not state(), 30, "the batch's end")
    store = open_store(url)
    assert store.subjects() == ["sub-00", "sub-01"]  # the subject begun is finished, whole
    assert not store.incomplete_subjects()
    assert not [k for k in tree_digest(url) if k.startswith(("subjects/sub-02",
                                                             "subjects/sub-03"))]


def test_workers_read_the_headers_first_bad_file_is_one_line(local_client, paths, make_bold,
                                                              mask_file, tmp_path):
    from distributed import get_task_stream

    more = paths + [make_bold(f"in/sub-{i:02d}_bold.nii.gz", n_vol=24)[0] for i in range(N, 20)]
    assert len(more) > ingest_mod.HEADERS_ON_CLIENT
    junk = tmp_path / "in" / "sub-15x_bold.nii.gz"
    junk.write_bytes(b"garbage")
    missing = str(tmp_path / "in" / "sub-17x_bold.nii.gz")
    fresh = tmp_path / "fresh.zarr"
    with pytest.raises(CfhdaskInputError, match=r"sub-15x_bold\.nii\.gz: not a readable") as err:
        ingest([*more[:15], str(junk), *more[15:17], missing, *more[17:]], str(fresh),
               mask=mask_file, client=local_client)
    assert "\n" not in str(err.value) and not fresh.exists()
    with get_task_stream(local_client) as ts:
        store = ingest(more, str(fresh), mask=mask_file, client=local_client)
    assert len(store.subjects()) == 20
    workers = set(local_client.scheduler_info()["workers"])
    reads = {t["worker"] for t in ts.data if "read_headers" in str(t["key"])}
    assert reads and reads <= workers


def test_subject_preprocessed_otherwise_fails_alone(local_client, paths, mask_file, tmp_path):
    def odd(inp, info):  # sub-02 would be preprocessed another way; pickled by value
        series, attrs = load_series(inp, info)
        if inp.subject == "sub-02":
            attrs = {**attrs, "preprocessing": {"pipeline": "other"}}
        return series, attrs

    url = str(tmp_path / "cohort.zarr")
    with pytest.raises(SubjectsFailed, match=r"sub-02: .*sub-02_bold\.nii\.gz: would be "
                                             r"preprocessed with other.*one store holds one"):
        ingest(paths[:4], url, mask=mask_file, prepare=odd, client=local_client)
    store = open_store(url)
    assert store.subjects() == ["sub-00", "sub-01", "sub-03"]
    assert store.attrs["preprocessing"] == preprocessing_setting(
        store.subject_attrs("sub-00")["preprocessing"])
