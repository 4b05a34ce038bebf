r"""Pure numpy kernels for one side of a half-step, and the read-out. No Spark, no pandas.

With the other side fixed, every row of the side being solved has a Gaussian
conditional over its k unknowns. Row i's system is

.. math::

    A_i x_i = b_i, \qquad A_i = \alpha\,(F_I^\top F_I + D_i) + s_i P, \qquad
    b_i = \alpha\,F_I^\top t_i + h

where ``F_I`` (n_i x k) holds the rows of the fixed design matrix for the n_i
entries of row i, ``t_i`` their targets, P the prior precision (a diagonal ``reg``
or a full matrix), ``s_i = 1`` (PMF) or ``n_i`` (ALS-WR, count scaling), and the
model decides the rest: ridge rows (:func:`ridge_rows`: α = 1, D = 0, h = 0),
variational rows (:func:`vb_rows`: D the fixed side's posterior variances summed
over the row's entries) and Gibbs draws (:func:`gibbs_rows`: α the noise precision,
h = P μ, and a draw from N(A^{-1} b, A^{-1})).

All three share one Gram-accumulation step (:func:`_accumulate`): the rows are
walked in chunks of a bounded number of entries; for each row the design rows are
gathered and ``X^T X`` formed (numpy hands a 2-D ``A.T @ A`` to BLAS ``syrk``,
half the work of a general product and measured 1.5-7x faster than one stacked,
padded ``matmul``) with ``X^T t``; then the chunk is solved with one stacked
``np.linalg.solve``. Rows with no entries are the prior mean, 0.

Array conventions: ``indptr`` int (n_rows + 1,), ``cols`` int (nnz,) indices into
``design`` float64 (n_fixed, k), ``targets`` float64 (nnz,); every result is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmf_spark.kernels.backends import (
    BACKENDS,
    compiled,
    kernel_backend,
    kernel_compile_seconds,
    padded_design,
)
from pmf_spark.kernels.backends import note_backend as _note_backend

#: Entries gathered per chunk of rows (bounds the memory of the gathered rows).
CHUNK_ENTRIES = 1 << 16

@dataclass(frozen=True)
class ReadOut:
    """From model outputs in z units to ratings: the data's standardisation and the
    model's link. ``linear``: ``mu + sigma * z``, clipped to [lo, hi] when ``clip``;
    ``sigmoid``: ``lo + (hi - lo) * sigmoid(z)`` (the seed document's read-out)."""

    mu: float
    sigma: float
    lo: float
    hi: float
    link: str = "linear"
    clip: bool = True

    def to_rating(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if self.link == "sigmoid":
            return self.lo + (self.hi - self.lo) / (1.0 + np.exp(-z))
        r = self.mu + self.sigma * z
        return np.clip(r, self.lo, self.hi) if self.clip else r

    def to_z(self, rating: np.ndarray) -> np.ndarray:
        """Ratings standardised: the targets of a rating model."""
        return (np.asarray(rating, dtype=np.float64) - self.mu) / self.sigma


@dataclass(frozen=True)
class RowSolution:
    """What a row kernel returns.

    Attributes:
        x: float64 (n_rows, k), the solved (or sampled) rows; 0 for rows without entries.
        fitted: float64 (nnz,) ``F[cols[e]] . x[row(e)]`` for every entry, in entry
            order (``with_fitted``), else None.
        inv_diag: float64 (n_rows, k) diag(A_i^{-1}) (variational rows; 0 for empty rows).
        gram_diag: float64 (n_rows, k) diag(F_I^T F_I) (variational rows).
        var_sum: float64 (n_rows, k) the fixed side's variances summed over the row's
            entries (variational rows).
    """

    x: np.ndarray
    fitted: np.ndarray | None
    inv_diag: np.ndarray | None = None
    gram_diag: np.ndarray | None = None
    var_sum: np.ndarray | None = None


def row_chunks(counts: np.ndarray, max_entries: int = CHUNK_ENTRIES) -> list[np.ndarray]:
    """Consecutive ranges of the rows with entries, each with at most
    ``max_entries`` entries (or one row): a list of int64 row-index arrays."""
    rows = np.flatnonzero(np.asarray(counts) > 0)
    out, start, total = [], 0, 0
    for j, r in enumerate(rows):
        c = int(counts[r])
        if j > start and total + c > max_entries:
            out.append(rows[start:j])
            start, total = j, 0
        total += c
    if start < rows.size:
        out.append(rows[start:])
    return out


def solve_stack(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a stack of symmetric systems (m, k, k) x = (m, k), falling back to least
    squares per singular system (only possible when a regularisation weight is 0)."""
    try:
        return np.linalg.solve(gram, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.empty_like(rhs)
        for i in range(gram.shape[0]):
            out[i] = np.linalg.lstsq(gram[i], rhs[i], rcond=None)[0]
        return out


class _Block:
    """A CSR block prepared for :func:`_accumulate` (arrays cast once)."""

    def __init__(self, indptr, cols, targets, design, gram_dtype, weights=None,
                 backend: str = "auto"):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.cols = np.asarray(cols)
        self.targets = np.asarray(targets, dtype=np.float64)
        # per-entry Gram weights w_e >= 0 (implicit feedback): X^T diag(w) X = Xs^T Xs
        # with Xs = sqrt(w) X, still one syrk per row
        self.root_w = None if weights is None else np.sqrt(np.asarray(weights, np.float64))
        self.design = np.asarray(design, dtype=np.float64)
        self.gdt = np.dtype(gram_dtype)
        self.design_g = self.design.astype(self.gdt, copy=False)
        self.n_rows = self.indptr.size - 1
        self.k = self.design.shape[1]
        self.counts = np.diff(self.indptr)
        self.C = compiled(backend)
        _note_backend(self.C is not None)

    def compiled_args(self):
        """(targets, sqrt weights, padded design) in the Gram dtype, for the compiled
        kernels."""
        C = self.C
        w = (np.zeros(0, self.gdt) if self.root_w is None
             else self.root_w.astype(self.gdt, copy=False))
        return (self.targets.astype(self.gdt, copy=False), w,
                padded_design(C, self.design, self.gdt))

    def chunks(self):
        """(rows, gram, rhs) per chunk of rows; gram/rhs are views of reused buffers
        (fresh large allocations page-fault on every chunk)."""
        chunks = row_chunks(self.counts, CHUNK_ENTRIES)
        most = max((c.size for c in chunks), default=0)
        gram_buf, rhs_buf = np.empty((most, self.k, self.k)), np.empty((most, self.k))
        for rows in chunks:
            yield rows, gram_buf[:rows.size], rhs_buf[:rows.size]


def _accumulate(b: _Block, rows: np.ndarray, gram: np.ndarray, rhs: np.ndarray,
                keep: bool) -> list[np.ndarray] | None:
    """The shared Gram step: ``gram[j] = X^T W X`` and ``rhs[j] = X^T t`` for each row
    ``rows[j]``, X its gathered design rows (in ``gram_dtype``). Returns the gathered
    X per row when ``keep`` (to compute fitted values without gathering again); None
    from the compiled kernels (fitted values are then computed afresh)."""
    if b.C is not None:
        t, w, X = b.compiled_args()
        b.C.gram_rows(b.indptr, b.cols, t, w, X, np.asarray(rows, np.int64), gram, rhs)
        return None
    gathered = []
    for j, r in enumerate(rows):
        a, e = b.indptr[r], b.indptr[r + 1]
        X = b.design_g[b.cols[a:e]]                    # (n_i, k)
        if b.root_w is None:
            gram[j] = X.T @ X                          # syrk
        else:
            Xs = X * b.root_w[a:e, None].astype(b.gdt, copy=False)
            gram[j] = Xs.T @ Xs
        rhs[j] = b.targets[a:e].astype(b.gdt, copy=False) @ X
        if keep:
            gathered.append(X)
    return gathered


def _fit_values(b: _Block, rows, gathered, sol, fitted) -> None:
    if gathered is None:                   # the compiled Gram step kept nothing
        span = slice(b.indptr[rows[0]], b.indptr[rows[-1] + 1])
        owner = np.repeat(np.arange(rows.size), b.counts[rows])
        fitted[span] = row_dots(b.design_g[b.cols[span]], sol.astype(b.gdt)[owner])
        return
    sol_g = sol.astype(b.gdt, copy=False)
    for j, r in enumerate(rows):
        fitted[b.indptr[r]:b.indptr[r + 1]] = gathered[j] @ sol_g[j]


def _add_prior(gram: np.ndarray, prior: np.ndarray, scale: np.ndarray) -> None:
    """gram += s_i P for a diagonal (k,) or full (k, k) prior precision P."""
    if prior.ndim == 2:
        gram += prior[None, :, :] * scale[:, None, None]
    else:
        k = prior.shape[0]
        diag = np.arange(k)
        gram[:, diag, diag] += prior[None, :] * scale[:, None]


def _check_prior(prior: np.ndarray, k: int) -> np.ndarray:
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape not in ((k,), (k, k)):
        raise ValueError(f"prior has shape {prior.shape}, expected ({k},) or ({k}, {k})")
    return prior


def ridge_rows(indptr, cols, targets, design, reg, *, row_scale=None, with_fitted=False,
               gram_dtype=np.float64, weights=None, gram_scale: float = 1.0,
               base_gram=None, base_rhs=None, backend: str = "auto") -> RowSolution:
    r"""Every row's regularised least squares

    .. math::

        x_i = (B + c\,F_I^\top W_I F_I + s_i \mathrm{diag}(reg))^{-1} (b + F_I^\top t_i)

    -- the ridge regression of PMF with the defaults (B = 0, b = 0, c = 1, W = I).
    The all-items terms of the ranking models ride along: ``base_gram`` B (k, k) and
    ``base_rhs`` b (k,) are the same for every row (one matrix from the fixed side,
    computed once per half-step), so a row costs what a ridge row costs.

    Args:
        reg: float64 (k,) diagonal prior precision (or (k, k) a full one).
        row_scale: float64 (n_rows,) the multiplier s_i of the prior (1 when None).
        with_fitted: also return the fitted value of every entry.
        gram_dtype: dtype of the gathered rows and Gram matrices; the solve is always
            float64. float32 halves the memory traffic.
        weights: float64 (nnz,) per-entry weights W of the data Gram (None: 1).
        gram_scale: c, a weight of the whole data Gram.
        base_gram, base_rhs: B and b above (None: 0).
        backend: 'auto' (compiled when numba loads), 'numba' or 'numpy' (the oracle).
    """
    b = _Block(indptr, cols, targets, design, gram_dtype, weights, backend)
    reg = _check_prior(reg, b.k)
    scale = np.ones(b.n_rows) if row_scale is None else np.asarray(row_scale, np.float64)
    if b.C is not None and reg.ndim == 1:
        return _ridge_compiled(b, reg, scale, with_fitted, gram_scale, base_gram, base_rhs)
    x = np.zeros((b.n_rows, b.k))
    fitted = np.zeros(b.cols.size) if with_fitted else None
    for rows, gram, rhs in b.chunks():
        gathered = _accumulate(b, rows, gram, rhs, with_fitted)
        if gram_scale != 1.0:
            gram *= gram_scale
        if base_gram is not None:
            gram += base_gram[None, :, :]
        if base_rhs is not None:
            rhs += base_rhs[None, :]
        _add_prior(gram, reg, scale[rows])
        sol = solve_stack(gram, rhs)
        x[rows] = sol
        if fitted is not None:
            _fit_values(b, rows, gathered, sol, fitted)
    return RowSolution(x, fitted)


def _ridge_compiled(b: _Block, reg, scale, with_fitted, gram_scale, base_gram,
                    base_rhs) -> RowSolution:
    """:func:`ridge_rows` by the fused compiled kernel; rows whose system is singular
    (only with a zero prior weight) are solved again by numpy's least squares."""
    t, w, X = b.compiled_args()
    x = np.zeros((b.n_rows, b.k))
    fitted = np.zeros(b.cols.size) if with_fitted else np.zeros(0)
    failed = np.empty(b.n_rows, np.int64)
    bg = np.zeros((0, 0)) if base_gram is None else np.asarray(base_gram, np.float64)
    br = np.zeros(0) if base_rhs is None else np.asarray(base_rhs, np.float64)
    n_failed = b.C.ridge_rows_fused(b.indptr, b.cols, t, w, X, b.k, reg, scale, bg, br,
                                    float(gram_scale), x, fitted, failed)
    for r in failed[:n_failed]:
        a, e = b.indptr[r], b.indptr[r + 1]
        one = ridge_rows(np.array([0, e - a]), b.cols[a:e], b.targets[a:e], b.design, reg,
                         row_scale=scale[r:r + 1], with_fitted=with_fitted,
                         gram_dtype=b.gdt, weights=None if b.root_w is None
                         else b.root_w[a:e] ** 2, gram_scale=gram_scale, base_gram=base_gram,
                         base_rhs=base_rhs, backend="numpy")
        x[r] = one.x[0]
        if with_fitted:
            fitted[a:e] = one.fitted
    return RowSolution(x, fitted if with_fitted else None)


def vb_rows(indptr, cols, targets, design, reg, fixed_var, *, with_fitted=False,
            gram_dtype=np.float64, backend: str = "auto") -> RowSolution:
    """Mean-field variational rows: ``A_i = F_I^T F_I + diag(sum_{j in I} var_j) +
    diag(reg)``, ``x_i = A_i^{-1} F_I^T t_i``; also diag(A_i^{-1}), diag(F_I^T F_I) and
    the summed fixed-side variances, which the posterior variances and the expected
    squared error need.

    Args:
        fixed_var: float64 (n_fixed, k) posterior variances of the fixed design columns.
    """
    b = _Block(indptr, cols, targets, design, gram_dtype, backend=backend)
    reg = _check_prior(reg, b.k)
    scale = np.ones(b.n_rows)
    k = b.k
    diag = np.arange(k)
    x = np.zeros((b.n_rows, k))
    fitted = np.zeros(b.cols.size) if with_fitted else None
    inv_diag, gram_diag, var_sum = (np.zeros((b.n_rows, k)) for _ in range(3))
    for rows, gram, rhs in b.chunks():
        gathered = _accumulate(b, rows, gram, rhs, with_fitted)
        gram_diag[rows] = gram[:, diag, diag]
        # a chunk's rows are consecutive among the non-empty ones, so their entries are
        # one contiguous range, row after row
        span = b.cols[b.indptr[rows[0]]:b.indptr[rows[-1] + 1]]
        offsets = np.concatenate([[0], np.cumsum(b.counts[rows])[:-1]])
        vs = np.add.reduceat(fixed_var[span], offsets, axis=0)
        var_sum[rows] = vs
        gram[:, diag, diag] += vs
        _add_prior(gram, reg, scale[rows])
        sol = solve_stack(gram, rhs)
        inv_diag[rows] = np.linalg.inv(gram)[:, diag, diag]
        x[rows] = sol
        if fitted is not None:
            _fit_values(b, rows, gathered, sol, fitted)
    return RowSolution(x, fitted, inv_diag, gram_diag, var_sum)


def gibbs_rows(indptr, cols, targets, design, prior_precision, prior_shift, alpha, noise, *,
               row_scale=None, with_fitted=False, gram_dtype=np.float64,
               backend: str = "auto") -> RowSolution:
    """A draw of every row from its Gaussian conditional ``N(A_i^{-1} b_i, A_i^{-1})``,
    ``A_i = alpha F_I^T F_I + s_i Lambda``, ``b_i = alpha F_I^T t_i + Lambda mu``:
    ``x_i = A_i^{-1} b_i + L_i^{-T} noise_i`` with ``A_i = L_i L_i^T``.

    Args:
        prior_precision: float64 (k, k) Lambda; ``prior_shift``: (k,) Lambda mu.
        alpha: the noise precision. ``noise``: float64 (n_rows, k) standard normal draws.
    """
    b = _Block(indptr, cols, targets, design, gram_dtype, backend=backend)
    prior = _check_prior(prior_precision, b.k)
    scale = np.ones(b.n_rows) if row_scale is None else np.asarray(row_scale, np.float64)
    x = np.zeros((b.n_rows, b.k))
    fitted = np.zeros(b.cols.size) if with_fitted else None
    for rows, gram, rhs in b.chunks():
        gathered = _accumulate(b, rows, gram, rhs, with_fitted)
        if alpha != 1.0:
            gram *= alpha
            rhs *= alpha
        _add_prior(gram, prior, scale[rows])
        rhs += prior_shift[None, :]
        chol = np.linalg.cholesky(gram)                        # A = L L^T
        mean = np.linalg.solve(gram, rhs[..., None])[..., 0]
        sol = mean + np.linalg.solve(chol.transpose(0, 2, 1), noise[rows][..., None])[..., 0]
        x[rows] = sol
        if fitted is not None:
            _fit_values(b, rows, gathered, sol, fitted)
    return RowSolution(x, fitted)


def row_dots(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (n, k) arrays."""
    return np.einsum("ij,ij->i", A, B)


def top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray):
    """The k best entries of every row of ``scores``, ordered by score descending,
    then by ``tiebreak`` ascending; entries equal to -inf are never chosen.

    Ties at the k-th place are resolved exactly (not by argpartition's luck).

    Args:
        scores: float64 (n, m); -inf marks an excluded entry.
        k: how many to keep per row.
        tiebreak: int (m,) the order of the columns among equal scores.

    Returns:
        (rows, ranks, cols, values): flat arrays, ranks 1-based; a row with fewer
        than k admissible entries yields fewer.
    """
    n, m = scores.shape
    kk = min(k, m)
    if n == 0 or kk == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(scores, part, axis=1)
    kth = vals.min(axis=1)
    # rows where more entries than kk reach the boundary score: choose by tiebreak
    crowded = np.flatnonzero(((scores >= kth[:, None]).sum(axis=1) > kk) & np.isfinite(kth))
    for r in crowded:
        cand = np.flatnonzero(scores[r] >= kth[r])
        order = np.lexsort((tiebreak[cand], -scores[r, cand]))[:kk]
        part[r] = cand[order]
        vals[r] = scores[r, part[r]]
    order = np.lexsort((tiebreak[part], -vals), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    ok = np.isfinite(vals)
    rows = np.repeat(np.arange(n), kk).reshape(n, kk)
    ranks = np.cumsum(ok, axis=1)
    return rows[ok], ranks[ok], part[ok], vals[ok]


__all__ = ["BACKENDS", "CHUNK_ENTRIES", "ReadOut", "RowSolution", "gibbs_rows", "kernel_backend",
           "kernel_compile_seconds", "ridge_rows", "row_chunks", "row_dots", "solve_stack",
           "top_k", "vb_rows"]
