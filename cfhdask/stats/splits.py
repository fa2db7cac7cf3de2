"""Random splits of one group into two pseudo-groups, and the inference of one split.

A null-check (Eklund et al. 2016, PNAS) splits the participants of one group
(healthy controls) into two pseudo-groups, many times, and runs the study's
group inference on each split: there is no true difference, so the share of
splits where a method finds anything is its empirical family-wise error rate.

Splits are ``int8`` label rows over the group's participants: 1 in
pseudo-group A, 0 in B, -1 not used (when the sizes asked for leave some out).
They are seeded and *prefix-stable*: the first 300 splits of a 1000-split run
are the 300 splits of a 300-split run.  When A and B have the same size,
``{A, B}`` and ``{B, A}`` are one split (both contrasts are scored), so A is
the side that holds the lowest-numbered participant used.

:func:`split_null` is one task of the fan-out: the GLM of one split, its
observed map scored as :func:`cfhdask.stats.inference.group_inference` scores
it (:func:`~cfhdask.stats.null.observed_t`, :func:`~cfhdask.stats.null.null_settings`,
:func:`~cfhdask.stats.null.map_maxima`), and for a batch of its permutations
the number of null maxima at least as large as the observed ones (the
numerators of the FWE p-values, with the ties rule of
:func:`~cfhdask.stats.results.fwe_p`).  Pure NumPy/SciPy: no Dask, no I/O.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sstats

from cfhdask.errors import CfhdaskInputError
from cfhdask.stats.clusters import VoxelGraph
from cfhdask.stats.glm import prepare_glm
from cfhdask.stats.null import (
    batch_null_maxima,
    map_maxima,
    null_settings,
    observed_t,
)
from cfhdask.stats.permute import make_schedule, n_distinct_permutations
from cfhdask.stats.results import FWE_RTOL

__all__ = ["ENUMERATE_MAX", "SplitResult", "SplitSpec", "check_sizes", "default_sizes",
           "exceed_counts", "make_splits", "n_distinct_splits", "split_n_perm", "split_null",
           "split_perm_seed", "split_rows"]

#: Streams of the seed: split draws and the permutations of each split.
SPLIT_STREAM, PERM_STREAM = 0, 1
#: Up to this many distinct splits, all are listed and a seeded sample is taken
#: without replacement; beyond, splits are drawn one by one and repeats redrawn.
ENUMERATE_MAX = 200_000


def n_distinct_splits(n: int, sizes: tuple[int, int]) -> int:
    """Distinct splits of ``n`` participants into pseudo-groups of ``sizes``.

    ``C(n, n1 + n2) * C(n1 + n2, n1)``, halved when ``n1 == n2`` (``{A, B}``
    and ``{B, A}`` give the same two contrasts).
    """
    n1, n2 = (int(s) for s in sizes)
    if n1 < 1 or n2 < 1 or n1 + n2 > n:
        return 0
    k = math.comb(n, n1 + n2) * math.comb(n1 + n2, n1)
    return k // 2 if n1 == n2 else k


def default_sizes(n: int, study_sizes: tuple[int, int] | None = None) -> tuple[int, int]:
    """The study's group sizes when both fit in ``n`` participants, else half each."""
    if study_sizes is not None and min(study_sizes) >= 1 and sum(study_sizes) <= n:
        return int(study_sizes[0]), int(study_sizes[1])
    return n // 2, n - n // 2


