"""Top-k selection, fold-in and ranking metrics against plain numpy/pandas (no Spark)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pmf_spark.kernels import reference
from pmf_spark.kernels.rows import ReadOut, top_k
from pmf_spark.recommend.topk import fold_in, recommend_rows


def brute_top_k(scores, k, tiebreak):
    out = []
    for r in range(scores.shape[0]):
        ok = np.flatnonzero(np.isfinite(scores[r]))
        order = sorted(ok, key=lambda j: (-scores[r, j], tiebreak[j]))[:k]
        out += [(r, n + 1, j, scores[r, j]) for n, j in enumerate(order)]
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 12), m=st.integers(1, 30),
       k=st.integers(1, 35), levels=st.integers(1, 6), excluded=st.floats(0, 0.9))
def test_top_k_matches_a_full_sort_ties_included(seed, n, m, k, levels, excluded):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, m)).astype(float)   # few levels: many ties
    scores[rng.random((n, m)) < excluded] = -np.inf
    tiebreak = rng.permutation(m)
    got = list(zip(*[a.tolist() for a in top_k(scores, k, tiebreak)]))
    assert got == brute_top_k(scores, k, tiebreak)


def test_recommend_rows_excludes_rated_and_non_candidates():
    rng = np.random.default_rng(0)
    n, m, r = 6, 20, 3
    U, V = rng.normal(size=(n, r)), rng.normal(size=(m, r))
    ub, ib = rng.normal(size=n), rng.normal(size=m)
    rated = [np.sort(rng.choice(m, c, replace=False)) for c in (0, 3, 19, 5, 1, 20)]
    indptr = np.concatenate([[0], np.cumsum([x.size for x in rated])])
    cand = np.ones(m, bool)
    cand[[2, 7]] = False
    tiebreak = np.arange(m)[::-1].copy()
    recs = recommend_rows(U, ub, indptr, np.concatenate(rated), V, ib, cand, tiebreak, 4,
                          ReadOut(mu=3.0, sigma=1.0, lo=1.0, hi=5.0, link="linear", clip=True))
    for u in range(n):
        mine = recs[recs.u == u]
        allowed = [j for j in range(m) if cand[j] and j not in set(rated[u])]
        assert len(mine) == min(4, len(allowed))
        assert not set(mine.i) & set(rated[u]) and not set(mine.i) & {2, 7}
        full = 3.0 + U[u] @ V.T + ub[u] + ib
        want = sorted(allowed, key=lambda j: (-full[j], tiebreak[j]))[:4]
        assert mine.i.tolist() == want
        np.testing.assert_allclose(mine.score, full[want])
        np.testing.assert_allclose(mine.predicted_rating, np.clip(full[want], 1.0, 5.0))
        assert mine["rank"].tolist() == list(range(1, len(want) + 1))


def test_fold_in_equals_a_user_half_step():
    rng = np.random.default_rng(1)
    m, r = 30, 4
    V, ib = rng.normal(size=(m, r)), rng.normal(size=m)
    items = np.array([3, 9, 1, 22, 17])
    ratings = np.array([4.0, 2.5, 5.0, 3.0, 1.0])
    f, b = fold_in(V, ib, items, ratings, lam=2.0, lam_bias=0.5, biases=True,
                   count_scaling=False, ro=ReadOut(mu=3.2, sigma=1.1, lo=1.0, hi=5.0))
    R = np.full((1, m), np.nan)
    R[0, items] = ratings
    want = reference.half_step(R, np.hstack([V, ib[:, None]]), rank=r, lam=2.0, lam_bias=0.5,
                               biases=True, count_scaling=False, mu=3.2, sigma=1.1)[0]
    np.testing.assert_allclose(np.r_[f, b], want, atol=1e-12)


# ----------------------------------------------------------------------- ranking metrics

def pandas_ranking(recs: pd.DataFrame, test: pd.DataFrame, k: int, threshold: float) -> dict:
    """Plain pandas reference of pmf_spark.evaluate.metrics.ranking_metrics."""
    rel = test[test.rating >= threshold].groupby("u")["i"].apply(set)
    rows = []
    for u, relevant in rel.items():
        mine = recs[(recs.u == u) & (recs["rank"] <= k)].sort_values("rank")
        hits = [rk for rk, i in zip(mine["rank"], mine.i) if i in relevant]
        R = len(relevant)
        dcg = sum(1 / math.log2(rk + 1) for rk in hits)
        idcg = sum(1 / math.log2(j + 1) for j in range(1, min(R, k) + 1))
        ap = sum((n + 1) / rk for n, rk in enumerate(hits)) / min(R, k)
        rows.append(dict(precision=len(hits) / k, recall=len(hits) / R, ndcg=dcg / idcg,
                         map=ap, hit_rate=float(bool(hits))))
    df = pd.DataFrame(rows)
    return {c: float(df[c].mean()) for c in df.columns} | {"users": len(df)}


HAND_RECS = pd.DataFrame({"u": [1, 1, 1, 2, 2, 2, 3, 3, 3],
                          "rank": [1, 2, 3] * 3,
                          "i": [10, 11, 12, 10, 13, 14, 15, 16, 17]})
HAND_TEST = pd.DataFrame({"u": [1, 1, 2, 2, 2, 3, 4], "i": [11, 99, 14, 10, 20, 15, 10],
                          "rating": [5.0, 4.0, 4.5, 3.0, 4.0, 2.0, 5.0]})


def test_pandas_reference_on_a_hand_made_case():
    # user 1: relevant {11, 99}, hit at rank 2; user 2: relevant {14, 20}, hit at rank 3;
    # user 3: nothing relevant (not counted); user 4: relevant {10}, no recommendations
    got = pandas_ranking(HAND_RECS, HAND_TEST, k=3, threshold=4.0)
    assert got["users"] == 3
    assert math.isclose(got["precision"], (1 / 3 + 1 / 3 + 0) / 3)
    assert math.isclose(got["recall"], (1 / 2 + 1 / 2 + 0) / 3)
    assert math.isclose(got["hit_rate"], 2 / 3)
    idcg2 = 1 + 1 / math.log2(3)
    assert math.isclose(got["ndcg"], ((1 / math.log2(3)) / idcg2 + 0.5 / idcg2) / 3)
    assert math.isclose(got["map"], ((1 / 2) / 2 + (1 / 3) / 2) / 3)


def test_item_neighbours_need_support_on_planted_data():
    """Two taste groups of items plus five items rated once each, all by one user: their
    factors are nearly identical, so without a support threshold they lead each other's
    neighbour lists with a spurious similarity; with the data's default support they
    never appear as neighbours (they are still asked about) and an item's neighbours
    come from its own group."""
    from pmf_spark.config.params import PMFParams
    from pmf_spark.engine.local import LocalData, LocalEngine
    from pmf_spark.recommend.topk import neighbor_rows, neighbour_support, unit_rows
    from pmf_spark.train.loop import Trainer

    rng = np.random.default_rng(5)
    n_users, n_items, rare = 80, 40, 5
    ug, ig = np.arange(n_users) % 2, np.arange(n_items) % 2
    u, i = np.nonzero(rng.random((n_users, n_items)) < 0.5)
    r = np.where(ug[u] == ig[i], 5.0, 1.0) - rng.integers(0, 2, u.size)
    u = np.concatenate([u, np.zeros(rare, np.int64)])
    i = np.concatenate([i, n_items + np.arange(rare)])
    r = np.concatenate([r, np.full(rare, 5.0)])
    data = LocalData.from_arrays(u, i, r, np.zeros(u.size, np.int8), n_users, n_items + rare)
    trainer = Trainer(None, data, PMFParams.of(rank=4, epochs=8, lambda_u=2.0, lambda_v=2.0),
                      engine=LocalEngine(data))
    V = trainer.model(trainer.fit()).V
    counts = np.bincount(i, minlength=n_items + rare)
    tiebreak = np.arange(n_items + rare)
    asked = np.arange(n_items + rare)

    def lists(support):
        Mn, valid = unit_rows(V, counts, support)
        return neighbor_rows(Mn, valid, asked, tiebreak, 5)

    unguarded = lists(1)
    first = unguarded[(unguarded["rank"] == 1) & (unguarded["i"] >= n_items)]
    assert (first["j"] >= n_items).all()                # the failure the threshold prevents
    support = neighbour_support(counts)
    assert 2 <= support <= counts[:n_items].min()
    nb = lists(support)
    assert not (nb["j"] >= n_items).any()
    assert set(nb["i"]) == set(asked) and (nb.groupby("i").size() == 5).all()
    grouped = nb[nb["i"] < n_items]
    assert float((ig[grouped["j"]] == ig[grouped["i"]]).mean()) >= 0.9
    assert neighbour_support(counts, at_least=30) == 30  # min_item_ratings is honoured


def test_a_short_themed_profile_gets_a_themed_list_on_planted_data():
    """Three tastes with popularity planted across them (missing not at random: people
    rate what they like, and popular items more): a new user who rated four items of
    one taste, folded into the ranking model as the answers fold them in, gets a top 10
    dominated by that taste, although the most popular items are mixed."""
    from pmf_spark.config.params import PMFParams
    from pmf_spark.engine.local import LocalData, LocalEngine
    from pmf_spark.recommend.foldin import fold_in_user
    from pmf_spark.train.loop import Trainer

    rng = np.random.default_rng(3)
    n_users, n_items, tastes = 300, 150, 3
    ug, ig = np.arange(n_users) % tastes, rng.integers(0, tastes, n_items)
    pop = 1.0 / (1 + np.arange(n_items)) ** 0.5
    p = pop[None, :] * np.where(ug[:, None] == ig[None, :], 0.9, 0.2)
    u, i = np.nonzero(rng.random((n_users, n_items)) < p)
    r = np.clip(np.where(ug[u] == ig[i], 4.5, 2.5) + rng.normal(0, 0.8, u.size), 1, 5).round()
    data = LocalData.from_arrays(u, i, r, np.zeros(u.size, np.int8), n_users, n_items)
    params = PMFParams.of(model="missing-data", rank=8, epochs=10)
    trainer = Trainer(None, data, params, engine=LocalEngine(data))
    m = trainer.model(trainer.fit())
    counts = np.bincount(i, minlength=n_items)
    popular = np.argsort(-counts, kind="stable")[:10]
    assert max((ig[popular] == t).mean() for t in range(tastes)) <= 0.7
    for t in range(tastes):
        profile = np.flatnonzero(ig == t)[[3, 6, 9, 12]]
        f, b = fold_in_user(params, m.V, m.item_bias, counts, m.readout, profile,
                            np.full(4, 5.0))
        recs = recommend_rows(f[None, :], np.array([b]), np.array([0, 4]), profile, m.V,
                              m.item_bias, np.ones(n_items, bool), np.arange(n_items), 10,
                              m.readout)
        share = float((ig[recs["i"].to_numpy()] == t).mean())
        assert len(recs) == 10 and share >= 0.8, (t, share)
