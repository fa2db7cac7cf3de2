"""Empirical family-wise error rates of a null-check, with binomial intervals.

Each split of a null-check gives two one-sided tests (the contrasts A > B and
B > A, as a study reports both).  A method *finds something* in a test when
its smallest FWE p-value is below ``alpha`` — the rule the report and the
clinical stage use for "significant" (``p < alpha``):

* ``voxel_fwe``: the voxel-level max-T p of the peak;
* ``cluster_extent_fwe`` / ``cluster_mass_fwe``: the FWE p of the largest /
  heaviest cluster (none above the cluster-forming threshold: nothing found);
* ``tfce_fwe``: the TFCE FWE p of the peak TFCE value (with TFCE on);
* ``uncorrected``: any voxel with a parametric one-sided p below the
  uncorrected threshold (0.001), the practice the corrections protect against.

The empirical FWER is the share of tests that find something, pooled over
both contrasts (``2 * n_splits`` tests), with a binomial 95 % interval
(Clopper–Pearson, or Wilson).  The two contrasts of one split are nearly
independent (they test opposite tails of one map); the rate of the first
contrast alone (``n_splits`` independent tests) is given too.

With ``N`` permutations the rule ``p < alpha`` rejects when at most
``ceil(alpha N) - 1`` null maxima reach the observed one, so a continuous
statistic under exchangeability has exact size ``(ceil(alpha N) - 1) / N``
(:func:`rule_level`: 0.049 for N = 1000 and alpha = 0.05); ties (cluster
sizes are integers, no cluster at all is common) make it smaller:
:func:`tie_level` is the exact size for a given permutation distribution,
ties and empty maps included (the level a method can attain on that data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats as sstats

from cfhdask.stats.null import NULL_STATS
from cfhdask.stats.results import FWE_RTOL

__all__ = ["INTERVALS", "METHODS", "attainable_levels", "binomial_interval", "found_by_method",
           "fwer_table", "rule_level", "split_p_values", "split_tie_levels", "tie_level"]

#: Methods of the summary, in this order; the FWE ones map to :data:`NULL_STATS`.
METHODS: tuple[str, ...] = ("voxel_fwe", "cluster_extent_fwe", "cluster_mass_fwe",
                            "tfce_fwe", "uncorrected")
_STAT_OF = dict(zip(METHODS[:4], NULL_STATS, strict=True))
#: Binomial interval methods.
INTERVALS: tuple[str, ...] = ("clopper-pearson", "wilson")


def rule_level(alpha: float, n_perm: int) -> float:
    """Exact size of ``p < alpha`` with ``n_perm`` permutations (continuous statistic)."""
    return (math.ceil(alpha * n_perm) - 1) / n_perm


def tie_level(null: np.ndarray, alpha: float, n_perm: int | None = None, *,
              positive: bool = True, rtol: float = FWE_RTOL) -> float:
    """Exact size of ``p < alpha`` for a permutation distribution with ties and zeros.

    Under exchangeability the observed statistic is one draw of its own
    permutation distribution.  With ties (integer cluster sizes) some levels
    cannot be hit, and a map without any cluster (value 0) finds nothing
    whatever its p, so the size of the rule is below :func:`rule_level`.

    Parameters
    ----------
    null : ndarray (N,) or (N, m)
        Values of one statistic over the permutations; each column (e.g. the
        two contrasts) is scored on its own and the levels are averaged.
    alpha : float
    n_perm : int, optional
        ``None``: ``null`` is the whole permutation distribution (an exhaustive
        schedule) and the result is the share of its values ``v > 0`` with
        ``#{null >= v} / N < alpha``.  An int: the test uses the observed
        statistic and ``n_perm - 1`` permutations drawn at random from the
        distribution ``null`` stands for, so the level is
        ``E_v[P(Binomial(n_perm - 1, S(v)) <= c - 1)]`` over ``v > 0`` with
        ``S(v)`` the share of ``null >= v`` and ``c = ceil(alpha n_perm) - 1``
        (for a continuous statistic this is :func:`rule_level`).
    positive : bool
        Only values above 0 can reject (cluster and TFCE statistics: no
        cluster finds nothing); ``False`` for max t.
    rtol : float
        Ties within ``rtol * (1 + |v|)``, as :func:`~cfhdask.stats.results.fwe_p`.

    Returns
    -------
    float
    """
    null = np.asarray(null, dtype=np.float64)
    null = null.reshape(null.shape[0], -1)
    levels = []
    for col in null.T:
        srt = np.sort(col)
        share = (srt.size - np.searchsorted(srt, col - rtol * (1.0 + np.abs(col)),
                                            side="left")) / srt.size
        if n_perm is None:
            reject = (share < alpha).astype(np.float64)
        else:
            c = math.ceil(alpha * n_perm) - 1
            reject = sstats.binom.cdf(c - 1, n_perm - 1, share) if c >= 1 else \
                np.zeros(col.size)
        levels.append(float(np.mean(np.where(col > 0, reject, 0.0) if positive else reject)))
    return float(np.mean(levels))


def split_tie_levels(null: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`tie_level` of each contrast and statistic of one split: (2, 4).

    ``null`` (N, 2, 4) is the split's whole null, identity included: given
    that multiset of values, the observed one is any of them with equal
    probability, so the level is the expected rate of a method on that split.
    """
    null = np.asarray(null, dtype=np.float64)
    return np.array([[tie_level(null[:, i, j], alpha, positive=j > 0)
                      for j in range(null.shape[2])] for i in range(null.shape[1])])


