"""The methods paragraph, written from the parameters actually used.

Parameters come from three places, later ones winning: the cohort store's
attributes (mask, ingest and CFH parameters, history), ``stats.json`` of the
group statistics, and the ``params`` dict given to the report.  Keys are looked
up by name anywhere in those nested dicts (see :data:`ALIASES`); a sentence
whose parameters are unknown is left out rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cfhdask._version import package_versions

#: canonical parameter -> names it may have in params / stats.json / store attrs
ALIASES: dict[str, tuple[str, ...]] = {
    "n_per_group": ("n_per_group",),
    "tr": ("tr", "repetition_time"),
    "n_volumes": ("n_volumes",),
    "drop_volumes": ("drop_volumes", "n_dropped", "dummy_scans"),
    "denoise": ("denoise", "denoising", "nuisance", "confounds_used", "regressors"),
    "bandpass": ("bandpass", "band_pass", "filter_band"),
    "smoothing_fwhm": ("smoothing_fwhm", "fwhm", "smoothing"),
    "mask_source": ("mask_source",),
    "gm_threshold": ("gm_threshold",),
    "n_voxels": ("n_voxels",),
    "grid_shape": ("grid_shape",),
    "voxel_size": ("voxel_size",),
    "covariates": ("covariates",),
    "contrasts": ("contrasts",),
    "scheme": ("scheme", "permutation_scheme"),
    "n_perm": ("n_perm", "n_permutations", "permutations"),
    "seed": ("seed",),
    "cluster_p": ("cluster_p", "cluster_forming_p", "cluster_threshold_p"),
    "cluster_t": ("cluster_t", "cluster_forming_t", "t_threshold"),
    "df": ("df", "dof"),
    "connectivity": ("connectivity",),
    "fwe_alpha": ("fwe_alpha", "alpha"),
    "tfce": ("tfce",),
    "tfce_E": ("tfce_E", "tfce_e", "E"),
    "tfce_H": ("tfce_H", "tfce_h", "H"),
    "normality_alpha": ("normality_alpha",),
    "clinical_variables": ("clinical_variables",),
    "clinical_covariates": ("clinical_covariates",),
    "correlation_methods": ("correlation_methods",),
    "fdr_family": ("fdr_family",),
    "metric": ("metric",),
    "counterpart": ("counterpart",),
    "reference_kind": ("reference_kind",),
    "n_reference": ("n_reference",),
    "threshold": ("threshold",),
}

SCHEMES = {
    "freedman-lane": "Freedman\u2013Lane (residuals of the covariates-only model permuted, "
                     "as FSL randomise and PALM)",
    "draper-stoneman": "Draper\u2013Stoneman (group labels permuted with the covariates "
                       "fixed, as SnPM)",
}

def _metric_paragraph(p: Mapping[str, Any], within: str) -> tuple[str, str]:
    """The sentence defining the per-subject map analysed (CFH of either kind, VMHC, AI)."""
    metric = p.get("metric") or ("cfh_subject" if p.get("counterpart") == "subject" else "cfh")
    tail = " Midline voxels (x = 0) and voxels with a constant signal have no value."
    if metric == "cfh_subject":
        return ("CFH", within + (
            "the Pearson correlation of each voxel's BOLD time series with every voxel of the "
            "contralateral hemisphere was computed; in each subject, the contralateral voxel "
            "with the maximal correlation is the voxel's functionally homotopic counterpart "
            "and its CFH value is that maximal correlation, converted to Fisher's z "
            "(atanh r).") + tail)
    if metric == "vmhc":
        return ("VMHC", within + (
            "voxel-mirrored homotopic connectivity was computed as the Pearson correlation of "
            "each voxel's time series with that of its mirror voxel (x \u2192 \u2212x), within "
            "the voxels whose mirror lies in the mask, converted to Fisher's z.") + tail)
    if metric == "ai":
        thr = p.get("threshold")
        return ("Autonomy index", within + (
            "the autonomy index (Wang, Buckner & Liu 2014) of each voxel is the fraction of "
            "the voxels of its own hemisphere minus the fraction of the voxels of the other "
            "hemisphere whose correlation with it exceeds "
            + (f"r = {float(thr):g}" if thr is not None else "the threshold")
            + " (the voxel itself excluded).") + tail)
    n = p.get("n_reference")
    ref = (f"all {int(n)} subjects (no group label used)" if p.get("reference_kind") == "all"
           and n is not None else f"{int(n)} reference subjects" if n is not None else
           "the reference subjects")
    return ("CFH", within + (
        "the Pearson correlation of each voxel's BOLD time series with every voxel of the "
        f"contralateral hemisphere was computed in each subject and summed over {ref}; the "
        "contralateral voxel with the maximal summed correlation is the voxel's functionally "
        "homotopic counterpart, common to all subjects, and each subject's CFH value is its "
        "own correlation with that counterpart, converted to Fisher's z (atanh r).") + tail)


def find_key(tree: Any, names: Iterable[str]) -> Any:
    """First value of any of ``names`` in a nested dict/list tree (breadth first), or None."""
    names = tuple(names)
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, Mapping):
            for n in names:
                if n in node and node[n] is not None and not isinstance(node[n], Mapping):
                    return node[n]
            queue.extend(v for v in node.values() if isinstance(v, (Mapping, list)))
        elif isinstance(node, list):
            queue.extend(v for v in node if isinstance(v, (Mapping, list)))
    return None


def collect_parameters(*sources: Mapping | None) -> dict[str, Any]:
    """Canonical parameters from ``sources`` (later sources win).

    Each source is a nested dict (store attributes, ``stats.json``, explicit
    params); keys are matched through :data:`ALIASES`.  Unknown keys of the
    last source are kept as they are.
    """
    out: dict[str, Any] = {}
    for src in sources:
        if not src:
            continue
        for key, names in ALIASES.items():
            val = find_key(src, names)
            if val is not None:
                out[key] = val
    last = next((s for s in reversed(sources) if s), {})
    for k, v in last.items():
        out.setdefault(k, v)
    return out


def _join(items: Iterable[Any]) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _describe_steps(steps: Any) -> str:
    if isinstance(steps, str):
        return steps
    if isinstance(steps, Mapping):
        return "; ".join(f"{k}: {_describe_steps(v)}" if not isinstance(v, bool) else str(k)
                         for k, v in steps.items() if v not in (False, None))
    if isinstance(steps, Iterable):
        return _join(_describe_steps(s) for s in steps)
    return str(steps)


def methods_paragraphs(p: Mapping[str, Any], versions: Mapping[str, str] | None = None
                       ) -> list[tuple[str, str]]:
    """The methods section as (heading, text) paragraphs.

    Parameters
    ----------
    p : dict
        Canonical parameters (see :func:`collect_parameters`).
    versions : dict, optional
        Package -> version (default: :func:`package_versions`).
    """
    out: list[tuple[str, str]] = []
    groups = p.get("n_per_group") or {}
    if groups:
        total = sum(int(v) for v in groups.values())
        parts = _join(f"{int(n)} {g}" for g, n in groups.items())
        out.append(("Participants", f"{total} participants were analysed: {parts}."))

    pre = []
    if p.get("drop_volumes") is not None:
        pre.append(f"the first {p['drop_volumes']} volumes of each run were discarded")
    if p.get("tr") is not None:
        nv = f", {p['n_volumes']} volumes analysed" if p.get("n_volumes") is not None else ""
        pre.append(f"TR = {float(p['tr']):g} s{nv}")
    if p.get("denoise"):
        pre.append(f"nuisance regression of {_describe_steps(p['denoise'])}")
    if p.get("bandpass"):
        lo, hi = p["bandpass"]
        pre.append(f"band-pass filtering {float(lo):g}\u2013{float(hi):g} Hz")
    if p.get("smoothing_fwhm") is not None:
        pre.append(f"spatial smoothing with a {float(p['smoothing_fwhm']):g} mm FWHM "
                   "isotropic Gaussian kernel")
    if pre:
        out.append(("Preprocessing", "Resting-state BOLD data: " + "; ".join(pre) + "."))

    mask = "the analysis mask"
    if p.get("gm_threshold") is not None:
        mask = f"a grey-matter mask (probability > {float(p['gm_threshold']):g})"
    elif p.get("mask_source") not in (None, "gm"):
        mask = f"the mask {p['mask_source']}"
    nvox = f" of {int(p['n_voxels'])} voxels" if p.get("n_voxels") is not None else ""
    grid = ""
    if p.get("grid_shape") is not None:
        grid = " on a " + "\u00d7".join(str(int(s)) for s in p["grid_shape"]) + " grid"
    out.append(_metric_paragraph(p, f"Within {mask}{nvox}{grid}, "))

    glm = []
    cov = p.get("covariates")
    if cov:
        glm.append(f"A two-sample general linear model on the subjects' CFH maps with "
                   f"covariates {_join(cov)} (numeric covariates mean-centred, categorical "
                   "ones dummy-coded)")
    else:
        glm.append("A two-sample general linear model on the subjects' CFH maps without "
                   "covariates")
    if p.get("contrasts"):
        glm[-1] += f", tested in both directions ({_join(p['contrasts'])})"
    if p.get("combine_runs"):
        glm.append("Each participant contributed one map: " + (
            "the mean of the CFH maps of all its sessions and runs"
            if p["combine_runs"] == "mean" else
            f"the CFH map of {p['combine_runs']} (the mean when several runs match)"))
    if p.get("n_perm") is not None:
        scheme = SCHEMES.get(str(p.get("scheme", "")).lower(), p.get("scheme"))
        s = f"Inference used {int(p['n_perm'])} permutations"
        if scheme:
            s += f" with the {scheme} scheme"
        if p.get("seed") is not None:
            s += f" (seed {p['seed']})"
        glm.append(s)
    if p.get("cluster_p") is not None:
        s = f"Clusters were formed at voxel p < {float(p['cluster_p']):g}"
        if p.get("cluster_t") is not None:
            s += f" (t > {float(p['cluster_t']):.3f}"
            s += f", df = {int(p['df'])})" if p.get("df") is not None else ")"
        if p.get("connectivity") is not None:
            s += f" with {int(p['connectivity'])}-connectivity"
        alpha = float(p.get("fwe_alpha", 0.05))
        s += (f"; a cluster is significant when its size exceeds the {1 - alpha:.0%} quantile "
              f"of the permutation distribution of the maximum cluster size (cluster-level "
              f"FWE p < {alpha:g}); cluster-mass FWE and voxel-level FWE (max-T) are reported "
              "alongside")
        glm.append(s)
    if p.get("tfce"):
        e, h = p.get("tfce_E", 0.5), p.get("tfce_H", 2)
        glm.append(f"Threshold-free cluster enhancement (E = {e:g}, H = {h:g}) with FWE "
                   "correction by the maximum TFCE statistic was computed as well")
    out.append(("Group inference", ". ".join(glm) + "."))

    na = p.get("normality_alpha", 0.05)
    clin = (f"Table 1 compares the groups with the \u03c7\u00b2 test for categorical variables "
            f"(Yates-corrected for 2\u00d72 tables), Student's two-sample t-test when the "
            f"Shapiro\u2013Wilk test does not reject normality (p \u2265 {float(na):g}) in "
            "either group, and the Mann\u2013Whitney U test otherwise.")
    methods = p.get("correlation_methods") or ("pearson", "spearman")
    cvars = p.get("clinical_variables")
    ccov = p.get("clinical_covariates") or cov
    corr = ("In the patient group, each significant cluster's mean CFH was related to "
            + (_join(cvars) if cvars else "the clinical variables")
            + f" by partial {_join(m.capitalize() for m in methods)} correlations"
            + (f" controlling for {_join(ccov)}" if ccov else "")
            + " (residuals after regression on the covariates with an intercept; Spearman "
              "on ranks); p-values were adjusted by Benjamini\u2013Hochberg FDR "
            + ("across all tests." if p.get("fdr_family") == "all"
               else "across the clusters \u00d7 variables of each method."))
    out.append(("Clinical statistics", clin + " " + corr))

    versions = dict(versions) if versions else package_versions()
    out.append(("Software", "Computed with " + ", ".join(f"{k} {v}" for k, v in versions.items())
                + "."))
    return out
