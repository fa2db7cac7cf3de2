"""Compile (and cache) every numba kernel of cfhdask once, before a cluster needs them.

The compiled kernels (the standardisation and pair sums of :mod:`cfhdask.cfh.kernels`,
the low-rank CFH kernel of :mod:`cfhdask.cfh.lowrank`, the group candidates of
:mod:`cfhdask.cfh.lowrank_group`, TFCE in :mod:`cfhdask.stats.tfce`) are compiled by
numba the first time a process calls them, and cached on disk (``cache=True``): in
``NUMBA_CACHE_DIR`` when it is set, otherwise next to the sources when their folder is
writable, otherwise in the user's cache folder.  A process that finds no cache compiles
them itself: about 5 s of CPU per worker process on the development machine
(``benchmarks/bench_scale.py`` prints it), paid at once by every worker of a fresh
cluster, which on a node with fewer cores than workers is a pause of tens of seconds.
:func:`compile_kernels` runs each kernel once on tiny data, with the argument types the
pipelines pass, so that the cache is written once (an image build, an installation, a
benchmark's set-up) and every later process only loads it.

Usage::

    python -m cfhdask.warmup            # compile into the cache, print what it took
    NUMBA_CACHE_DIR=/opt/numba python -m cfhdask.warmup   # a cache folder of your choice
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np

from cfhdask.cfh import kernels, lowrank, lowrank_group
from cfhdask.cfh.kernels import paired_correlations, standardize
from cfhdask.cfh.lowrank import lowrank_maxcorr
from cfhdask.cfh.lowrank_group import (
    bounded_candidates,
    group_slack,
    project_batch,
    residual_bound,
    subject_basis,
)
from cfhdask.stats import clusters, tfce

__all__ = ["KERNEL_MODULES", "cache_counts", "compile_kernels", "compiled_kernels"]

#: The modules whose numba kernels :func:`compile_kernels` compiles.
KERNEL_MODULES = (kernels, lowrank, lowrank_group, tfce)


def compiled_kernels() -> Iterator[tuple[str, object]]:
    """``(module.name, dispatcher)`` of every numba kernel of :data:`KERNEL_MODULES`."""
    from numba.core.registry import CPUDispatcher

    for module in KERNEL_MODULES:
        for name, value in sorted(vars(module).items()):
            if isinstance(value, CPUDispatcher):
                yield f"{module.__name__}.{name}", value


def cache_counts() -> dict[str, tuple[int, int, int]]:
    """``{kernel: (signatures compiled or loaded, cache hits, cache misses)}`` so far in
    this process (a miss is a compilation)."""
    out = {}
    for name, f in compiled_kernels():
        stats = f.stats
        out[name] = (len(f.signatures), int(sum(stats.cache_hits.values())),
                     int(sum(stats.cache_misses.values())))
    return out


def _band_limited(rng: np.random.Generator, n: int, n_time: int, rank: int) -> np.ndarray:
    """``n`` series of ``rank`` slow cosines plus a little noise (float32), as band-passed
    series are: the low-rank paths run on them."""
    t = (np.arange(n_time) + 0.5) / n_time
    slow = np.cos(np.pi * np.arange(1, rank + 1)[:, None] * t)
    x = rng.standard_normal((n, rank)) @ slow + 1e-4 * rng.standard_normal((n, n_time))
    return (100.0 + x).astype(np.float32)


def compile_kernels(seed: int = 0) -> dict[str, tuple[int, int, int]]:
    """Run every compiled kernel once, with the pipelines' argument types.

    Returns
    -------
    dict
        :func:`cache_counts` after the run.
    """
    rng = np.random.default_rng(seed)
    n_side, n_time = 96, 40
    x = _band_limited(rng, 2 * n_side, n_time, 6)
    x[3] = 100.0  # a constant series: the invalid paths too
    # subject mode: the low-rank CFH kernel, its exact pass and its full-rank blocks
    zl, vl = standardize(x[:n_side])
    zr, vr = standardize(x[n_side:])
    lowrank_maxcorr(zl, zr, vl, vr, block=32)
    noise = rng.standard_normal((2 * n_side, n_time)).astype(np.float32)
    nl, nvl = standardize(noise[:n_side])
    nr, nvr = standardize(noise[n_side:])
    lowrank_maxcorr(nl, nr, nvl, nvr, block=32)
    # group mode: each subject's basis, a batch's coefficients, the bounded candidates
    bases = [subject_basis(z) for z in (standardize(x)[0], standardize(noise)[0])]
    coef, valid, e2 = project_batch([x, noise], bases)
    e = residual_bound(e2)
    bounded_candidates(coef[:n_side] @ coef[n_side:].T, e[:n_side], e[n_side:],
                       group_slack([int(b.rank) for b in bases], 2), valid[:n_side],
                       valid[n_side:], 0, n_side)
    # the group counterpart's r of each subject with it, and VMHC
    paired_correlations(x, np.r_[np.arange(n_side, 2 * n_side), np.arange(n_side)])
    # TFCE on a small voxel graph
    ijk = np.argwhere(np.ones((4, 4, 3), dtype=bool)).astype(np.int32)
    graph = clusters.voxel_graph(ijk, (4, 4, 3))
    stat = rng.standard_normal((2, len(ijk)))
    clusters.tfce_batch(graph, stat, [0.1, 0.1])
    return cache_counts()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cfhdask.warmup",
        description="Compile every numba kernel of cfhdask once and write numba's cache, so "
                    "that worker processes load the kernels instead of compiling them. The "
                    "cache goes to NUMBA_CACHE_DIR when it is set, else next to the sources "
                    "when their folder is writable, else to the user's cache folder. Run it "
                    "with the environment the workers get: set NUMBA_CACHE_DIR to a folder "
                    "they can read and write where the installation is read-only (a "
                    "container image, a shared software module).")
    p.parse_args(argv)
    t0 = time.perf_counter()
    counts = compile_kernels()
    seconds = time.perf_counter() - t0
    compiled = sum(m for _, _, m in counts.values())
    loaded = sum(h for _, h, _ in counts.values())
    print(f"cfhdask.warmup: {len(counts)} kernels in {seconds:.1f} s: {compiled} "
          f"signature(s) compiled, {loaded} loaded from the cache (kernels called only "
          "from other kernels are compiled into them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
