"""``cfhdask ingest`` and ``cfhdask confounds`` on real folders: skipped runs, TR and
Nyquist errors, one preprocessing per store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prep_helpers import SPACE, fmriprep_table, make_bold, save_bold, save_table

from cfhdask.cli import main
from cfhdask.io.store import CohortStore


@pytest.fixture
def sched(local_client):
    return ["--scheduler", local_client.scheduler.address]


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ": error:" in ln]


def test_ingest_lists_the_skip_ingests_the_others_and_exits_1(fmriprep_dir, tmp_path, capsys,
                                                              sched):
    url = str(tmp_path / "cohort.zarr")
    argv = ["ingest", "--bids-derivatives", str(fmriprep_dir), "--out", url,
            "--drop-volumes", "4", *sched]
    assert main([*argv, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "sub-04" in out and "SKIPPED" in out and "no confounds table" in out
    assert not (tmp_path / "cohort.zarr").exists()
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "skipped sub-04:" in out and "5 subject(s)" in out
    store = CohortStore.open(url)
    assert store.subjects() == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03_run-1",
                                "sub-03_run-2"]
    assert store.attrs["preprocessing"]["pipeline"] == "cfhdask.denoise"


def test_denoise_on_plain_files_without_confounds(tmp_path, rng, capsys, sched):
    files = [save_bold(tmp_path / f"sub-0{i}_task-rest_bold.nii.gz", make_bold(rng, 40))
             for i in (1, 2)]
    url = tmp_path / "plain.zarr"
    for extra in (["--dry-run"], []):
        assert main(["ingest", *files, "--denoise", "--out", str(url), *extra, *sched]) == 1
        out = capsys.readouterr().out
        assert out.count("no confounds file given") == 2, out
        assert not url.exists()


def test_two_acq_runs_are_listed_not_a_crash(tmp_path, rng, capsys, sched):
    func = tmp_path / "deriv" / "sub-01" / "func"
    for acq in ("AP", "PA"):
        ents = f"sub-01_task-rest_acq-{acq}"
        save_bold(func / f"{ents}_space-{SPACE}_desc-preproc_bold.nii.gz", make_bold(rng, 40))
        save_table(func / f"{ents}_desc-confounds_timeseries.tsv", fmriprep_table(rng, 40))
    ents = "sub-02_task-rest"
    save_bold(tmp_path / "deriv" / "sub-02" / "func" /
              f"{ents}_space-{SPACE}_desc-preproc_bold.nii.gz", make_bold(rng, 40))
    save_table(tmp_path / "deriv" / "sub-02" / "func" / f"{ents}_desc-confounds_timeseries.tsv",
               fmriprep_table(rng, 40))
    url = str(tmp_path / "acq.zarr")
    argv = ["ingest", "--bids-derivatives", str(tmp_path / "deriv"), "--out", url,
            "--drop-volumes", "2", *sched]
    assert main([*argv, "--dry-run"]) == 1
    assert "several runs map to subject id sub-01" in capsys.readouterr().out
    assert main(argv) == 1
    assert "skipped sub-01: several runs" in capsys.readouterr().out
    assert CohortStore.open(url).subjects() == ["sub-02"]


@pytest.mark.parametrize("options, words", [
    (["--tr", "2000"], ["--tr 2000", "milliseconds", "--tr 2"]),
    (["--tr", "2", "--low-pass", "0.3"], ["--low-pass 0.3", "Nyquist", "0.25", "TR 2"]),
])
def test_tr_in_ms_and_low_pass_above_nyquist_are_errors(fmriprep_dir, tmp_path, capsys,
                                                        options, words):
    for cmd in (["ingest", "--out", str(tmp_path / "s.zarr"), "--dry-run"], ["confounds"]):
        assert main([*cmd, "--bids-derivatives", str(fmriprep_dir), *options]) == 2
        (err,) = _errors(capsys.readouterr().err)
        assert all(w in err for w in words), err
    assert not (tmp_path / "s.zarr").exists()


def test_header_tr_in_ms_and_nyquist_per_run(tmp_path, rng, capsys):
    ms = save_bold(tmp_path / "sub-01_task-rest_bold.nii.gz", make_bold(rng, 40), tr=2000.0)
    assert main(["ingest", ms, "--out", str(tmp_path / "a.zarr"), "--dry-run"]) == 2
    (err,) = _errors(capsys.readouterr().err)
    assert "sub-01_task-rest_bold.nii.gz" in err and "2000" in err and "milliseconds" in err
    ok = save_bold(tmp_path / "sub-02_task-rest_bold.nii.gz", make_bold(rng, 40), tr=2.0)
    assert main(["ingest", ok, ms, "--denoise", "--motion", "none", "--low-pass", "0.3",
                 "--out", str(tmp_path / "b.zarr"), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "Nyquist frequency 0.25 Hz of TR 2 s (header)" in out and "milliseconds" in out


def test_one_preprocessing_per_store(fmriprep_dir, tmp_path, capsys, sched):
    url = str(tmp_path / "mixed.zarr")
    plain = sorted(fmriprep_dir.glob(f"sub-01/func/*{SPACE}_desc-preproc_bold.nii.gz"))
    assert main(["ingest", str(plain[0]), "--out", url, "--drop-volumes", "4", *sched]) == 0
    before = CohortStore.open(url).attrs["preprocessing"]
    capsys.readouterr()
    assert main(["ingest", "--bids-derivatives", str(fmriprep_dir), "--participant-label",
                 "01", "02", "--out", url, "--drop-volumes", "4", *sched]) == 2
    (err,) = _errors(capsys.readouterr().err)
    assert "none (drop_volumes 4)" in err and "cfhdask.denoise (" in err, err
    store = CohortStore.open(url)
    assert store.subjects() == ["sub-01"] and store.attrs["preprocessing"] == before
    assert json.dumps(before) and np.isfinite(store.bold("sub-01")[0, 0].compute())
