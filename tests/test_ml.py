"""pmf_spark.ml.PMF as a Spark ML estimator: the same ALS pipeline code with PMF swapped
in, tuning with parallelism, persistence round trips, MLlib's output shapes, Params."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import RankingEvaluator, RegressionEvaluator
from pyspark.ml.feature import StringIndexer
from pyspark.ml.recommendation import ALS as MLlibALS
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import functions as F

from pmf_spark.config.params import PMFParams, flat_names
from pmf_spark.errors import ConfigError
from pmf_spark.ml import PMF, PMFModel
from pmf_spark.ml.params import OURS, SHARED

from helpers import random_ratings

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def ratings(spark):
    """String ids (as a shop's event table has them), 80 users x 50 items."""
    pdf = random_ratings(5, 80, 50, 0.3)
    pdf["user"] = "u" + pdf["user"].astype(str)
    pdf["item"] = "i" + pdf["item"].astype(str)
    return spark.createDataFrame(pdf).cache()


def als_workflow(ALS, ratings, path):
    """A typical MLlib ALS workflow, written for ALS: indexers, the estimator, a grid,
    2-fold cross-validation with parallelism 2, RMSE and NDCG on a test split, save and
    load of the best pipeline. Only the ``ALS`` class it is handed changes."""
    train, test = ratings.randomSplit([0.8, 0.2], seed=3)
    als = ALS(userCol="userIdx", itemCol="itemIdx", ratingCol="rating", rank=4, maxIter=3,
              coldStartStrategy="drop", seed=1)
    pipeline = Pipeline(stages=[StringIndexer(inputCol="user", outputCol="userIdx"),
                                StringIndexer(inputCol="item", outputCol="itemIdx"), als])
    grid = ParamGridBuilder().addGrid(als.regParam, [0.05, 0.2]).build()
    rmse = RegressionEvaluator(metricName="rmse", labelCol="rating",
                               predictionCol="prediction")
    cv = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, evaluator=rmse,
                        numFolds=2, parallelism=2, seed=7)
    cv_model = cv.fit(train)
    scored = cv_model.transform(test)
    best = cv_model.bestModel
    best.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    recs = loaded.stages[-1].recommendForAllUsers(5)
    truth = (scored.where("rating >= 3.5").groupBy("userIdx")
             .agg(F.collect_list(F.col("itemIdx").cast("double")).alias("label")))
    ranked = recs.select("userIdx", F.col("recommendations.itemIdx").cast("array<double>")
                         .alias("prediction")).join(truth, "userIdx")
    return {"rmse": rmse.evaluate(scored), "avg_metrics": cv_model.avgMetrics,
            "ndcg": RankingEvaluator(k=5, metricName="ndcgAtK").evaluate(ranked),
            "scored": scored, "reloaded": loaded.transform(test), "recs": recs,
            "best": best.stages[-1], "loaded": loaded.stages[-1]}


