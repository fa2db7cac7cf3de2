"""Reductions, products and the companion kernels against brute-force float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from cfhref import (
    assert_matches,
    assert_same_counterparts,
    corr64,
    near_threshold,
    reference_cfh,
    reference_group,
)

from cfhdask.cfh.kernels import (
    DenseProduct,
    GemmProduct,
    apply_moments,
    autonomy_index,
    block_counts,
    concat_standardized,
    dense_product,
    moments,
    paired_corr,
    paired_correlations,
    reduce_block,
    standardize,
)
from cfhdask.cfh.mirror import mirror_voxels
from cfhdask.cfh.reductions import MaxArgmax, ThresholdCount
from cfhdask.grid import MNI_3MM_AFFINE, hemisphere_of, ijk_to_xyz


def _signal(rng, n, t, share=0.7):
    s = rng.standard_normal(t)
    return rng.standard_normal((n, t)) + rng.random((n, 1)) * share * 3 * s


@pytest.mark.parametrize("na,nb,strip,diag", [
    (45, 33, 1024, False),   # one strip
    (45, 33, 7, False),      # strips that do not divide the rows
    (70, 70, 16, True),      # a set against itself: self-pairs excluded
    (9, 1500, 4, False),     # columns over one 1024-wide counting lane, not a multiple of 8
])
def test_block_counts_match_reference(rng, na, nb, strip, diag):
    a_raw = _signal(rng, na, 30)
    b_raw = a_raw if diag else _signal(rng, nb, 30)
    a_raw[[1, na - 1]] = 4.0  # constant rows never count, whatever their partners
    if not diag:
        b_raw[0] = -2.0
    a, av = standardize(a_raw)
    b, bv = standardize(b_raw)
    thr = 0.25
    res = block_counts(a, b, thr, av, bv, diagonal=diag, strip_rows=strip)
    r, _, _ = corr64(a_raw, b_raw)
    if diag:
        np.fill_diagonal(r, np.nan)
    above = np.nan_to_num(r, nan=-np.inf) > thr
    near_rows, near_cols = near_threshold(r, thr), near_threshold(r.T, thr)
    assert res.row_count.dtype == np.int64
    assert np.all(np.abs(res.row_count - above.sum(1)) <= near_rows)
    assert np.all(np.abs(res.col_count - above.sum(0)) <= near_cols)
    assert res.row_count[[1, na - 1]].sum() == 0
    if not diag:
        assert res.col_count[0] == 0


def test_count_reduction_counts_every_value_exactly():
    """Exact counts (no float question): a block of known values through a dense product."""
    rng = np.random.default_rng(3)
    c = rng.choice(np.float32([-1, 0, 0.5, 1]), size=(600, 1100))
    rows, cols = reduce_block(DenseProduct(c), ThresholdCount(0.25), strip_rows=256)
    np.testing.assert_array_equal(rows, (c > 0.25).sum(1))
    np.testing.assert_array_equal(cols, (c > 0.25).sum(0))
    assert int(cols.max()) > 255  # more than a byte lane per strip: lanes flushed in time


def test_dense_and_gemm_products_reduce_alike(rng):
    a, av = standardize(_signal(rng, 50, 40))
    b, bv = standardize(_signal(rng, 37, 40))
    av[3] = bv[5] = False
    red = MaxArgmax(8)
    g = reduce_block(GemmProduct(a, b), red, av, bv, 10, 20, strip_rows=16)
    d = reduce_block(DenseProduct(a @ b.T), red, av, bv, 10, 20, strip_rows=24)
    for x, y in zip(g, d, strict=True):
        np.testing.assert_allclose(x[0], y[0], rtol=1e-6)
        np.testing.assert_array_equal(x[1], y[1])
    assert g[0][1][3] == -1 and 5 + 20 not in g[0][1]


def test_moments_and_apply_moments_equal_standardize(rng):
    x = (_signal(rng, 40, 55) * 12 + 1000).astype(np.float32)
    x[4] = 3.0
    x[7, 2] = np.inf  # not finite: invalid, and must not leak into the output
    mean, scale, valid = moments(x)
    z, zv = standardize(x)
    np.testing.assert_array_equal(valid, zv)
    assert not valid[[4, 7]].any()
    np.testing.assert_allclose(apply_moments(x, mean, scale), z, atol=2e-6)
    assert np.all(apply_moments(x, mean, scale)[[4, 7]] == 0)


def test_concatenated_gemm_is_the_sum_of_subject_correlations(rng):
    """One GEMM over concatenated standardised time axes = sum of per-subject r."""
    subjects = []
    for t in (20, 33, 47):  # subjects of different lengths
        left, right = _signal(rng, 23, t), _signal(rng, 17, t)
        subjects.append((left, right))
    subjects[1][0][5] = 1.0   # constant in subject 2 only: adds nothing there
    subjects[2][1][2] = -3.0
    parts_a = [s[0].astype(np.float32) for s in subjects]
    parts_b = [s[1].astype(np.float32) for s in subjects]
    ma = [moments(p)[:2] for p in parts_a]
    mb = [moments(p)[:2] for p in parts_b]
    a = concat_standardized(parts_a, [m[0] for m in ma], [m[1] for m in ma])
    b = concat_standardized(parts_b, [m[0] for m in mb], [m[1] for m in mb])
    got = dense_product(a, b)
    larg, rarg, summed, _, _ = reference_group(subjects)
    np.testing.assert_allclose(got, summed, atol=1e-5)
    (rm, ra), (cm, ca) = reduce_block(DenseProduct(got), MaxArgmax())
    assert_same_counterparts(ra, larg, summed)
    assert_same_counterparts(ca, rarg, summed.T)


def test_max_reduction_on_self_block_excludes_the_diagonal(rng):
    a, av = standardize(_signal(rng, 30, 25))
    (rm, ra), _ = reduce_block(GemmProduct(a, a), MaxArgmax(4), av, av, diagonal=True,
                               strip_rows=8)
    r, _, _ = corr64(a, a)
    np.fill_diagonal(r, -np.inf)
    assert np.all(ra != np.arange(30))
    np.testing.assert_allclose(rm, r.max(1), atol=1e-5)


def test_paired_corr_and_autonomy_index(rng):
    x = _signal(rng, 12, 40)
    y = _signal(rng, 12, 40)
    zx, _ = standardize(x)
    zy, _ = standardize(y)
    ref = np.array([np.corrcoef(x[k], y[k])[0, 1] for k in range(12)])
    np.testing.assert_allclose(paired_corr(zx, zy), ref, atol=1e-6)
    ai = autonomy_index(np.array([5, 0, 3]), np.array([1, 4, 0]), np.array([10, 10, 0]), 20)
    np.testing.assert_allclose(ai[:2], [5 / 10 - 1 / 20, 0 - 4 / 20])
    assert np.isnan(ai[2])


@pytest.mark.parametrize("rows", [7, 4096])
def test_paired_correlations_match_brute_force(rng, rows):
    """Every series with its partner (none, itself, a constant one): float64 reference."""
    x = (_signal(rng, 53, 37) * 30 + 800).astype(np.float32)
    x[[4, 20]] = 612.5  # constant series
    partner = rng.integers(0, 53, 53)
    partner[[0, 9]] = -1
    partner[[1, 2]] = 4  # a constant partner
    partner[5] = 5
    before = x.copy()
    r, valid = paired_correlations(x, partner, rows=rows)
    np.testing.assert_array_equal(x, before)  # the raw series are left as they were
    x64 = x.astype(np.float64)
    assert valid.tolist() == [k not in (4, 20) for k in range(53)]
    ref = np.full(53, np.nan)
    for k in range(53):
        if partner[k] >= 0 and valid[k] and valid[partner[k]]:
            ref[k] = np.corrcoef(x64[k], x64[partner[k]])[0, 1]
    assert r.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(r), np.isnan(ref))
    np.testing.assert_allclose(r, ref, atol=1e-6, equal_nan=True)
    assert r[5] == pytest.approx(1.0, abs=1e-6)


def test_max_reduction_matches_reference_with_masks(rng):
    a_raw, b_raw = _signal(rng, 41, 30), _signal(rng, 29, 30)
    a_raw[0] = 1.0
    a, av = standardize(a_raw)
    b, bv = standardize(b_raw)
    (rm, ra), (cm, ca) = reduce_block(GemmProduct(a, b), MaxArgmax(3), av, bv, strip_rows=5)
    lmax, larg, rmax, rarg, c = reference_cfh(a_raw, b_raw)
    assert_matches(np.where(ra < 0, np.nan, rm), ra, lmax, larg, c)
    assert_matches(np.where(ca < 0, np.nan, cm), ca, rmax, rarg, c.T)


# ----------------------------------------------------------------------------- mirror
def _grid_voxels(shape, affine, mask):
    ijk = np.argwhere(mask)
    xyz = ijk_to_xyz(ijk, affine)
    return ijk, xyz, hemisphere_of(xyz[:, 0])


def test_mirror_on_the_symmetric_3mm_grid_is_exact():
    shape = (61, 73, 61)
    mask = np.zeros(shape, bool)
    mask[20:41, 30:33, 30:32] = True   # symmetric around i = 30 (x = 0)
    mask[22, 30, 30] = False           # a voxel whose mirror (i = 38) is then unpaired
    ijk, xyz, hemi = _grid_voxels(shape, MNI_3MM_AFFINE, mask)
    m = mirror_voxels(ijk, MNI_3MM_AFFINE, shape, hemi)
    assert m.exact and m.max_offset_mm == 0.0
    has = m.index >= 0
    np.testing.assert_allclose(xyz[m.index[has]], xyz[has] * [-1, 1, 1], atol=1e-6)
    assert not has[hemi == 0].any()
    assert np.all(hemi[m.index[has]] == -hemi[has])
    lonely = np.flatnonzero((ijk == [38, 30, 30]).all(1))[0]
    assert m.index[lonely] == -1 and m.n_pairs == has.sum()
    assert np.all(m.index[m.index[has]] == np.flatnonzero(has))  # an involution


def test_mirror_on_a_shifted_grid_is_the_nearest_voxel():
    shape = (12, 3, 3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = -10.7  # x = -10.7 + 2 i: no voxel centre at x = 0, mirrors off-centre
    mask = np.ones(shape, bool)
    ijk, xyz, hemi = _grid_voxels(shape, affine, mask)
    m = mirror_voxels(ijk, affine, shape, hemi)
    assert not m.exact and 0 < m.max_offset_mm <= 1.0 + 1e-9
    has = m.index >= 0
    for v in np.flatnonzero(has):
        d = np.linalg.norm(xyz - xyz[v] * [-1, 1, 1], axis=1)
        assert d[m.index[v]] == pytest.approx(d.min())
