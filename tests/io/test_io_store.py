"""The cohort store: layout, voxel order, atomic subject writes, versions."""

from __future__ import annotations

import re

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from iohelpers import AFFINE, SHAPE

from cfhdask.errors import CfhdaskInputError, StoreVersionError
from cfhdask.io.store import STAGED_FLAG, STAGED_PREFIX, CohortStore, open_store

_N = [0]


def _url() -> str:
    _N[0] += 1
    return f"memory://cfhdask-test-store-{_N[0]}"


def _create(mask, url=None, affine=AFFINE, chunk=50) -> CohortStore:
    return CohortStore.create(url or _url(), grid_shape=mask.shape, affine=affine, mask=mask,
                              mask_info={"source": "test"}, voxel_chunk=chunk)


class _CountingScheduler:
    """A scheduler that counts how often it is asked to compute."""

    def __init__(self):
        self.n = 0

    def __call__(self, dsk, keys, **kwargs):
        self.n += 1
        return dask.get(dsk, keys, **kwargs)


def test_round_trip_xarray_views(user_mask, rng, tmp_path):
    url = str(tmp_path / "store.zarr")
    store = _create(user_mask, url)
    a = rng.standard_normal((store.n_voxels, 20)).astype(np.float32)
    b = rng.standard_normal((store.n_voxels, 13)).astype(np.float32)
    store.write_subject("sub-01", a, {"source": "a.nii", "tr": 2.0})
    store.write_subject("sub-02", da.from_array(b, chunks=(17, 5)), {"tr": 2.5})

    again = open_store(url)
    assert again.subjects() == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(again.bold("sub-01").compute(), a)
    np.testing.assert_array_equal(again.bold("sub-02").compute(), b)
    assert again.subject_attrs("sub-02")["tr"] == 2.5

    ds = xr.open_zarr(url, consolidated=False)
    assert ds["ijk"].dims == ("voxel", "axis") and ds["ijk"].dtype == np.int32
    assert ds["xyz"].dtype == np.float32 and ds["hemisphere"].dims == ("voxel",)
    assert ds.attrs["cfhdask_store_version"] == 2
    assert ds.attrs["grid_shape"] == list(SHAPE)
    tree = xr.open_datatree(url, engine="zarr", consolidated=False)
    sub = tree["subjects/sub-02"]
    assert sub["bold"].dims == ("voxel", "time") and sub["bold"].shape == (store.n_voxels, 13)
    assert sub["bold"].dtype == np.float32
    zarr_bold = zarr.open_array(f"{url}/subjects/sub-02/bold", mode="r")
    assert zarr_bold.chunks == (50, 13)
    assert again.bold("sub-02").chunksize == zarr_bold.chunks


