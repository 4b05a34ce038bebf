"""A small dense numpy reference ALS: the oracle the Spark path is tested against.

Same model, same objective, same state layout as :mod:`pmf_spark.train.loop`
(``(n, rank + 1)`` arrays: factors then bias), written the obvious way: a
dense rating matrix with NaN for missing entries and one ``np.linalg.solve``
per row. Slow; for tests and small benchmarks only.
"""

from __future__ import annotations

import numpy as np


def half_step(R: np.ndarray, fixed: np.ndarray, *, rank: int, lam: float, lam_bias: float,
              biases: bool, count_scaling: bool, mu: float, sigma: float) -> np.ndarray:
    """Solve every row of ``R`` (n_rows, n_cols; NaN = missing) against ``fixed``
    (n_cols, rank + 1). Returns (n_rows, rank + 1); rows without ratings are 0."""
    n_rows = R.shape[0]
    out = np.zeros((n_rows, rank + 1))
    k = rank + (1 if biases else 0)
    reg = np.full(k, float(lam))
    if biases:
        reg[rank] = lam_bias
    for i in range(n_rows):
        J = np.flatnonzero(~np.isnan(R[i]))
        if J.size == 0:
            continue
        z = (R[i, J] - mu) / sigma
        if biases:
            D = np.hstack([fixed[J, :rank], np.ones((J.size, 1))])
            t = z - fixed[J, rank]
        else:
            D = fixed[J, :rank]
            t = z
        s = J.size if count_scaling else 1.0
        out[i, :k] = np.linalg.solve(D.T @ D + s * np.diag(reg), D.T @ t)
    return out


def predict_z(user: np.ndarray, item: np.ndarray, rank: int) -> np.ndarray:
    """Dense (n_users, n_items) predictions in z units."""
    return user[:, :rank] @ item[:, :rank].T + user[:, rank][:, None] + item[:, rank][None, :]


def objective(R: np.ndarray, user: np.ndarray, item: np.ndarray, *, rank: int, lam_u: float,
              lam_v: float, lam_bias: float, biases: bool, count_scaling: bool, mu: float,
              sigma: float) -> float:
    """The MAP objective E of :mod:`pmf_spark.train.loop` on the observed entries of R."""
    mask = ~np.isnan(R)
    Z = (np.where(mask, R, 0.0) - mu) / sigma
    resid = np.where(mask, Z - predict_z(user, item, rank), 0.0)
    total = 0.5 * float((resid ** 2).sum())
    for m, counts, lam in ((user, mask.sum(1), lam_u), (item, mask.sum(0), lam_v)):
        s = counts.astype(float) if count_scaling else (counts > 0) * 1.0
        total += 0.5 * lam * float(s @ (m[:, :rank] ** 2).sum(1))
        if biases:
            total += 0.5 * lam_bias * float(s @ m[:, rank] ** 2)
    return total


def als(R: np.ndarray, user: np.ndarray, item: np.ndarray, epochs: int, *, rank: int,
        lam_u: float, lam_v: float, lam_bias: float, biases: bool, count_scaling: bool,
        mu: float, sigma: float):
    """Run ``epochs`` full epochs (users, then items) from the given state."""
    kw: dict = dict(rank=rank, lam_bias=lam_bias, biases=biases, count_scaling=count_scaling,
                    mu=mu, sigma=sigma)
    for _ in range(epochs):
        user = half_step(R, item, lam=lam_u, **kw)
        item = half_step(R.T, user, lam=lam_v, **kw)
    return user, item


def _cells(R: np.ndarray, fixed_trained: np.ndarray):
    """Per row: the columns of its cells (every trained column) and which are observed."""
    cols = np.flatnonzero(fixed_trained)
    return cols, ~np.isnan(R[:, cols])


