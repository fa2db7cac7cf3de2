"""What a user sees when a subject fails or they press Ctrl-C: one line per failure on the
terminal, the tracebacks (the Dask workers' included) in a log file whose path is printed.

The command runs as a real process with its own embedded LocalCluster; Ctrl-C is a
SIGINT to its whole process group, as a terminal sends it.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from cfhdask.io.store import CohortStore


def _cfhdask(*args, tmp_path, **kw):
    env = {**os.environ, "CFHDASK_LOG_DIR": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "cfhdask", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _log_path(err: str) -> str:
    m = re.search(r"(?:details|traceback) in (\S+\.log)", err)
    assert m, err
    return m.group(1).rstrip(")")


def test_failed_subject_is_one_line_with_the_traceback_in_the_log(make_bold, mask_file,
                                                                  tmp_path):
    good, _ = make_bold("sub-01_task-rest_bold.nii.gz")
    bad, _ = make_bold("sub-02_task-rest_bold.nii.gz")
    raw = gzip.open(bad).read()
    with open(bad, "wb") as f:  # the header reads, the data are cut short
        f.write(gzip.compress(raw)[:3000])
    url = str(tmp_path / "c.zarr")
    p = _cfhdask("ingest", good, bad, "--out", url, "--mask", mask_file, "--drop-volumes",
                 "0", "--n-workers", "1", tmp_path=tmp_path)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 1, err
    assert "Traceback" not in err and "Compute Failed" not in err, err
    assert [ln for ln in err.splitlines() if "sub-02" in ln and "failed" in ln].__len__() == 1
    assert out.count("failed sub-02:") == 1 and "truncated" in out
    log = open(_log_path(err)).read()
    # the worker's traceback (the subject's batch task), in the file
    assert "Ingest of sub-02 failed on a worker:\nTraceback" in log and "nifti.py" in log
    assert CohortStore.open(url).subjects() == ["sub-01"]


def test_ctrl_c_is_one_line(make_bold, tmp_path):
    from iohelpers import write_nifti

    rng = np.random.default_rng(0)
    shape = (20, 24, 16)
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    files = []
    for i in range(1, 7):
        data = (100 + rng.standard_normal((*shape, 150))).astype(np.float32)
        files.append(write_nifti(tmp_path / f"sub-{i:02d}_bold.nii", data, affine))
    mask = write_nifti(tmp_path / "mask.nii.gz", np.ones(shape, np.uint8), affine)
    p = _cfhdask("ingest", *files, "--out", str(tmp_path / "c.zarr"), "--mask", mask,
                 "--denoise", "--motion", "none", "--no-wm", "--no-csf", "--no-global-signal",
                 "--drop-volumes", "0", "--n-workers", "2", tmp_path=tmp_path,
                 start_new_session=True)
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:  # wait until the cluster computes
        line = p.stderr.readline()
        seen.append(line)
        if "Created cohort store" in line or not line:
            break
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGINT)
    _, rest = p.communicate(timeout=120)
    err = "".join(seen) + rest
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    (line,) = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert os.path.exists(_log_path(line))
