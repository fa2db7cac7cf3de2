"""The HTML report: built from a synthetic statistics directory and store, self-contained."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from cfhdask.clinical.correlations import cluster_correlations, significant_cluster_values
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import open_store
from cfhdask.report.data import counterpart_displacement, read_stats_dir
from cfhdask.report.html import build_report
from cfhdask.report.methods import collect_parameters, methods_paragraphs

IMG_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*)"')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
                 correlations=corr,
                 params={"clinical_covariates": ["age", "sex"],
                         "denoise": ["Friston-24 head motion", "white matter", "CSF"],
                         "smoothing_fwhm": 4})
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
    # 2 glass brains + 2 cluster slices + nulls + group means + displacement + 2 scatter grids
    assert len(uris) == 9
    for uri in uris:
        img = _decode_png(uri)
        assert img.width > 200 and img.height > 100
        assert np.asarray(img.convert("L")).std() > 5  # not blank
    assert "figure failed" not in html and "no cohort store" not in html
    # tables and the methods paragraph from the parameters actually used
    assert "Left Putamen" in html and "Precentral_L" in html
    assert "500 permutations" in html and "Draper" in html and "seed 7" in html
    assert "grey-matter mask (probability &gt; 0.2) of 700 voxels" in html
    assert "first 10 volumes" in html and "4 mm FWHM" in html
    assert "6 patient and 6 control" in html
    assert "Mann" in html and "chi2 (Yates)" in html
    assert f"{corr.r.iloc[0]:.3g}" in html
    assert not list(path.parent.glob(".tmp-*"))  # no temporary file left


def test_report_without_store_or_participants(synthetic_study, tmp_path):
    stats_dir, _, _ = synthetic_study
    out = build_report(tmp_path / "r.html", stats_dir=stats_dir, params={"n_perm": 123},
                       versions={"cfhdask": "9.9"})
    html = out.read_text()
    assert "no cohort store given" in html and "No participants table" in html
    assert "123 permutations" in html and "cfhdask 9.9" in html
    assert len(IMG_SRC.findall(html)) == 5


def test_methods_leave_out_unknown_parameters():
    p = collect_parameters({"mask": {"gm_threshold": 0.3}}, {"stats": {"n_permutations": 99,
                                                                      "scheme": "freedman-lane"}},
                           {"n_perm": 5000})
    text = " ".join(t for _, t in methods_paragraphs(p, versions={"x": "1"}))
    assert "5000 permutations" in text and "Freedman" in text and "probability > 0.3" in text
    assert "smoothing" not in text and "TFCE" not in text and "Participants" not in text


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
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian `chromium` is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path, _ = report
    # a copy that records, after load, how many images failed to decode
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "document.body.setAttribute('data-images', imgs.length);"
        "document.body.setAttribute('data-broken', "
        "imgs.filter(i => !i.complete || i.naturalWidth === 0).length);});</script></body>")))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images="9"' in dom.stdout
    assert 'data-broken="0"' in dom.stdout
    shot = tmp_path / "shot.png"
    res = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,4000",
                          path.as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (4000, 1280)
    # the header band is dark, figures further down are drawn (not a blank page)
    assert pixels[:60].mean() < 100
    assert pixels[1200:].std() > 20