def missing_data_half_step(R: np.ndarray, fixed: np.ndarray, *, rank: int, lam: float,
                           lam_bias: float, biases: bool, mu: float, sigma: float,
                           weight: float, missing_rating: float,
                           fixed_trained: np.ndarray) -> np.ndarray:
    """Missing-data PMF's half-step summed over every cell explicitly: each row with
    training ratings is a weighted least-squares fit over all trained columns, weight 1
    and target z on observed cells, weight w_m and target z_m on the others."""
    cols, observed = _cells(R, fixed_trained)
    k = rank + (1 if biases else 0)
    reg = np.full(k, float(lam))
    if biases:
        reg[rank] = lam_bias
    D = np.hstack([fixed[cols, :rank], np.ones((cols.size, 1))]) if biases else fixed[cols, :rank]
    off = fixed[cols, rank] if biases else np.zeros(cols.size)
    z_m = (missing_rating - mu) / sigma
    out = np.zeros((R.shape[0], rank + 1))
    for i in range(R.shape[0]):
        if not observed[i].any():
            continue
        t = np.where(observed[i], (np.nan_to_num(R[i, cols]) - mu) / sigma, z_m) - off
        w = np.where(observed[i], 1.0, weight)
        out[i, :k] = np.linalg.solve(D.T @ (w[:, None] * D) + np.diag(reg), D.T @ (w * t))
    return out


def missing_data_objective(R, user, item, *, rank, lam_u, lam_v, lam_bias, biases, mu, sigma,
                           weight, missing_rating) -> float:
    """E of :mod:`pmf_spark.models.missing_data`, summed over every cell of the trained
    users x trained items."""
    users, items = ~np.isnan(R).all(1), ~np.isnan(R).all(0)
    Rs = R[np.ix_(users, items)]
    obs = ~np.isnan(Rs)
    Z = predict_z(user[users], item[items], rank)
    z = np.where(obs, (np.nan_to_num(Rs) - mu) / sigma, (missing_rating - mu) / sigma)
    w = np.where(obs, 1.0, weight)
    total = 0.5 * float((w * (z - Z) ** 2).sum())
    for m, keep, lam in ((user, users, lam_u), (item, items, lam_v)):
        total += 0.5 * lam * float((m[keep, :rank] ** 2).sum())
        if biases:
            total += 0.5 * lam_bias * float((m[keep, rank] ** 2).sum())
    return total


def implicit_half_step(R: np.ndarray, fixed: np.ndarray, *, rank: int, lam: float,
                       alpha: float, confidence: str = "linear", epsilon: float = 1.0,
                       fixed_trained: np.ndarray) -> np.ndarray:
    """Implicit ALS's half-step summed over every cell: preference 1 (observed) or 0,
    confidence 1 + alpha g(value) (observed) or 1."""
    cols, observed = _cells(R, fixed_trained)
    D = fixed[cols, :rank]
    out = np.zeros((R.shape[0], rank + 1))
    for i in range(R.shape[0]):
        if not observed[i].any():
            continue
        v = np.nan_to_num(R[i, cols])
        g = v if confidence == "linear" else np.log1p(v / epsilon)
        c = np.where(observed[i], 1.0 + alpha * g, 1.0)
        p = observed[i] * 1.0
        out[i, :rank] = np.linalg.solve(D.T @ (c[:, None] * D) + lam * np.eye(rank),
                                        D.T @ (c * p))
    return out


def implicit_objective(R, user, item, *, rank, lam_u, lam_v, alpha, confidence="linear",
                       epsilon=1.0) -> float:
    """E of :mod:`pmf_spark.models.implicit` over the trained users x trained items."""
    users, items = ~np.isnan(R).all(1), ~np.isnan(R).all(0)
    Rs = R[np.ix_(users, items)]
    obs = ~np.isnan(Rs)
    v = np.nan_to_num(Rs)
    g = v if confidence == "linear" else np.log1p(v / epsilon)
    c = np.where(obs, 1.0 + alpha * g, 1.0)
    S = user[users, :rank] @ item[items, :rank].T
    total = 0.5 * float((c * (obs - S) ** 2).sum())
    total += 0.5 * lam_u * float((user[users, :rank] ** 2).sum())
    total += 0.5 * lam_v * float((item[items, :rank] ** 2).sum())
    return total


def reference_ridge_rows(indptr, cols, targets, design, reg, row_scale=None) -> np.ndarray:
    """Row-by-row oracle for :func:`ridge_rows` (slow, obviously correct)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    n_rows = indptr.size - 1
    k = design.shape[1]
    out = np.zeros((n_rows, k))
    for i in range(n_rows):
        sl = slice(indptr[i], indptr[i + 1])
        if indptr[i + 1] == indptr[i]:
            continue
        F = design[cols[sl]]
        s = 1.0 if row_scale is None else row_scale[i]
        A = F.T @ F + np.diag(reg * s)
        out[i] = np.linalg.lstsq(A, F.T @ targets[sl], rcond=None)[0]
    return out
