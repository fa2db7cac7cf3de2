"""The walkthrough notebook: stored clean, valid, and it runs end to end with real results."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "cfhdask_walkthrough.ipynb"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_valid_and_stored_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    for cell in code:
        assert cell.outputs == [], f"cell {cell.get('id')} stores outputs"
        assert cell.execution_count is None, f"cell {cell.get('id')} stores an execution count"
        ast.parse(cell.source)  # every code cell is valid Python
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebook_parameters_come_first_and_read_the_environment(tmp_path, monkeypatch):
    nb = _read()
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    for name in ("CFHDASK_NB_OUT", "CFHDASK_NB_N_PERM", "CFHDASK_NB_N_PATIENTS"):
        assert name in first.source
    # the first code cell alone runs and picks the environment up
    monkeypatch.setenv("CFHDASK_NB_N_PERM", "17")
    monkeypatch.setenv("CFHDASK_NB_OUT", str(tmp_path / "nb-out"))
    env: dict = {}
    exec(compile(first.source, "parameters", "exec"), env)
    assert env["N_PERM"] == 17
    assert env["OUT_DIR"] == tmp_path / "nb-out" and env["OUT_DIR"].is_dir()


def test_notebook_uses_every_stage_and_closes_its_cluster():
    source = "\n".join(c.source for c in _read().cells if c.cell_type == "code")
    for needle in ("simulate_cohort(", "ingest(", "compute_cfh(", "group_inference(",
                   "table1(", "cluster_correlations(", "build_report(", "plot_stat_map(",
                   "plot_glass_brain(", "client.dashboard_link"):
        assert needle in source, needle
    last = [c for c in _read().cells if c.cell_type == "code"][-1].source
    assert "client.close()" in last and "cluster.close()" in last


def _ensure_python3_kernel(tmp_path: Path, monkeypatch) -> None:
    """Make the ``python3`` kernelspec findable; it runs this interpreter (jupyter_client
    substitutes ``sys.executable`` for a spec's ``python``), i.e. the venv with cfhdask."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        prefix = tmp_path / "jupyter"
        install(prefix=str(prefix), kernel_name="python3")
        monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))


def test_notebook_executes_end_to_end(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    out = tmp_path / "out"
    monkeypatch.setenv("CFHDASK_NB_OUT", str(out))
    monkeypatch.setenv("CFHDASK_NB_N_WORKERS", "2")
    _ensure_python3_kernel(tmp_path, monkeypatch)
    nb = _read()
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    print(f"notebook executed in {seconds:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:  # nbclient raises on an error; make sure no error output slipped through
        assert cell.execution_count is not None
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:80]

    # real results on disk
    for name in ("cohort.zarr", "stats/clusters.tsv", "stats/stats.json", "table1.tsv",
                 "correlations.tsv", "report.html"):
        assert (out / name).exists(), name
    clusters = pd.read_csv(out / "stats" / "clusters.tsv", sep="\t")
    main = clusters[clusters["contrast"] == "patient_gt_control"]
    # both planted effects are found: a cluster peak within 12 mm of each sphere centre
    peaks = main[["peak_x", "peak_y", "peak_z"]].to_numpy()
    for planted in ((-30.0, -2.0, 10.0), (-42.0, 0.0, 54.0)):  # left putamen, precentral
        dist = np.linalg.norm(peaks - np.array(planted), axis=1)
        assert (dist <= 12).any(), (planted, main)
    assert (main["mass_p_fwe"] < 0.05).any(), main
    corr = pd.read_csv(out / "correlations.tsv", sep="\t")
    assert len(corr) >= 4 and corr["r"].between(-1, 1).all()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Table 1" in html

    # the notebook displayed the cluster table and the dashboard link
    texts = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in code for o in c.outputs)
    assert "Dask dashboard: http" in texts
    assert "patient_gt_control" in texts
    assert "report:" in texts
