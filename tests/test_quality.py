"""Model quality on planted synthetic data and on MovieLens 100K."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import ROOT
from pmf_spark.inputs.synthetic import get_shape, synthetic_ratings
from pmf_spark.prepare.ratings import split_column

import train_pmf

pytestmark = pytest.mark.spark


def run_job(spark, tmp_path, *args):
    out = tmp_path / "out"
    code = train_pmf.main([*args, "--output", str(out)], spark=spark)
    assert code == 0
    return json.loads((out / "model.json").read_text())


def test_planted_data_is_recovered_to_the_noise_level(spark, tmp_path, report):
    shape = get_shape("small")
    meta = run_job(spark, tmp_path)          # the defaults, on the built-in data
    rmse = meta["final_metrics"]["test_rmse"]
    # the best any model can do: the planted noise-free rating, on the same test split
    truth = synthetic_ratings(spark, "small", seed=0, with_truth=True)
    oracle = (truth.where(split_column(0, 0.15))
              .agg(F.sqrt(F.avg((F.col("truth") - F.col("rating")) ** 2))).first()[0])
    report(f"synthetic small, defaults: test RMSE {rmse:.4f}; generator noise std "
           f"{shape.noise_std}, noise-free oracle {oracle:.4f}")
    assert rmse <= 1.10 * shape.noise_std
    assert rmse >= 0.98 * oracle            # nobody beats the oracle: no leakage


@pytest.mark.movielens
def test_movielens_100k_default_and_seed_configuration(spark, tmp_path, ml100k, ml100k_model,
                                                       report):
    data = str(ml100k / "u.data")
    default = json.loads((Path(ml100k_model) / "model.json").read_text())
    seed = run_job(spark, tmp_path / "seed", "--ratings", data,
                   "--config", str(ROOT / "conf" / "seed.toml"))
    d, s = default["final_metrics"]["test_rmse"], seed["final_metrics"]["test_rmse"]
    report(f"ML-100K 85/15 seed 0: default test RMSE {d:.4f}; seed configuration "
           f"(d=30, lambda=20, sigmoid, no biases) {s:.4f}")
    assert default["data"]["n_train"] + default["data"]["n_test"] == 100_000
    assert 0.14 < default["data"]["n_test"] / 100_000 < 0.16
    assert d <= 0.92
    assert s > d                               # the sigmoid read-out costs accuracy
    assert seed["model"]["link"] == "sigmoid" and seed["rank"] == 30
