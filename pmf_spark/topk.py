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


def fold_in_rows(V, item_bias, indptr, items, ratings, *, lam: float, lam_bias: float,
                 biases: bool, count_scaling: bool, ro: ReadOut):
    """New users' (factors, bias) from their ratings against fixed item factors: the
    same ridge solve a training half-step does, for every row of a CSR batch.

    Args:
        V, item_bias: float64 (n_items, rank), (n_items,) the model's item side.
        indptr: int (n + 1,); items: int (nnz,) dense item indices, sorted within each
            row; ratings: float64 (nnz,) in rating units.

    Returns:
        (factors float64 (n, rank), bias float64 (n,)); rows without ratings are 0.
    """
    rank = V.shape[1]
    items = np.asarray(items, dtype=np.int64)
    z = ro.to_z(ratings)
    if biases:
        design = np.hstack([V, np.ones((V.shape[0], 1))])
        target = z - item_bias[items]
        reg = np.r_[np.full(rank, lam), lam_bias]
    else:
        design, target, reg = V, z, np.full(rank, lam)
    indptr = np.asarray(indptr, dtype=np.int64)
    scale = np.diff(indptr).astype(np.float64) if count_scaling else None
    x = ridge_rows(indptr, items.astype(np.int32), target, design, reg, row_scale=scale).x
    return x[:, :rank].copy(), (x[:, rank].copy() if biases else np.zeros(x.shape[0]))


def fold_in(V, item_bias, items, ratings, *, lam: float, lam_bias: float, biases: bool,
            count_scaling: bool, ro: ReadOut):
    """One new user's (factors, bias) from their ratings (:func:`fold_in_rows`)."""
    order = np.argsort(items, kind="stable")
    items, ratings = np.asarray(items)[order], np.asarray(ratings, dtype=np.float64)[order]
    f, b = fold_in_rows(V, item_bias, np.array([0, items.size]), items, ratings, lam=lam,
                        lam_bias=lam_bias, biases=biases, count_scaling=count_scaling, ro=ro)
    return f[0], float(b[0])


def csr_of(rows: np.ndarray, cols: np.ndarray, n_rows: int, *values: np.ndarray):
    """(indptr, cols, *values) of COO entries grouped by row, cols ascending within
    each row: the layout the row kernels take."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return (indptr, cols[order], *(v[order] for v in values))


def folded_users(user_ids, item_idx, ratings, V, item_bias, ro: ReadOut,
                 **solve) -> pd.DataFrame:
    """New users folded in from their ratings: one row per distinct user id (in order
    of first appearance) with ``features`` (None when no rated item is known),
    ``bias``, ``n_ratings`` (known items used) and ``rated`` (their dense indices).

    Args:
        user_ids: (nnz,) the users' ids; item_idx: int (nnz,) dense item indices, -1
            for items the model does not know (ignored); ratings: (nnz,) rating units.
        solve: lam, lam_bias, biases, count_scaling of :func:`fold_in_rows`.
    """
    users = pd.Index(pd.unique(np.asarray(user_ids)))
    u = users.get_indexer(np.asarray(user_ids))
    item_idx = np.asarray(item_idx, dtype=np.int64)
    ok = item_idx >= 0
    indptr, cols, vals = csr_of(u[ok], item_idx[ok], users.size,
                                np.asarray(ratings, dtype=np.float64)[ok])
    f, b = fold_in_rows(V, item_bias, indptr, cols, vals, ro=ro, **solve)
    n = np.diff(indptr)
    return pd.DataFrame({
        "user_id": users.to_numpy(),
        "features": [f[j] if n[j] else None for j in range(users.size)],
        "bias": np.where(n > 0, b, 0.0), "n_ratings": n.astype(np.int32),
        "rated": [cols[indptr[j]:indptr[j + 1]].astype(np.int32) for j in range(users.size)]})


def fold_in_block(key, pdf, *, shared, **solve):
    """:func:`folded_users` for the rows (user_id, idx (null: unknown item), rating)
    of one block of new users. ``shared``: (V, item_bias, read-out)."""
    limit_blas_threads()
    V, ib, ro = unwrap(shared)
    idx = pdf["idx"].fillna(-1).to_numpy(dtype=np.int64)
    out = folded_users(pdf["user_id"].to_numpy(), idx, pdf["rating"].to_numpy(), V, ib, ro,
                       **solve)
    return out[["user_id", "features", "bias", "n_ratings", "rated"]]


def unit_rows(M: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit norm, valid mask): the rows that may be neighbours --
    trained (count > 0) with a non-zero vector -- for cosine similarity."""
    norms = np.linalg.norm(M, axis=1)
    valid = (counts > 0) & (norms > 0)
    return np.where(valid[:, None], M / np.where(norms > 0, norms, 1.0)[:, None], 0.0), valid


def neighbor_rows(Mn, valid, rows, tiebreak, k) -> pd.DataFrame:
    """The k most cosine-similar rows of each of ``rows`` (never itself, only valid
    ones), ordered by similarity then ``tiebreak``: columns i, rank, j, similarity."""
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[valid[rows]]
    out = []
    step = max(1, BATCH_CELLS // max(1, Mn.shape[0]))
    for a in range(0, rows.size, step):
        its = rows[a:a + step]
        S = Mn[its] @ Mn.T
        S[:, ~valid] = -np.inf
        S[np.arange(its.size), its] = -np.inf
        r, rank, j, sim = top_k(S, k, tiebreak)
        out.append(pd.DataFrame({"i": its[r].astype(np.int32), "rank": rank.astype(np.int32),
                                 "j": j.astype(np.int32), "similarity": sim}))
    if not out:
        return pd.DataFrame({"i": np.zeros(0, np.int32), "rank": np.zeros(0, np.int32),
                             "j": np.zeros(0, np.int32), "similarity": np.zeros(0)})
    return pd.concat(out, ignore_index=True)


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
    (U, user_bias, V, item_bias, candidates, tiebreak, popularity or None, read-out[,
    wanted]), ``wanted`` a bool mask of the rows to answer for (all when absent).

    With the sides swapped (the item layout, V as ``U`` and U as ``V``) the same
    function gives the top users of every item, never one who rated it."""
    limit_blas_threads()
    U, ub, V, ib, candidates, tiebreak, popularity, ro, *rest = unwrap(shared)
    wanted = rest[0] if rest else None
    out = []
    for _, c in iter_chunks(pdf, val_dtype):
        indptr, rated = known_items(c)
        if wanted is not None and not wanted[c.row_ids].all():
            keep = wanted[c.row_ids]
            counts = np.diff(indptr)
            rated = rated[np.repeat(keep, counts)]
            indptr = np.concatenate([[0], np.cumsum(counts[keep])])
            users = c.row_ids[keep]
        else:
            users = c.row_ids
        if users.size == 0:
            continue
        recs = recommend_rows(U[users], ub[users], indptr, rated, V, ib, candidates,
                              tiebreak, k, ro, popularity=popularity)
        recs["u"] = users[recs["u"].to_numpy()]
        out.append(recs)
    if not out:
        return pd.DataFrame({c: [] for c in RECS_COLUMNS})
    return pd.concat(out, ignore_index=True)[RECS_COLUMNS]


def neighbors_block(key, pdf, *, shared, k):
    """The k most cosine-similar rows (items, or users) of every row of one block
    (column ``i``). ``shared``: (unit-norm factors, valid mask, tiebreak)."""
    limit_blas_threads()
    Vn, valid, tiebreak = unwrap(shared)
    return neighbor_rows(Vn, valid, np.sort(pdf["i"].to_numpy(dtype=np.int64)), tiebreak, k)


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
