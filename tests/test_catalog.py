"""Catalog tables in and out of the training job (the session's in-memory catalog here;
tests/test_hive.py runs the job through spark-submit.sh on a Hive metastore, with a
run that fails mid-way), and recommendations partitioned by user-id hash."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from pmf_spark.outputs.tables import bucket_column, user_bucket

import train_pmf
from helpers import random_ratings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.spark

ARGS = ["--ratings-table", "shop.events", "--user-col", "customer", "--item-col", "sku",
        "--rating-col", "stars", "--rank", "3", "--top-k", "3", "--no-report",
        "--output-table-prefix", "shop.pmf_", "--output-partitions", "4"]


@pytest.fixture(scope="module")
def shop(spark):
    spark.sql("CREATE DATABASE IF NOT EXISTS shop")
    pdf = random_ratings(9, 50, 30, 0.3).rename(
        columns={"user": "customer", "item": "sku", "rating": "stars"})
    spark.createDataFrame(pdf).write.mode("overwrite").saveAsTable("shop.events")
    yield
    spark.sql("DROP DATABASE shop CASCADE")


def test_tables_in_and_out_with_partitioned_recommendations(spark, shop, tmp_path):
    out = tmp_path / "out"
    assert train_pmf.main([*ARGS, "--epochs", "2", "--output", str(out)], spark=spark) == 0
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["partitions"] == {"recommendations": {"column": "user_bucket",
                                                          "buckets": 4}}
    for table, rows in manifest["tables"].items():
        published = spark.table(f"shop.pmf_{table}")
        assert published.schema == spark.read.parquet(str(out / table)).schema, table
        assert published.count() == rows, table
    # every user's rows sit in the bucket the documented formula names
    recs = spark.read.parquet(str(out / "recommendations"))
    pairs = recs.select("user_id", "user_bucket").distinct().collect()
    assert len(pairs) == 50 and len({b for _, b in pairs}) == 4
    assert all(b == user_bucket(u, 4) for u, b in pairs)
    assert recs.where(F.col("user_bucket") != bucket_column(F.col("user_id"), 4)).count() == 0
    user = pairs[0][0]
    for code in re.findall(r"```python partitioned\n(.*?)```",
                           (ROOT / "docs" / "outputs.md").read_text(), flags=re.S):
        exec(compile(code, "docs/outputs.md", "exec"),
             {"OUT": str(out), "USER": user, "spark": spark})



def test_refuses_tables_it_did_not_write_before_training(spark, shop, tmp_path, capsys):
    spark.sql("CREATE TABLE shop.theirs_user_factors (x int) USING parquet")
    args = [*ARGS[:-4], "--output", str(tmp_path / "o")]
    assert train_pmf.main([*args, "--output-table-prefix", "shop.theirs_"], spark=spark) == 2
    assert "shop.theirs_user_factors exists and was not written by pmf-spark" in (
        capsys.readouterr().err)
    assert train_pmf.main([*args, "--output-table-prefix", "nodb.pmf_"], spark=spark) == 2
    assert "no database 'nodb'" in capsys.readouterr().err
    code = train_pmf.main(["--ratings-table", "shop.missing", "--output", str(tmp_path / "o")],
                          spark=spark)
    assert code == 2 and "table shop.missing: not readable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
