"""The fast paths of denoising equal the plain ones: smoothing on a box with the last
pass at the wanted voxels, and the series steps as one (T, T) operator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from prep_helpers import AFFINE, SHAPE

from cfhdask.grid import voxel_table
from cfhdask.io.nifti import read_header
from cfhdask.prep import denoise as kern
from cfhdask.prep import pipeline
from cfhdask.prep.discover import discover_inputs
from cfhdask.prep.mask import gm_mask
from cfhdask.prep.pipeline import DenoiseParams, denoise_graph, plan_subject


def whole_grid_then_gather(vols, affine, fwhm, ijk):
    """scipy's three passes over the whole 4D array (as nilearn), then the voxels."""
    out = np.array(vols, dtype=np.float32, copy=True)
    for axis, sigma in enumerate(kern.smoothing_sigmas(affine, fwhm)):
        if sigma > 0:
            scipy.ndimage.gaussian_filter1d(out, sigma, axis=axis, output=out)
    return out[ijk[:, 0], ijk[:, 1], ijk[:, 2], :]


def voxel_sets(rng, shape):
    yield np.argwhere(np.ones(shape, bool))  # every voxel: the box is the grid
    inner = np.zeros(shape, bool)
    inner[4:7, 5:9, 3:6] = True
    yield np.argwhere(inner)  # interior: a cropped box, no edge
    corner = np.zeros(shape, bool)
    corner[0:3, -2:, 0] = True
    corner[-1, 0, -1] = True
    yield np.argwhere(corner)  # on the grid's faces and corners
    yield np.argwhere(rng.random(shape) < 0.3)  # scattered


@pytest.mark.parametrize("affine, fwhm", [
    (np.diag([-3.0, 3.0, 3.0, 1.0]), 4.0),  # the paper's (5-tap kernels)
    (np.diag([2.0, 2.5, 3.5, 1.0]), 8.0),  # anisotropic, wider kernels
    (np.diag([3.0, 3.0, 3.0, 1.0]), (6.0, 6.0, 0.0)),  # no smoothing along z: last pass y
    (np.diag([3.0, 3.0, 3.0, 1.0]), (0.0, 0.0, 5.0)),  # a single pass
])
def test_smooth_gather_equals_smoothing_the_whole_grid(rng, affine, fwhm):
    shape = (11, 13, 9)
    vols = np.asfortranarray(100 + rng.standard_normal((*shape, 5)).astype(np.float32))
    for ijk in voxel_sets(rng, shape):
        ref = whole_grid_then_gather(vols, affine, fwhm, ijk)
        ours = kern.smooth_gather(vols, affine, fwhm, ijk)
        assert ours.dtype == np.float32 and ours.shape == (len(ijk), 5)
        np.testing.assert_array_equal(ours, ref)  # the same arithmetic, bit for bit
        full = kern.smooth_volumes(vols, affine, fwhm)[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        np.testing.assert_array_equal(full, ref)
    # C-ordered and integer inputs
    ijk = np.argwhere(rng.random(shape) < 0.5)
    ref = whole_grid_then_gather(vols, affine, fwhm, ijk)
    np.testing.assert_array_equal(kern.smooth_gather(np.ascontiguousarray(vols), affine, fwhm,
                                                     ijk), ref)
    ints = (vols * 10).astype(np.int16)
    np.testing.assert_array_equal(kern.smooth_gather(ints, affine, fwhm, ijk),
                                  whole_grid_then_gather(ints, affine, fwhm, ijk))


def test_smoothing_box_and_no_smoothing(rng):
    sig = kern.smoothing_sigmas(np.diag([3.0, 3.0, 3.0, 1.0]), 4.0)  # 0.566 voxels: reach 2
    box = kern.smoothing_box(np.array([[5, 6, 4], [7, 6, 5]]), (11, 13, 9), sig)
    assert box == (slice(3, 10), slice(4, 9), slice(2, 8))
    assert kern.smoothing_box(np.array([[0, 12, 8]]), (11, 13, 9), sig) == \
        (slice(0, 3), slice(10, 13), slice(6, 9))
    vols = rng.standard_normal((6, 7, 5, 3)).astype(np.float32)
    ijk = np.argwhere(rng.random((6, 7, 5)) < 0.4)
    for fwhm in (None, 0.0):
        np.testing.assert_array_equal(kern.smooth_gather(vols, np.eye(4), fwhm, ijk),
                                      vols[ijk[:, 0], ijk[:, 1], ijk[:, 2]])


def test_gaussian_weights_are_scipys():
    for sigma in (0.3, 0.566, 1.7):
        w = kern._gaussian_weights(sigma)
        r = int(4.0 * sigma + 0.5)
        x = np.arange(-r, r + 1)
        phi = np.exp(-0.5 / sigma**2 * x**2)
        np.testing.assert_allclose(w, phi / phi.sum(), rtol=1e-15, atol=0)


def test_time_operator_equals_the_steps(rng):
    s = rng.standard_normal((25, 60)).cumsum(axis=1) + 10
    c = rng.standard_normal((60, 7))
    sos = kern.butterworth_sos(2.0, 0.01, 0.1)

    def steps(x):
        x = kern.detrend_linear(x)
        x = kern.regress_out(x, kern.confound_basis(c))
        return kern.bandpass(x, sos)

    op = kern.time_operator(steps, 60)
    assert op.shape == (60, 60)
    np.testing.assert_allclose(s @ op, steps(s), rtol=0, atol=1e-12 * np.abs(steps(s)).max())


@pytest.fixture(scope="module")
def store_ijk():
    return voxel_table(gm_mask(SHAPE, AFFINE), AFFINE).ijk


@pytest.mark.parametrize("order, filt", [(("smooth", "regress", "filter"), "butterworth"),
                                         (("smooth", "clean"), "ideal"),
                                         (("regress", "smooth", "filter"), "ideal")])
def test_series_operator_path_equals_step_by_step(dpabi_dir, store_ijk, monkeypatch, order,
                                                  filt):
    inp = discover_inputs(dpabi=str(dpabi_dir))[0][0]
    params = DenoiseParams(drop_volumes=6, order=order, filter=filt)
    header = read_header(inp.bold)
    plan = plan_subject(inp, header, params)
    fast = denoise_graph(plan, header, store_ijk, params, voxel_chunk=300)
    assert any("apply_operator" in str(k) for k in fast.__dask_graph__())
    monkeypatch.setattr(pipeline, "OPERATOR_MAX_T", 0)
    slow = denoise_graph(plan, header, store_ijk, params, voxel_chunk=300)
    assert not any("apply_operator" in str(k) for k in slow.__dask_graph__())
    a, b = fast.compute(scheduler="sync"), slow.compute(scheduler="sync")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.abs(b).max())

