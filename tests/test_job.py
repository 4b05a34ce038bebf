"""The training job end to end: outputs, their schemas and contents, atomic replacement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality
from chispa.schema_comparer import assert_schema_equality
from pyspark.sql import functions as F

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.inputs.synthetic import synthetic_ratings
from pmf_spark.outputs import modeldir
from pmf_spark.prepare.ratings import split_column
from pmf_spark.train import job as pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "model"
    cfg = JobConfig(output=str(out))
    params = PMFParams.of(epochs=4)
    result = pipeline.run_training(spark, cfg, params)
    yield cfg, params, result
    result.trainer.release()
    result.data.release()


def test_output_tables_and_schemas(spark, small_run):
    cfg, params, result = small_run
    out = Path(cfg.output)
    names = {p.name for p in out.iterdir()}
    assert {"user_factors", "item_factors", "user_vocabulary", "item_vocabulary", "model.json",
            "metrics.json", "metrics.csv", "_SUCCESS"} <= names
    for side in ("user", "item"):
        df = spark.read.parquet(str(out / f"{side}_factors"))
        assert_schema_equality(df.schema, modeldir.factor_schema(side, "long"),
                               ignore_nullable=True)
        voc = spark.read.parquet(str(out / f"{side}_vocabulary"))
        assert_schema_equality(voc.schema, modeldir.vocabulary_schema(side, "long"),
                               ignore_nullable=True)
        n = result.data.n_users if side == "user" else result.data.n_items
        assert df.count() == n and voc.count() == n
        assert df.filter(F.size("features") != params.model.rank).count() == 0
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["tables"]["user_factors"] == result.data.n_users


def test_factor_tables_hold_the_trained_factors_under_original_ids(spark, small_run):
    cfg, params, result = small_run
    m = result.model
    voc = spark.read.parquet(str(Path(cfg.output) / "user_vocabulary")).toPandas()
    expected = spark.createDataFrame(
        [(int(uid), [float(x) for x in m.U[idx]], float(m.user_bias[idx]), int(n))
         for uid, idx, n in voc[["user_id", "idx", "n_ratings"]].itertuples(index=False)],
        modeldir.factor_schema("user", "long"))
    got = spark.read.parquet(str(Path(cfg.output) / "user_factors"))
    assert_approx_df_equality(got.orderBy("user_id"), expected.orderBy("user_id"),
                              precision=1e-12, ignore_nullable=True)


def test_outputs_reproduce_the_reported_train_and_test_rmse(spark, small_run):
    """A consumer's view: join raw ratings to the factor tables by original id."""
    cfg, params, result = small_run
    out = Path(cfg.output)
    meta = json.loads((out / "model.json").read_text())
    mu, sigma = meta["mu"], meta["sigma"]
    lo, hi = meta["rating_range"]
    uf = spark.read.parquet(str(out / "user_factors")).select(
        F.col("user_id").alias("user"), F.col("features").alias("uf"), F.col("bias").alias("ub"))
    itf = spark.read.parquet(str(out / "item_factors")).select(
        F.col("item_id").alias("item"), F.col("features").alias("vf"), F.col("bias").alias("ib"))
    raw = synthetic_ratings(spark, "small", seed=cfg.split_seed)
    dot = F.aggregate(F.zip_with("uf", "vf", lambda a, b: a * b), F.lit(0.0), lambda s, x: s + x)
    pred = F.least(F.greatest(F.lit(mu) + F.lit(sigma) * (dot + F.col("ub") + F.col("ib")),
                              F.lit(lo)), F.lit(hi))
    scored = (raw.withColumn("is_test", split_column(cfg.split_seed, cfg.test_fraction))
              .join(uf, "user").join(itf, "item").withColumn("err", pred - F.col("rating")))
    got = {r["is_test"]: r["rmse"] for r in scored.groupBy("is_test").agg(
        F.sqrt(F.avg(F.col("err") ** 2)).alias("rmse")).collect()}
    final = meta["final_metrics"]
    assert got[False] == pytest.approx(final["train_rmse"], rel=1e-9)
    assert got[True] == pytest.approx(final["test_rmse"], rel=1e-9)


def test_model_json_and_metrics(small_run):
    cfg, params, result = small_run
    out = Path(cfg.output)
    meta = json.loads((out / "model.json").read_text())
    assert PMFParams.from_dict({g: meta[g] for g in ("model", "fit", "engine", "ranker")}) == params
    assert JobConfig.from_dict(meta["job"]) == cfg
    assert meta["rank"] == params.model.rank and meta["epochs_run"] == 4
    assert meta["data"]["n_users"] == 1200 and meta["data"]["n_items"] == 600
    assert meta["data"]["n_train"] + meta["data"]["n_test"] == 120_000
    assert set(meta["versions"]) >= {"pyspark", "numpy", "pandas", "pyarrow", "python"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4]
    assert metrics["final"] == meta["final_metrics"] == metrics["epochs"][-1]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_rmse,train_mae,test_rmse,test_mae,objective")
    assert len(csv_lines) == 5


def test_failed_run_leaves_previous_output_untouched(spark, tmp_path):
    out = tmp_path / "model"
    cfg = JobConfig(output=str(out))
    first = pipeline.run_training(spark, cfg, PMFParams.of(epochs=1, rank=3))
    first.trainer.release()
    first.data.release()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    class Boom(RuntimeError):
        pass

    def explode(m):
        if m.epoch == 2:
            raise Boom("killed mid-training")

    with pytest.raises(Boom):
        pipeline.run_training(spark, cfg, PMFParams.of(epochs=3, rank=4), callback=explode)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # a failure while writing: the staging directory is removed, the old output stays
    from pmf_spark.outputs.commit import AtomicOutput
    orig = AtomicOutput.write_json

    def fail_on_model(self, name, obj):
        if name == "model.json":
            raise OSError("disk full")
        return orig(self, name, obj)

    AtomicOutput.write_json = fail_on_model
    try:
        with pytest.raises(OSError, match="disk full"):
            pipeline.run_training(spark, cfg, PMFParams.of(epochs=1, rank=4))
    finally:
        AtomicOutput.write_json = orig
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]   # no staging left behind
    # and a good run replaces it
    third = pipeline.run_training(spark, cfg, PMFParams.of(epochs=1, rank=5))
    third.trainer.release()
    third.data.release()
    meta = json.loads((out / "model.json").read_text())
    assert meta["rank"] == 5


@pytest.mark.submit
def test_bad_input_through_spark_submit_is_one_line(tmp_path):
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t4\n1\t2\n")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run(["./spark-submit.sh", "jobs/train_pmf.py", "--ratings", str(bad),
                           "--output", str(tmp_path / "o")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: ratings {bad}: 1 line(s) with the wrong number of fields "
                      f"(expected 4 tab-separated fields: user item rating timestamp), "
                      f"e.g. '1\\t2'"]
    assert "Traceback" not in text
