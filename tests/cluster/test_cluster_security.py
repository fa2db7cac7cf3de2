"""Credentials never leak, and nothing is unpickled from a store.

Planted secrets travel in ``--storage-options`` (``key``/``secret``) and in the
environment (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) to a local moto
S3 server on 127.0.0.1; ingest, cfh, stats and a whole ``cfhdask run`` (also
with ``-vv``: botocore's debug log prints request headers) and failing
commands run in real processes; then every line they printed, every file they
wrote and every object in the bucket is searched for the secrets.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numcodecs
import numpy as np
import pytest
import yaml
from clusterhelpers import run_cli, study_config

pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
s3fs = pytest.importorskip("s3fs")

from cfhdask import secrets  # noqa: E402
from cfhdask.errors import CfhdaskInputError  # noqa: E402
from cfhdask.io.store import CohortStore  # noqa: E402

BUCKET = "cfh-secrets"
OPTION_KEY, OPTION_SECRET = "AKIAPLANTEDOPTION001", "planted-option-secret-3f9a7c1e5b"
ENV_KEY, ENV_SECRET = "AKIAPLANTEDENVIRON02", "planted-env-secret-8d2b6e4f0a"
ENV_TOKEN = "planted-env-session-token-5a1c9d7b"
PLANTED = (OPTION_KEY, OPTION_SECRET, ENV_KEY, ENV_SECRET, ENV_TOKEN)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback; the options carry the planted key and secret."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        so = {"key": OPTION_KEY, "secret": OPTION_SECRET,
              "client_kwargs": {"endpoint_url": endpoint}}
        fs = s3fs.S3FileSystem(**so)
        fs.mkdir(BUCKET)
        yield SimpleNamespace(endpoint=endpoint, so=so, fs=fs)
    finally:
        mp.undo()
        server.stop()


def _clean_env(**extra) -> dict:
    """No AWS credentials or endpoint in the environment, except ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            **extra}


def _found(text: str | bytes) -> list[str]:
    raw = text if isinstance(text, bytes) else text.encode()
    return [s for s in PLANTED if s.encode() in raw]


def _assert_nowhere(procs, folder: Path, s3, min_files: int = 0) -> None:
    """No planted secret in the processes' output, the files under ``folder``, the bucket."""
    for proc in procs:
        assert _found(proc.stdout + proc.stderr) == [], proc.args
    written = [p for p in glob.glob(str(folder / "**" / "*"), recursive=True)
               if os.path.isfile(p) and not p.endswith("study.yaml")]
    assert len(written) >= min_files
    for path in written:
        assert _found(Path(path).read_bytes()) == [], path
    objects = s3.fs.find(BUCKET, refresh=True)
    assert any(o.endswith("zarr.json") for o in objects)
    for key in objects:  # store attributes (provenance, history), arrays
        assert _found(s3.fs.cat_file(key)) == [], key


def _failures(s3, store: str, env: dict) -> list:
    """Commands that fail with credentials in hand: each must be a clean one-line error."""
    dead = {**s3.so, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "config_kwargs": {"retries": {"max_attempts": 1}}}
    procs = [
        run_cli("cfh", store, "--storage-options", json.dumps(dead), env=_clean_env()),
        run_cli("cfh", store, "--storage-options", json.dumps({**s3.so, "no_such_option": 1}),
                env=_clean_env()),
        run_cli("cfh", store, "--storage-options", json.dumps(s3.so)[:-7], env=_clean_env()),
        run_cli("-vv", "cfh", f"s3://{BUCKET}/none.zarr", env=env),
    ]
    for proc in procs:
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("cfhdask cfh: error: ")
    return procs


def _env_credentials(s3) -> dict:
    return _clean_env(AWS_ACCESS_KEY_ID=ENV_KEY, AWS_SECRET_ACCESS_KEY=ENV_SECRET,
                      AWS_SESSION_TOKEN=ENV_TOKEN)


