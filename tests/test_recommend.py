"""Recommendations on Spark: blockwise top-k, ranking metrics, neighbours, recommend.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from chispa.schema_comparer import assert_schema_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.evaluate.metrics import ranking_metrics
from pmf_spark.recommend.spark import TopK, item_neighbors, item_tiebreak, recommend_all
from pmf_spark.recommend.topk import candidate_items
from pmf_spark.train import job as pipeline
from pmf_spark.train.loop import Trainer
from test_topk import HAND_RECS, HAND_TEST, brute_top_k, pandas_ranking

import recommend as recommend_job
from helpers import dense_split, prepared, random_ratings

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def trained(spark):
    data = prepared(spark, random_ratings(7, 60, 40, 0.3), test_fraction=0.2)
    trainer = Trainer(spark, data, PMFParams.of(rank=4, epochs=3, blocks=3))
    state = trainer.fit()
    yield data, trainer, trainer.model(state)
    trainer.release()
    data.release()


def test_blockwise_top_k_equals_brute_force_with_ties(spark, trained):
    data, trainer, model = trained
    # make ties: items 0..5 share one factor vector and bias
    model.V[1:6] = model.V[0]
    model.item_bias[1:6] = model.item_bias[0]
    counts = trainer.counts
    cand = candidate_items(counts["item"], 1)
    tiebreak = item_tiebreak(data.items, data.n_items)
    recs = recommend_all(trainer.engine, model, TopK(7, cand, tiebreak, counts["item"])).toPandas()
    R, _ = dense_split(data)
    ro = model.readout
    scores = ro.mu + ro.sigma * (model.U @ model.V.T + model.user_bias[:, None]
                                 + model.item_bias[None, :])
    scores[:, ~cand] = -np.inf
    scores[~np.isnan(R)] = -np.inf                      # rated in training
    want = brute_top_k(scores, 7, tiebreak)
    trained_users = set(np.flatnonzero(counts["user"] > 0))
    want = [w for w in want if w[0] in trained_users]
    got = sorted(zip(recs.u, recs["rank"], recs.i), key=lambda t: (t[0], t[1]))
    assert got == [(u, r, i) for u, r, i, _ in want]
    assert (recs.groupby("u").size() == 7).all()         # enough candidates for everyone


def test_popularity_baseline_ranks_by_training_count(spark, trained):
    data, trainer, model = trained
    counts = trainer.counts
    cand = candidate_items(counts["item"], 1)
    tiebreak = item_tiebreak(data.items, data.n_items)
    recs = recommend_all(trainer.engine, model, TopK(5, cand, tiebreak, counts["item"]),
                         popular=True).toPandas()
    R, _ = dense_split(data)
    pop = np.where(cand, counts["item"].astype(float), -np.inf)
    scores = np.where(np.isnan(R), pop[None, :], -np.inf)
    want = [(u, r, i) for u, r, i, _ in brute_top_k(scores, 5, tiebreak)
            if counts["user"][u] > 0]
    assert sorted(zip(recs.u, recs["rank"], recs.i)) == sorted(want)


def test_ranking_metrics_in_spark_match_pandas(spark, trained):
    got = ranking_metrics(spark.createDataFrame(HAND_RECS), spark.createDataFrame(HAND_TEST),
                          k=3, threshold=4.0, n_catalogue=10)
    want = pandas_ranking(HAND_RECS, HAND_TEST, k=3, threshold=4.0)
    for key in ("precision", "recall", "ndcg", "map", "hit_rate"):
        assert got[key] == pytest.approx(want[key], rel=1e-12)
    assert got["users"] == want["users"] == 3
    assert got["coverage"] == pytest.approx(8 / 10)      # items 10..17 recommended
    # and on real model output, k=5
    data, trainer, model = trained
    counts = trainer.counts["item"]
    cand = candidate_items(counts, 1)
    recs = recommend_all(trainer.engine, model,
                         TopK(5, cand, item_tiebreak(data.items, data.n_items), counts))
    test = data.ratings.where("is_test").select("u", "i", "rating")
    got = ranking_metrics(recs, test, k=5, threshold=3.5, n_catalogue=int(cand.sum()))
    want = pandas_ranking(recs.toPandas(), test.toPandas(), k=5, threshold=3.5)
    for key in ("precision", "recall", "ndcg", "map", "hit_rate", "users"):
        assert got[key] == pytest.approx(want[key], rel=1e-12)


def test_item_neighbors_equal_brute_force_cosine(spark, trained):
    data, trainer, model = trained
    tiebreak = item_tiebreak(data.items, data.n_items)
    counts = trainer.counts["item"]
    least = int(np.median(counts[counts > 0]))          # half the items fall below it
    nb = item_neighbors(trainer.engine, model, k=3, tiebreak=tiebreak,
                        min_item_ratings=least).toPandas()
    Vn = model.V / np.linalg.norm(model.V, axis=1, keepdims=True)
    S = Vn @ Vn.T
    np.fill_diagonal(S, -np.inf)
    S[:, counts < least] = -np.inf                      # never a neighbour below the support
    want = [(i, r, j) for i, r, j, _ in brute_top_k(S, 3, tiebreak)
            if counts[i] > 0]                           # but every trained item is asked about
    assert sorted(zip(nb.i, nb["rank"], nb.j)) == sorted(want)
    assert set(nb.i) == set(np.flatnonzero(counts > 0))


# ----------------------------------------------------------------------- through the job

@pytest.fixture(scope="module")
def job_run(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("recjob") / "model"
    excl = out.parent / "exclude.txt"
    excl.write_text("# never these\n5\n6\n\n")
    cfg = JobConfig(output=str(out), top_k=8, min_item_ratings=30, exclude_items=str(excl),
                    similar_items=4)
    # early stopping carves a validation slice out of the training ratings: those are
    # ratings the users gave too, and must be masked like the rest
    result = pipeline.run_training(spark, cfg, PMFParams.of(epochs=3, rank=6, early_stopping=2))
    assert result.data.n_val > 0
    yield cfg, result
    result.trainer.release()
    result.data.release()


def test_written_recommendations_respect_every_rule(spark, job_run):
    cfg, result = job_run
    out = cfg.output
    recs = spark.read.parquet(f"{out}/recommendations")
    assert_schema_equality(recs.schema, T.StructType([
        T.StructField("user_id", T.LongType()), T.StructField("rank", T.IntegerType()),
        T.StructField("item_id", T.LongType()), T.StructField("predicted_rating", T.DoubleType()),
        T.StructField("score", T.DoubleType()), T.StructField("cold_start", T.BooleanType())]),
        ignore_nullable=True)
    train = spark.read.parquet(f"{out}/train_ratings")
    assert recs.join(train, ["user_id", "item_id"]).count() == 0      # never a rated item
    items = spark.read.parquet(f"{out}/item_factors")
    few = items.where(F.col("n_ratings") < 30).select("item_id")
    assert recs.join(few, "item_id").count() == 0                       # --min-item-ratings
    assert recs.where(F.col("item_id").isin(5, 6)).count() == 0        # --exclude-items
    per_user = recs.groupBy("user_id").agg(F.count(F.lit(1)).alias("n"),
                                           F.collect_list("rank").alias("ranks"))
    assert per_user.where("n != 8").count() == 0
    assert per_user.count() == result.data.n_users
    pdf = recs.toPandas().sort_values(["user_id", "rank"])
    # ordered by score, then item id
    for _, g in pdf.groupby("user_id"):
        keys = list(zip(-g.score, g.item_id))
        assert keys == sorted(keys)
    meta = json.loads(open(f"{out}/model.json").read())
    for name in ("model", "popular"):
        r = meta["ranking"][name]
        assert r["k"] == 8 and r["users"] > 0 and 0 <= r["precision"] <= 1
        assert 0 < r["coverage"] <= 1
    assert json.loads(open(f"{out}/metrics.json").read())["ranking"] == meta["ranking"]
    nb = spark.read.parquet(f"{out}/item_neighbors")
    assert nb.columns == ["item_id", "rank", "neighbor_id", "similarity"]
    # --min-item-ratings holds for the neighbours too
    rare = items.where(F.col("n_ratings") < 30).select(F.col("item_id").alias("neighbor_id"))
    assert nb.count() > 0 and nb.join(rare, "neighbor_id").count() == 0
    assert nb.where("item_id = neighbor_id").count() == 0
    # the similarities are those of the written item factors, under the same ids
    fac = items.select("item_id", "features").toPandas().set_index("item_id")["features"]
    pairs = nb.toPandas()
    a = np.stack(fac.loc[pairs.item_id].to_numpy())
    b = np.stack(fac.loc[pairs.neighbor_id].to_numpy())
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(pairs.similarity.to_numpy(), cos, atol=1e-9)


def test_cold_start_users_get_popular_items_or_are_dropped(spark, tmp_path):
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    pdf = random_ratings(3, 50, 30, 0.3)
    pdf.to_csv(train, index=False)
    pd.DataFrame({"user": [77777, 77777, 100], "item": [1000, 1003, 1000],
                  "rating": [5.0, 4.0, 3.0]}).to_csv(test, index=False)
    for policy in ("popular", "drop"):
        out = tmp_path / policy
        cfg = JobConfig(ratings=str(train), test=str(test), output=str(out), top_k=3,
                        cold_start=policy, id_type="integer")
        res = pipeline.run_training(spark, cfg, PMFParams.of(epochs=2, rank=3))
        res.trainer.release()
        res.data.release()
        recs = spark.read.parquet(str(out / "recommendations")).toPandas()
        cold = recs[recs.user_id == 77777]
        if policy == "popular":
            assert len(cold) == 3 and cold.cold_start.all()
            counts = pdf.groupby("item").size().sort_values(ascending=False)
            top = counts[counts == counts.iloc[0]].index.min()
            assert cold.sort_values("rank").item_id.iloc[0] == top
            assert np.isfinite(cold.predicted_rating).all()
            assert not recs[recs.user_id != 77777].cold_start.any()
        else:
            assert cold.empty


# ----------------------------------------------------------------------- recommend.py

@pytest.mark.movielens
def test_recommend_user_on_movielens_shows_latin1_titles(spark, ml100k, ml100k_model, capsys):
    out = ml100k_model
    test = spark.read.parquet(f"{out}/test_ratings")
    # a user who rated "Misérables, Les (1995)" (item 543, Latin-1 in u.item) highly in test
    row = test.where("item_id = 543 and rating >= 4").orderBy("user_id").first()
    assert row is not None
    code = recommend_job.main(["--model", out, "--user", str(row["user_id"]),
                               "--items", str(ml100k / "u.item")], spark=spark)
    text = capsys.readouterr().out
    assert code == 0
    assert "Misérables, Les (1995)" in text
    assert "Highly rated in the test split (rating >= 4)" in text
    assert "Top 10 recommendations" in text
    heading, header, *recs_block = text.split("Top 10 recommendations")[1].strip().splitlines()
    assert len(recs_block) == 10
    # the list says what orders it and shows that score, in rank order, beside the rating
    assert "ordered by the missing-data model's score" in heading
    assert header.split()[:4] == ["rank", "score", "predicted", "item"]
    scores = [float(ln.split()[1]) for ln in recs_block]
    assert scores == sorted(scores, reverse=True)
    assert all("|" in ln or any(g in ln for g in ("Drama", "Comedy")) for ln in recs_block)


@pytest.mark.movielens
def test_recommend_unknown_user_and_bad_id(spark, ml100k_model, capsys):
    code = recommend_job.main(["--model", ml100k_model, "--user", "99999999"], spark=spark)
    out = capsys.readouterr().out
    assert code == 0 and "is not in the model: recommending the most popular items" in out
    assert "nan" not in out.lower()
    code = recommend_job.main(["--model", ml100k_model, "--user", "abc"], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: user id 'abc': this model's ids are integers"]


@pytest.mark.movielens
def test_bulk_users_match_the_training_job(spark, ml100k_model, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("18\n1\n424242\n")
    out = tmp_path / "bulk"
    code = recommend_job.main(["--model", ml100k_model, "--users", str(ids), "--output",
                               str(out)], spark=spark)
    assert code == 0
    got = spark.read.parquet(str(out / "recommendations"))
    want = spark.read.parquet(f"{ml100k_model}/recommendations").where("user_id in (1, 18)")
    cols = ["user_id", "rank", "item_id"]
    assert sorted(got.where("user_id in (1, 18)").select(cols).collect()) == \
        sorted(want.select(cols).collect())
    assert got.where("user_id = 424242 and cold_start").count() == 10
    assert (out / "_SUCCESS").is_file()


@pytest.mark.movielens
def test_fold_in_recovers_a_trained_user(spark, ml100k_model, tmp_path, capsys):
    """A user refit by fold-in from their training ratings gets nearly the trained factor."""
    from pmf_spark.serve.saved import SavedModel

    model = SavedModel(spark, ml100k_model)
    uid = 18
    ratings = spark.read.parquet(f"{ml100k_model}/train_ratings").where(f"user_id = {uid}") \
        .toPandas()
    f, b, used = model.fold_in(ratings.item_id.to_numpy(), ratings.rating.to_numpy())
    row = model.users.where(f"user_id = {uid}").first()
    trained = np.r_[row["features"], row["bias"]]
    assert used == len(ratings)
    rel = np.linalg.norm(np.r_[f, b] - trained) / np.linalg.norm(trained)
    assert rel < 0.02, rel
    # and through the job: a file of the user's ratings gives the same top-k as the table
    path = tmp_path / "mine.csv"
    path.write_text("item_id,rating\n" + "".join(f"{i},{r}\n" for i, r in
                                                 zip(ratings.item_id, ratings.rating)))
    code = recommend_job.main(["--model", ml100k_model, "--ratings-for-new-user", str(path),
                               "--top-k", "5"], spark=spark)
    text = capsys.readouterr().out
    assert code == 0 and f"from {len(ratings)} of {len(ratings)} ratings" in text
    table = spark.read.parquet(f"{ml100k_model}/recommendations") \
        .where(f"user_id = {uid} and rank <= 5").orderBy("rank").toPandas()
    block = text.split("recommendations for the new user")[1].strip().splitlines()
    at = block[1].split().index("item")                  # block[0]: the heading's rest
    shown = [int(ln.split()[at]) for ln in block[2:]]
    assert len(set(shown) & set(table.item_id)) >= 4
