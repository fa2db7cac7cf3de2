"""The report from a synthetic statistics directory and store: HTML, figure files, tables."""

from __future__ import annotations

import base64
import io
import json
import re

import matplotlib
import nibabel as nib
import numpy as np
import pytest
from markupsafe import escape
from PIL import Image
from reporthelpers import (
    CHROMIUM,
    CONTRASTS,
    IMG_SRC,
    LONG_HO,
    check_in_browser,
    figure_links,
    section_text,
)

from cfhdask.clinical.correlations import cluster_correlations, significant_cluster_values
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import METRIC_LABELS, open_store
from cfhdask.report import figures
from cfhdask.report.data import cluster_t_map, counterpart_displacement, read_stats_dir
from cfhdask.report.html import build_report
from cfhdask.report.tables import cluster_name, region_lines

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def report(synthetic_study, tmp_path_factory):
    stats_dir, store_path, participants = synthetic_study
    store = open_store(str(store_path))
    outputs = read_stats_dir(stats_dir)
    values = significant_cluster_values(store.cfh_maps(), store.ijk, outputs.clusters_img,
                                        outputs.clusters)
    corr = cluster_correlations(values, participants, variables=["illness_duration", "JRS_total"],
                                covariates=["age", "sex"])
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(out, stats_dir=stats_dir, store=str(store_path), participants=participants,
                 correlations=corr, params={"clinical_covariates": ["age", "sex"]}, dpi=120)
    return out, corr


def _decode_png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def test_report_is_self_contained_with_every_figure(report):
    path, corr = report
    html = path.read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<script" not in html and "<link" not in html
    uris = IMG_SRC.findall(html)
    # figure 1 + 2 glass brains + 2 cluster slices (the singleton is too small) + group means
    # + displacement + nulls + 2 scatter grids
    assert len(uris) == 10
    for uri in uris:
        img = _decode_png(uri)
        assert img.width > 400 and img.height > 100
        assert np.asarray(img.convert("L")).std() > 5  # not blank
    assert "figure failed" not in html and "no cohort store" not in html
    assert f"{corr.r.iloc[0]:.3g}" in html
    clinical = section_text(html, "correlations")  # readable headers and cluster names
    assert "Clinical variable" in clinical and "95% CI low" in clinical
    assert "patient > control, cluster 1" in clinical and "ci_low" not in clinical
    assert not list(path.parent.glob(".tmp-*")) and not list(path.parent.glob(".figures-*"))