def check_sizes(n: int, sizes: tuple[int, int], n_splits: int, *, what: str,
                n_nuisance: int = 1) -> int:
    """Raise a one-line error unless ``n_splits`` splits of ``sizes`` exist; return how many do.

    Parameters
    ----------
    n : int
        Participants of the group (with maps).
    sizes : (int, int)
    n_splits : int
    what : str
        The group, in messages (e.g. ``"group 'control' of participants.tsv"``).
    n_nuisance : int
        Nuisance columns (intercept and covariates): a split needs at least
        ``n_nuisance + 2`` participants to leave a degree of freedom.
    """
    n1, n2 = (int(s) for s in sizes)
    if n1 < 1 or n2 < 1:
        raise CfhdaskInputError(f"--sizes {n1},{n2}: each pseudo-group needs at least one "
                                "participant")
    if n1 + n2 > n:
        raise CfhdaskInputError(
            f"{what} has {n} participant(s) with maps: too few for pseudo-groups of {n1} and "
            f"{n2} ({n1 + n2} needed); give smaller --sizes (default: the study's sizes when "
            "they fit, else half each)")
    if n1 + n2 - n_nuisance - 1 < 1:
        raise CfhdaskInputError(
            f"--sizes {n1},{n2}: {n1 + n2} participants leave no degree of freedom for "
            f"{n_nuisance} nuisance column(s) (intercept and covariates) and the group")
    total = n_distinct_splits(n, (n1, n2))
    if n_splits > total:
        raise CfhdaskInputError(
            f"--n-splits {n_splits}: only {total} distinct split(s) of the {n} participants "
            f"of {what} into pseudo-groups of {n1} and {n2} exist; ask for at most {total}")
    return total


