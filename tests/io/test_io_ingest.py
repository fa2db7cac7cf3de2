"""Ingest on a real 2-worker LocalCluster: data, increments, failures, bad inputs, CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from iohelpers import AFFINE, SHAPE, tree_digest, write_nifti

from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError, StoreVersionError
from cfhdask.inputs import SubjectInput
from cfhdask.io.store import open_store
from cfhdask.prep.ingest import as_subject_inputs, ingest, subject_id


@pytest.mark.parametrize("path, expected", [
    ("d/sub-01/func/sub-01_task-rest_bold.nii.gz", "sub-01"),
    ("sub-01_ses-2_task-rest_run-1_bold.nii", "sub-01_ses-2_run-1"),
    ("sub-01_ses-2_task-rest_bold.NII.GZ", "sub-01_ses-2"),
    ("/d/Filtered_4DVolume.nii.GZ", "Filtered_4DVolume"),
    ("s3://bucket/x/task-rest_sub-P07_ses-pre_bold.nii.gz", "sub-P07_ses-pre"),
    ("/data/patient7_rest.nii.gz", "patient7_rest"),
    ("/data/Filtered_4DVolume.NII", "Filtered_4DVolume"),
    ("/data/mysub-01.nii", "mysub-01"),
])
def test_subject_id(path, expected):
    assert subject_id(path) == expected


def test_duplicate_subject_ids():
    with pytest.raises(CfhdaskInputError, match="sub-01.*a/sub-01_bold.nii.*b/sub-01_bold.nii"):
        as_subject_inputs(["a/sub-01_bold.nii", "b/sub-01_bold.nii"])


def _masked(path, mask, drop=0):
    return np.asarray(nib.load(path).get_fdata())[mask][:, drop:].astype(np.float32)


def _bold_by_voxel(store, subject):
    """The subject's series scattered back to the grid then read in C order."""
    vol = store.to_volume(store.bold(subject).compute().T)
    return vol[store.mask]


def test_ingest_values_provenance_and_increments(local_client, make_bold, mask_file,
                                                 user_mask, tmp_path):
    url = str(tmp_path / "cohort.zarr")
    a, _ = make_bold("sub-01/func/sub-01_task-rest_bold.nii.gz")
    b, _ = make_bold("sub-02_ses-1_task-rest_bold.nii", n_vol=17, dtype=np.int16)
    store = ingest([a, b], url, mask=mask_file, drop_volumes=2, client=local_client,
                   voxel_chunk=64)
    assert store.subjects() == ["sub-01", "sub-02_ses-1"]
    np.testing.assert_array_equal(_bold_by_voxel(store, "sub-01"), _masked(a, user_mask, 2))
    np.testing.assert_array_equal(_bold_by_voxel(store, "sub-02_ses-1"),
                                  _masked(b, user_mask, 2))
    attrs = store.subject_attrs("sub-02_ses-1")
    assert attrs["n_volumes"] == 15 and attrs["n_dropped"] == 2 and attrs["tr"] == 2.0
    assert attrs["source"]["bold"] == b and attrs["input_shape"] == [*SHAPE, 17]
    assert attrs["ingest_complete"] is True
    assert store.bold("sub-01").chunksize == (64, 18)
    root = store.attrs
    assert root["mask"]["source"] == mask_file and root["mask"]["n_voxels"] == user_mask.sum()
    assert root["history"][-1]["command"] == "ingest"
    assert root["history"][-1]["parameters"]["written"] == ["sub-01", "sub-02_ses-1"]

    # add a subject: existing ones are skipped (bytes untouched)
    before = tree_digest(f"{url}/subjects/sub-01")
    c, _ = make_bold("sub-03_task-rest_bold.nii.gz", n_vol=12)
    store = ingest([a, c], url, drop_volumes=2, client=local_client)
    assert store.subjects() == ["sub-01", "sub-02_ses-1", "sub-03"]
    assert tree_digest(f"{url}/subjects/sub-01") == before
    assert store.attrs["history"][-1]["parameters"]["skipped"] == ["sub-01"]

    # overwrite re-reads the (changed) file; the store's mask is kept
    new = make_bold("sub-01/func/sub-01_task-rest_bold.nii.gz")[0]
    store = ingest([new], url, drop_volumes=2, overwrite=True, client=local_client)
    np.testing.assert_array_equal(_bold_by_voxel(store, "sub-01"), _masked(new, user_mask, 2))
    assert tree_digest(f"{url}/subjects/sub-01") != before

    # a different mask than the store's is refused, store untouched
    snap = tree_digest(url)
    with pytest.raises(CfhdaskInputError, match="--mask gm: differs from the mask of store"):
        ingest([c], url, mask="gm", overwrite=True, client=local_client)
    assert tree_digest(url) == snap