def test_voxel_order_and_hemispheres_brute_force(user_mask):
    for affine in (AFFINE, np.diag([3.0, 3.0, 3.0, 1.0]) + np.array(
            [[0, 0, 0, -15.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])):
        store = _create(user_mask, affine=affine)
        ijk = store.ijk
        assert np.array_equal(store.mask, user_mask)
        # brute force: world x of each voxel with a python loop
        x = np.array([affine[0, :3] @ v + affine[0, 3] for v in ijk.astype(float)])
        assert np.all(x[store.left] < 0) and np.all(x[store.right] > 0)
        assert np.all(x[store.midline] == 0)
        assert store.n_midline == user_mask[5].sum() > 0
        assert store.n_left + store.n_right + store.n_midline == user_mask.sum()
        expected_hemi = np.sign(x).astype(np.int8)
        np.testing.assert_array_equal(store.hemisphere, expected_hemi)
        np.testing.assert_allclose(store.xyz, ijk @ affine[:3, :3].T + affine[:3, 3])
        for sl in (store.left, store.right, store.midline):
            flat = np.ravel_multi_index(tuple(ijk[sl].T), SHAPE)
            assert np.all(np.diff(flat) > 0)  # C order inside each block


def test_to_volume(user_mask, rng):
    store = _create(user_mask)
    v = rng.standard_normal(store.n_voxels).astype(np.float32)
    vol = store.to_volume(v, fill=-5.0)
    assert vol.shape == SHAPE and vol.dtype == np.float32
    np.testing.assert_array_equal(vol[tuple(store.ijk.T)], v)
    assert np.all(vol[~user_mask] == -5.0)
    four = store.to_volume(np.stack([v, 2 * v]))
    assert four.shape == (*SHAPE, 2)
    np.testing.assert_array_equal(four[tuple(store.ijk.T)][:, 1], 2 * v)
    with pytest.raises(ValueError):
        store.to_volume(v[:-1])


def test_failed_write_leaves_nothing(user_mask, rng):
    store = _create(user_mask)
    good = rng.standard_normal((store.n_voxels, 20)).astype(np.float32)
    store.write_subject("sub-01", good, {})

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == block_info[0]["num-chunks"][0] - 1:
            raise RuntimeError("disk full")
        return block

    bad = da.from_array(good, chunks=(50, 20)).map_blocks(boom, dtype=np.float32)
    with pytest.raises(RuntimeError, match="disk full"):
        store.write_subject("sub-02", bad, {})
    assert store.subjects() == ["sub-01"] and store.incomplete_subjects() == []
    # a failing overwrite keeps the complete subject as it was, and nothing staged
    with pytest.raises(RuntimeError):
        store.write_subject("sub-01", bad, {})
    assert store.subjects() == ["sub-01"] and store.incomplete_subjects() == []
    np.testing.assert_array_equal(store.bold("sub-01").compute(), good)


@pytest.mark.parametrize("where", ["memory", "local"])
def test_overwrite_keeps_the_old_subject_until_the_new_one_is_complete(user_mask, rng,
                                                                       tmp_path, where):
    """--overwrite: readers see the complete old subject during the write and after a
    failure injected mid-write; the replacement appears whole, old CFH maps gone."""
    url = _url() if where == "memory" else str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    old = rng.standard_normal((store.n_voxels, 20)).astype(np.float32)
    store.write_subject("sub-01", old, {"source": "old"})
    n = store.n_voxels
    store.write_cfh("sub-01", np.ones(n, np.float32), np.zeros(n, np.int32),
                    np.ones(n, np.float32), {})
    new = old + 1.0
    seen = []

    def check_then(block, block_info=None, fail_at=None):
        reader = CohortStore.open(url)  # another reader, mid-write
        seen.append((reader.subjects("cfh"), float(reader.bold("sub-01")[0, 0].compute())))
        if block_info[0]["chunk-location"][0] == fail_at:
            raise RuntimeError("killed mid-write")
        return block

    chunks = (50, 20)
    with dask.config.set(scheduler="synchronous"):
        failing = da.from_array(new, chunks=chunks).map_blocks(check_then, fail_at=1,
                                                               dtype=np.float32)
        with pytest.raises(RuntimeError, match="killed mid-write"):
            store.write_subject("sub-01", failing, {"source": "new"})
        assert seen and all(s == (["sub-01"], float(old[0, 0])) for s in seen)
        again = CohortStore.open(url)
        assert again.subjects("cfh") == ["sub-01"] and again.incomplete_subjects() == []
        np.testing.assert_array_equal(again.bold("sub-01").compute(), old)
        assert again.subject_attrs("sub-01")["source"] == "old"
        # the same replacement, now complete: swapped in whole
        seen.clear()
        ok = da.from_array(new, chunks=chunks).map_blocks(check_then, dtype=np.float32)
        store.write_subject("sub-01", ok, {"source": "new"})
    assert seen and all(s == (["sub-01"], float(old[0, 0])) for s in seen)
    again = CohortStore.open(url)
    assert again.subjects() == ["sub-01"] and again.subjects("cfh") == []
    np.testing.assert_array_equal(again.bold("sub-01").compute(), new)
    assert again.subject_attrs("sub-01")["source"] == "new"
    assert sorted(zarr.open_group(url, mode="r")["subjects"].group_keys()) == ["sub-01"]


def test_interrupted_swap_is_finished_by_cleanup(user_mask, rng, tmp_path, monkeypatch):
    """Killed between deleting the old subject and renaming its complete replacement:
    the next writer finishes the swap, the replacement is not lost."""
    import cfhdask.io.store as storemod

    url = str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    store.write_subject("sub-01", np.zeros((store.n_voxels, 12), np.float32), {})
    target = store.begin_subject("sub-01", 12, {"source": "new"})
    target[...] = np.ones((store.n_voxels, 12), np.float32)

    def killed(*args):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(storemod, "_move_node", killed)  # the kill came here
        with pytest.raises(RuntimeError, match="killed"):
            store.finish_subject("sub-01")
    grp = zarr.open_group(url, mode="r")["subjects"]
    assert grp[STAGED_PREFIX + "sub-01"].attrs[STAGED_FLAG] is True
    again = CohortStore.open(url, mode="r+")
    assert again.subjects() == []  # nothing half-written is visible meanwhile
    again.cleanup_incomplete()
    assert again.subjects() == ["sub-01"]
    np.testing.assert_array_equal(again.bold("sub-01").compute(), 1.0)


def test_incomplete_subject_invisible_then_cleaned(user_mask, rng, tmp_path):
    url = str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    store.write_subject("sub-01", np.ones((store.n_voxels, 12), np.float32), {})
    target = store.begin_subject("sub-02", 12, {"source": "x"})
    target[:3] = np.ones((3, 12), np.float32)  # interrupted: some chunks, never finished
    assert store.subjects() == ["sub-01"] and store.incomplete_subjects() == ["sub-02"]
    with pytest.raises(CfhdaskInputError, match="sub-02"):
        store.bold("sub-02")
    assert list(store.datatree()["subjects"].children) == ["sub-01"]
    raw = xr.open_datatree(url, engine="zarr", consolidated=False, zarr_format=3)
    assert list(raw["subjects"].children) == ["sub-01"]  # any Zarr reader
    assert store.cleanup_incomplete() == ["sub-02"]
    assert not (tmp_path / "s.zarr" / "subjects" / "sub-02").exists()


def test_cfh_write_and_lazy_maps(user_mask, rng):
    store = _create(user_mask)
    n = store.n_voxels
    for s in ("sub-01", "sub-02", "sub-03"):
        store.write_subject(s, rng.standard_normal((n, 12)).astype(np.float32), {})
    cfh = {s: rng.standard_normal(n).astype(np.float32) for s in ("sub-01", "sub-02")}
    for s, v in cfh.items():
        store.write_cfh(s, v, np.arange(n)[::-1], np.tanh(v), {"cfh_params": {"block": 8}})
    assert store.subjects("cfh") == ["sub-01", "sub-02"]
    sched = _CountingScheduler()
    with dask.config.set(scheduler=sched):
        maps = store.cfh_maps()
        cps = store.cfh_maps(var="cfh_counterpart")
    assert sched.n == 0
    assert maps.dims == ("subject", "voxel") and isinstance(maps.data, da.Array)
    assert list(maps.subject.values) == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(maps.values, np.stack([cfh["sub-01"], cfh["sub-02"]]))
    assert cps.dtype == np.int32 and cps.values[0, 0] == n - 1
    assert store.subject_attrs("sub-01")["cfh_params"] == {"block": 8}

    def boom(block):
        raise RuntimeError("crash")

    bad = da.from_array(np.zeros(n, np.float32), chunks=50).map_blocks(boom, dtype=np.float32)
    with pytest.raises(RuntimeError):
        store.write_cfh("sub-03", bad, np.zeros(n), np.zeros(n), {})
    assert store.subjects("cfh") == ["sub-01", "sub-02"]
    with pytest.raises(CfhdaskInputError):
        store.cfh_maps(["sub-03"])


def test_subject_lookup_reads_only_the_subject_document(user_mask, rng, tmp_path, monkeypatch):
    """Client-side work per subject (1000-subject cohorts): one metadata read a lookup."""
    from zarr.storage import LocalStore

    url = str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    store.write_subject("sub-01", rng.standard_normal((store.n_voxels, 12)).astype(np.float32),
                        {"tr": 2.0})
    store.begin_subject("sub-02", 12, {})  # being written: invisible
    reads: list[str] = []
    get = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    assert store.subject_attrs("sub-01")["tr"] == 2.0
    assert reads == ["subjects/sub-01/zarr.json"]
    for name in ("sub-02", "sub-03", "", ".", "..", "sub-01/bold", "../subjects/sub-01"):
        with pytest.raises(CfhdaskInputError, match=rf"no subject '{re.escape(name)}' ingested"):
            store.subject_attrs(name)
    with pytest.raises(CfhdaskInputError, match="no subject 'sub-01' with cfh results"):
        store.cfh_maps(["sub-01"])


def test_invalidate_hides_then_removes_the_maps_of_many_subjects_at_once(user_mask, rng,
                                                                         tmp_path, monkeypatch):
    """A changed group counterpart at cohort scale: every stale subject's maps hidden and
    removed with one read of each subject's document (all at once), no other subject
    touched; the attributes the subject had are kept."""
    from cfhdask.io.store import METRICS

    url = str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    n = store.n_voxels
    names = [f"sub-{i:02d}" for i in range(5)]
    for s in names:
        store.write_subject(s, rng.standard_normal((n, 12)).astype(np.float32), {"tr": 2.0})
        v = rng.standard_normal(n).astype(np.float32)
        store.write_cfh(s, v, np.arange(n), np.tanh(v), {"cfh_params": {"block": 8}})
    kept = store.cfh_maps(["sub-04"]).values
    reads = _count_local_store(monkeypatch, "get")
    store.invalidate("cfh", ["sub-00", "sub-01", "sub-02", "sub-03", "sub-99"])
    assert sorted(reads) == sorted(f"subjects/{s}/zarr.json"
                                   for s in [*names[:4], "sub-99"])
    again = open_store(url)
    assert again.subjects("cfh") == ["sub-04"]
    assert again.subjects() == names
    for s in names[:4]:
        attrs = again.subject_attrs(s)
        assert attrs["cfh_complete"] is False and attrs["tr"] == 2.0
        assert attrs["cfh_params"] == {"block": 8}
        for name in METRICS["cfh"]:
            assert not (tmp_path / "s.zarr" / "subjects" / s / name).exists()
    np.testing.assert_array_equal(again.cfh_maps(["sub-04"]).values, kept)
    store.invalidate("cfh", names[:2])  # nothing left to hide: harmless
    assert open_store(url).subjects("cfh") == ["sub-04"]


def test_series_reads_open_no_document_above_the_subject(user_mask, rng, tmp_path,
                                                         monkeypatch):
    """A worker reading a subject's series parses only that array's document: the root's
    grows with the cohort's history (input paths, subject lists), and was read once per
    subject."""
    import cfhdask.io.store as store_mod

    url = str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    bold = rng.standard_normal((store.n_voxels, 12)).astype(np.float32)
    for s in ("sub-01", "sub-02"):
        store.write_subject(s, bold, {})
    reader = store.series_reader(["sub-01", "sub-02"])
    store_mod._bold_array.cache_clear()
    reads = _count_local_store(monkeypatch, "get")
    np.testing.assert_array_equal(reader(1, 3, 40), bold[3:40])
    docs = [k for k in reads if k.endswith("zarr.json")]
    assert docs == ["subjects/sub-02/bold/zarr.json"]


def test_open_errors_and_version(user_mask, tmp_path):
    url = str(tmp_path / "v.zarr")
    _create(user_mask, url)
    zarr.open_group(url, mode="r+").attrs.update({"cfhdask_store_version": 99})
    with pytest.raises(StoreVersionError, match=r"v\.zarr.*version 99"):
        open_store(url)
    with pytest.raises(CfhdaskInputError, match="no cohort store"):
        open_store(str(tmp_path / "nothing.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(CfhdaskInputError, match="not a cfhdask cohort store"):
        open_store(str(tmp_path / "plain.zarr"))
    with pytest.raises(CfhdaskInputError, match="already exists"):
        _create(user_mask, str(tmp_path / "plain.zarr"))


def test_read_only_and_history(user_mask):
    url = _url()
    store = _create(user_mask, url)
    store.append_history("ingest", {"n": np.int64(3), "shape": (1, 2)})
    ro = open_store(url)
    assert ro.attrs["history"][0]["command"] == "ingest"
    assert ro.attrs["history"][0]["parameters"] == {"n": 3, "shape": [1, 2]}
    with pytest.raises(CfhdaskInputError, match="read-only"):
        ro.write_subject("sub-01", np.zeros((ro.n_voxels, 12), np.float32), {})
    with pytest.raises(CfhdaskInputError, match="no voxel"):
        _create(np.zeros(SHAPE, bool))


def test_mixed_preprocessing_is_refused_naming_both(user_mask, rng):
    store = _create(user_mask)
    series = np.zeros((store.n_voxels, 12), np.float32)
    store.write_subject("sub-01", series, {"preprocessing": {"pipeline": "none",
                                                             "drop_volumes": 0}})
    store.write_subject("sub-02", series, {"preprocessing": {
        "pipeline": "cfhdask.denoise", "parameters": {"drop_volumes": 10, "tr": 2.0},
        "steps": ["smooth"]}})
    store.check_same_preprocessing(["sub-01"])
    with pytest.raises(CfhdaskInputError, match=r"sub-01 none \(drop_volumes 0\); sub-02 "
                                                r"cfhdask.denoise \(drop_volumes 10\)"):
        store.check_same_preprocessing()


def _count_local_store(monkeypatch, method: str) -> list[str]:
    """The keys this process passes to ``LocalStore.<method>`` from now on."""
    from zarr.storage import LocalStore

    keys: list[str] = []
    orig = getattr(LocalStore, method)

    async def counting(self, key, *args, **kwargs):
        keys.append(key)
        return await orig(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, method, counting)
    return keys


def test_cohort_maps_open_no_array_per_subject(user_mask, rng, tmp_path, monkeypatch):
    """Client cost of a cohort's maps (compute_cfh's dataset, stats): the documents of all
    subjects read at once, one array opened per distinct document, no chunk read."""
    import cfhdask.io.store as store_mod

    url = str(tmp_path / "m.zarr")
    store = _create(user_mask, url, chunk=40)
    names = [f"sub-{i:02d}" for i in range(6)]
    want = {}
    for s in names:
        store.write_subject(s, np.zeros((store.n_voxels, 4), np.float32), {"n_constant": 0})
        z = rng.standard_normal(store.n_voxels).astype(np.float32)
        store.write_cfh(s, z, np.arange(store.n_voxels, dtype=np.int32), np.tanh(z),
                        {"n_constant": int(s[-1])})
        want[s] = z
    opened: list[str] = []
    real = store_mod.store_array
    monkeypatch.setattr(store_mod, "store_array",
                        lambda grp, name, *a, **k: opened.append(grp.path) or real(grp, name,
                                                                                    *a, **k))
    reads = _count_local_store(monkeypatch, "get")
    maps = open_store(url).cfh_maps(names)
    # one open for the six identical array documents (and the root's hemisphere)
    assert [p for p in opened if p] == ["subjects/sub-00"]
    ours = [k for k in reads if k.startswith("subjects/")]
    assert all(k.endswith("zarr.json") for k in ours), ours  # no chunk read in the client
    assert len(ours) <= 2 * len(names) + 3, ours
    n, c = store.n_voxels, 40
    assert maps.chunks == ((1,) * 6, (c,) * (n // c) + ((n % c,) if n % c else ()))
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(maps.values, np.stack([want[s] for s in names]))
    # one read task per whole map (the group statistics), same values, other task names
    whole = open_store(url).cfh_maps(names, whole=True)
    assert whole.chunks == ((1,) * 6, (n,)) and whole.data.name != maps.data.name
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(whole.values, maps.values)
    assert open_store(url).subjects_attrs(names[::-1]) == {
        s: store.subject_attrs(s) for s in names[::-1]}
    with pytest.raises(CfhdaskInputError, match="no subject 'sub-99' ingested"):
        store.subjects_attrs(["sub-00", "sub-99"])
    with pytest.raises(CfhdaskInputError, match="no subject 'sub-99' with cfh results"):
        store.cfh_maps(["sub-00", "sub-99"])


def test_finish_on_a_worker_publishes_last_and_reruns_harmlessly(user_mask, tmp_path,
                                                                monkeypatch):
    """Ingest's completion task (run on a worker) writes the metadata after the chunks, and
    a rerun of it (a lost worker) leaves the published subject as it is; a replacement
    (--overwrite) is swapped in by the client, as before."""
    from cfhdask.io.store import _finish_on_worker

    url = str(tmp_path / "f.zarr")
    store = _create(user_mask, url)
    a = np.full((store.n_voxels, 6), 1.0, np.float32)
    target = store.begin_subject("sub-01", 6, {"tr": 2.0})
    task = store.finish_graph("sub-01", store.bold_store_graph(a, target))
    assert not store.is_pending("sub-01") and open_store(url).subjects() == []
    written = _count_local_store(monkeypatch, "_set")
    with dask.config.set(scheduler="sync"):
        dask.compute(task)
    metas = [i for i, key in enumerate(written) if key.endswith("zarr.json")]
    assert written[metas[0]] == "subjects/sub-01/bold/zarr.json", written
    assert min(metas) > max(i for i, key in enumerate(written) if "/c/" in key), written
    monkeypatch.undo()
    attrs = open_store(url).subject_attrs("sub-01")
    _finish_on_worker(open_store(url, mode="r+"), "sub-01", {"tr": 9.0}, target, None)
    assert open_store(url).subject_attrs("sub-01") == attrs
    b = np.full((store.n_voxels, 6), 2.0, np.float32)
    target = store.begin_subject("sub-01", 6, {"tr": 3.0})
    writes = store.bold_store_graph(b, target)
    assert store.finish_graph("sub-01", writes) is writes and store.is_pending("sub-01")
    dask.compute(writes, scheduler="sync")
    store.finish_subject("sub-01")
    again = open_store(url)
    assert again.subjects() == ["sub-01"] and again.incomplete_subjects() == []
    assert again.subject_attrs("sub-01")["tr"] == 3.0
    np.testing.assert_array_equal(again.bold("sub-01").compute(), b)


def test_subject_listing_and_cleanup_read_the_store_once(user_mask, rng, tmp_path,
                                                         monkeypatch):
    """A rerun's cleanup on a big store: one listing, one read of each group document, and
    deletes only of nodes that are there (a complete subject without maps: none)."""
    url = str(tmp_path / "s.zarr")
    store = _create(user_mask, url)
    series = rng.standard_normal((store.n_voxels, 12)).astype(np.float32)
    for s in ("sub-01", "sub-02"):
        store.write_subject(s, series, {"tr": 2.0})
    store.begin_subject("sub-03", 12, {})[...] = series  # killed before publication
    store = CohortStore.open(url, mode="r+")
    listing = store.subject_listing()
    assert list(listing) == ["sub-01", "sub-02", "sub-03"]
    assert listing["sub-01"][0]["tr"] == 2.0 and listing["sub-01"][1] == {"bold", "zarr.json"}
    assert listing["sub-03"][0] is None and "bold" in listing["sub-03"][1]
    reads = _count_local_store(monkeypatch, "get")
    deletes = _count_local_store(monkeypatch, "delete")
    assert store.cleanup_incomplete() == ["sub-03"]
    assert sorted(r for r in reads if r.startswith("subjects/sub-")) == [
        f"subjects/{s}/zarr.json" for s in ("sub-01", "sub-02", "sub-03")]
    assert all(k.startswith("subjects/sub-03/") for k in deletes), deletes
    assert store.subjects() == ["sub-01", "sub-02"] and not store.incomplete_subjects()
    np.testing.assert_array_equal(np.asarray(store.bold("sub-02")), series)


def test_whole_write_never_publishes_a_subject_whose_chunks_vanished(user_mask, rng, tmp_path,
                                                                     monkeypatch):
    """A cleanup by another process while a batch writes (a killed client's batch still
    running when the rerun starts): the subject is not published, and a rerun writes it."""
    import cfhdask.io.store as store_mod

    url = str(tmp_path / "w.zarr")
    store = _create(user_mask, url, chunk=50)
    a = rng.standard_normal((store.n_voxels, 6)).astype(np.float32)
    a[:50] = np.nan  # an all-NaN chunk is not stored, and is not missed
    real = store_mod._unpublished_array

    def racing(*args, **kwargs):
        arr = real(*args, **kwargs)

        class Racing:
            def __setitem__(self, key, values):
                arr[key] = values
                open_store(url, mode="r+").cleanup_incomplete()  # the other process

            def __getattr__(self, name):
                return getattr(arr, name)

        return Racing()

    monkeypatch.setattr(store_mod, "_unpublished_array", racing)
    with pytest.raises(RuntimeError, match=r"sub-01.*vanished.*not published"):
        store.write_bold_whole("sub-01", a, {"tr": 2.0})
    monkeypatch.undo()
    assert open_store(url).subjects() == [] and not open_store(url).is_published("sub-01")
    assert store.write_bold_whole("sub-01", a, {"tr": 2.0}) is True
    np.testing.assert_array_equal(open_store(url).bold("sub-01").compute(), a)
    assert store.write_bold_whole("sub-01", a, {"tr": 9.0}) is False  # published: left as is