def test_the_als_workflow_runs_unchanged_with_pmf(spark, ratings, tmp_path, report):
    mllib = als_workflow(MLlibALS, ratings, str(tmp_path / "als"))
    ours = als_workflow(PMF, ratings, str(tmp_path / "pmf"))
    assert isinstance(ours["best"], PMFModel) and isinstance(ours["loaded"], PMFModel)
    assert len(ours["avg_metrics"]) == 2 and all(math.isfinite(m) for m in ours["avg_metrics"])
    # the saved and reloaded pipeline predicts exactly what the fitted one did
    key = ["user", "item"]
    assert_df_equality(ours["scored"].orderBy(key), ours["reloaded"].orderBy(key),
                       ignore_nullable=True)
    assert ours["scored"].where("isnan(prediction)").count() == 0      # 'drop' as in ALS
    # MLlib's output shape: (userCol, recommendations array<struct<itemCol, rating>>)
    assert ours["recs"].columns == mllib["recs"].columns == ["userIdx", "recommendations"]
    element = ours["recs"].schema["recommendations"].dataType.elementType
    assert element.names == mllib["recs"].schema["recommendations"].dataType.elementType.names
    # ALS's types where a user's code notices: int ids (from StringIndexer's doubles)
    assert ours["recs"].schema["userIdx"].dataType == mllib["recs"].schema["userIdx"].dataType
    assert [f.dataType for f in element.fields] == \
        [f.dataType for f in mllib["recs"].schema["recommendations"].dataType.elementType.fields]
    # and 'rating' is a rating, as ALS's: inside the scale, beside transform's prediction
    shown = ours["recs"].select(F.explode("recommendations.rating").alias("r"))
    lo, hi = ratings.agg(F.min("rating"), F.max("rating")).first()
    assert shown.where(F.col("r") < lo - 1e-6).count() == 0
    assert shown.where(F.col("r") > hi + 1e-6).count() == 0
    # an honest model: better than predicting the training mean, in ALS's league
    train_mean = ratings.agg(F.avg("rating")).first()[0]
    base = ours["scored"].select(F.sqrt(F.avg((F.col("rating") - train_mean) ** 2))).first()[0]
    assert ours["rmse"] < base
    assert 0.0 < ours["ndcg"] <= 1.0
    report(f"ALS workflow, 80x50 ratings: RMSE PMF {ours['rmse']:.4f} vs MLlib ALS "
           f"{mllib['rmse']:.4f} (mean {base:.4f}); NDCG@5 {ours['ndcg']:.3f} vs "
           f"{mllib['ndcg']:.3f}")


@pytest.fixture(scope="module")
def tuned(spark, ratings):
    """TrainValidationSplit over PMF directly, a 2-point grid, parallelism 2."""
    pmf = PMF(rank=3, maxIter=3, numUserBlocks=2, coldStartStrategy="nan")
    grid = ParamGridBuilder().addGrid(pmf.lambdaU, [1.0, 30.0]).build()
    tvs = TrainValidationSplit(estimator=pmf, estimatorParamMaps=grid, trainRatio=0.75,
                               evaluator=RegressionEvaluator(labelCol="rating"),
                               parallelism=2, seed=3)
    return tvs.fit(ratings)


@pytest.fixture(scope="module")
def fitted(tuned):
    return tuned.bestModel


def test_train_validation_split_with_parallelism(spark, tuned):
    assert len(tuned.validationMetrics) == 2
    assert all(math.isfinite(m) for m in tuned.validationMetrics)
    assert tuned.validationMetrics[0] != tuned.validationMetrics[1]
    best = tuned.bestModel
    i = int(np.argmin(tuned.validationMetrics))
    assert best.pmf_params.fit.lambda_u == (1.0, 30.0)[i]
    # the user's shuffle setting is back once every concurrent fit returned
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"


def test_model_persistence_round_trips(spark, ratings, fitted, tmp_path):
    path = str(tmp_path / "model")
    fitted.write().option("topK", 3).save(path)
    with pytest.raises(ConfigError, match="already exists"):
        fitted.write().save(path)
    loaded = PMFModel.load(path)
    assert loaded.uid == fitted.uid and loaded.getColdStartStrategy() == "nan"
    pairs = ratings.select("user", "item").unionByName(
        spark.createDataFrame([("nobody", "i1000")], "user string, item string"))
    key = ["user", "item"]
    before = fitted.transform(pairs)
    assert_df_equality(before.orderBy(key), loaded.transform(pairs).orderBy(key),
                       ignore_nullable=True, allow_nan_equality=True)
    assert math.isnan(before.where("user = 'nobody'").first()["prediction"])
    assert_df_equality(fitted.recommendForAllItems(3).orderBy("item"),
                       loaded.recommendForAllItems(3).orderBy("item"), ignore_nullable=True)
    # a saved model is a job output: the manifest lists its tables and Spark ML's metadata
    manifest = json.loads((tmp_path / "model" / "_SUCCESS").read_text())
    assert manifest["tables"]["recommendations"] == 80 * 3 and "metadata" in manifest["files"]
    fitted.write().overwrite().option("topK", 0).save(path)    # replaced atomically
    assert not (tmp_path / "model" / "recommendations").exists()