def test_failed_subject_keeps_the_others(local_client, make_bold, mask_file, tmp_path, rng,
                                         user_mask):
    url = str(tmp_path / "cohort.zarr")
    good, _ = make_bold("sub-01_bold.nii.gz")
    data = rng.standard_normal((*SHAPE, 20)).astype(np.float32)
    data[tuple(np.argwhere(user_mask)[3])] = np.nan
    bad = write_nifti(tmp_path / "sub-02_bold.nii.gz", data)
    with pytest.raises(CfhdaskInputError, match="1 subject.*sub-02: .*sub-02_bold.nii.gz: 20 NaN"):
        ingest([good, bad], url, mask=mask_file, client=local_client)
    store = open_store(url)
    assert store.subjects() == ["sub-01"] and store.incomplete_subjects() == []
    assert store.attrs["history"][-1]["parameters"]["failed"] == ["sub-02"]


def test_nan_only_input_leaves_no_store(local_client, tmp_path, mask_file, rng):
    data = rng.standard_normal((*SHAPE, 20)).astype(np.float32)
    data[4, 5, 3, 0] = np.inf
    bad = write_nifti(tmp_path / "sub-09_bold.nii.gz", data)
    url = tmp_path / "new.zarr"
    with pytest.raises(CfhdaskInputError, match="sub-09_bold.nii.gz: 1 NaN/Inf"):
        ingest([bad], str(url), mask=mask_file, client=local_client)
    assert not url.exists()


def test_interrupted_subject_is_cleaned_and_redone(local_client, make_bold, mask_file,
                                                   tmp_path):
    url = str(tmp_path / "cohort.zarr")
    a, _ = make_bold("sub-01_bold.nii.gz")
    store = ingest([a], url, mask=mask_file, client=local_client)
    store.begin_subject("sub-02", 20, {"source": "killed"})  # as if the run was killed
    store.begin_subject("sub-07", 20, {"source": "killed"})
    b, _ = make_bold("sub-02_bold.nii.gz")
    store = ingest([b], url, client=local_client)
    assert store.subjects() == ["sub-01", "sub-02"]
    assert "sub-07" not in zarr.open_group(url, mode="r")["subjects"]
    assert store.subject_attrs("sub-02")["source"]["bold"] == b


def test_ingest_without_client_and_subject_inputs(make_bold, mask_file):
    a, _ = make_bold("whatever.nii.gz", tr=None)
    url = "memory://cfhdask-ingest-nocl"
    store = ingest([SubjectInput("sub-X", a, tr=0.8)], url, mask=mask_file, client=None)
    assert store.subjects() == ["sub-X"] and store.subject_attrs("sub-X")["tr"] == 0.8


def test_gm_mask_on_mni_grid(local_client, tmp_path, rng):
    shape = (31, 37, 31)
    affine = np.array([[-6.0, 0, 0, 90.0], [0, 6.0, 0, -126.0], [0, 0, 6.0, -72.0], [0, 0, 0, 1]])
    p = write_nifti(tmp_path / "sub-01_bold.nii.gz",
                    rng.standard_normal((*shape, 12)).astype(np.float32), affine)
    store = ingest([p], str(tmp_path / "gm.zarr"), client=local_client)
    from cfhdask.prep.mask import gm_mask

    assert np.array_equal(store.mask, gm_mask(shape, affine, 0.2))
    assert store.attrs["mask"] == {"source": "gm", "gm_threshold": 0.2,
                                   "n_voxels": int(store.mask.sum())}
    assert store.n_midline > 0 and store.bold("sub-01").shape == (store.n_voxels, 12)


