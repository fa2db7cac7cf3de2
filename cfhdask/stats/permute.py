"""Permutation schedules: seeded, exhaustive when small, identity first.

Permutation ``k`` of a random schedule is drawn from its own stream,
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(k,)))``, so any
batch of the schedule can be generated anywhere (on any worker, in any
order) and always gives the same permutations: results do not depend on the
number of workers or the batch size.  Permutation 0 is always the identity.

When the number of *distinct* permutations is at most the number asked for,
the schedule is exhaustive instead (every distinct permutation once,
identity first): for Freedman–Lane every reordering of the residuals
(``n!``), for Draper–Stoneman every distinct relabelling of the column of
interest (``n! / prod(n_g!)`` over its distinct values).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def n_distinct_permutations(x: np.ndarray, scheme: str) -> int:
    """Number of distinct permutations of a scheme (may be huge)."""
    n = len(x)
    if scheme == "draper-stoneman":
        _, counts = np.unique(np.asarray(x), return_counts=True)
        out = math.factorial(n)
        for c in counts:
            out //= math.factorial(int(c))
        return out
    return math.factorial(n)


def _distinct_relabellings(x: np.ndarray) -> np.ndarray:
    """Index arrays ``p`` giving every distinct ``x[p]``, identity first."""
    x = np.asarray(x)
    n = len(x)
    vals = np.unique(x)
    out = [np.arange(n)]
    seen = {x.tobytes()}
    # assign positions to values level by level (multiset permutations)
    src = {v: np.flatnonzero(x == v) for v in vals}

    def rec(free: tuple[int, ...], level: int, assign: dict):
        if level == len(vals) - 1:
            a = dict(assign)
            a[vals[level]] = free
            p = np.empty(n, dtype=np.int64)
            for v, posns in a.items():
                p[list(posns)] = src[v]
            key = x[p].tobytes()
            if key not in seen:
                seen.add(key)
                out.append(p)
            return
        k = len(src[vals[level]])
        for comb in itertools.combinations(free, k):
            rest = tuple(i for i in free if i not in comb)
            assign[vals[level]] = comb
            rec(rest, level + 1, assign)

    rec(tuple(range(n)), 0, {})
    return np.array(out)


@dataclass(frozen=True)
class PermutationSchedule:
    """The permutations of an analysis.

    Attributes
    ----------
    n : int
        Number of subjects.
    n_perm : int
        Number of permutations actually used (identity included).
    seed : int
    exhaustive : bool
    table : ndarray (n_perm, n) or None
        The explicit permutations of an exhaustive schedule.
    """

    n: int
    n_perm: int
    seed: int
    exhaustive: bool
    table: np.ndarray | None = None

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Permutations ``start`` to ``stop - 1`` as an int array (stop - start, n)."""
        stop = min(stop, self.n_perm)
        if self.table is not None:
            return self.table[start:stop]
        out = np.empty((max(0, stop - start), self.n), dtype=np.int64)
        for row, k in enumerate(range(start, stop)):
            if k == 0:
                out[row] = np.arange(self.n)
            else:
                ss = np.random.SeedSequence(self.seed, spawn_key=(k,))
                out[row] = np.random.default_rng(ss).permutation(self.n)
        return out


def make_schedule(x: np.ndarray, n_perm: int, seed: int = 0,
                  scheme: str = "freedman-lane") -> PermutationSchedule:
    """Schedule of ``n_perm`` permutations (fewer when exhaustive).

    Parameters
    ----------
    x : ndarray (n,)
        Column of interest (its distinct values bound the Draper–Stoneman count).
    n_perm : int
        Permutations asked for, identity included (>= 1).
    seed : int
    scheme : {"freedman-lane", "draper-stoneman"}
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    n = len(x)
    distinct = n_distinct_permutations(x, scheme)
    if distinct <= n_perm:
        if scheme == "draper-stoneman":
            table = _distinct_relabellings(x)
        else:
            table = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        return PermutationSchedule(n=n, n_perm=len(table), seed=seed, exhaustive=True,
                                   table=table)
    return PermutationSchedule(n=n, n_perm=int(n_perm), seed=int(seed), exhaustive=False)
