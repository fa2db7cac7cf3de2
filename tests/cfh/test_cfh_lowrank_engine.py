"""The exact low-rank kernel in the Dask engine (``cfh.kernel``) against float64 brute force."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from cfhref import CountingScheduler, assert_matches, bandpassed_pairs, reference_cfh
from cfhstore import AFFINE

from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.graph import standardize_graph
from cfhdask.cfh.lowrank_graph import cfh_kernel_graph
from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import CohortStore, open_store
from cfhdask.report.methods import methods_paragraphs, metric_facts
from cfhdask.settings import resolve

T = 200
BLOCK = 96  # divides neither hemisphere: short last blocks


@pytest.fixture(scope="module")
def bandpassed():
    rng = np.random.default_rng(5)
    left, right = bandpassed_pairs(rng, 421, 377, T)
    left[[0, 200]] = 4.0  # constant voxels, both hemispheres
    right[[376]] = -1.0
    return left.astype(np.float32), right.astype(np.float32)


@pytest.fixture(scope="module")
def unfiltered():
    rng = np.random.default_rng(6)
    return (rng.standard_normal((250, T)).astype(np.float32),
            rng.standard_normal((233, T)).astype(np.float32))


def _graph(left, right, kernel, **kw):
    zl, vl = standardize_graph(left, block=BLOCK)
    zr, vr = standardize_graph(right, block=BLOCK)
    return cfh_kernel_graph(zl, zr, vl, vr, kernel=kernel, block=BLOCK, split_every=3, **kw)


def _check(left, right, res):
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    assert_matches(res["left_rmax"], res["left_arg"], lmax, larg, c)
    assert_matches(res["right_rmax"], res["right_arg"], rmax, rarg, c.T)


@pytest.mark.parametrize("kernel", ["auto", "lowrank"])
def test_lowrank_engine_matches_brute_force_on_any_number_of_workers(bandpassed, kernel,
                                                                     local_client):
    left, right = bandpassed
    res = local_client.compute(_graph(left, right, kernel), sync=True)
    info = res["kernel"][0]
    assert info["kernel"] == kernel and info["kernel_used"] == "lowrank"
    assert 8 <= info["rank"] <= 0.6 * T and info["full_rank_blocks"] == 0
    # about one candidate per row and block (each block's own maxima), far fewer than pairs
    assert 421 * 4 + 377 * 5 <= info["n_candidates"] < 2 * (421 * 4 + 377 * 5)
    assert info["n_blocks"] == 5 * 4
    _check(left, right, res)
    assert list(np.flatnonzero(res["left_arg"] < 0)) == [0, 200]
    assert list(np.flatnonzero(res["right_arg"] < 0)) == [376]
    # one thread, another order of completion: bit-identical
    sync = dask.compute(_graph(left, right, kernel), scheduler="sync")[0]
    for k in ("left_rmax", "left_arg", "right_rmax", "right_arg"):
        np.testing.assert_array_equal(sync[k], res[k])
    assert sync["kernel"][0] == info
    # the same maxima as the full-rank graph
    full = dask.compute(_graph(left, right, "full"), scheduler="sync")[0]
    ok = res["left_arg"] >= 0
    np.testing.assert_allclose(res["left_rmax"][ok], full["left_rmax"][ok], atol=2e-6)


def test_unfiltered_data_fall_back_to_full_rank(unfiltered, local_client):
    left, right = unfiltered
    res = local_client.compute(_graph(left, right, "auto"), sync=True)
    info = res["kernel"][0]
    assert info["kernel_used"] == "full" and "exceeds" in info["reason"]
    assert info["n_candidates"] == 0 and info["full_rank_blocks"] == info["n_blocks"]
    _check(left, right, res)


def test_pilot_fallback_and_forced_low_rank(bandpassed):
    left, right = bandpassed
    loose = {"tol": 0.9, "max_candidates_per_row": 2.0}  # tiny rank: loose bounds
    res = dask.compute(_graph(left, right, "auto", plan_options=loose), scheduler="sync")[0]
    info = res["kernel"][0]
    assert info["kernel_used"] == "full" and info["pilot_candidates"] > 2.0
    assert "candidates per row" in info["reason"]
    _check(left, right, res)
    forced = dask.compute(_graph(left, right, "lowrank", plan_options=loose),
                          scheduler="sync")[0]
    assert forced["kernel"][0]["kernel_used"] == "lowrank" and forced["kernel"][0]["rank"] <= 24
    _check(left, right, forced)


def test_building_the_graph_computes_nothing(bandpassed):
    left, right = bandpassed
    counting = CountingScheduler()
    with dask.config.set(scheduler=counting):
        out = _graph(left, right, "auto")
    assert counting.calls == 0
    assert set(out) == {"left_rmax", "left_arg", "right_rmax", "right_arg", "kernel"}
    assert out["left_rmax"].shape == (421,) and out["right_arg"].chunks == ((96,) * 3 + (89,),)
    with pytest.raises(CfhdaskInputError, match="kernel"):
        _graph(left, right, "full2")


# ----------------------------------------------------------------------------- through a store
GRID = (13, 8, 8)


@pytest.fixture
def bp_store(tmp_path):
    """Two band-passed subjects (T 200 and 180) on a small grid, one with constant voxels."""
    rng = np.random.default_rng(8)
    st = CohortStore.create(str(tmp_path / "bp.zarr"), grid_shape=GRID, affine=AFFINE,
                            mask=np.ones(GRID, bool), mask_info={"source": "test"},
                            voxel_chunk=64)
    for k, t in enumerate((200, 180)):
        n_side = (st.n_voxels - st.n_midline) // 2 + 1
        left, right = bandpassed_pairs(rng, n_side, st.n_voxels - n_side, t)
        x = np.vstack([left, right]).astype(np.float32)
        if k:
            x[[5, st.n_voxels - 3]] = 7.0
        st.write_subject(f"sub-{k + 1:02d}", x, {"tr": 2.0})
    return st


def _check_store(st, ds, subject):
    bold = np.asarray(st.bold(subject))
    lmax, larg, rmax, rarg, c = reference_cfh(bold[st.left], bold[st.right])
    sel = ds.sel(subject=subject)
    r, cp = sel["r"].values, sel["counterpart"].values
    assert_matches(r[st.left], np.where(cp[st.left] < 0, -1, cp[st.left] - st.right.start),
                   lmax, larg, c)
    assert_matches(r[st.right], np.where(cp[st.right] < 0, -1, cp[st.right] - st.left.start),
                   rmax, rarg, c.T)


def test_compute_cfh_records_the_kernel_per_subject(bp_store, local_client, caplog):
    caplog.set_level("INFO", logger="cfhdask.cfh.compute")
    ds = compute_cfh(bp_store.url, counterpart="subject", kernel="auto", block=100,
                     client=local_client, show_progress=False)
    st = open_store(bp_store.url)
    for s in ("sub-01", "sub-02"):
        _check_store(st, ds, s)
        p = st.metric_params(s, "cfh_subject")
        assert p["kernel"] == "auto" and p["kernel_used"] == "lowrank"
        assert p["rank"] % 8 == 0 and p["n_candidates"] > 0
    assert st.attrs["history"][-1]["parameters"]["kernel"] == "auto"
    assert "kernel lowrank (k=" in caplog.text and "candidates" in caplog.text
    facts = metric_facts(st, {"metric": "cfh_subject"})
    assert facts["cfh_kernel"]["n_lowrank"] == facts["cfh_kernel"]["n_maps"] == 2
    text = dict(methods_paragraphs(facts))["CFH"]
    assert "Cauchy" in text and "every map" in text
    # the full kernel on the same store: the same maps, no low-rank sentence
    full = compute_cfh(bp_store.url, counterpart="subject", kernel="full", block=100,
                       overwrite=True, client=local_client, show_progress=False)
    np.testing.assert_allclose(full["r"].values, ds["r"].values, atol=2e-6)
    p = open_store(bp_store.url).metric_params("sub-01", "cfh_subject")
    assert p["kernel"] == p["kernel_used"] == "full" and "rank" not in p
    facts = metric_facts(open_store(bp_store.url), {"metric": "cfh_subject"})
    assert "Cauchy" not in dict(methods_paragraphs(facts))["CFH"]


def test_unfiltered_store_falls_back_and_cli_flag(store, local_client, capsys):
    """The shared test store holds white noise (T 30, 45): auto takes full rank."""
    code = main(["cfh", store.url, "--counterpart", "subject", "--kernel", "lowrank",
                 "--block", "16", "--no-progress"])
    assert code == 0 and "subjects computed: 2" in capsys.readouterr().out
    st = open_store(store.url)
    assert st.metric_params("sub-02", "cfh_subject")["kernel_used"] == "lowrank"
    ds = compute_cfh(store.url, counterpart="subject", overwrite=True, block=16,
                     client=local_client, show_progress=False)  # default: auto
    for s in ("sub-01", "sub-02"):
        _check_store(open_store(store.url), ds, s)
        p = open_store(store.url).metric_params(s, "cfh_subject")
        assert p["kernel"] == "auto" and p["kernel_used"] == "full"
        assert "exceeds" in p["reason"]


def test_bad_kernel_values_name_the_option(store, local_client, capsys):
    with pytest.raises(CfhdaskInputError, match="kernel") as err:
        compute_cfh(store, counterpart="subject", kernel="fast", client=local_client)
    assert "\n" not in str(err.value)
    with pytest.raises(CfhdaskInputError, match="--kernel"):
        resolve("cfh", {"kernel": "fast"}, style="cli")
    with pytest.raises(CfhdaskInputError, match="cfh.kernel"):
        resolve("cfh", {"kernel": "fast"}, style="yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["cfh", store.url, "--kernel", "fast"])
    assert exit_.value.code == 2 and "--kernel" in capsys.readouterr().err
    assert open_store(store.url).subjects("cfh_subject") == []
