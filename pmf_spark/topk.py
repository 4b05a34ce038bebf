"""Top-k for blocks of users, item neighbours and fold-in: numpy kernels and the block
functions that run them. No pyspark: this runs in the Python workers (and in the
driver for one user).

Top-k for every user never cross-joins users with items: each user block (the same
cached CSR layout training uses, so every user's training items are at hand) scores
``U_block @ V^T`` against broadcast item factors, masks the items the user rated
(training and any validation slice) and every non-candidate item, and keeps the k
best. Rows are ordered by score (the model's unclipped prediction in rating units),
then by original item id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .blocks import unwrap
from .kernels import ReadOut, ridge_rows, row_dots, top_k
from .layout import VALIDATION, iter_chunks, limit_blas_threads

RECS_SCHEMA = "u int, rank int, i int, predicted_rating double, score double"
RECS_COLUMNS = ["u", "rank", "i", "predicted_rating", "score"]
NEIGHBORS_SCHEMA = "i int, rank int, j int, similarity double"
#: scores held at once per task (32 MB of float64)
BATCH_CELLS = 4_000_000


def candidate_items(item_counts: np.ndarray, min_item_ratings: int,
                    excluded: np.ndarray | None = None,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """bool (n_items,): items that may be recommended -- trained (>= 1 rating), with
    >= ``min_item_ratings`` training ratings, in ``allowed`` (dense indices) when given,
    and not ``excluded``."""
    ok = item_counts >= max(1, int(min_item_ratings))
    if allowed is not None:
        keep = np.zeros_like(ok)
        keep[allowed] = True
        ok &= keep
    if excluded is not None and excluded.size:
        ok[excluded] = False
    return ok


def score_users(U, user_bias, V, item_bias, ro: ReadOut) -> np.ndarray:
    """Unclipped predictions in rating units: (n_users_given, n_items)."""
    return ro.mu + ro.sigma * (U @ V.T + user_bias[:, None] + item_bias[None, :])


def recommend_rows(U, user_bias, indptr, rated, V, item_bias, candidates, tiebreak, k,
                   ro: ReadOut, popularity=None) -> pd.DataFrame:
    """Top-k for a batch of users.

    Args:
        U, user_bias: float64 (n, rank) and (n,) the users' factors and biases.
        indptr, rated: CSR (n + 1,), (nnz,) of each user's known items (excluded).
        V, item_bias: float64 (n_items, rank), (n_items,).
        candidates: bool (n_items,) items that may be recommended.
        tiebreak: int (n_items,) order among equal scores (original id order).
        ro: the read-out of ``predicted_rating``.
        popularity: when given, rank by it (the most-popular baseline) instead of the model.

    Returns:
        pandas frame with RECS_COLUMNS but ``u`` = position in the batch.
    """
    n, m = U.shape[0], V.shape[0]
    out = []
    step = max(1, BATCH_CELLS // max(1, m))
    for lo_row in range(0, n, step):
        hi_row = min(n, lo_row + step)
        sl = slice(lo_row, hi_row)
        if popularity is None:
            S = score_users(U[sl], user_bias[sl], V, item_bias, ro)
        else:
            S = np.broadcast_to(popularity.astype(np.float64), (hi_row - lo_row, m)).copy()
        S[:, ~candidates] = -np.inf
        a, b = indptr[lo_row], indptr[hi_row]
        rows = np.repeat(np.arange(hi_row - lo_row), np.diff(indptr[lo_row:hi_row + 1]))
        S[rows, rated[a:b]] = -np.inf
        r, rank, items, vals = top_k(S, k, tiebreak)
        users = r + lo_row
        pred = ro.to_rating(row_dots(U[users], V[items]) + user_bias[users] + item_bias[items])
        out.append(pd.DataFrame({"u": users.astype(np.int32), "rank": rank.astype(np.int32),
                                 "i": items.astype(np.int32), "predicted_rating": pred,
                                 "score": vals}))
    if not out:
        return pd.DataFrame({c: [] for c in RECS_COLUMNS})
    return pd.concat(out, ignore_index=True)


def fold_in(V, item_bias, items, ratings, *, lam: float, lam_bias: float, biases: bool,
            count_scaling: bool, ro: ReadOut):
    """A new user's (factors, bias) from their ratings against fixed item factors:
    the same ridge solve a training half-step does for one row."""
    rank = V.shape[1]
    z = ro.to_z(ratings)
    order = np.argsort(items, kind="stable")
    items, z = np.asarray(items)[order], z[order]
    if biases:
        design = np.hstack([V, np.ones((V.shape[0], 1))])
        target = z - item_bias[items]
        reg = np.r_[np.full(rank, lam), lam_bias]
    else:
        design, target, reg = V, z, np.full(rank, lam)
    indptr = np.array([0, items.size])
    x = ridge_rows(indptr, items.astype(np.int32), target, design, reg,
                   row_scale=np.array([float(items.size)]) if count_scaling else None).x[0]
    return x[:rank], (float(x[rank]) if biases else 0.0)


def known_items(c) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of what each user of a decoded chunk has rated outside the
    test split: the training ratings plus any validation slice carved from them (for
    early stopping), which the user gave just the same and must not be recommended."""
    val = c.test_kind == VALIDATION
    if not val.any():
        return c.indptr, c.cols
    n = c.row_ids.size
    rows = np.concatenate([c.entry_rows(), c.test_rows[val]])
    items = np.concatenate([c.cols, c.test_cols[val]])
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, items[order]


