"""Group-counterpart CFH through a store: reference, fingerprint, recompute, CLI, label-freedom."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from cfhref import assert_same_counterparts, reference_group
from cfhstore import GRID, bold, make_store
from faulthelpers import wait_until

from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.kernels import fisher_z
from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import CohortStore, open_store


def _reference(st, subjects):
    data = [np.asarray(st.bold(s)) for s in subjects]
    return reference_group([(x[st.left], x[st.right]) for x in data])


def _check(st, ds, subjects):
    """Counterpart, values and Fisher z of every subject against the float64 brute force."""
    larg, rarg, summed, left_r, right_r = _reference(st, subjects)
    cp = ds["group_counterpart"].values
    assert_same_counterparts(np.where(cp[st.left] < 0, -1, cp[st.left] - st.n_left), larg,
                             summed)
    assert_same_counterparts(cp[st.right], rarg, summed.T)
    same = (cp[st.left] - st.n_left == larg)
    for k, s in enumerate(subjects):
        r = ds["r"].sel(subject=s).values
        np.testing.assert_allclose(r[st.left][same], left_r[k][same], atol=1e-5)
        np.testing.assert_allclose(r[st.right][cp[st.right] == rarg],
                                   right_r[k][cp[st.right] == rarg], atol=1e-5)
        np.testing.assert_array_equal(ds["cfh"].sel(subject=s).values, fisher_z(r))
        assert np.isnan(r[st.midline]).all()
    return larg, rarg


def test_group_cfh_end_to_end_rerun_and_export(store, local_client, tmp_path):
    ds = compute_cfh(store.url, block=8, subject_batch=1, client=local_client,
                     show_progress=False, export=str(tmp_path / "maps"))
    assert ds.attrs["metric"] == "cfh" and ds.attrs["counterpart"] == "group"
    assert ds.attrs["reference"]["kind"] == "all"
    assert ds.attrs["reference"]["subjects"] == ["sub-01", "sub-02"]
    _check(store, ds, ["sub-01", "sub-02"])
    # constant in sub-02 only: no value there, but sub-01 still gives it a counterpart
    r2 = ds["r"].sel(subject="sub-02").values
    assert np.isnan(r2[[2, 41]]).all() and np.isfinite(ds["r"].values[0, [2, 41]]).all()
    assert ds["group_counterpart"].values[2] >= 0
    st = open_store(store.url)
    group = st.group_counterpart()
    assert group["fingerprint"] == ds.attrs["fingerprint"]
    assert st.metric_params("sub-01", "cfh")["counterpart_fingerprint"] == group["fingerprint"]
    np.testing.assert_array_equal(st.cfh_maps(var="cfh_counterpart").values[0], group["index"])
    assert [h["command"] for h in st.attrs["history"]] == ["cfh-counterpart", "cfh"]
    # export: maps, the group counterpart's coordinates and its displacement from the mirror
    import nibabel as nib

    ijk = tuple(store.ijk.T)
    xyz = nib.load(tmp_path / "maps" / "group_counterpart.nii.gz").get_fdata()[ijk]
    has = group["index"] >= 0
    np.testing.assert_allclose(xyz[has], store.xyz[group["index"][has]], atol=1e-5)
    disp = nib.load(tmp_path / "maps" / "group_counterpart_displacement.nii.gz").get_fdata()
    want = np.linalg.norm(store.xyz[group["index"][has]] - store.xyz[has] * [-1, 1, 1], axis=1)
    np.testing.assert_allclose(disp[ijk][has], want, atol=1e-4)
    assert (tmp_path / "maps" / "sub-02_cfh.nii.gz").exists()
    # a rerun changes nothing; other blocks and batches give the same counterpart
    again = compute_cfh(store.url, block=5, client=local_client, show_progress=False)
    assert again.attrs["computed"] == [] and again.attrs["fingerprint"] == group["fingerprint"]
    redo = compute_cfh(store.url, block=5, subject_batch=2, overwrite=True,
                       client=local_client, show_progress=False)
    assert redo.attrs["computed"] == ["sub-01", "sub-02"]
    _check(store, redo, ["sub-01", "sub-02"])


_REAL_WRITE_CFH = CohortStore.write_cfh


def _fail_writes_of(subject):
    """In a worker process: make ``write_cfh`` of ``subject`` fail (None: restore)."""
    def flaky(self, name, *a, **k):
        if name == subject:
            raise RuntimeError("worker lost")
        return _REAL_WRITE_CFH(self, name, *a, **k)

    CohortStore.write_cfh = _REAL_WRITE_CFH if subject is None else flaky


def _executing(dask_worker) -> int:
    """Tasks running on a worker (cancelled ones still running included)."""
    return len(dask_worker.state.executing)


def test_adding_subjects_recomputes_counterpart_and_maps(store, local_client, rng, caplog):
    first = compute_cfh(store.url, block=8, client=local_client, show_progress=False)
    fp1 = first.attrs["fingerprint"]
    st = open_store(store.url, mode="r+")
    st.write_subject("sub-03", bold(rng, st.n_voxels, 38, constant=[50]), {"tr": 2.0})
    # the maps computed so far stay visible (consistent with the stored counterpart) ...
    assert st.subjects("cfh") == ["sub-01", "sub-02"]
    # ... until the counterpart is recomputed; an interrupted recompute mixes nothing
    # (the workers write the maps: the failure is planted in the workers' processes)
    local_client.run(_fail_writes_of, "sub-02")
    try:
        with caplog.at_level(logging.WARNING, logger="cfhdask"), \
                pytest.raises(RuntimeError, match="worker lost"):
            compute_cfh(store.url, block=8, client=local_client, show_progress=False)
    finally:
        local_client.run(_fail_writes_of, None)
    # a unit already running when the run stopped cannot be interrupted: it finishes
    # (whole, with the new counterpart), so wait for the workers to go idle
    wait_until(lambda: not any(local_client.run(_executing).values()), 60, "idle workers")
    assert "reference set of the group counterpart changed" in caplog.text
    st = open_store(store.url)
    fp2 = st.group_counterpart()["fingerprint"]
    assert fp2 != fp1
    done = st.subjects("cfh")
    assert 1 <= len(done) <= 2 and "sub-02" not in done
    assert all(st.metric_params(s, "cfh")["counterpart_fingerprint"] == fp2 for s in done)
    ds = compute_cfh(store.url, block=8, client=local_client, show_progress=False)
    assert sorted(ds.attrs["computed"]) == sorted({"sub-01", "sub-02", "sub-03"} - set(done))
    assert ds.attrs["fingerprint"] == fp2 and ds.attrs["reference"]["n_subjects"] == 3
    _check(st, ds, ["sub-01", "sub-02", "sub-03"])


def test_reference_subjects_list_filter_store_and_errors(store, local_client, tmp_path, rng,
                                                         caplog):
    part = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "group": ["control", "patient"]}
                 ).to_csv(part, sep="\t", index=False)
    bad = [
        (dict(reference_subjects=["sub-01", "sub-99"]), "--reference-subjects.*sub-99"),
        (dict(reference_subjects="group==control"), "--participants"),
        (dict(reference_subjects="site==A", participants=part), "no column 'site'"),
        (dict(reference_subjects="group==nobody", participants=part), "matches"),
        (dict(reference_subjects=["group==control", "sub-01"], participants=part), "mix"),
    ]
    for kwargs, match in bad:
        with pytest.raises(CfhdaskInputError, match=match):
            compute_cfh(store, client=local_client, show_progress=False, **kwargs)
    st = open_store(store.url)
    assert st.group_counterpart() is None and st.subjects("cfh") == []

    # one reference subject: a warning, and CFH equals that subject's own maximum
    with caplog.at_level(logging.WARNING, logger="cfhdask"):
        one = compute_cfh(store, reference_subjects="group==control", participants=part,
                          block=8, client=local_client, show_progress=False)
    assert "reference set is one subject (sub-01)" in caplog.text
    assert one.attrs["reference"]["kind"] == "filter"
    own = compute_cfh(store, counterpart="subject", block=8, client=local_client,
                      show_progress=False)
    r_group, r_own = one["r"].values[0], own["r"].values[0]
    np.testing.assert_allclose(r_group, r_own, atol=1e-5)

    # another store on the same grid: its subjects define the counterpart
    other = make_store(tmp_path / "other.zarr", rng, lengths=(33, 29, 41),
                       constant=((), (), ()))
    ds = compute_cfh(store, reference_subjects=[other.url], block=8, client=local_client,
                     show_progress=False)
    assert ds.attrs["reference"]["kind"] == "store" and ds.attrs["computed"] == [
        "sub-01", "sub-02"]
    larg, rarg, summed, _, _ = _reference(other, other.subjects())
    cp = ds["group_counterpart"].values
    assert_same_counterparts(cp[store.left] - store.n_left, larg, summed)
    assert other.group_counterpart() is None  # the other store is only read
    wrong = CohortStore.create(str(tmp_path / "wrong.zarr"), grid_shape=(5, 4, 3),
                               affine=np.diag([2.0, 2, 2, 1]), mask=np.ones((5, 4, 3), bool),
                               mask_info={"source": "t"})
    with pytest.raises(CfhdaskInputError, match="grid or mask differs"):
        compute_cfh(store, reference_subjects=wrong.url, client=local_client)


def test_cli_cfh_group_default(store, local_client, capsys, tmp_path):
    rc = main(["cfh", store.url, "--block", "16", "--no-progress",
               "--reference-subjects", "sub-01,sub-02", "--export", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert rc == 0 and "counterpart: group (metric cfh)" in out
    assert "the named subjects: 2 subject(s)" in out and "subjects computed: 2" in out
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["group_counterpart.nii.gz", "group_counterpart_displacement.nii.gz",
                     "sub-01_cfh.nii.gz", "sub-02_cfh.nii.gz"]
    # the same reference named another way: nothing to recompute
    rc = main(["cfh", store.url, "--no-progress"])
    assert rc == 0 and "computed: 0, skipped (complete): 2" in capsys.readouterr().out
    assert main(["cfh", store.url, "--reference-subjects", "sub-07"]) == 2
    assert "--reference-subjects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cfh", store.url, "--subject-batch", "x"])


def test_permutation_null_of_group_mode_is_label_free(tmp_path, rng, local_client):
    """Labels shuffled before the counterpart is computed: the same maps, the same null."""
    from cfhdask.stats.inference import group_inference

    lengths = (30, 34, 28, 31, 36, 29)
    a = make_store(tmp_path / "a.zarr", rng, lengths=lengths, constant=((),) * 6)
    b_path = tmp_path / "b.zarr"
    shutil.copytree(a.url, b_path)
    ids = a.subjects()
    labels = np.array(["patient"] * 3 + ["control"] * 3)
    shuffled = labels[rng.permutation(6)]
    while (shuffled == labels).all():
        shuffled = labels[rng.permutation(6)]
    p1 = pd.DataFrame({"participant_id": ids, "group": labels})
    p2 = pd.DataFrame({"participant_id": ids, "group": shuffled})

    def maps(url, participants, **ref):
        ds = compute_cfh(url, block=16, client=local_client, show_progress=False,
                         participants=participants, overwrite=True, **ref)
        return ds["cfh"].values

    def analyse(url, participants):
        values = maps(url, participants)
        res = group_inference(open_store(url), participants, group="group",
                              groups=["patient", "control"], n_perm=1000, compute="local",
                              atlases=[], cluster_p=0.05)
        return values, res

    maps1, res1 = analyse(a.url, p1)
    maps2, res2 = analyse(str(b_path), p2)   # labels shuffled first, then the counterpart
    np.testing.assert_array_equal(maps1, maps2)
    assert res1.params["n_perm"] == 20 and res1.params["exhaustive"]
    for name in res1.contrasts:
        for stat, null in res1.contrasts[name].null.items():
            # the same 20 labellings; float32 permuted products round in another order
            np.testing.assert_allclose(np.sort(null), np.sort(res2.contrasts[name].null[stat]),
                                       rtol=1e-5, err_msg=f"{name} {stat}")
    # a label-dependent reference (controls only) is not label-free: the maps move
    maps3 = maps(a.url, p1, reference_subjects="group==control")
    maps4 = maps(str(b_path), p2, reference_subjects="group==control")
    assert not np.allclose(maps3, maps4, equal_nan=True)
    assert GRID == a.grid_shape


def test_hemisphere_blocks_fall_on_chunk_bounds():
    from cfhdask.cfh.group import hemisphere_blocks

    for start, stop, block, chunk in ((0, 26210, 8192, 4096), (26210, 52420, 4096, 4096),
                                      (36, 72, 8, 10), (0, 5, 8, 10), (3, 1000, 100, 7)):
        blocks = hemisphere_blocks(start, stop, block, chunk)
        assert blocks[0][0] == start and blocks[-1][1] == stop
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        step = max(chunk, block // chunk * chunk) if block >= chunk else block
        inner = [b for b, _ in blocks[1:]]
        assert all(b % step == 0 for b in inner)
        assert all(e - s <= 2 * step for s, e in blocks)
    assert hemisphere_blocks(0, 26210, 8192, 4096) == [(0, 8192), (8192, 16384),
                                                        (16384, 26210)]


def test_group_block_cuts_a_coarse_grid_into_enough_blocks():
    from cfhdask.cfh.group import MIN_GROUP_BLOCKS, group_block, hemisphere_blocks

    # the paper's 3 mm grid keeps cfh.block; 4 and 6 mm get at least 4 blocks a side
    assert group_block(4096, 26210, 26210) == 4096
    for n_left, n_right in ((11012, 11020), (3201, 3201), (700, 650)):
        b = group_block(4096, n_left, n_right)
        assert b % 128 == 0 and b < 4096
        assert len(hemisphere_blocks(0, max(n_left, n_right), b, 4096)) >= MIN_GROUP_BLOCKS
    # a smaller configured block is kept; the rule never depends on the cluster
    assert group_block(8, 40, 41) == 8
    assert group_block(4096, 40, 41) == 128