def test_figure_files_next_to_the_report_named_by_contrast_and_cluster(report):
    path, _ = report
    html = path.read_text()
    folder = path.parent / "figures"
    files = {p.name for p in folder.iterdir()}
    stems = {"figure1_significant_clusters", "group_mean_cfh", "counterpart_displacement",
             "permutation_null_distributions", "clinical_pearson_partial_correlations",
             "clinical_spearman_partial_correlations"}
    for c in CONTRASTS:
        stems |= {f"{c}_glass_brain", f"{c}_cluster01"}
    assert files == {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")}
    assert "patient_gt_control_cluster02.png" not in files  # 1 voxel < min_cluster_voxels
    assert figure_links(html) == {f"figures/{f}" for f in files}  # each linked, none dangling
    for s in stems:
        png = Image.open(folder / f"{s}.png")
        assert png.info["dpi"] == pytest.approx((120, 120), abs=1)
        assert png.mode == "RGB" and png.width >= 4 * 120  # inches x the requested dpi
        assert (folder / f"{s}.pdf").read_bytes()[:5] == b"%PDF-"
    # Figure 1 comes first, before the tables and the methods
    order = [html.index(f'id="{i}"') for i in ("figure1", "clusters", "methods", "table1")]
    assert order == sorted(order)


def test_cluster_table_lists_maxima_labels_and_hides_small_clusters(report, synthetic_study):
    path, _ = report
    html = path.read_text()
    table = section_text(html, "clusters")
    # SPM layout: readable columns, the second local maximum on its own row
    for col in ("Voxels", "p FWE (extent)", "p FWE (voxel)", "MNI x, y, z (mm)", "AAL2",
                "Harvard\u2013Oxford regions"):
        assert col in table
    assert "4.05" in table and "Insula_L (nearest, 12 mm)" in table
    # an unlabelled peak shows the probabilistic readout, as atlasreader
    assert "24% Left_Putamen" in table
    assert "Insula_L 25%" in table and "Left_Putamen 50%" in table  # AAL and H-O shares
    assert "<0.001" in table and "0.000" not in table  # voxel FWE p 0.0004
    # the singleton cluster is left out of the display, but clusters.tsv keeps it
    flat = html.replace("<wbr>", "")
    assert "SINGLETON_HO" not in flat and "SupraMarginal_R" not in flat
    assert "1 cluster(s) smaller than 2 voxels left out" in table
    stats_dir = synthetic_study[0]
    assert "SINGLETON_HO" in (stats_dir / "clusters.tsv").read_text()
    # long atlas names may wrap at underscores (and copy as they are)
    assert "Left_<wbr>Juxtapositional_<wbr>Lobule_<wbr>Cortex" in html


def test_min_cluster_voxels_setting_shows_every_cluster(synthetic_study, tmp_path):
    stats_dir, _, _ = synthetic_study
    out = build_report(tmp_path / "r.html", stats_dir=stats_dir, min_cluster_voxels=1, dpi=60,
                       max_cluster_figures=0, vector_format="svg")
    table = section_text(out.read_text(), "clusters")
    assert "SupraMarginal_R" in table and "smaller than" not in table
    assert not list((tmp_path / "figures").glob("*cluster0*"))  # max_cluster_figures=0


def test_report_without_store_or_participants(synthetic_study, tmp_path):
    stats_dir, _, _ = synthetic_study
    out = build_report(tmp_path / "r.html", stats_dir=stats_dir, versions={"cfhdask": "9.9"},
                       dpi=60, vector_format="svg")
    html = out.read_text()
    assert "no cohort store given" in html and "no participants table" in html
    methods = section_text(html, "methods")
    assert "500 permutations" in methods and "cfhdask 9.9" in methods
    assert "statsmodels" not in methods and "pingouin" not in methods
    assert len(IMG_SRC.findall(html)) == 6  # figure 1, 2 glass brains, 2 clusters, nulls
    # a second build replaces the figure folder whole: no stale file survives
    assert (tmp_path / "figures" / "figure1_significant_clusters.svg").read_text().startswith(
        "<?xml")
    (tmp_path / "figures" / "stale.png").write_bytes(b"x")
    build_report(tmp_path / "r.html", stats_dir=stats_dir, dpi=60, vector_format="svg",
                 max_cluster_figures=0)
    assert not (tmp_path / "figures" / "stale.png").exists()


def test_one_set_of_sections_per_metric(synthetic_study, tmp_path):
    stats_dir, _, _ = synthetic_study
    out = build_report(tmp_path / "r.html", stats_dir={"cfh": stats_dir, "vmhc": stats_dir},
                       dpi=50, max_cluster_figures=0, vector_format="svg")
    html = out.read_text()
    files = {p.name for p in (tmp_path / "figures").iterdir()}
    for metric in ("cfh", "vmhc"):
        assert f"{metric}_figure1_significant_clusters.png" in files
        assert f"{metric}_patient_gt_control_glass_brain.svg" in files
        assert f'id="contrast-{metric}_patient_gt_control"' in html
        assert f"{escape(METRIC_LABELS[metric])}: patient &gt; control: clusters" in html
    assert figure_links(html) == {f"figures/{f}" for f in files}


def test_cluster_map_shows_only_the_asked_clusters_of_one_sign(synthetic_study):
    outputs = read_stats_dir(synthetic_study[0])
    c = CONTRASTS[0]
    lab = np.asarray(nib.load(outputs.clusters_img[c]).dataobj)
    t = np.asarray(nib.load(outputs.tstat[c]).dataobj)
    one = np.asarray(cluster_t_map(outputs, c, 3.5, [1]).dataobj)
    assert (one != 0).sum() == (lab == 1).sum() and np.all(one[lab == 1] == t[lab == 1])
    assert not cluster_t_map(outputs, c, 3.5, []).get_fdata().any()
    thr = np.asarray(cluster_t_map(outputs, c, 3.5, None).dataobj)
    assert np.all((thr == 0) | (thr > 3.5)) and (thr > 0).sum() == (t > 3.5).sum()


def _titles_above_axes(fig):
    fig.canvas.draw()
    title = fig.texts[0].get_window_extent()
    return all(title.y0 >= ax.get_window_extent().y1 - 0.5 for ax in fig.axes
               if ax.get_visible())


def test_brain_figures_titles_clear_and_colorbar_from_threshold(synthetic_study):
    outputs = read_stats_dir(synthetic_study[0])
    c = CONTRASTS[0]
    img = cluster_t_map(outputs, c, 3.5, [1])
    long = ("patient > control, cluster 1: " + figures.display_name(LONG_HO)
            + ", peak t = 5.12 at (-30, -2, 10), 53 voxels, cluster p FWE = 0.012")
    for fig in (figures.cluster_slices(img, (-30, -2, 10), threshold=3.5, vmax=5.5, title=long),
                figures.glass_brain(img, threshold=3.5, vmax=5.5, title=long),
                figures.figure1_axial([("patient > control", img)], threshold=3.5, vmax=5.5,
                                      cuts=[-2, 10, 22], title=long)):
        assert _titles_above_axes(fig), "the title overlaps the slices"
        bars = [ax for ax in fig.axes if ax.get_label() == "colorbar"]
        assert bars
        for bar in bars:
            lo, hi = bar.get_xlim() if bar.get_xlim() != (0.0, 1.0) else bar.get_ylim()
            assert lo == pytest.approx(3.5) and hi == pytest.approx(5.5)
            label = bar.get_ylabel() or bar.get_xlabel()
            assert label == "t" or label.startswith("t, ")
        matplotlib.pyplot.close(fig)


def test_p_values_and_region_lines_read_as_in_a_paper():
    assert figures.p_text(0.0002) == "p < 0.001" and figures.p_text(0.0004, "q") == "q < 0.001"
    assert figures.p_text(0.0123) == "p = 0.012" and figures.p_text(float("nan")) == ""
    assert region_lines("Putamen_L 80%; no_label 15%; Insula_L 4%; A 1%") == [
        "Putamen_L 80%", "unlabelled 15%", "(+2 smaller)"]
    assert cluster_name("patient_gt_control_c3") == "patient > control, cluster 3"
    assert cluster_name("age") == "age" and cluster_name("x_cfoo") == "x_cfoo"


def test_axial_cuts_go_through_the_peaks_and_show_voxels():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    data = np.zeros((10, 10, 30), np.float32)
    data[2:4, 2:4, 1:20] = 4.0  # a tall cluster, z = 3..57 mm
    data[6, 6, 25] = 5.0  # a one-voxel cluster at z = 75
    img = nib.Nifti1Image(data, affine)
    cuts = figures.axial_cuts([img], [75.0, 30.0])
    assert 75.0 in cuts and 30.0 in cuts and len(cuts) == 4 and cuts == sorted(cuts)
    shown = {3.0 * k for k in range(30) if data[..., k].any()}
    assert set(cuts) <= shown
    assert min(np.diff(cuts)) >= 6.0  # two voxels apart
    assert figures.axial_cuts([nib.Nifti1Image(np.zeros((3, 3, 3)), affine)], []) == [0.0]


def test_counterpart_displacement_brute_force(rng):
    xyz = rng.uniform(-60, 60, (30, 3))
    cp = rng.integers(-1, 30, (3, 30))
    out = counterpart_displacement(xyz, cp)
    for s in range(3):
        for v in range(30):
            if cp[s, v] < 0:
                assert np.isnan(out[s, v])
            else:
                m = xyz[v] * [-1, 1, 1]
                assert out[s, v] == pytest.approx(np.sqrt(((xyz[cp[s, v]] - m) ** 2).sum()))


def test_bad_stats_dir_is_named(tmp_path):
    with pytest.raises(CfhdaskInputError, match="does not exist"):
        read_stats_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CfhdaskInputError, match="run `cfhdask stats` first"):
        build_report(tmp_path / "r.html", stats_dir=tmp_path / "empty")
    (tmp_path / "empty" / "clusters.tsv").write_text("contrast\tcluster\n")
    (tmp_path / "empty" / "stats.json").write_text("{not json")
    with pytest.raises(CfhdaskInputError, match="stats.json: invalid JSON"):
        read_stats_dir(tmp_path / "empty")
    with pytest.raises(CfhdaskInputError, match="participants table: file"):
        (tmp_path / "empty" / "stats.json").write_text(json.dumps({}))
        build_report(tmp_path / "r.html", stats_dir=tmp_path / "empty",
                     participants=tmp_path / "missing.tsv")
    with pytest.raises(CfhdaskInputError, match="min_cluster_voxels"):
        build_report(tmp_path / "r.html", stats_dir=tmp_path / "empty", min_cluster_voxels=0)
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "figures").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian `chromium` is not installed")
def test_report_renders_offline_at_1280px_in_headless_chromium(report, tmp_path):
    path, _ = report
    check_in_browser(path, tmp_path, n_images=10)