def recommend_block(key, pdf, *, shared, k, val_dtype):
    """Top-k for every user of one packed user block (PACKED_SCHEMA rows). ``shared``:
    (U, user_bias, V, item_bias, candidates, tiebreak, popularity or None, read-out)."""
    limit_blas_threads()
    U, ub, V, ib, candidates, tiebreak, popularity, ro = unwrap(shared)
    out = []
    for _, c in iter_chunks(pdf, val_dtype):
        users = c.row_ids
        indptr, rated = known_items(c)
        recs = recommend_rows(U[users], ub[users], indptr, rated, V, ib, candidates,
                              tiebreak, k, ro, popularity=popularity)
        recs["u"] = users[recs["u"].to_numpy()]
        out.append(recs)
    if not out:
        return pd.DataFrame({c: [] for c in RECS_COLUMNS})
    return pd.concat(out, ignore_index=True)[RECS_COLUMNS]


def neighbors_block(key, pdf, *, shared, k):
    """The k most cosine-similar items of every item of one block (column ``i``).
    ``shared``: (unit-norm item factors, valid mask, tiebreak)."""
    limit_blas_threads()
    Vn, valid, tiebreak = unwrap(shared)
    items = np.sort(pdf["i"].to_numpy(dtype=np.int64))
    items = items[valid[items]]
    out = []
    step = max(1, BATCH_CELLS // max(1, Vn.shape[0]))
    for a in range(0, items.size, step):
        its = items[a:a + step]
        S = Vn[its] @ Vn.T
        S[:, ~valid] = -np.inf
        S[np.arange(its.size), its] = -np.inf
        r, rank, j, sim = top_k(S, k, tiebreak)
        out.append(pd.DataFrame({"i": its[r].astype(np.int32), "rank": rank.astype(np.int32),
                                 "j": j.astype(np.int32), "similarity": sim}))
    if not out:
        return pd.DataFrame({"i": [], "rank": [], "j": [], "similarity": []})
    return pd.concat(out, ignore_index=True)


def users_block(key, pdf, *, shared, k, rank):
    """Top-k for rows (user_id, features, bias, n_ratings, rated) of one block; users
    without factors get the popular list. ``shared``: (V, item_bias, candidates,
    tiebreak, popularity, read-out)."""
    limit_blas_threads()
    V, ib, candidates, tiebreak, popularity, ro = unwrap(shared)
    pdf = pdf.reset_index(drop=True)
    n_ratings = pdf["n_ratings"].fillna(0).to_numpy()
    warm = (pdf["features"].notna() & (n_ratings > 0)).to_numpy()
    out = []
    for is_warm in (True, False):
        part = pdf[warm == is_warm].reset_index(drop=True)
        if part.empty:
            continue
        n = len(part)
        if is_warm:
            U = np.stack([np.asarray(f, dtype=np.float64) for f in part["features"]])
            ub = part["bias"].to_numpy(dtype=np.float64)
        else:
            U, ub = np.zeros((n, rank)), np.zeros(n)
        lists = [np.asarray(r if r is not None else [], dtype=np.int64) for r in part["rated"]]
        indptr = np.concatenate([[0], np.cumsum([x.size for x in lists])])
        rated = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        recs = recommend_rows(U, ub, indptr, rated, V, ib, candidates, tiebreak, k, ro,
                              popularity=None if is_warm else popularity)
        recs.insert(0, "user_id", part["user_id"].to_numpy()[recs["u"].to_numpy()])
        recs["cold_start"] = not is_warm
        out.append(recs.drop(columns=["u"]))
    cols = ["user_id", "rank", "i", "predicted_rating", "score", "cold_start"]
    if not out:
        return pd.DataFrame({c: [] for c in cols})
    return pd.concat(out, ignore_index=True)[cols]
