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

import pickle

import numpy as np
import pandas as pd

from pmf_spark.engine.blocks import unwrap
from pmf_spark.engine.layout import TEST, VALIDATION, iter_chunks, limit_blas_threads
from pmf_spark.evaluate.ranking import empty_stats, list_stats
from pmf_spark.kernels.rows import ReadOut, ridge_rows, row_dots, top_k

RECS_SCHEMA = "u int, rank int, i int, predicted_rating double, score double"
RECS_COLUMNS = ["u", "rank", "i", "predicted_rating", "score"]
#: what :func:`rank_block` returns: list rows (kind 0) and one stats row per chunk (kind 1)
RANKED_SCHEMA = ("kind tinyint, u int, rank int, i int, predicted_rating double, "
                 "score double, stats binary")
RANKED_COLUMNS = [c.strip().split(" ")[0] for c in RANKED_SCHEMA.split(",")]
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


def predicted(rating, users, items) -> np.ndarray:
    """``predicted_rating`` of (batch position, item) pairs from ``rating`` = (U rows of the
    batch, their biases, V, item biases, read-out) of the rating model, or NaN without one."""
    if rating is None:
        return np.full(users.size, np.nan)
    U, ub, V, ib, ro = rating
    return ro.to_rating(row_dots(U[users], V[items]) + ub[users] + ib[items])


def recommend_rows(U, user_bias, indptr, rated, V, item_bias, candidates, tiebreak, k,
                   ro: ReadOut, popularity=None, rating="self") -> pd.DataFrame:
    """Top-k for a batch of users, ranked by one model.

    Args:
        U, user_bias: float64 (n, rank) and (n,) the ranking model's user rows and biases.
        indptr, rated: CSR (n + 1,), (nnz,) of each user's known items (excluded).
        V, item_bias: float64 (n_items, rank), (n_items,).
        candidates: bool (n_items,) items that may be recommended.
        tiebreak: int (n_items,) order among equal scores (original id order).
        ro: the ranking model's read-out: ``score`` is its unclipped prediction.
        popularity: when given, rank by it (the most-popular baseline) instead of the model.
        rating: where ``predicted_rating`` comes from: "self" (the ranking model is the
            rating model), None (no rating model: NaN), or (U rows of the batch, user
            biases, V, item biases, read-out) of the rating model trained beside it.

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
        pred = predicted((U, user_bias, V, item_bias, ro) if rating == "self" else rating,
                         users, items)
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


def neighbour_support(counts: np.ndarray, at_least: int = 1) -> int:
    """The training ratings a row needs to be listed as someone's neighbour: a fifth of
    the median count of the trained rows, between 2 and 50, and never below
    ``at_least`` (the job's ``min_item_ratings`` for items).

    A row rated by one or two people has a factor that is mostly its prior and the
    direction of those few raters: rows rated once by the same user get identical
    factors and top each other's lists with a spurious similarity. The threshold is set
    from the data's own scale (ML-100K: median 27 -> 5; ML-1M: median 123 -> 25)."""
    trained = np.asarray(counts)[np.asarray(counts) > 0]
    base = int(np.clip(round(0.2 * float(np.median(trained))), 2, 50)) if trained.size else 1
    return max(base, int(at_least), 1)


def unit_rows(M: np.ndarray, counts: np.ndarray,
              min_support: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit norm, valid mask) for cosine similarity: every trained row
    with a non-zero vector is scaled (and may be asked about); the rows that may be
    *neighbours* (valid) also have at least ``min_support`` training ratings."""
    norms = np.linalg.norm(M, axis=1)
    trained = (counts > 0) & (norms > 0)
    Mn = np.where(trained[:, None], M / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    return Mn, trained & (counts >= max(1, int(min_support)))


def neighbor_rows(Mn, valid, rows, tiebreak, k) -> pd.DataFrame:
    """The k most cosine-similar rows of each of ``rows`` (never itself, only valid
    ones), ordered by similarity then ``tiebreak``: columns i, rank, j, similarity."""
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[np.any(Mn[rows] != 0, axis=1)]     # trained rows with a factor
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
    (ranker, rating, candidates, tiebreak, popularity or None[, wanted]): ``ranker`` the
    FactorModel that orders the lists, ``rating`` the one whose predictions fill
    ``predicted_rating`` ("self": the ranker; None: no rating model), ``wanted`` a bool
    mask of the rows to answer for (all when absent).

    With the sides swapped (the item layout, and models whose ``U`` is the item side)
    the same function gives the top users of every item, never one who rated it."""
    limit_blas_threads()
    m, rating, candidates, tiebreak, popularity, *rest = unwrap(shared)
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
        recs = recommend_rows(m.U[users], m.user_bias[users], indptr, rated, m.V, m.item_bias,
                              candidates, tiebreak, k, m.readout, popularity=popularity,
                              rating=_rating_rows(rating, users))
        recs["u"] = users[recs["u"].to_numpy()]
        out.append(recs)
    if not out:
        return pd.DataFrame({c: [] for c in RECS_COLUMNS})
    return pd.concat(out, ignore_index=True)[RECS_COLUMNS]


def _rating_rows(rating, users):
    if rating in (None, "self"):
        return rating
    return (rating.U[users], rating.user_bias[users], rating.V, rating.item_bias,
            rating.readout)


def rank_block(key, pdf, *, shared, k, val_dtype):
    """Every user's top-k of one packed user block, and the ranking metrics of the
    model's lists and of the most-popular lists against the users' test ratings.

    ``shared``: (ranker, rating, candidates, tiebreak, popularity, spec): ``ranker`` the
    FactorModel that orders the lists, ``rating`` the one whose predictions fill
    ``predicted_rating`` ("self": the ranker; None: no rating model), ``spec`` an
    :class:`~pmf_spark.evaluate.ranking.EvalSpec`. Lists are ``max(k, max(spec.ks))`` long;
    rows with rank <= k come back (kind 0), and per chunk one row (kind 1) with the
    pickled stats of both lists.
    """
    limit_blas_threads()
    m, rating, candidates, tiebreak, popularity, spec = unwrap(shared)
    depth = max(k, max(spec.ks))
    out = []
    for _, c in iter_chunks(pdf, val_dtype):
        users = c.row_ids
        indptr, rated = known_items(c)
        rel = (c.test_kind == TEST) & (c.test_vals >= spec.threshold)
        stats = {}
        for name, pop in (("model", None), ("popular", popularity)):
            recs = recommend_rows(m.U[users], m.user_bias[users], indptr, rated, m.V,
                                  m.item_bias, candidates, tiebreak, depth, m.readout,
                                  popularity=pop, rating=_rating_rows(rating, users))
            st = empty_stats(spec, m.V.shape[0])
            list_stats(st, spec, recs["u"].to_numpy(), recs["rank"].to_numpy(),
                       recs["i"].to_numpy(), c.test_rows[rel], c.test_cols[rel], c.counts)
            stats[name] = st
            if pop is None:
                keep = recs[recs["rank"] <= k].copy()
                keep["u"] = users[keep["u"].to_numpy()]
                keep["kind"] = 0
                out.append(keep)
        out.append(pd.DataFrame({"kind": [1], "stats": [pickle.dumps(stats, protocol=4)]}))
    if not out:
        return pd.DataFrame({c: [] for c in RANKED_COLUMNS})
    return pd.concat(out, ignore_index=True).reindex(columns=RANKED_COLUMNS)


def neighbors_block(key, pdf, *, shared, k):
    """The k most cosine-similar rows (items, or users) of every row of one block
    (column ``i``). ``shared``: (unit-norm factors, valid mask, tiebreak)."""
    limit_blas_threads()
    Vn, valid, tiebreak = unwrap(shared)
    return neighbor_rows(Vn, valid, np.sort(pdf["i"].to_numpy(dtype=np.int64)), tiebreak, k)


def _stack(col, n: int, rank: int) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.float64) for f in col]) if n else np.zeros((0, rank))