def attainable_levels(levels: np.ndarray, tfce: bool) -> dict[str, float]:
    """Per FWE method, the mean of :func:`split_tie_levels` (S, 2, 4) over splits and
    contrasts: the FWER the method is expected to show on these data."""
    return {m: float(np.mean(levels[:, :, NULL_STATS.index(stat)]))
            for m, stat in _STAT_OF.items() if tfce or m != "tfce_fwe"}


def binomial_interval(k: int, n: int, level: float = 0.95,
                      method: str = "clopper-pearson") -> tuple[float, float]:
    """Two-sided confidence interval of a binomial proportion ``k / n``.

    Parameters
    ----------
    k, n : int
        Successes and trials (n >= 1).
    level : float
    method : {"clopper-pearson", "wilson"}
        Clopper–Pearson (exact, beta quantiles; ``[0, .]`` at k = 0 and
        ``[., 1]`` at k = n) or Wilson's score interval.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"binomial interval of {k} / {n}")
    a = 1.0 - level
    if method == "clopper-pearson":
        lo = 0.0 if k == 0 else float(sstats.beta.ppf(a / 2, k, n - k + 1))
        hi = 1.0 if k == n else float(sstats.beta.ppf(1 - a / 2, k + 1, n - k))
        return lo, hi
    if method == "wilson":
        z = float(sstats.norm.isf(a / 2))
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return max(0.0, centre - half), min(1.0, centre + half)
    raise ValueError(f"unknown interval {method!r} ({', '.join(INTERVALS)})")


def split_p_values(count: np.ndarray, n_perm: np.ndarray) -> np.ndarray:
    """FWE p-values ``count / n_perm`` of every split, sign and statistic: (S, 2, 4)."""
    count = np.asarray(count, dtype=np.float64)
    return count / np.asarray(n_perm, dtype=np.float64).reshape(-1, 1, 1)


def found_by_method(p: np.ndarray, observed: np.ndarray, t_uncorrected: np.ndarray,
                   alpha: float, tfce: bool) -> dict[str, np.ndarray]:
    """Per method, whether each test (split, contrast) finds something: (S, 2) bool each.

    Parameters
    ----------
    p : ndarray (S, 2, 4)
        :func:`split_p_values`.
    observed : ndarray (S, 2, 4)
        Observed maxima (``max_t`` first).
    t_uncorrected : ndarray (S,)
        t of the uncorrected voxel threshold at each split's df.
    alpha : float
    tfce : bool
        Whether TFCE was run (its method is left out otherwise).
    """
    out = {}
    for m, stat in _STAT_OF.items():
        if m == "tfce_fwe" and not tfce:
            continue
        j = NULL_STATS.index(stat)
        found = p[:, :, j] < alpha
        if j:  # no cluster / no TFCE above 0: nothing found whatever its p
            found &= observed[:, :, j] > 0
        out[m] = found
    out["uncorrected"] = observed[:, :, 0] > np.asarray(t_uncorrected).reshape(-1, 1)
    return out


def fwer_table(positive: Mapping[str, np.ndarray], alpha: float, *, level: float = 0.95,
               interval: str = "clopper-pearson",
               attainable: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The empirical FWER of each method with its binomial interval.

    Parameters
    ----------
    positive : dict method -> ndarray of bool (S, 2)
        :func:`found_by_method`.
    alpha : float
        Nominal level.
    level : float
        Confidence of the intervals.
    interval : {"clopper-pearson", "wilson"}
    attainable : dict method -> float, optional
        The level each method can attain on these data, ties and empty maps
        included (:func:`tie_level` of each split's permutation distribution,
        averaged): column ``attainable`` (NaN where not given).

    Returns
    -------
    DataFrame
        One row per method: ``method, n_splits, n_tests, n_positive, fwer,
        ci_low, ci_high, nominal, attainable, verdict, fwer_first, ci_low_first,
        ci_high_first, rate_either``.  ``verdict`` is ``within`` (the interval
        holds ``alpha``), ``conservative`` (entirely below) or
        ``anti-conservative`` (entirely above).
    """
    rows = []
    for m in [m for m in METHODS if m in positive]:
        hit = np.asarray(positive[m], dtype=bool)
        s = hit.shape[0]
        k, n = int(hit.sum()), int(hit.size)
        lo, hi = binomial_interval(k, n, level, interval)
        k1 = int(hit[:, 0].sum())
        lo1, hi1 = binomial_interval(k1, s, level, interval)
        verdict = ("anti-conservative" if lo > alpha else
                   "conservative" if hi < alpha else "within")
        rows.append({"method": m, "n_splits": s, "n_tests": n, "n_positive": k,
                     "fwer": k / n, "ci_low": lo, "ci_high": hi, "nominal": alpha,
                     "attainable": float((attainable or {}).get(m, np.nan)),
                     "verdict": verdict, "fwer_first": k1 / s, "ci_low_first": lo1,
                     "ci_high_first": hi1, "rate_either": float(hit.any(axis=1).mean())})
    return pd.DataFrame(rows)