def test_secrets_stay_out_of_debug_logs_errors_and_the_store(s3, tiny_cohort, tmp_path):
    """Options and environment credentials, ``-vv`` (botocore prints request headers)."""
    bolds = sorted(glob.glob(str(tiny_cohort / "sub-*" / "func" / "*preproc_bold.nii.gz")))[:2]
    store = f"s3://{BUCKET}/quick.zarr"
    proc = run_cli("-vv", "ingest", *bolds, "--out", store, "--storage-options",
                   json.dumps(s3.so), "--n-workers", "1", env=_env_credentials(s3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "botocore" in proc.stderr and "DEBUG" in proc.stderr  # the noisy log was on
    assert "***" in proc.stderr  # ...and something was masked in it
    _assert_nowhere([proc, *_failures(s3, store, _env_credentials(s3))], tmp_path, s3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_planted_credentials_appear_nowhere_in_a_whole_study(s3, tiny_cohort, tmp_path):
    """ingest, cfh, stats and ``cfhdask run`` on S3: logs, provenance, stats.json, report."""
    out = tmp_path / "out"
    opts = json.dumps(s3.so)
    store = f"s3://{BUCKET}/cohort.zarr"
    cluster = ["--n-workers", "2"]
    runs = [
        run_cli("-v", "ingest", "--bids-derivatives", tiny_cohort, "--out", store,
                "--drop-volumes", "4", "--storage-options", opts, *cluster, env=_clean_env()),
        run_cli("cfh", store, "--no-progress", "--storage-options", opts, "--export",
                out / "maps", *cluster, env=_clean_env()),
        run_cli("-vv", "stats", store, "--participants", tiny_cohort / "participants.tsv",
                "--group", "group", "--covariates", "age,sex", "--n-perm", "40", "--out",
                out / "stats", "--storage-options", opts, *cluster, env=_clean_env()),
    ]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    # the whole study, credentials from the environment (a session token too)
    config = study_config(tiny_cohort, out / "study")
    config.update(store=f"s3://{BUCKET}/study.zarr",
                  storage_options={"client_kwargs": s3.so["client_kwargs"]})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    runs.append(run_cli("-vv", "run", tmp_path / "study.yaml", *cluster,
                        env=_env_credentials(s3)))
    assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
    assert (out / "study" / "report.html").exists() and (out / "stats" / "stats.json").exists()
    _assert_nowhere(runs, tmp_path, s3, min_files=30)


def test_redaction_in_errors_and_logs(caplog):
    secrets.register({"client_kwargs": {"aws_secret_access_key": "nested-secret-value-123"},
                      "token": "tok-ABCDEFGH", "anon": False, "key": "short"})
    assert {"nested-secret-value-123", "tok-ABCDEFGH"} <= secrets.secrets()
    assert "short" not in secrets.secrets()  # too short to be told from ordinary text
    err = CfhdaskInputError("store s3://b/c.zarr: cannot open: bad token tok-ABCDEFGH")
    assert str(err) == "store s3://b/c.zarr: cannot open: bad token ***"
    with caplog.at_level(logging.DEBUG, logger="botocore.test"):
        logging.getLogger("botocore.test").debug("headers %s", {"x": "nested-secret-value-123"})
    assert "nested-secret-value-123" not in caplog.text and "***" in caplog.text
    # a library's own exception (not a CfhdaskError) quoting a secret, as the CLI prints it
    from cfhdask.cli.logs import one_line

    line = one_line(PermissionError("denied for token tok-ABCDEFGH\nmore"))
    assert line == "PermissionError: denied for token ***"


# ----------------------------------------------------------------------------- no pickles
class _Boom:
    """Unpickling this creates the marker file: proof that something was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_v2_pickle_array(folder: Path, marker: str) -> None:
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "compressor": None,
        "fill_value": None, "filters": [{"id": "pickle", "protocol": 5}], "order": "C"}))
    payload = np.array([_Boom(marker), _Boom(marker)], dtype=object)
    (folder / "0").write_bytes(numcodecs.Pickle().encode(payload))


def test_store_with_pickled_or_object_arrays_is_refused(tiny_store, tmp_path):
    url = tmp_path / "cohort.zarr"
    shutil.copytree(tiny_store.store, url)
    marker = str(tmp_path / "UNPICKLED")
    subjects = sorted(os.listdir(url / "subjects"))
    # 1. a Zarr v2 object array with a pickle codec where the series are
    _plant_v2_pickle_array(url / "subjects" / subjects[0] / "bold", marker)
    # 2. strings where a CFH map is
    import zarr

    grp = zarr.open_group(str(url / "subjects" / subjects[1]), mode="r+", zarr_format=3)
    del grp["cfh"]
    grp.create_array("cfh", shape=(3,), dtype=np.dtypes.StringDType())[:] = ["a", "b", "c"]
    # 3. a v3 array whose metadata names a pickle codec
    meta_path = url / "subjects" / subjects[2] / "cfh_r" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {}}]
    meta_path.write_text(json.dumps(meta))

    store = CohortStore.open(str(url))
    with pytest.raises(CfhdaskInputError, match=re.escape(
            f"subjects/{subjects[0]}: no Zarr v3 array 'bold'")):
        store.bold(subjects[0])
    with pytest.raises(CfhdaskInputError, match=r"subjects/sub-\w+/cfh: refused: data type "
                                                r"StringDType\(\) \(expected float32\)"):
        store.cfh_maps([subjects[1]])
    with pytest.raises(CfhdaskInputError, match=r"cfh_r: refused: unreadable array metadata"):
        store.cfh_maps([subjects[2]], var="cfh_r")
    np.testing.assert_array_equal(store.cfh_maps([subjects[3]]).values,
                                  CohortStore.open(tiny_store.store).cfh_maps([subjects[3]]).values)
    proc = run_cli("stats", url, "--participants", tiny_store.participants, "--group", "group",
                   "--n-perm", "10", "--out", tmp_path / "stats", "--n-workers", "1")
    assert proc.returncode == 2 and "refused" in proc.stderr.splitlines()[-1], proc.stderr
    assert not os.path.exists(marker)  # nothing was ever unpickled


def test_no_code_path_unpickles():
    """Reading uses JSON attributes and numeric arrays only: no pickle API in the package."""
    package = Path(__file__).resolve().parents[2] / "cfhdask"
    forbidden = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|read_pickle|object_codec|"
                           r"numcodecs\.Pickle|cloudpickle\.loads?\(")
    hits = [f"{p}:{i}" for p in package.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]
    assert hits == []
