"""The ranking side of the job end to end: the default lists beat the popularity list on
MovieLens 100K while the rating model keeps its RMSE, the block-computed metrics agree
with a pandas recomputation from the written tables, --recommend-by rating gives the
rating model's own lists, implicit ALS recovers planted preferences, and tuning by a
ranking metric never reads the test split."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pmf_spark.config.params import PMFParams
from pmf_spark.train.loop import Trainer

import train_pmf
import tune as tune_job
from helpers import prepared, random_ratings

pytestmark = pytest.mark.spark


def pandas_metrics(recs: pd.DataFrame, test: pd.DataFrame, k: int, threshold: float) -> dict:
    """precision, ndcg and mrr at k over users with a relevant test rating (by ids)."""
    rel = test[test.rating >= threshold].groupby("user_id")["item_id"].apply(set)
    out = {"precision": [], "ndcg": [], "mrr": []}
    for user, relevant in rel.items():
        mine = recs[(recs.user_id == user) & (recs["rank"] <= k)].sort_values("rank")
        hits = [r for r, i in zip(mine["rank"], mine.item_id) if i in relevant]
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(relevant), k)))
        out["precision"].append(len(hits) / k)
        out["ndcg"].append(sum(1 / math.log2(r + 1) for r in hits) / idcg)
        out["mrr"].append(1 / hits[0] if hits else 0.0)
    return {key: float(np.mean(v)) for key, v in out.items()} | {"users": len(rel)}


@pytest.mark.movielens
def test_movielens_default_lists_beat_popularity_twice(ml100k_model, report):
    out = ml100k_model
    meta = json.load(open(f"{out}/model.json"))
    r = meta["ranking"]
    model, pop = r["model"], r["popular"]
    report(f"ML-100K 85/15 seed 0, defaults: lists ranked by {r['ranked_by']}: precision@10 "
           f"{model['precision']:.4f} ({model['precision'] / pop['precision']:.2f}x popular "
           f"{pop['precision']:.4f}), NDCG@10 {model['ndcg']:.4f} "
           f"({model['ndcg'] / pop['ndcg']:.2f}x {pop['ndcg']:.4f}); test RMSE "
           f"{meta['final_metrics']['test_rmse']:.4f}")
    assert r["ranked_by"] == meta["ranker"]["recommend_by"] != "rating"
    assert model["precision"] >= 2.0 * pop["precision"]
    assert model["ndcg"] >= 2.0 * pop["ndcg"]
    assert meta["final_metrics"]["test_rmse"] <= 0.9005
    # a consumer's recomputation from the written tables agrees with the job's metrics
    recs = pd.read_parquet(f"{out}/recommendations")
    test = pd.read_parquet(f"{out}/test_ratings")
    want = pandas_metrics(recs, test, 10, model["relevance_threshold"])
    assert want["users"] == model["users"]
    for key in ("precision", "ndcg", "mrr"):
        assert model[key] == pytest.approx(want[key], rel=1e-9)
    # predicted_rating is the rating model's, score the ranking model's
    users = pd.read_parquet(f"{out}/user_factors").set_index("user_id")
    items = pd.read_parquet(f"{out}/item_factors").set_index("item_id")
    row = recs[~recs.cold_start].iloc[0]
    z = (np.dot(users.features[row.user_id], items.features[row.item_id])
         + users.bias[row.user_id] + items.bias[row.item_id])
    lo, hi = meta["rating_range"]
    assert row.predicted_rating == pytest.approx(np.clip(meta["mu"] + meta["sigma"] * z, lo, hi))
    rusers = pd.read_parquet(f"{out}/ranking_user_factors").set_index("user_id")
    ritems = pd.read_parquet(f"{out}/ranking_item_factors").set_index("item_id")
    zr = (np.dot(rusers.features[row.user_id], ritems.features[row.item_id])
          + rusers.bias[row.user_id] + ritems.bias[row.item_id])
    assert row.score == pytest.approx(meta["mu"] + meta["sigma"] * zr)
    assert set(r["model"]["at"]) == {"5", "10", "20"}
    assert set(model["by_activity"]) == {"light", "medium", "heavy"}
    # the buckets partition the evaluated users: their user-weighted means are the totals
    for key in ("precision", "ndcg"):
        for lst in (model, pop):
            act = lst["by_activity"]
            assert sum(a["users"] for a in act.values()) == lst["users"]
            assert sum(a["users"] * a[key] for a in act.values()) / lst["users"] == \
                pytest.approx(lst[key], rel=1e-9)


def test_recommend_by_rating_lists_are_the_rating_models(spark, tmp_path):
    out = tmp_path / "o"
    assert train_pmf.main(["--epochs", "2", "--rank", "4", "--recommend-by", "rating",
                           "--no-report", "--output", str(out)], spark=spark) == 0
    meta = json.load(open(out / "model.json"))
    assert meta["ranking"]["ranked_by"] == "pmf" and meta["ranking_model"] is None
    assert not (out / "ranking_user_factors").exists()
    recs = pd.read_parquet(out / "recommendations")
    warm = recs[~recs.cold_start]
    # the score is the rating model's unclipped prediction, predicted_rating its clip
    lo, hi = meta["rating_range"]
    np.testing.assert_allclose(warm.predicted_rating, np.clip(warm.score, lo, hi))


def test_implicit_als_recovers_planted_preferences(spark):
    """Three groups of users each pick items from their own third of the catalogue; a
    user's top items are the unseen items of their group's third."""
    rng = np.random.default_rng(2)
    n_users, n_items = 90, 60
    group = np.arange(n_users) % 3
    rows = []
    for u in range(n_users):
        own = np.arange(n_items)[np.arange(n_items) % 3 == group[u]]
        picks = rng.choice(own, 12, replace=False)
        noise = rng.choice(n_items, 1)
        rows += [(u, i) for i in np.r_[picks, noise]]
    pdf = pd.DataFrame(rows, columns=["user", "item"]).drop_duplicates()
    pdf["rating"] = 1.0
    data = prepared(spark, pdf, test_fraction=0.01)
    trainer = Trainer(spark, data, PMFParams.of(model="implicit", rank=6, epochs=8, blocks=2,
                                                lambda_u=0.5, lambda_v=0.5, alpha=10.0))
    try:
        state = trainer.fit()
        m = trainer.model(state)
        users = data.users.toPandas().set_index("idx")["id"]
        items = data.items.toPandas().set_index("idx")["id"]
        S = m.U @ m.V.T
        right = 0
        for u in range(m.U.shape[0]):
            top = np.argsort(-S[u])[:10]
            right += np.mean(items[top].to_numpy() % 3 == users[u] % 3)
        assert right / m.U.shape[0] > 0.9
        objs = [x.objective for x in state.history]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(objs, objs[1:]))
    finally:
        trainer.release()
        data.release()


def test_tuning_by_a_ranking_metric_never_reads_the_test_split(spark, tmp_path):
    from pmf_spark.prepare.ratings import split_column

    pdf = random_ratings(13, 50, 40, 0.3)
    is_test = spark.createDataFrame(pdf).select(split_column(0, 0.15).alias("t")).toPandas().t
    poisoned = pdf.copy()
    poisoned.loc[is_test.to_numpy(), "rating"] = 0.5
    results = []
    for name, frame in (("clean", pdf), ("poisoned", poisoned)):
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        code = tune_job.main(["--ratings", str(path), "--id-type", "integer",
                              "--metric", "ndcg@5", "--trials", "3",
                              "--epochs", "3", "--ranks", "2,4", "--output",
                              str(tmp_path / name), "--blocks", "2"], spark=spark)
        assert code == 0
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    a, b = results
    assert [t["val_score"] for t in a["trials"]] == [t["val_score"] for t in b["trials"]]
    scores = [t["val_ndcg@5"] for t in a["trials"]]
    assert scores == sorted(scores, reverse=True) and a["metric"] == "ndcg@5"
    assert all(t["model"] in ("missing-data", "implicit") for t in a["trials"])
    from pmf_spark.config.files import load_config_file, resolve

    _, best = resolve(load_config_file(str(tmp_path / "clean" / "best.toml")), None)
    top = a["trials"][0]
    assert (best.ranker.recommend_by, best.ranker.ranking_rank) == (top["model"], top["rank"])
    assert best.fit.model == "pmf"                       # the rating model stays the base's
    assert tune_job.main(["--ratings", "x.csv", "--metric", "ndcg"], spark=spark) == 2