def test_factors_and_recommendations_have_mllibs_shape(spark, ratings, fitted):
    uf, itf = fitted.userFactors, fitted.itemFactors
    assert uf.columns == itf.columns == ["id", "features"]
    assert uf.schema["features"].dataType.simpleString() == "array<float>"
    # dot(user, item) is the unclipped prediction, as with ALS's factors
    u = uf.where("id = 'u107'").first()["features"]
    i = itf.where("id = 'i1003'").first()["features"]
    unclipped = _unclipped(fitted, "u107", "i1003")
    assert float(np.dot(u, i)) == pytest.approx(unclipped, rel=1e-5)
    pred = fitted.transform(spark.createDataFrame([("u107", "i1003")],
                                                  "user string, item string")).first()
    ro = fitted.core.readout
    assert pred["prediction"] == pytest.approx(np.clip(unclipped, ro.lo, ro.hi))
    # users for an item never include one who rated it; items for a user likewise
    rated = {(r["user"], r["item"]) for r in ratings.select("user", "item").collect()}
    for row in fitted.recommendForUserSubset(ratings.where("user = 'u107'"), 5).collect():
        assert all(("u107", x["item"]) not in rated for x in row["recommendations"])
    by_item = fitted.recommendForItemSubset(ratings.where("item = 'i1003'"), 4).first()
    assert by_item["item"] == "i1003" and len(by_item["recommendations"]) == 4
    assert all((x["user"], "i1003") not in rated for x in by_item["recommendations"])
    # 'rating' is ALS's: the predicted rating of the pair, whatever ordered the list
    pairs = spark.createDataFrame([(x["user"], "i1003", float(x["rating"]))
                                   for x in by_item["recommendations"]],
                                  "user string, item string, shown double")
    predicted = fitted.transform(pairs).collect()
    assert all(abs(r["prediction"] - r["shown"]) < 1e-5 * max(1.0, abs(r["prediction"]))
               for r in predicted)
    flat = fitted.recommend_for_all_users(5).where("user_id = 'u107'").orderBy("rank")
    assert [r["item_id"] for r in flat.collect()] == \
        [x["item"] for x in fitted.recommendForUserSubset(
            ratings.where("user = 'u107'"), 5).first()["recommendations"]]
    # an unknown user: left out under 'nan' (as ALS), the popular list under 'mean'
    who = spark.createDataFrame([("nobody",)], "user string")
    assert fitted.recommendForUserSubset(who, 3).count() == 0
    cold = fitted.copy({fitted.coldStartStrategy: "mean"}).recommendForUserSubset(who, 3)
    assert len(cold.first()["recommendations"]) == 3


def _unclipped(model, user, item) -> float:
    c = model.core
    u = int(np.flatnonzero(c.user.ids == user)[0])
    i = int(np.flatnonzero(c.item.ids == item)[0])
    ro = c.readout
    z = c.user.factors[u] @ c.item.factors[i] + c.user.bias[u] + c.item.bias[i]
    return ro.mu + ro.sigma * float(z)


def test_a_job_output_loads_as_a_model(spark, ml100k_model):
    model = PMFModel.load(ml100k_model)
    out = Path(ml100k_model)
    test_pairs = spark.read.parquet(str(out / "test_ratings")).selectExpr(
        "user_id as user", "item_id as item", "rating")
    scored = model.transform(test_pairs)
    assert scored.count() == test_pairs.count()
    rmse = RegressionEvaluator(labelCol="rating").evaluate(scored)
    meta = json.loads((out / "model.json").read_text())
    assert rmse == pytest.approx(meta["final_metrics"]["test_rmse"], abs=1e-6)
    assert PMF.load(ml100k_model).rank == meta["rank"]   # the notebook API's PMF.load


def test_an_unfitted_estimator_saves_and_loads_inside_a_pipeline(spark, tmp_path):
    est = PMF(rank=7, lambdaU=3.0, userCol="u", seed=-5)
    Pipeline(stages=[est]).write().save(str(tmp_path / "pipe"))
    again = Pipeline.load(str(tmp_path / "pipe")).getStages()[0]
    assert isinstance(again, PMF) and again.uid == est.uid
    assert again.extractParamMap() == {again.getParam(p.name): v
                                       for p, v in est.extractParamMap().items()}
    assert again.pmf_params() == est.pmf_params()