def _canonical(labels: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Equal sizes: swap A and B so that A holds the lowest-numbered participant used."""
    if n1 == n2:
        first = int(np.flatnonzero(labels >= 0)[0])
        if labels[first] == 0:
            used = labels >= 0
            labels[used] = 1 - labels[used]
    return labels


def _all_splits(n: int, n1: int, n2: int) -> np.ndarray:
    """Every distinct split, in lexicographic order of (used set, A)."""
    out = []
    for used in itertools.combinations(range(n), n1 + n2):
        for a in itertools.combinations(used, n1):
            if n1 == n2 and a[0] != used[0]:
                continue
            lab = np.full(n, -1, dtype=np.int8)
            lab[list(used)] = 0
            lab[list(a)] = 1
            out.append(lab)
    return np.array(out, dtype=np.int8).reshape(-1, n)


def make_splits(n: int, sizes: tuple[int, int], n_splits: int, seed: int = 0) -> np.ndarray:
    """``n_splits`` distinct seeded splits of ``n`` participants (rows of labels 1/0/-1).

    Up to :data:`ENUMERATE_MAX` distinct splits, a seeded random order of all
    of them is cut after ``n_splits``; beyond, split ``k`` is drawn from its own
    stream (``SeedSequence(seed, spawn_key=(0, k, attempt))``) and redrawn
    while it repeats an earlier one.  Either way the result is prefix-stable.

    Raises
    ------
    ValueError
        More splits asked for than exist (:func:`check_sizes` says it in words).
    """
    n1, n2 = (int(s) for s in sizes)
    total = n_distinct_splits(n, (n1, n2))
    if n_splits > total:
        raise ValueError(f"{n_splits} splits asked, {total} exist")
    if total <= ENUMERATE_MAX:
        order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_STREAM,)))
        return _all_splits(n, n1, n2)[order.permutation(total)[:n_splits]]
    out = np.empty((n_splits, n), dtype=np.int8)
    seen: set[bytes] = set()
    for k in range(n_splits):
        for attempt in itertools.count():
            rng = np.random.default_rng(
                np.random.SeedSequence(seed, spawn_key=(SPLIT_STREAM, k, attempt)))
            idx = rng.permutation(n)
            lab = np.full(n, -1, dtype=np.int8)
            lab[idx[n1:n1 + n2]] = 0
            lab[idx[:n1]] = 1
            lab = _canonical(lab, n1, n2)
            if lab.tobytes() not in seen:
                break
        seen.add(lab.tobytes())
        out[k] = lab
    return out


def split_perm_seed(seed: int, k: int) -> int:
    """Seed of the permutation schedule of split ``k``."""
    ss = np.random.SeedSequence(seed, spawn_key=(PERM_STREAM, int(k)))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def split_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (participants, in group order) of a split and their group column (1 = A)."""
    labels = np.asarray(labels)
    rows = np.flatnonzero(labels >= 0)
    return rows, (labels[rows] == 1).astype(np.float64)


def split_n_perm(labels: np.ndarray, n_perm: int, scheme: str) -> int:
    """Permutations of a split's schedule: ``n_perm``, or all distinct ones when fewer."""
    _, x = split_rows(labels)
    return int(min(n_perm, n_distinct_permutations(x, scheme)))


@dataclass(frozen=True)
class SplitSpec:
    """How each split is analysed: the study's inference settings.

    Attributes
    ----------
    n_perm : int
        Permutations per split, identity included.
    scheme, cluster_p, tfce, mass_tfce_on, tfce_dh
        As :func:`cfhdask.stats.inference.group_inference`.
    uncorrected_p : float
        The uncorrected parametric voxel threshold shown beside the FWE methods.
    """

    n_perm: int
    scheme: str
    cluster_p: float
    tfce: bool
    mass_tfce_on: str = "t"
    tfce_dh: float | None = None
    uncorrected_p: float = 0.001


@dataclass
class SplitResult:
    """One batch of one split.

    Attributes
    ----------
    count : ndarray of int64 (2, 4)
        Per sign (:data:`SIGNS`) and null statistic (:data:`NULL_STATS`):
        permutations of the batch whose maximum is at least the observed one.
    observed : ndarray (2, 4)
        The observed maxima (0 where no cluster, or without TFCE).
    n_perm : int
        Permutations of the split's whole schedule.
    df : int
    t_threshold : float
        Cluster-forming threshold (t).
    t_uncorrected : float
        t of the uncorrected voxel threshold (one-sided ``uncorrected_p``).
    null : ndarray (stop - start, 2, 4)
        The batch's null maxima (the client scores the ties of a whole split
        with :func:`cfhdask.stats.fwer.tie_level`, then drops them).
    """

    count: np.ndarray
    observed: np.ndarray
    n_perm: int
    df: int
    t_threshold: float
    t_uncorrected: float
    null: np.ndarray


def exceed_counts(null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``#{k : null[k] >= observed}`` per column, ties within ``FWE_RTOL`` as :func:`fwe_p`.

    ``count / n_perm`` over a whole null is exactly
    :func:`~cfhdask.stats.results.fwe_p` ``(null, observed)``.
    """
    obs = np.asarray(observed, dtype=np.float64)
    return (np.asarray(null) >= obs - FWE_RTOL * (1.0 + np.abs(obs))).sum(axis=0)


def split_null(Y: np.ndarray, Z: np.ndarray, graph: VoxelGraph, spec: SplitSpec,
               labels: np.ndarray, perm_seed: int, start: int, stop: int) -> SplitResult:
    """Inference of one split on permutations ``start`` to ``stop - 1`` (a fan-out task).

    Parameters
    ----------
    Y : ndarray (n, V)
        The group's maps (one row per participant, analysis voxels).
    Z : ndarray (n, q)
        The group's nuisance columns (intercept, encoded covariates).
    graph : VoxelGraph
    spec : SplitSpec
    labels : ndarray of int8 (n,)
        The split (1 = A, 0 = B, -1 unused).
    perm_seed : int
        Seed of the split's permutations (:func:`split_perm_seed`).
    start, stop : int
        The batch of the split's schedule.
    """
    rows, x = split_rows(labels)
    prep = prepare_glm(Y[rows], x, Z[rows])
    schedule = make_schedule(x, spec.n_perm, perm_seed, spec.scheme)
    t_obs = observed_t(prep, schedule, spec.scheme)
    settings = null_settings(prep.df, scheme=spec.scheme, cluster_p=spec.cluster_p,
                             tfce=spec.tfce, tfce_dh=spec.tfce_dh,
                             mass_tfce_on=spec.mass_tfce_on)
    observed = map_maxima(graph, t_obs, settings)
    stop = min(stop, schedule.n_perm)
    null = batch_null_maxima(prep, graph, schedule, start, max(start, stop), settings)
    count = exceed_counts(null, observed)
    return SplitResult(count=np.asarray(count, dtype=np.int64), observed=observed,
                       n_perm=int(schedule.n_perm), df=int(prep.df),
                       t_threshold=float(settings.t_threshold),
                       t_uncorrected=float(sstats.t.isf(spec.uncorrected_p, prep.df)),
                       null=null)
