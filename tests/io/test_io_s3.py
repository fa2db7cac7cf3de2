"""Object-store URLs end to end: inputs and the cohort store on a local S3 endpoint.

A moto S3 server runs in this process on 127.0.0.1 (loopback only).  The
endpoint and the credentials travel only in ``storage_options`` (no
``AWS_ENDPOINT_URL`` in the environment), so a worker that did not get them
would try the real AWS endpoint and fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
from types import SimpleNamespace

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from iohelpers import AFFINE, SHAPE, write_nifti

pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
s3fs = pytest.importorskip("s3fs")

from cfhdask.cfh.compute import compute_cfh  # noqa: E402
from cfhdask.cli import main  # noqa: E402
from cfhdask.errors import CfhdaskInputError  # noqa: E402
from cfhdask.io.export import export_maps  # noqa: E402
from cfhdask.io.store import CohortStore  # noqa: E402
from cfhdask.prep.ingest import ingest  # noqa: E402

BUCKET = "cfh-test"
#: subjects and their numbers of volumes (different lengths on purpose)
SUBJECTS = {"sub-01": 30, "sub-02": 30, "sub-03": 26}
BLOCK = 48  # blocks that do not divide the hemisphere sizes (84 voxels each)
VOXEL_CHUNK = 128


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback, its storage options and an s3fs handle."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "x")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "y")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                    "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            so = {"key": "x", "secret": "y", "client_kwargs": {"endpoint_url": endpoint}}
            fs = s3fs.S3FileSystem(**so)
            fs.mkdir(BUCKET)
            yield SimpleNamespace(endpoint=endpoint, so=so, fs=fs)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def inputs(s3, tmp_path_factory):
    """Tiny 4D .nii.gz images and a user mask, locally and uploaded to the bucket."""
    folder = tmp_path_factory.mktemp("s3_inputs")
    rng = np.random.default_rng(7)
    shared = rng.standard_normal((SHAPE[1], SHAPE[2], max(SUBJECTS.values())))
    local, urls = [], []
    for subject, n_vol in SUBJECTS.items():
        data = 100 + 10 * rng.standard_normal((*SHAPE, n_vol))
        data += 5 * shared[None, :, :, :n_vol]  # some bilateral coupling
        path = write_nifti(folder / f"{subject}_task-rest_bold.nii.gz",
                           data.astype(np.float32), AFFINE)
        key = f"{BUCKET}/inputs/{subject}/func/{subject}_task-rest_bold.nii.gz"
        s3.fs.put(path, key)
        local.append(path)
        urls.append(f"s3://{key}")
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:9, 3:10, 2:6] = 1  # 84 left, 84 right, 28 midline voxels
    mask_path = write_nifti(folder / "mask.nii.gz", mask, AFFINE)
    s3.fs.put(mask_path, f"{BUCKET}/inputs/mask.nii.gz")
    return SimpleNamespace(local=local, urls=urls, mask_path=mask_path,
                           mask_url=f"s3://{BUCKET}/inputs/mask.nii.gz",
                           mask=mask.astype(bool))


@pytest.fixture(scope="module")
def reference(inputs, local_client, tmp_path_factory):
    """The same pipeline on a local directory store."""
    url = str(tmp_path_factory.mktemp("s3_ref") / "cohort.zarr")
    store = ingest(inputs.local, url, mask=inputs.mask_path, voxel_chunk=VOXEL_CHUNK,
                   client=local_client)
    compute_cfh(store, block=BLOCK, client=local_client, show_progress=False)
    return store


def _assert_same_store(store: CohortStore, ref: CohortStore, cfh: bool = True) -> None:
    assert store.subjects("cfh" if cfh else "ingested") == list(SUBJECTS)
    np.testing.assert_array_equal(store.ijk, ref.ijk)
    for s in SUBJECTS:
        np.testing.assert_array_equal(store.bold(s).compute(), ref.bold(s).compute())
    if cfh:
        for var in ("cfh", "cfh_r", "cfh_counterpart"):
            np.testing.assert_array_equal(store.cfh_maps(var=var).values,
                                          ref.cfh_maps(var=var).values)


def _workers_with_endpoint(client, endpoint: str) -> set[str]:
    """Workers holding an s3fs filesystem made with our endpoint (from storage_options)."""

    def probe():
        import s3fs as _s3fs

        return [inst.storage_options.get("client_kwargs", {}).get("endpoint_url")
                for inst in _s3fs.S3FileSystem._cache.values()]

    return {w for w, eps in client.run(probe).items() if endpoint in eps}


def test_ingest_synchronous_scheduler(s3, inputs):
    """No Dask client at all: the threaded/synchronous path writes the S3 store."""
    from distributed import get_client

    with pytest.raises(ValueError):
        get_client()  # this test runs before the module's LocalCluster exists
    url = f"s3://{BUCKET}/sync.zarr"
    with dask.config.set(scheduler="synchronous"):
        store = ingest(inputs.urls, url, mask=inputs.mask_url, voxel_chunk=VOXEL_CHUNK,
                       storage_options=s3.so)
    assert store.subjects() == list(SUBJECTS)
    assert s3.fs.exists(f"{BUCKET}/sync.zarr/zarr.json")
    again = CohortStore.open(url, storage_options=s3.so)
    for s, path in zip(SUBJECTS, inputs.local, strict=True):
        want = np.asarray(nib.load(path).get_fdata(), dtype=np.float32)[inputs.mask]
        got = again.to_volume(again.bold(s).compute().T)[inputs.mask]
        np.testing.assert_array_equal(got, want)
        assert again.subject_attrs(s)["source"]["bold"].startswith("s3://")


def test_ingest_and_cfh_on_local_cluster(s3, inputs, reference, local_client, tmp_path):
    from distributed import get_task_stream

    assert not any(local_client.run(lambda: os.environ.get("AWS_ENDPOINT_URL")).values())
    url = f"s3://{BUCKET}/cohort.zarr"
    with get_task_stream(local_client) as ts:
        store = ingest(inputs.urls, url, mask=inputs.mask_url, voxel_chunk=VOXEL_CHUNK,
                       storage_options=s3.so, client=local_client)
        ds = compute_cfh(url, block=BLOCK, client=local_client, show_progress=False,
                         storage_options=s3.so)
    workers = set(local_client.scheduler_info()["workers"])
    # small subjects: read, written and published by the workers' batch tasks
    loads = {t["worker"] for t in ts.data if "ingest_batch" in str(t["key"])}
    assert loads and loads <= workers  # the inputs were read on the workers...
    assert loads <= _workers_with_endpoint(local_client, s3.endpoint)  # ...with our options
    assert ds.attrs["computed"] == list(SUBJECTS)
    np.testing.assert_array_equal(ds["cfh"].values, reference.cfh_maps().values)

    # reopen through cfhdask, zarr and xarray
    again = CohortStore.open(url, storage_options=s3.so)
    _assert_same_store(again, reference)
    assert again.attrs["mask"]["source"] == inputs.mask_url
    assert [h["command"] for h in again.attrs["history"]] == ["ingest", "cfh-counterpart",
                                                               "cfh"]
    root = xr.open_zarr(url, storage_options=s3.so, consolidated=False)
    np.testing.assert_array_equal(root["ijk"].values, reference.ijk)
    assert root.attrs["n_left"] == reference.n_left
    tree = store.datatree()
    np.testing.assert_array_equal(tree["subjects/sub-03/cfh"].values,
                                  reference.cfh_maps(["sub-03"]).values[0])

    # a rerun skips complete subjects; export from the S3 store to a local folder
    rerun = compute_cfh(url, block=BLOCK, client=local_client, show_progress=False,
                        storage_options=s3.so, export=str(tmp_path / "maps"))
    assert rerun.attrs["computed"] == [] and rerun.attrs["skipped"] == list(SUBJECTS)
    ref_maps = export_maps(reference, tmp_path / "ref_maps")
    for ref_path in ref_maps:
        got = nib.load(tmp_path / "maps" / ref_path.name)
        np.testing.assert_array_equal(got.get_fdata(), nib.load(ref_path).get_fdata())
        np.testing.assert_allclose(got.affine, AFFINE)
    by_url = export_maps(url, tmp_path / "by_url", subjects=["sub-01"],
                         storage_options=s3.so)
    assert [p.name for p in by_url] == ["sub-01_cfh.nii.gz", "group_counterpart.nii.gz",
                                        "group_counterpart_displacement.nii.gz"]


def test_cli_ingest_and_cfh_on_s3(s3, inputs, reference, local_client, tmp_path, capsys):
    url = f"s3://{BUCKET}/cli.zarr"
    so = json.dumps(s3.so)
    assert main(["ingest", *inputs.urls, "--out", url, "--mask", inputs.mask_url,
                 "--voxel-chunk", str(VOXEL_CHUNK), "--drop-volumes", "0",
                 "--storage-options", so]) == 0
    assert main(["cfh", url, "--block", str(BLOCK), "--no-progress",
                 "--storage-options", so, "--export", str(tmp_path / "maps")]) == 0
    out = capsys.readouterr().out
    assert f"cfhdask cfh: {url}" in out and "subjects computed: 3" in out
    _assert_same_store(CohortStore.open(url, storage_options=s3.so), reference)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [f"{s}_cfh.nii.gz" for s in SUBJECTS]
        + ["group_counterpart.nii.gz", "group_counterpart_displacement.nii.gz"])
    # the option is parsed before anything runs
    assert main(["cfh", url, "--storage-options", "[1]"]) == 2
    assert "--storage-options" in capsys.readouterr().err


@pytest.mark.parametrize("bad, what", [
    (f"s3://{BUCKET}/inputs/sub-09/func/sub-09_task-rest_bold.nii.gz", "missing key"),
    ("s3://no-such-bucket-cfh/sub-09_task-rest_bold.nii.gz", "missing bucket"),
])
def test_bad_input_urls(s3, inputs, bad, what):
    before = s3.fs.ls(BUCKET, refresh=True)
    url = f"s3://{BUCKET}/bad.zarr"
    with pytest.raises(CfhdaskInputError, match=re.escape(bad) + ": no such file"):
        ingest([inputs.urls[0], bad], url, mask=inputs.mask_url, storage_options=s3.so)
    with pytest.raises(CfhdaskInputError, match=re.escape(bad)):
        ingest(inputs.urls[:1], url, mask=bad, storage_options=s3.so)
    assert s3.fs.ls(BUCKET, refresh=True) == before  # nothing written


def test_bad_store_urls(s3, inputs):
    before = s3.fs.ls(BUCKET, refresh=True)
    missing_bucket = "s3://no-such-bucket-cfh/cohort.zarr"
    with pytest.raises(CfhdaskInputError, match=re.escape(missing_bucket)):
        ingest(inputs.urls[:1], missing_bucket, mask=inputs.mask_url, storage_options=s3.so)
    for url in (missing_bucket, f"s3://{BUCKET}/no-store.zarr"):
        with pytest.raises(CfhdaskInputError, match=re.escape(url) + ": no cohort store"):
            CohortStore.open(url, storage_options=s3.so)
        with pytest.raises(CfhdaskInputError, match=re.escape(url)):
            compute_cfh(url, storage_options=s3.so)
    # an endpoint nobody listens on (loopback, one attempt): a clear error too
    dead = {**s3.so, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "config_kwargs": {"retries": {"max_attempts": 1}}}
    url = f"s3://{BUCKET}/cohort.zarr"
    with pytest.raises(CfhdaskInputError, match=re.escape(url) + ": cannot open"):
        CohortStore.open(url, storage_options=dead)
    with pytest.raises(CfhdaskInputError, match=re.escape(f"--out {url}: cannot access")):
        ingest([inputs.local[0]], url, mask=inputs.mask_path, storage_options=dead)
    assert s3.fs.ls(BUCKET, refresh=True) == before


def test_fmriprep_study_on_s3_with_storage_options(s3, local_client, tmp_path, capsys):
    """An fMRIPrep folder, its participants and sessions tables and the store on S3; the
    endpoint and credentials only in --storage-options / study.yaml: discovery, confounds
    tables, JSON sidecars, sessions.tsv, ingest, CFH, stats and the report all reach them."""
    import yaml

    from cfhdask.sim.cohort import simulate_cohort

    local = tmp_path / "deriv"
    simulate_cohort(str(local), n_patients=3, n_controls=3, n_volumes=40, grid="6mm",
                    layout="fmriprep", seed=11)
    (local / "sub-P01" / "sub-P01_sessions.tsv").write_text("session_id\tsite\nses-1\tA\n")
    s3.fs.put(str(local), f"{BUCKET}/deriv", recursive=True)
    deriv = f"s3://{BUCKET}/deriv"
    so = json.dumps(s3.so)
    assert main(["confounds", "--bids-derivatives", deriv, "--storage-options", so,
                 "--drop-volumes", "4"]) == 0
    out = capsys.readouterr().out
    assert "6 run(s) ready, 0 with problems" in out and "2 (sidecar)" in out
    # without the options the endpoint is unknown: a clear one-line error, no traceback
    dead = json.dumps({**s3.so, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
                       "config_kwargs": {"retries": {"max_attempts": 1}}})
    assert main(["ingest", "--bids-derivatives", deriv, "--storage-options", dead, "--out",
                 str(tmp_path / "x.zarr"), "--dry-run"]) == 2
    assert deriv in capsys.readouterr().err

    cfg = {"name": "on S3", "output": str(tmp_path / "out"), "storage_options": s3.so,
           "inputs": {"bids_derivatives": deriv},
           "participants": f"{deriv}/participants.tsv", "store": f"s3://{BUCKET}/study.zarr",
           "preprocessing": {"drop_volumes": 4}, "covariates": ["age"],
           "stats": {"n_perm": 10, "seed": 1},
           "report": {"dpi": 60, "max_cluster_figures": 1, "vector_format": "svg"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--scheduler", local_client.scheduler.address]) == 0
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    store = CohortStore.open(f"s3://{BUCKET}/study.zarr", storage_options=s3.so)
    assert len(store.subjects("cfh")) == 6
    src = store.subject_attrs("sub-P01")["source"]
    assert src["sidecar"].startswith("s3://") and src["confounds"].startswith("s3://")
    assert store.subject_attrs("sub-P01")["preprocessing"]["tr_source"] == "sidecar"
    stats_json = next((tmp_path / "out").glob("stats-*/stats.json"))
    assert len(json.loads(stats_json.read_text())["subjects"]) == 6
