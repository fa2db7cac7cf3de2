"""The cohort store under faults: a writer killed between two chunk writes leaves nothing
that any Zarr reader (``xr.open_datatree`` included) can see half-written; a store being
created or damaged is a one-line error, never a ``KeyError``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import xarray as xr
import zarr

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import CohortStore, open_store

#: Run in a process of its own: writes, and kills itself with SIGKILL once ``N`` chunks
#: of the node it writes are in the store (what kill -9 of a worker mid-write leaves).
_KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import zarr.storage
    from cfhdask.io.store import CohortStore

    url, what, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real_set, seen = zarr.storage.LocalStore.set, []

    async def set_and_die(self, key, value, *args, **kwargs):
        await real_set(self, key, value, *args, **kwargs)
        if "/c/" in key:  # a chunk (zarr v3 keys: <array>/c/<i>/<j>)
            seen.append(key)
            if len(seen) >= after:
                os.kill(os.getpid(), signal.SIGKILL)

    zarr.storage.LocalStore.set = set_and_die
    store = CohortStore.open(url, mode="r+")
    n = store.n_voxels
    if what == "ingest":
        store.write_subject("sub-02", np.full((n, 12), 2.0, np.float32), {"tr": 2.0})
    elif what == "metric":
        v = np.arange(n, dtype=np.float32)
        store.write_cfh("sub-01", v, np.arange(n, dtype=np.int32), v / n, {},
                        metric="cfh_subject")
    elif what == "replace":
        store.write_subject("sub-01", np.full((n, 12), 3.0, np.float32), {"tr": 2.0})
""")


def _store(user_mask, url) -> CohortStore:
    st = CohortStore.create(url, grid_shape=user_mask.shape, affine=np.eye(4) * [-3, 3, 3, 1],
                            mask=user_mask, mask_info={"source": "test"}, voxel_chunk=40)
    st.write_subject("sub-01", np.ones((st.n_voxels, 12), np.float32), {"tr": 2.0})
    return st


def _killed_writer(url: str, what: str, after: int = 2) -> None:
    res = subprocess.run([sys.executable, "-c", _KILLER, url, what, str(after)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == -9, res.stderr


def _raw_values(url: str) -> dict[str, np.ndarray]:
    """Every array any Zarr reader lists: ``xr.open_datatree`` of the whole store."""
    tree = xr.open_datatree(url, engine="zarr", consolidated=False, zarr_format=3)
    return {f"{node.path}/{name}": np.asarray(var.values)
            for node in tree.subtree for name, var in node.data_vars.items()}


@pytest.mark.parametrize("what", ["ingest", "metric", "replace"])
def test_killed_mid_write_nothing_half_written_is_readable(user_mask, tmp_path, what):
    url = str(tmp_path / "s.zarr")
    st = _store(user_mask, url)
    n = st.n_voxels
    assert n // 40 >= 3  # several chunks per array: the kill falls between two of them
    before = _raw_values(url)
    _killed_writer(url, what)
    after = _raw_values(url)
    # what was there is intact; what was being written is not listed at all
    assert set(after) == set(before), sorted(set(after) ^ set(before))
    for key, values in before.items():
        np.testing.assert_array_equal(after[key], values, err_msg=key)
    assert not (tmp_path / "s.zarr" / "subjects" / "sub-02" / "zarr.json").exists()
    again = open_store(url, mode="r+")
    assert again.subjects() == ["sub-01"] and again.subjects("cfh_subject") == []
    if what == "ingest":
        assert again.incomplete_subjects() == ["sub-02"]
        assert again.cleanup_incomplete() == ["sub-02"]
    else:
        again.cleanup_incomplete()
    assert set(_raw_values(url)) == set(before)
    assert not (tmp_path / "s.zarr" / "subjects" / "sub-02").exists()
    # a rerun writes it whole
    if what == "metric":
        v = np.arange(n, dtype=np.float32)
        again.write_cfh("sub-01", v, np.arange(n, dtype=np.int32), v / n, {},
                        metric="cfh_subject")
        np.testing.assert_array_equal(
            _raw_values(url)["/subjects/sub-01/cfh_subject"], v.astype(np.float32))
    else:
        again.write_subject("sub-02", np.full((n, 12), 2.0, np.float32), {"tr": 2.0})
        np.testing.assert_array_equal(_raw_values(url)["/subjects/sub-02/bold"], 2.0)


def test_replacement_on_an_object_store_is_swapped_whole(user_mask):
    """Not a local folder (no rename): the staged group is copied, metadata last."""
    st = _store(user_mask, "memory://cfhdask-test-faults-replace")
    st.write_subject("sub-01", np.full((st.n_voxels, 7), 5.0, np.float32), {"tr": 3.0})
    again = open_store(st.url)
    assert again.subjects() == ["sub-01"] and not again.incomplete_subjects()
    np.testing.assert_array_equal(again.bold("sub-01").compute(), 5.0)
    assert again.subject_attrs("sub-01")["tr"] == 3.0


def test_store_being_created_is_a_clear_error(user_mask, tmp_path):
    url = str(tmp_path / "s.zarr")
    zarr.open_group(url, mode="w-", zarr_format=3)  # the root, before its attributes
    with pytest.raises(CfhdaskInputError, match=r"s\.zarr: not a cfhdask cohort store, or one "
                                                r"still being created"):
        open_store(url)
    root = zarr.open_group(url, mode="r+")
    root.require_group("subjects")
    root.attrs.update({"cfhdask_store_version": 2, "grid_shape": [1, 1, 1], "affine": [],
                       "n_left": 1})
    with pytest.raises(CfhdaskInputError, match=r"root attributes n_right, n_midline missing"):
        open_store(url)


def test_opening_while_another_process_creates_never_raises_keyerror(user_mask, tmp_path):
    """A reader polling a store as it is created (as the ingest tests do)."""
    url = str(tmp_path / "s.zarr")
    errors, seen = [], []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                st = open_store(url)
                seen.append(st.n_voxels == int(user_mask.sum()) and len(st.ijk) == st.n_voxels)
            except CfhdaskInputError:
                pass
            except Exception as exc:  # what a reader must never get
                errors.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        _store(user_mask, url)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert all(seen)


def test_missing_subjects_group_is_one_line(user_mask, tmp_path):
    url = str(tmp_path / "s.zarr")
    _store(user_mask, url)
    os.remove(tmp_path / "s.zarr" / "subjects" / "zarr.json")
    with pytest.raises(CfhdaskInputError, match=r"s\.zarr/subjects/zarr\.json is missing"):
        open_store(url)