def test_params_validate_and_map_onto_pmf(spark):
    with pytest.raises(ConfigError, match="rank: must be >= 1"):
        PMF(rank=0)
    with pytest.raises(ConfigError, match="coldStartStrategy"):
        PMF(coldStartStrategy="zero")
    with pytest.raises(ConfigError, match="did you mean 'maxIter'"):
        PMF(maxIters=3)
    with pytest.raises(ConfigError, match="nonnegative"):
        PMF(nonnegative=True).pmf_params()
    implicit = PMF(implicitPrefs=True, alpha=2.0).pmf_params()
    assert (implicit.fit.model, implicit.fit.alpha) == ("implicit", 2.0)
    assert implicit.ranker.recommend_by == "rating" and not implicit.model.biases
    with pytest.raises(ConfigError, match="implicitPrefs and model"):
        PMF(implicitPrefs=True, model="bpmf").pmf_params()
    with pytest.raises(ConfigError, match="regParam and lambdaU"):
        PMF(regParam=0.1, lambdaU=3.0).pmf_params()
    p = PMF(regParam=0.5, maxIter=7, numUserBlocks=3, numItemBlocks=5, seed=-1).pmf_params(
        sigma=2.0)
    assert (p.fit.lambda_u, p.fit.lambda_v, p.fit.lambda_bias) == (0.25, 0.25, 0.25)
    assert p.fit.reg_scaling == "count" and p.fit.epochs == 7 and p.engine.blocks == 5
    assert p.fit.seed == 2**63 - 1
    plain = PMF(epochs=4, lambda_u=2.0, blocks=2)
    assert plain.getOrDefault("maxIter") == 4 and plain.getOrDefault("numItemBlocks") == 2
    defaults = PMF().pmf_params()
    assert defaults.fit.lambda_u == 12.0 and defaults.fit.reg_scaling == "none"
    assert defaults == PMFParams()            # the estimator's defaults are the job's
    # every parameter of the job is reachable through a Param
    assert set(flat_names()) <= set(OURS.values()) | set(SHARED.values()) | {"blocks"}


def test_implicit_prefs_trains_implicit_als(spark, ratings):
    model = PMF(implicitPrefs=True, alpha=2.0, rank=3, maxIter=2, numUserBlocks=2).fit(ratings)
    assert model.pmf_params.fit.model == "implicit" and model.core.ranking is None
    scores = model.transform(ratings.limit(50)).select("prediction").collect()
    assert all(math.isfinite(r[0]) for r in scores)        # preferences, as ALS's implicit
    first = model.recommendForAllUsers(3).first()
    values = [x["rating"] for x in first["recommendations"]]
    assert len(values) == 3 and values == sorted(values, reverse=True)


def test_readme_from_pyspark_ml_example_runs(spark, tmp_path):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## From pyspark.ml", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1 and "from pmf_spark.ml import PMF as ALS" in blocks[0]
    # relative paths resolve against the JVM's directory: save under tmp_path instead
    code = blocks[0].replace('"models/pmf-pipeline"', repr(str(tmp_path / "pmf-pipeline")))
    assert code != blocks[0]
    exec(compile(code, "README.md", "exec"), {"spark": spark})
    assert (tmp_path / "pmf-pipeline" / "stages").is_dir()


def test_concurrent_fits_never_share_cached_plans(spark, ratings):
    """Spark shares cached data between equal plans: two fits of one DataFrame at once
    (tuning with parallelism) must each prepare under their own plan, or the first to
    finish unpersists the other's data mid-fit."""
    from pmf_spark.ml.estimator import _own_plan

    a, b = _own_plan(ratings), _own_plan(ratings)
    assert ratings.sameSemantics(ratings.select("*"))
    assert not a.select("user", "item").sameSemantics(b.select("user", "item"))