def users_block(key, pdf, *, shared, k, rank):
    """Top-k for rows (user_id, features, bias, n_ratings, rated[, rfeatures, rbias]) of
    one block; users without factors get the popular list. ``shared``: (V, item_bias,
    candidates, tiebreak, popularity, read-out, rates, ranker): ``rates``: the model
    predicts ratings (else ``predicted_rating`` is NaN); ``ranker`` is None (the lists
    are ranked by the model itself) or (V, item_bias, read-out, rank) of the ranking
    model, whose user rows are the ``rfeatures``/``rbias`` columns."""
    limit_blas_threads()
    V, ib, candidates, tiebreak, popularity, ro, rates, ranker = unwrap(shared)
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
            U = _stack(part["features"], n, rank)
            ub = part["bias"].to_numpy(dtype=np.float64)
        else:
            U, ub = np.zeros((n, rank)), np.zeros(n)
        lists = [np.asarray(r if r is not None else [], dtype=np.int64) for r in part["rated"]]
        indptr = np.concatenate([[0], np.cumsum([x.size for x in lists])])
        rated = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        if is_warm and ranker is not None:
            rV, rib, rro, rrank = ranker
            recs = recommend_rows(_stack(part["rfeatures"], n, rrank),
                                  part["rbias"].to_numpy(dtype=np.float64), indptr, rated, rV,
                                  rib, candidates, tiebreak, k, rro,
                                  rating=(U, ub, V, ib, ro) if rates else None)
        else:
            recs = recommend_rows(U, ub, indptr, rated, V, ib, candidates, tiebreak, k, ro,
                                  popularity=None if is_warm else popularity,
                                  rating="self" if rates else None)
        recs.insert(0, "user_id", part["user_id"].to_numpy()[recs["u"].to_numpy()])
        recs["cold_start"] = not is_warm
        out.append(recs.drop(columns=["u"]))
    cols = ["user_id", "rank", "i", "predicted_rating", "score", "cold_start"]
    if not out:
        return pd.DataFrame({c: [] for c in cols})
    return pd.concat(out, ignore_index=True)[cols]
