"""A small dense numpy reference ALS: the oracle the Spark path is tested against.

Same model, same objective, same state layout as :mod:`pmf_spark.train`
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
    """The MAP objective E of :mod:`pmf_spark.train` on the observed entries of R."""
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