# ---------------------------------------------------------------- bad inputs (API)
def _bad_inputs(tmp_path, make_bold, rng):
    """name -> (inputs, extra kwargs, message fragment)."""
    good, _ = make_bold("sub-01_bold.nii.gz")
    anat = write_nifti(tmp_path / "sub-05_T1w.nii.gz", np.zeros(SHAPE, np.float32))
    short, _ = make_bold("sub-06_bold.nii.gz", n_vol=11)
    other, _ = make_bold("sub-07_bold.nii.gz", shape=(10, 12, 9))
    junk = tmp_path / "sub-08_bold.nii.gz"
    junk.write_bytes(b"garbage")
    whole, _ = make_bold("sub-10_bold.nii")
    cut = tmp_path / "sub-09_bold.nii"
    cut.write_bytes(Path(whole).read_bytes()[:5000])
    far_mask = AFFINE.copy()
    far_mask[2, 3] += 3
    m_other = write_nifti(tmp_path / "other_grid_mask.nii.gz", np.ones(SHAPE, np.uint8),
                          far_mask)
    m_empty = write_nifti(tmp_path / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    return {
        "non-4D": ([anat], {}, "sub-05_T1w.nii.gz: expected a 4D"),
        "too few volumes": ([short], {"drop_volumes": 2}, "sub-06_bold.nii.gz: 11 volumes"),
        "grid mismatch": ([other], {}, "sub-07_bold.nii.gz: grid"),
        "unreadable": ([junk], {}, "sub-08_bold.nii.gz: not a readable"),
        "truncated": ([cut], {}, "sub-09_bold.nii: truncated"),
        "missing": ([tmp_path / "sub-11_bold.nii.gz"], {}, "sub-11_bold.nii.gz: no such file"),
        "bad url": (["nosuchproto://h/sub-12_bold.nii"], {}, "nosuchproto://h/sub-12_bold.nii"),
        "mask other grid": ([good], {"mask": m_other, "overwrite": True},
                            "other_grid_mask.nii.gz: grid"),
        "empty mask": ([good], {"mask": m_empty, "overwrite": True}, "empty_mask.nii.gz: empty"),
    }


def test_bad_inputs_leave_store_as_it_was(local_client, make_bold, mask_file, tmp_path, rng):
    cases = _bad_inputs(tmp_path, make_bold, rng)
    url = str(tmp_path / "cohort.zarr")
    good, _ = make_bold("sub-01_bold.nii.gz")
    ingest([good], url, mask=mask_file, client=local_client)
    snap = tree_digest(url)
    for name, (inputs, kwargs, msg) in cases.items():
        with pytest.raises(CfhdaskInputError, match=msg.replace(".", r"\.")):
            ingest([str(p) for p in inputs] + [make_bold("sub-20_bold.nii.gz")[0]], url,
                   client=local_client, **kwargs)
        assert tree_digest(url) == snap, name
        # a new store is not even created
        fresh = tmp_path / f"fresh-{name.replace(' ', '_')}.zarr"
        kwargs = {"mask": mask_file, **kwargs}
        with pytest.raises(CfhdaskInputError, match=msg.replace(".", r"\.")):
            ingest([good] + [str(p) for p in inputs if p != good], str(fresh),
                   client=local_client, **kwargs)
        assert not fresh.exists(), name


def test_incompatible_store_version(local_client, make_bold, mask_file, tmp_path):
    url = str(tmp_path / "old.zarr")
    a, _ = make_bold("sub-01_bold.nii.gz")
    ingest([a], url, mask=mask_file, client=local_client)
    zarr.open_group(url, mode="r+").attrs.update({"cfhdask_store_version": 0})
    snap = tree_digest(url)
    b, _ = make_bold("sub-02_bold.nii.gz")
    with pytest.raises(StoreVersionError, match="old.zarr"):
        ingest([b], url, client=local_client)
    assert tree_digest(url) == snap


# ---------------------------------------------------------------- CLI
def test_cli_ingest_and_errors(local_client, make_bold, mask_file, tmp_path, capsys):
    url = str(tmp_path / "cli.zarr")
    a, _ = make_bold("sub-01_task-rest_bold.nii.gz")
    assert main(["ingest", a, "--out", url, "--mask", mask_file, "--voxel-chunk", "100",
                 "--drop-volumes", "1"]) == 0
    assert "1 subject(s)" in capsys.readouterr().out
    snap = tree_digest(url)
    anat = write_nifti(tmp_path / "sub-02_T1w.nii.gz", np.zeros(SHAPE, np.float32))
    assert main(["ingest", anat, "--out", url]) == 2
    err = capsys.readouterr().err
    assert "sub-02_T1w.nii.gz" in err and len(err.strip().splitlines()) == 1
    other, _ = make_bold("sub-03_bold.nii.gz", shape=(11, 12, 8))
    assert main(["ingest", other, "--out", url]) == 2
    assert "sub-03_bold.nii.gz: grid" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "sub-04_bold.nii"), "--out", url]) == 2
    assert "sub-04_bold.nii: no such file" in capsys.readouterr().err
    empty = write_nifti(tmp_path / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    b, _ = make_bold("sub-05_bold.nii.gz")
    fresh = tmp_path / "fresh.zarr"
    assert main(["ingest", b, "--out", str(fresh), "--mask", empty]) == 2
    assert "empty_mask.nii.gz: empty" in capsys.readouterr().err and not fresh.exists()
    assert main(["ingest", b, "--out", url, "--storage-options", "[1]"]) == 2
    assert "--storage-options" in capsys.readouterr().err
    assert tree_digest(url) == snap


def test_workers_publish_new_subjects_the_client_writes_no_subject_metadata(
        local_client, make_bold, mask_file, tmp_path, monkeypatch):
    """The client's work per subject stays small on big cohorts: the subject's ``bold`` and
    group documents are written by the worker task that ends its write (after the chunks)."""
    from zarr.storage import LocalStore

    url = str(tmp_path / "cohort.zarr")
    paths = [make_bold(f"sub-{i:02d}_bold.nii.gz")[0] for i in range(3)]
    written: list[str] = []
    orig = LocalStore._set

    async def counting(self, key, *args, **kwargs):
        written.append(key)
        return await orig(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "_set", counting)
    store = ingest(paths, url, mask=mask_file, client=local_client)
    assert store.subjects() == ["sub-00", "sub-01", "sub-02"]
    assert store.incomplete_subjects() == []
    assert [k for k in written if k.startswith("subjects/sub-")] == [], written
    for p, s in zip(paths, store.subjects(), strict=True):
        np.testing.assert_array_equal(_bold_by_voxel(store, s), _masked(p, store.mask))
