"""GLM kernels: t-statistics of one effect under permutations of the data or the labels.

Notation: ``Y`` (n, V) data, ``x`` (n,) the effect of interest, ``Z`` (n, q)
the nuisance columns, ``R_z = I - Q_z Q_z'`` the residual-forming matrix of
``Z`` (``Q_z`` an orthonormal basis), ``E = R_z Y`` and ``x_r = R_z x``.

*Freedman–Lane* fits the full model to ``Y* = P E + H_z Y``.  The Z-part does
not change the t of ``x``, and by Frisch–Waugh–Lovell, with ``W = P E``::

    a = x_r' W = (P' x_r)' E,         b = Q_z' W = (P' Q_z)' E      (one GEMM)
    SSE = ||E||^2 - ||b||^2 - a^2 / ||x_r||^2,   t = a / (||x_r|| sqrt(SSE / df))

so a batch of B permutations is one ``(B (1+q), n) @ (n, V)`` product.
*Draper–Stoneman* permutes ``x`` (covariates fixed): with ``x_k = R_z P x``,
``a = x_k' E``, ``SSE = ||E||^2 - a^2/||x_k||^2``, ``t = a / (||x_k|| sqrt(SSE/df))``.
The identity permutation gives the ordinary OLS t of the full model.
When the intercept is among the nuisance columns, ``Q_z`` is rotated so that
its first column is the constant: ``1' P E = 1' E = 0`` for every ``P``, so
only the other columns (``Q_v``) enter the GEMM.

:func:`permuted_t` is the float64 reference.  :func:`permuted_t_fast` runs the
same algebra with float32 GEMMs on cache-sized voxel chunks (the null
distribution's hot loop); :func:`exact_t` recomputes chosen voxels of one
permutation in float64, so that callers can make every threshold decision on
float64 values (see :mod:`cfhdask.stats.null`).
Kernels are NumPy/CuPy agnostic (:func:`cfhdask.backend.array_module`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfhdask.backend import aligned, array_module

SCHEMES = ("freedman-lane", "draper-stoneman")
#: Permutations per GEMM inside a task.  Fixed and aligned on the global
#: permutation index so that results are bitwise identical whatever the task
#: batch size or the number of workers.
MICRO_BATCH = 16
#: Voxels per GEMM chunk of :func:`permuted_t_fast` (keeps the products in cache).
VOXEL_CHUNK = 4096


@dataclass
class GLMPrep:
    """Quantities precomputed once and shared by every permutation.

    Attributes
    ----------
    E : ndarray (n, V)
        Residuals of the data on the nuisance columns, ``R_z Y``.
    ss : ndarray (V,)
        Column sums of squares of ``E``.
    x : ndarray (n,)
        The column of interest (raw; Draper–Stoneman permutes it).
    xr : ndarray (n,)
        ``R_z x``.
    Qz : ndarray (n, q)
        Orthonormal basis of the nuisance columns.
    df : int
        ``n - rank(X)``.
    Qv : ndarray (n, q')
        The columns of ``Qz`` that a permutation can change (all but the
        constant, when the intercept is in the nuisance space).
    E32 : ndarray (n, V), float32
        ``E`` in single precision, for :func:`permuted_t_fast`.
    """

    E: np.ndarray
    ss: np.ndarray
    x: np.ndarray
    xr: np.ndarray
    Qz: np.ndarray
    df: int
    Qv: np.ndarray
    E32: np.ndarray

    @property
    def n(self) -> int:
        """Number of subjects."""
        return int(self.E.shape[0])

    @property
    def n_voxels(self) -> int:
        """Number of voxels."""
        return int(self.E.shape[1])


def orthonormal_basis(Z: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (n, rank) of the column space of ``Z`` (SVD, rank-revealing)."""
    xp = array_module(Z)
    if Z.shape[1] == 0:
        return xp.zeros((Z.shape[0], 0), dtype=Z.dtype)
    u, s, _ = xp.linalg.svd(Z, full_matrices=False)
    keep = s > rtol * s.max()
    return u[:, keep]


def prepare_glm(Y: np.ndarray, x: np.ndarray, Z: np.ndarray, dtype=np.float64) -> GLMPrep:
    """Residualise the data on the nuisance columns.

    Parameters
    ----------
    Y : ndarray (n, V)
        Data (subjects x voxels), finite.
    x : ndarray (n,)
        Column of interest.
    Z : ndarray (n, q)
        Nuisance columns (intercept, covariates).
    dtype : dtype
        Precision of the kernels (float64 default).

    Returns
    -------
    GLMPrep
    """
    xp = array_module(Y)
    Y = xp.asarray(Y, dtype=dtype)
    x = xp.asarray(x, dtype=dtype)
    Z = xp.asarray(Z, dtype=dtype)
    Qz = orthonormal_basis(Z)
    E = Y - Qz @ (Qz.T @ Y)
    xr = x - Qz @ (Qz.T @ x)
    rank = Qz.shape[1] + int(float(xp.linalg.norm(xr)) > 1e-10 * float(xp.linalg.norm(x)))
    n = Y.shape[0]
    one = xp.full((n, 1), 1.0 / np.sqrt(n), dtype=dtype)
    Qv = Qz
    if Qz.shape[1] and float(xp.linalg.norm(one - Qz @ (Qz.T @ one))) < 1e-8:
        rest = Qz - one @ (one.T @ Qz)
        Qv = orthonormal_basis(rest, rtol=1e-8)[:, :Qz.shape[1] - 1]
    return GLMPrep(E=E, ss=(E * E).sum(axis=0), x=x, xr=xr, Qz=Qz, df=n - rank, Qv=Qv,
                   E32=xp.ascontiguousarray(E, dtype=np.float32))


def _t_from_parts(a, ss, bss, s2, df):
    """t = a / (||x|| sqrt(SSE/df)) with SSE = ss - bss - a^2/s2; 0 where undefined."""
    xp = array_module(a)
    sse = ss - bss - a * a / s2[:, None]
    sse = xp.maximum(sse, 0.0)
    denom = xp.sqrt(s2)[:, None] * xp.sqrt(sse / df)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = xp.where(denom > 0, a / xp.where(denom > 0, denom, 1.0), 0.0)
    return t


def permuted_t(prep: GLMPrep, perms: np.ndarray, scheme: str = "freedman-lane") -> np.ndarray:
    """t-maps of the effect for a batch of permutations.

    Parameters
    ----------
    prep : GLMPrep
    perms : ndarray of int, shape (B, n)
        Row ``k`` is a permutation ``p`` of the subjects: Freedman–Lane uses
        the permuted residuals ``E[p]``, Draper–Stoneman the labels ``x[p]``.
    scheme : {"freedman-lane", "draper-stoneman"}

    Returns
    -------
    ndarray of shape (B, V)
    """
    xp = array_module(prep.E)
    perms = np.asarray(perms)
    B, n = perms.shape
    if scheme == "freedman-lane":
        q = prep.Qv.shape[1]
        # rows [P'x_r ; P'Q_v] for each permutation: (P'v)[p[i]] = v[i]
        M = xp.zeros((B, 1 + q, n), dtype=prep.E.dtype)
        cols = xp.concatenate([prep.xr[:, None], prep.Qv], axis=1).T  # (1+q, n)
        pidx = xp.asarray(perms)
        for k in range(B):
            M[k][:, pidx[k]] = cols
        out = (M.reshape(B * (1 + q), n) @ aligned(prep.E)).reshape(B, 1 + q, -1)
        a = out[:, 0]
        bss = (out[:, 1:] ** 2).sum(axis=1) if q else xp.zeros_like(a)
        s2 = xp.full(B, float(prep.xr @ prep.xr), dtype=prep.E.dtype)
        return _t_from_parts(a, prep.ss, bss, s2, prep.df)
    if scheme == "draper-stoneman":
        xk = prep.x[xp.asarray(perms)]  # (B, n)
        xk = xk - (xk @ prep.Qz) @ prep.Qz.T
        a = xk @ aligned(prep.E)
        s2 = (xk * xk).sum(axis=1)
        return _t_from_parts(a, prep.ss, 0.0, s2, prep.df)
    raise ValueError(f"unknown permutation scheme {scheme!r} ({', '.join(SCHEMES)})")


def _design_rows(prep: GLMPrep, perms, scheme: str):
    """GEMM rows of a batch, grouped by kind: ``(M (r B, n), s2 (B,))``.

    Freedman–Lane: rows ``0..B-1`` are ``P'x_r``, then ``B`` rows per column of
    ``Q_v``; Draper–Stoneman: ``B`` rows ``R_z P x``.
    """
    xp = array_module(prep.E)
    pidx = xp.asarray(perms)
    if scheme == "freedman-lane":
        inv = xp.argsort(pidx, axis=1)  # (P'v) = v[inv]
        cols = xp.concatenate([prep.xr[:, None], prep.Qv], axis=1).T  # (r, n)
        M = cols[:, inv].reshape(-1, pidx.shape[1])
        s2 = xp.full(pidx.shape[0], float(prep.xr @ prep.xr))
        return M, s2
    if scheme == "draper-stoneman":
        xk = prep.x[pidx]
        xk = xk - (xk @ prep.Qz) @ prep.Qz.T
        return xk, (xk * xk).sum(axis=1)
    raise ValueError(f"unknown permutation scheme {scheme!r} ({', '.join(SCHEMES)})")


def permuted_t_fast(prep: GLMPrep, perms: np.ndarray, scheme: str = "freedman-lane",
                    chunk: int = VOXEL_CHUNK) -> np.ndarray:
    """:func:`permuted_t` with float32 GEMMs on voxel chunks (the null's hot loop).

    Sums of squares of the data stay float64-derived; the t-values differ from
    the float64 reference by ~1e-6 (use :func:`exact_t` where a decision
    depends on the last digits).  Deterministic for a given ``perms`` and
    ``chunk``.

    Returns
    -------
    ndarray of float32, shape (B, V)
    """
    xp = array_module(prep.E)
    B = len(perms)
    M, s2 = _design_rows(prep, perms, scheme)
    M = xp.ascontiguousarray(M, dtype=np.float32)
    e32 = aligned(prep.E32)  # prep may come from another worker
    scale = xp.sqrt(prep.df / s2).astype(np.float32)[:, None]
    inv_s2 = (1.0 / s2).astype(np.float32)[:, None]
    ss = prep.ss.astype(np.float32)
    V = prep.n_voxels
    out = xp.empty((B, V), dtype=np.float32)
    G = xp.empty((M.shape[0], min(chunk, V)), dtype=np.float32)
    for c0 in range(0, V, chunk):
        c1 = min(c0 + chunk, V)
        g = G[:, :c1 - c0]
        xp.matmul(M, e32[:, c0:c1], out=g)
        a = g[:B]
        sse = ss[c0:c1] - a * a * inv_s2
        if M.shape[0] > B:
            b = g[B:]
            xp.square(b, out=b)
            sse -= b.reshape(-1, B, c1 - c0).sum(axis=0)
        o = out[:, c0:c1]
        xp.sqrt(sse, out=sse, where=sse > 0)
        xp.divide(a, sse, out=o, where=sse > 0)
        o[~(sse > 0)] = 0.0
        o *= scale
    return out


def exact_t(prep: GLMPrep, perm: np.ndarray, idx: np.ndarray,
            scheme: str = "freedman-lane") -> np.ndarray:
    """Float64 t of one permutation at voxels ``idx`` (same algebra as :func:`permuted_t`)."""
    M, s2 = _design_rows(prep, np.asarray(perm)[None], scheme)
    G = M @ prep.E[:, idx]
    a = G[:1]
    bss = (G[1:] ** 2).sum(axis=0)[None] if G.shape[0] > 1 else 0.0
    return _t_from_parts(a, prep.ss[idx], bss, s2, prep.df)[0]


def ols_t(Y: np.ndarray, X: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, int]:
    """Plain OLS t-map of contrast ``c`` (float64 reference; used for checks).

    Returns
    -------
    t : ndarray (V,)
    df : int
    """
    xp = array_module(Y)
    X = xp.asarray(X, dtype=np.float64)
    Y = xp.asarray(Y, dtype=np.float64)
    pinv = xp.linalg.pinv(X)
    beta = pinv @ Y
    res = Y - X @ beta
    df = X.shape[0] - int(xp.linalg.matrix_rank(X))
    sigma2 = (res * res).sum(axis=0) / df
    var_c = float(c @ pinv @ pinv.T @ c)
    return (c @ beta) / xp.sqrt(sigma2 * var_c), df
