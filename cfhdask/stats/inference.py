"""Group inference on subjects' maps: GLM, permutations on Dask, clusters, TFCE, atlas labels.

:func:`group_inference` is the entry point (the ``cfhdask stats`` command
calls it).  It builds the design, the analysis mask, the permutation
schedule, fans the permutations out on Dask (:mod:`cfhdask.stats.fanout`),
and turns the null maxima into FWE-corrected p-values:

* voxel FWE (max-T): ``p(v) = #{k : max_t_k >= t(v)} / n_perm``;
* cluster-extent and cluster-mass FWE (threshold ``t > t_thr``, with
  ``t_thr`` the one-sided t of the voxel ``cluster_p`` at ``df = n - rank(X)``);
* TFCE FWE (E = 0.5, H = 2) when asked.

The identity permutation is part of every null, so no p is below ``1/n_perm``.
The uncorrected p-map is parametric (Student t, one-sided per contrast).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Unpack

import numpy as np
import pandas as pd
from distributed import Future
from scipy import stats as sstats

from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import hemisphere_of, ijk_to_xyz
from cfhdask.io.participants import read_participants, read_sessions
from cfhdask.settings import DesignSettings, default_metric
from cfhdask.stats.clusters import (
    N_MAXIMA,
    VoxelGraph,
    label_clusters,
    local_maxima,
    voxel_graph,
)
from cfhdask.stats.clusters import tfce as tfce_scores
from cfhdask.stats.design import Design, build_design
from cfhdask.stats.fanout import null_maxima_dask, null_maxima_local
from cfhdask.stats.glm import GLMPrep, prepare_glm
from cfhdask.stats.null import (
    NULL_STATS,
    SIGNS,
    TFCE_E,
    TFCE_H,
    TFCE_STEPS,
    null_settings,
    observed_t,
)
from cfhdask.stats.options import InferenceKeywords, InferenceOptions
from cfhdask.stats.permute import PermutationSchedule, make_schedule
from cfhdask.stats.results import ContrastResult, GroupResult, fwe_p

log = logging.getLogger(__name__)

__all__ = ["TFCE_E", "TFCE_H", "TFCE_STEPS", "GroupData", "analysis_mask", "atlases_on",
           "group_data",
           "group_inference", "inference_design", "participant_maps"]
CLUSTER_COLUMNS = [
    "contrast", "cluster", "size_voxels", "size_mm3", "mass", "peak_t", "peak_x", "peak_y",
    "peak_z", "p_fwe", "mass_p_fwe",
]


def _neglog10(p: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(p, np.finfo(float).tiny, 1.0))


def _subject_names(data, subjects, metric: str | None = None) -> list[str]:
    """Store subjects (maps) analysed: the given ones, else every subject with ``metric`` maps
    (default :func:`cfhdask.settings.default_metric`); a store lacking them is an error
    naming ``--metric``."""
    if hasattr(data, "cfh_maps"):
        metric = metric or default_metric()
        done = data.subjects(metric)
        if not done:
            raise CfhdaskInputError(data.missing_metric(metric))
        names = list(subjects) if subjects is not None else done
        missing = [s for s in names if s not in done]
        if missing:
            raise CfhdaskInputError(f"--metric {metric}: no {metric} maps in {data.url} for "
                                    f"{', '.join(missing)}")
        return names
    n = np.shape(data)[0] if np.ndim(data) == 2 else 0
    names = list(subjects) if subjects is not None else [f"sub-{i + 1:02d}" for i in range(n)]
    return names


def _load(data, subjects, ijk, grid_shape, affine, hemisphere, metric):
    """Data matrix (n_maps, V) of ``subjects`` and geometry from a store or an array."""
    if hasattr(data, "cfh_maps"):
        store = data
        Y = np.asarray(store.cfh_maps(subjects, var=metric).values, dtype=np.float64)
        return (Y, np.asarray(store.ijk), tuple(store.grid_shape),
                np.asarray(store.affine), np.asarray(store.hemisphere))
    Y = np.asarray(data, dtype=np.float64)
    if Y.ndim != 2:
        raise CfhdaskInputError(f"data must be (subjects, voxels), got shape {Y.shape}")
    if ijk is None or grid_shape is None:
        raise CfhdaskInputError("array data need ijk= and grid_shape= (and affine=)")
    ijk = np.asarray(ijk)
    if ijk.shape != (Y.shape[1], 3):
        raise CfhdaskInputError(f"ijk has shape {ijk.shape}, expected ({Y.shape[1]}, 3)")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    if hemisphere is None:
        hemisphere = hemisphere_of(ijk_to_xyz(ijk, affine)[:, 0])
    if len(subjects) != Y.shape[0]:
        raise CfhdaskInputError(f"{len(subjects)} subject names for {Y.shape[0]} data rows")
    return Y, ijk, tuple(int(s) for s in grid_shape), affine, np.asarray(hemisphere)


def participant_maps(design: Design, subjects: Sequence[str], Y: np.ndarray) -> np.ndarray:
    """One row per participant of the design: the mean of its maps (``design.maps``).

    ``Y`` holds the maps of ``subjects`` (one row each); two maps of one
    participant become one row, never two observations.
    """
    row = {s: i for i, s in enumerate(subjects)}
    out = np.empty((design.n, Y.shape[1]), dtype=np.float64)
    for k, pid in enumerate(design.subjects):
        idx = [row[s] for s in design.maps[pid]]
        out[k] = Y[idx[0]] if len(idx) == 1 else Y[idx].mean(axis=0)
    return out


def inference_design(data: Any, participants: pd.DataFrame | str, des: DesignSettings, *,
                     group: str, groups: Sequence[str] | None = None,
                     subjects: Sequence[str] | None = None,
                     sessions: pd.DataFrame | None = None,
                     storage_options: dict | None = None,
                     metric: str | None = None) -> tuple[Design, list[str]]:
    """The design :func:`group_inference` will use, from map names only (no map is read).

    Everything about the participants (table, ``sessions.tsv``, groups,
    covariates, sessions/runs) is checked here, so callers run it before any
    Dask cluster starts.  A store whose analysed subjects were preprocessed
    differently is refused.

    Parameters
    ----------
    data, participants, group, groups, subjects, sessions, storage_options, metric
        As :func:`group_inference`.
    des : DesignSettings
        Covariates, categorical ones, ``drop_missing``, ``combine_runs``
        (:func:`cfhdask.settings.resolve` of the ``design`` section).

    Returns
    -------
    (Design, list of str)
        The design and the store subjects (maps) it was built from.
    """
    names = _subject_names(data, subjects, metric)
    so = storage_options if storage_options is not None else \
        getattr(data, "storage_options", None)
    source = None
    if not isinstance(participants, pd.DataFrame):
        source = str(participants)
        if sessions is None:
            sessions = read_sessions(participants, so)
        participants = read_participants(participants, so)
    design = build_design(participants, names, group=group, groups=groups,
                          covariates=des.covariates, categorical=des.categorical,
                          drop_missing=des.drop_missing, combine_runs=des.combine_runs,
                          sessions=sessions, source=source)
    used = [s for pid in design.subjects for s in design.maps[pid]]
    if hasattr(data, "check_same_preprocessing"):
        data.check_same_preprocessing(used)
    return design, used


def _min_p_warning(n_perm: int, alpha: float) -> str | None:
    """A warning when no permutation p can be below ``alpha`` (p >= 1 / n_perm)."""
    if 1.0 / n_perm < alpha:
        return None
    return (f"only {n_perm} permutation(s): the smallest possible p is 1/{n_perm} = "
            f"{1.0 / n_perm:.3g}, not below alpha {alpha:g}, so no voxel or cluster can be "
            f"significant; use at least {int(np.floor(1.0 / alpha)) + 1} permutations "
            "(thousands for a paper)")


def analysis_mask(Y: np.ndarray, hemisphere: np.ndarray, x: np.ndarray, Z: np.ndarray
                  ) -> tuple[np.ndarray, GLMPrep, dict]:
    """Voxels analysed: finite in every row, off the midline, not constant after the
    nuisance columns; with the GLM of those voxels and the counts dropped.

    Returns
    -------
    (keep, prep, info)
        ``keep`` (V,) bool, the :class:`GLMPrep` of ``Y[:, keep]``, and the
        ``mask`` entry of ``stats.json``.
    """
    finite = np.all(np.isfinite(Y), axis=0)
    midline = hemisphere == 0
    keep = finite & ~midline
    prep = prepare_glm(Y[:, keep], x, Z)
    nonconst = prep.ss > 1e-12 * max(float(prep.ss.max(initial=0.0)), 1e-300)
    n_const = int((~nonconst).sum())
    if n_const:
        kept = np.flatnonzero(keep)
        keep[kept[~nonconst]] = False
        prep = prepare_glm(Y[:, keep], x, Z)
    if not keep.any():
        raise CfhdaskInputError("no voxel left in the analysis mask (all NaN, midline or constant)")
    info = {
        "n_voxels_data": int(Y.shape[1]), "n_voxels_analysed": int(keep.sum()),
        "n_dropped_midline": int(midline.sum()),
        "n_dropped_nonfinite": int((~finite & ~midline).sum()),
        "n_dropped_constant": n_const,
    }
    log.info("Analysis mask: %d voxels (dropped %d midline, %d not finite in every "
             "subject, %d constant)", info["n_voxels_analysed"], info["n_dropped_midline"],
             info["n_dropped_nonfinite"], n_const)
    return keep, prep, info


def _maxima_columns(atlases) -> list[str]:
    """Columns of the local maxima: t, MNI x/y/z and voxel FWE p, then atlas labels."""
    cols = []
    for k in range(N_MAXIMA):
        pre = "peak" if k == 0 else f"peak{k + 1}"
        cols += [f"{pre}_{c}" for c in ("t", "x", "y", "z")] if k else []
        cols.append(f"{pre}_vox_p_fwe")
    for k in range(N_MAXIMA):
        suffix = "peak" if k == 0 else f"peak{k + 1}"
        for a, atlas in atlases.items():
            cols.append(f"{a}_{suffix}")
            if atlas.probabilities is not None:
                cols.append(f"{a}_{suffix}_prob")
            if k == 0:
                cols.append(f"{a}_regions")
    return cols


def _cluster_table(name, s, labels, ijk, affine, null, t_thr, atlases, graph,
                   excess=None) -> pd.DataFrame:
    """One row per cluster of a contrast, with up to :data:`N_MAXIMA` local maxima.

    The mass is the sum of ``excess`` over the cluster (default ``s - t_thr``;
    the z excess when ``mass_tfce_on`` is z).  Maxima and their voxel FWE p
    are read on ``s`` (the t-map), as the voxel-level inference.
    """
    from cfhdask.stats.atlas import peak_label, probability_readout, region_shares

    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    rows = []
    n_cl = int(labels.max())
    if n_cl:
        sizes = np.bincount(labels, minlength=n_cl + 1)[1:]
        excess = s - t_thr if excess is None else excess
        masses = np.bincount(labels, weights=np.where(labels > 0, excess, 0.0),
                             minlength=n_cl + 1)[1:]
        p_size = fwe_p(null["max_size"], sizes)
        p_mass = fwe_p(null["max_mass"], masses)
        xyz_all = ijk_to_xyz(ijk, affine)
        maxima = local_maxima(graph, s, labels, xyz_all)
        p_vox = np.where(maxima >= 0, fwe_p(null["max_t"], s[maxima]), np.nan)
        for c in range(1, n_cl + 1):
            members = np.flatnonzero(labels == c)
            peak = maxima[c - 1, 0]
            xyz = xyz_all[peak]
            row = {
                "contrast": name, "cluster": c, "size_voxels": int(sizes[c - 1]),
                "size_mm3": sizes[c - 1] * voxel_mm3, "mass": float(masses[c - 1]),
                "peak_t": float(s[peak]), "peak_x": float(xyz[0]), "peak_y": float(xyz[1]),
                "peak_z": float(xyz[2]), "p_fwe": float(p_size[c - 1]),
                "mass_p_fwe": float(p_mass[c - 1]),
            }
            for k, v in enumerate(maxima[c - 1]):
                if v < 0:
                    break
                pre, suffix = ("peak", "peak") if k == 0 else (f"peak{k + 1}",) * 2
                if k:
                    row.update({f"{pre}_t": float(s[v]), f"{pre}_x": float(xyz_all[v, 0]),
                                f"{pre}_y": float(xyz_all[v, 1]),
                                f"{pre}_z": float(xyz_all[v, 2])})
                row[f"{pre}_vox_p_fwe"] = float(p_vox[c - 1, k])
                for aname, atlas in atlases.items():
                    row[f"{aname}_{suffix}"] = peak_label(atlas, ijk[v])
                    if atlas.probabilities is not None:
                        row[f"{aname}_{suffix}_prob"] = probability_readout(atlas, ijk[v])
            for aname, atlas in atlases.items():
                row[f"{aname}_regions"] = region_shares(atlas, ijk[members], min_share=0.01)
            rows.append(row)
    return pd.DataFrame(rows, columns=CLUSTER_COLUMNS + _maxima_columns(atlases))


@dataclass
class GroupData:
    """What an analysis needs of the participants' maps, built where the maps are read.

    Attributes
    ----------
    keep : ndarray of bool (V,)
        Analysis mask (:func:`analysis_mask`).
    mask_info : dict
        The ``mask`` entry of ``stats.json``.
    t_obs : ndarray (V_analysed,)
        Observed t-map (float64).
    df : int
    prep : GLMPrep or None
        The residualised data; ``None`` in the client's copy of a Dask run
        (:meth:`summary`): there the data stay in the workers' memory.
    """

    keep: np.ndarray
    mask_info: dict
    t_obs: np.ndarray
    df: int
    prep: GLMPrep | None = None

    def summary(self) -> GroupData:
        """This without the data: what a Dask run sends to the client."""
        return GroupData(self.keep, self.mask_info, self.t_obs, self.df)


def group_data(maps: np.ndarray, design: Design, used: Sequence[str], hemisphere: np.ndarray,
               schedule: PermutationSchedule, scheme: str) -> GroupData:
    """One row per participant, the analysis mask, the GLM and the observed t of ``maps``.

    ``maps`` (n_maps, V) are the store maps of ``used``, in that order.
    """
    Y = participant_maps(design, used, np.asarray(maps, dtype=np.float64))
    keep, prep, info = analysis_mask(Y, hemisphere, design.x, design.Z)
    return GroupData(keep=keep, mask_info=info, t_obs=observed_t(prep, schedule, scheme),
                     df=int(prep.df), prep=prep)


def _prep_of(gd: GroupData) -> GLMPrep:
    return gd.prep


def atlases_on(client, atlases: Sequence[str] | None, grid_shape: Sequence[int],
               affine: np.ndarray) -> dict[str, Future]:
    """Each atlas sampled on the grid (:func:`~cfhdask.stats.atlas.grid_atlas`) by a worker.

    The tasks are pure: the same atlas and grid are one task on the cluster,
    so a caller that submits them early (a study, while its maps are
    computed) and holds the Futures lets :func:`group_inference` find them done.
    """
    from cfhdask.stats.atlas import grid_atlas

    return {a: client.submit(grid_atlas, a, tuple(int(s) for s in grid_shape),
                             np.asarray(affine, dtype=float), pure=True)
            for a in atlases or ()}


def _graph_of(gd: GroupData, ijk: np.ndarray, grid_shape: tuple, connectivity: int
              ) -> VoxelGraph:
    return voxel_graph(ijk[gd.keep], grid_shape, connectivity)


def _group_data_on(client, maps, design: Design, used: Sequence[str], hemisphere: np.ndarray,
                   schedule: PermutationSchedule, scheme: str, ijk: np.ndarray,
                   grid_shape: tuple, connectivity: int):
    """:func:`group_data` and the analysis mask's voxel graph on a Dask cluster:
    ``(summary, prep, graph)``, each a future or a value.

    A store's maps (a lazy Dask array, one chunk per subject's map) are read
    by the workers, and the GLM and the graph are prepared in a worker: they
    are futures, so the permutation batches can be submitted at once and take
    them from worker memory (Dask recomputes them from the store if their
    worker is lost); the client later receives only the
    :meth:`GroupData.summary` (mask, observed t) and the graph.  Array data,
    already in this process, are prepared here (``prep`` and ``graph`` are
    then scattered by :func:`~cfhdask.stats.fanout.fan_out`).
    """
    if not hasattr(maps, "dask"):
        gd = group_data(maps, design, used, hemisphere, schedule, scheme)
        return gd.summary(), gd.prep, _graph_of(gd, ijk, grid_shape, connectivity)
    import dask

    whole = client.compute(dask.delayed(group_data, pure=True)(
        maps, design, list(used), hemisphere, schedule, scheme))
    return (client.submit(GroupData.summary, whole), client.submit(_prep_of, whole),
            client.submit(_graph_of, whole, ijk, tuple(grid_shape), connectivity))


def group_inference(
    data: Any,
    participants: pd.DataFrame | str,
    *,
    group: str,
    groups: Sequence[str] | None = None,
    n_perm: int | None = None,
    seed: int | None = None,
    atlases: Sequence[str] | None = None,
    out_dir: str | None = None,
    client: Any = None,
    subjects: Sequence[str] | None = None,
    ijk: np.ndarray | None = None,
    grid_shape: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    hemisphere: np.ndarray | None = None,
    sessions: pd.DataFrame | None = None,
    storage_options: dict | None = None,
    compute: Literal["dask", "local"] = "dask",
    **options: Unpack[InferenceKeywords],
) -> GroupResult:
    """Two-group comparison of participants' maps with covariates, by permutation.

    Parameters
    ----------
    data : CohortStore or ndarray (n_maps, n_voxels)
        A store (its maps of ``metric``, ``ijk``, ``grid_shape``,
        ``affine``, ``hemisphere`` are used) or a data matrix with explicit
        ``subjects``, ``ijk``, ``grid_shape``, ``affine``.
    participants : DataFrame or path
        Participants table (``participant_id``, group, covariates); from a path,
        the dataset's ``sessions.tsv`` files are read too.
    group : str
        Group column.  ``groups`` picks the two groups (first > second is the
        first contrast); default the column's two values, sorted.
    n_perm : int
        Permutations, identity included (default ``cfhdask.stats.n-perm``);
        fewer when all distinct permutations are fewer (exhaustive).  When no p
        can reach ``alpha`` a warning is logged and recorded in ``stats.json``.
    seed : int
    atlases : sequence of str or None
        Atlases labelling the clusters (``aal``, ``harvard_oxford``).
    out_dir : str, optional
        Write the maps, ``clusters.tsv``, null distributions and ``stats.json`` there.
    client : distributed.Client, optional
        Dask client; default :func:`cfhdask.cluster.dask_client` (the current
        client or an embedded LocalCluster).  Ignored with ``compute="local"``.
    sessions : DataFrame, optional
        Session-level variables, when ``participants`` is a DataFrame.
    storage_options : dict, optional
        fsspec options of a remote participants table (default: the store's).
    compute : {"dask", "local"}
        Fan permutations out on Dask, or run them in this process.
    **options
        :class:`~cfhdask.stats.options.InferenceKeywords` (``None``: the
        ``stats`` and ``design`` settings): ``covariates`` (numeric
        mean-centred, ``categorical`` dummy-coded), ``drop_missing``,
        ``combine_runs`` (how a participant's maps make its one row: ``"mean"``
        or a session/run such as ``"ses-1"``, see :func:`build_design`),
        ``scheme`` (``"freedman-lane"`` or ``"draper-stoneman"``), ``cluster_p``
        (one-sided cluster-forming voxel p, converted to t at ``df = n -
        rank(X)``), ``connectivity`` (6, 18, 26), ``tfce`` (also TFCE, E = 0.5,
        H = 2, with FWE p; every map, observed or permuted, is scored with its
        own step ``dh``, its peak / 100 as FSL and PALM, unless ``tfce_dh``
        fixes one),
        ``mass_tfce_on`` (``"t"``, or ``"z"`` as PALM), ``alpha`` (FWE level, for
        the too-few-permutations warning), ``metric`` (``cfh``, ``cfh_subject``,
        ``vmhc``, ``ai``: the store's maps analysed; ``cfh`` is read as
        ``cfh_subject`` when ``cfh.counterpart`` is ``subject``; a metric the
        store does not hold is an error naming ``--metric``), ``batch_size``
        (permutations per Dask task).

    Returns
    -------
    GroupResult
    """
    opts = InferenceOptions.resolve(options, stats=dict(n_perm=n_perm, seed=seed,
                                                        atlases=atlases))
    st, des, tfce_dh = opts.stats, opts.design, opts.tfce_dh
    n_perm, scheme, cluster_p, connectivity = st.n_perm, st.scheme, st.cluster_p, st.connectivity
    tfce, seed, metric, batch_size = st.tfce, st.seed, st.metric, st.batch_size
    atlases = st.atlases
    design, used = inference_design(data, participants, des, group=group, groups=groups,
                                    subjects=subjects, sessions=sessions,
                                    storage_options=storage_options, metric=metric)
    covariates = list(des.covariates)
    if hasattr(data, "cfh_maps"):
        store = data
        maps = store.cfh_maps(used, var=metric, whole=True).data  # read by the workers
        ijk, grid_shape = np.asarray(store.ijk), tuple(store.grid_shape)
        affine, hemi = np.asarray(store.affine), np.asarray(store.hemisphere)
    else:
        names = _subject_names(data, subjects)
        Y, ijk, grid_shape, affine, hemi = _load(data, names, ijk, grid_shape, affine,
                                                 hemisphere, metric)
        maps = Y[[names.index(s) for s in used]]
    n_maps = {p: len(m) for p, m in design.maps.items() if len(m) > 1}
    if n_maps:
        log.info("%d participant(s) have several maps, combined by %s: %s", len(n_maps),
                 design.combine_runs, n_maps)
    schedule = make_schedule(design.x, n_perm, seed, scheme)
    if schedule.exhaustive:
        log.info("Exhaustive: %d distinct permutations (asked %d)", schedule.n_perm, n_perm)
    warnings = [w for w in (_min_p_warning(schedule.n_perm, st.alpha),) if w]
    for w in warnings:
        log.warning("%s", w)

    settings = null_settings(design.df, scheme=scheme, cluster_p=cluster_p, tfce=tfce,
                             tfce_dh=tfce_dh, mass_tfce_on=st.mass_tfce_on)
    from cfhdask.stats.atlas import grid_atlas

    if compute == "local":
        gd = group_data(np.asarray(maps), design, used, hemi, schedule, scheme)
        graph = _graph_of(gd, ijk, grid_shape, connectivity)
        null = null_maxima_local(gd.prep, graph, schedule, settings, batch_size)
        gd = gd.summary()
        atlas_objs = {a: grid_atlas(a, grid_shape, affine) for a in atlases or ()}
    else:
        if client is None:
            from cfhdask.cluster import dask_client

            ctx = dask_client()
        else:
            ctx = contextlib.nullcontext(client)
        with ctx as cl:
            # the atlases are sampled on the grid by workers while the permutations run
            # (seconds of gzip reading the client would spend after them)
            sampled = atlases_on(cl, atlases, grid_shape, affine)
            gd, prep, graph = _group_data_on(cl, maps, design, used, hemi, schedule, scheme,
                                             ijk, grid_shape, connectivity)
            null = null_maxima_dask(cl, prep, graph, schedule, settings, batch_size)
            gd, graph = (f.result() if isinstance(f, Future) else f for f in (gd, graph))
            atlas_objs = {a: f.result() for a, f in sampled.items()}
    if gd.df != design.df:  # pragma: no cover - guarded by build_design
        raise CfhdaskInputError(f"design df {design.df} != GLM df {gd.df}")
    keep, mask_info, t_obs, df = gd.keep, gd.mask_info, gd.t_obs, gd.df
    ijk_m = ijk[keep]
    on_z = st.mass_tfce_on == "z"
    e_obs = settings.enhanced(t_obs)
    t_thr, z_thr = settings.t_threshold, settings.z_threshold
    dhs = [settings.map_dh(sign * e_obs) for sign in SIGNS] if tfce else None

    results: dict[str, ContrastResult] = {}
    for i, (name, sign) in enumerate(zip(design.contrasts, SIGNS, strict=True)):
        s = sign * t_obs
        e = sign * e_obs
        nl = {k: null[:, i, j] for j, k in enumerate(NULL_STATS) if k != "max_tfce" or tfce}
        labels = label_clusters(graph, s > t_thr)
        table = _cluster_table(name, s, labels, ijk_m, affine, nl, t_thr, atlas_objs, graph,
                               excess=e - settings.mass_threshold if on_z else None)
        lp_size = np.zeros(s.size)
        lp_mass = np.zeros(s.size)
        for _, row in table.iterrows():
            sel = labels == row["cluster"]
            lp_size[sel] = _neglog10(row["p_fwe"])
            lp_mass[sel] = _neglog10(row["mass_p_fwe"])
        res = ContrastResult(
            name=name, t=s, logp_uncorrected=_neglog10(sstats.t.sf(s, df)),
            logp_vox_fwe=_neglog10(fwe_p(nl["max_t"], s)), logp_cluster_fwe=lp_size,
            logp_cluster_mass_fwe=lp_mass, cluster_labels=labels, clusters=table, null=nl,
        )
        if tfce:
            res.tfce = tfce_map = tfce_scores(graph, e, dhs[i], TFCE_E, TFCE_H)
            res.logp_tfce_fwe = _neglog10(fwe_p(nl["max_tfce"], tfce_map))
            table["tfce_p_fwe"] = [
                float(fwe_p(nl["max_tfce"], tfce_map[labels == c].max()))
                for c in table["cluster"]]
        results[name] = res

    tables = [r.clusters for r in results.values() if len(r.clusters)]
    all_clusters = (pd.concat(tables, ignore_index=True) if tables
                    else next(iter(results.values())).clusters.copy())
    params = {
        "group": group, "groups": list(design.groups), "covariates": list(covariates),
        "categorical": [c for c in des.categorical if c in covariates],
        "design_columns": design.columns, "n_per_group": design.n_per_group,
        "subjects": design.subjects, "maps": design.maps,
        "combine_runs": design.combine_runs, "n_maps": len(used),
        "dropped_subjects": design.dropped,
        "n_perm_requested": n_perm, "n_perm": schedule.n_perm,
        "exhaustive": schedule.exhaustive, "scheme": scheme, "seed": seed,
        "cluster_p": cluster_p, "t_threshold": t_thr, "df": df,
        "connectivity": connectivity, "tfce": bool(tfce),
        "tfce_dh": dict(zip(design.contrasts, dhs, strict=True)) if tfce else None,
        # how each map's step was set: "peak" (its own peak / tfce_steps) or "fixed"
        "tfce_step": (None if not tfce else "fixed" if tfce_dh is not None else "peak"),
        "tfce_steps": TFCE_STEPS if tfce and tfce_dh is None else None,
        "tfce_E": TFCE_E, "tfce_H": TFCE_H, "mass_tfce_on": st.mass_tfce_on,
        "z_threshold": z_thr, "alpha": st.alpha,
        "metric": metric, "batch_size": batch_size, "drop_missing": des.drop_missing,
        "mask": mask_info, "atlases": list(atlases or []), "warnings": warnings,
        "p_value": "#(null >= observed) / n_perm, identity permutation included",
        "uncorrected_p": "parametric Student t, one-sided per contrast",
    }
    if hasattr(data, "cfh_maps"):
        params["metric_params"] = data.metric_params(used[0], metric)
    result = GroupResult(contrasts=results, clusters=all_clusters, design=design,
                         ijk=ijk_m, grid_shape=tuple(grid_shape), affine=np.asarray(affine),
                         params=params)
    if out_dir is not None:
        from cfhdask.stats.outputs import write_outputs

        write_outputs(result, out_dir)
    return result
