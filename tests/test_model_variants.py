"""Adaptive priors, early stopping, BPMF and tuning on Spark."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.inputs.synthetic import get_shape
from pmf_spark.kernels import reference
from pmf_spark.prepare.ratings import prepare, split_column
from pmf_spark.train.job import load_inputs
from pmf_spark.train.loop import Trainer

import tune as tune_job
from helpers import clean_from_pandas, prepared, random_ratings

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def planted(spark):
    train, _ = load_inputs(spark, JobConfig())
    data = prepare(train, None, test_fraction=0.15, split_seed=0, on_duplicate="latest")
    yield data
    data.release()


def test_adaptive_priors_recover_the_planted_noise_variance(spark, planted, report):
    shape = get_shape("small")
    trainer = Trainer(spark, planted, PMFParams.of(priors="diagonal", epochs=15))
    try:
        state = trainer.fit()
    finally:
        trainer.release()
    last = state.history[-1]
    noise = last.noise_var * planted.sigma ** 2          # z units -> rating units
    report(f"synthetic small, diagonal adaptive priors: noise variance {noise:.4f} "
           f"(generator {shape.noise_std ** 2:.4f}), test RMSE {last.test_rmse:.4f}")
    assert abs(noise - shape.noise_std ** 2) <= 0.2 * shape.noise_std ** 2
    # no collapse: the model explains more than the biases do, and lambda stays finite
    assert last.test_rmse < 0.8 and np.isfinite(state.reg_user).all()
    assert (state.reg_user < 1e6).sum() >= 2                    # dimensions survive


def test_early_stopping_keeps_the_best_epoch(spark):
    data = prepare(clean_from_pandas(spark, random_ratings(11, 80, 60, 0.3)), None,
                   test_fraction=0.15, split_seed=0, on_duplicate="error",
                   validation_fraction=0.2)
    assert data.n_val > 0
    params = PMFParams.of(rank=12, epochs=40, lambda_u=0.05, lambda_v=0.05, lambda_bias=0.05,
                       early_stopping=2, blocks=2)
    trainer = Trainer(spark, data, params)
    try:
        state = trainer.fit()
        final = trainer.final_metrics(state)
        model = trainer.model(state)
    finally:
        trainer.release()
        data.release()
    vals = [m.val_rmse for m in state.history]
    best = int(np.argmin(vals))
    assert state.epoch < 40                                    # it stopped early
    assert state.epoch == best + 1 + 2                         # patience 2 after the best
    assert final.epoch == best + 1 and final.val_rmse == min(vals)
    np.testing.assert_array_equal(model.U, state.best["user"][:, :12])
    assert not np.array_equal(model.U, state.user[:, :12])     # not the last epoch's


def test_bpmf_is_seeded_and_reports_the_averaged_prediction(spark):
    data = prepared(spark, random_ratings(5, 50, 40, 0.35), test_fraction=0.2)
    params = PMFParams.of(model="bpmf", rank=3, burn_in=3, samples=4, blocks=2, seed=9)
    runs = []
    try:
        for p in (params, params, params.replace(seed=10)):
            trainer = Trainer(spark, data, p)
            try:
                state = trainer.fit()
                runs.append((state, trainer.model(state), trainer.final_metrics(state)))
            finally:
                trainer.release()
        (s1, m1, f1), (s2, m2, f2), (s3, m3, f3) = runs
        np.testing.assert_array_equal(m1.U, m2.U)                # reproducible
        assert f1.test_rmse == f2.test_rmse != f3.test_rmse     # and the seed matters
        samples = list(zip(s1.extra["samples_user"], s1.extra["samples_item"]))
        assert len(samples) == 4 and m1.U.shape[1] == 4 * 3
        # the saved model's prediction is the mean of the samples' predictions
        avg = np.mean([reference.predict_z(u, v, 3) for u, v in samples], axis=0)
        np.testing.assert_allclose(
            m1.U @ m1.V.T + m1.user_bias[:, None] + m1.item_bias[None, :], avg, atol=1e-10)
        # and the reported final metrics are that averaged model's
        from helpers import dense_split
        _, T = dense_split(data)
        mask = ~np.isnan(T)
        pred = np.clip(data.mu + data.sigma * avg, data.rating_lo, data.rating_hi)
        assert f1.test_rmse == pytest.approx(np.sqrt(np.mean((pred[mask] - T[mask]) ** 2)),
                                             rel=1e-9)
    finally:
        data.release()


def test_tuning_never_reads_the_test_split(spark, tmp_path):
    pdf = random_ratings(13, 60, 40, 0.3)
    clean = tmp_path / "ratings.csv"
    pdf.to_csv(clean, index=False)
    # poison every rating of the test split: tuning must not notice
    is_test = spark.createDataFrame(pdf).select(split_column(0, 0.15).alias("t")).toPandas().t
    poisoned = pdf.copy()
    poisoned.loc[is_test.to_numpy(), "rating"] = 0.5
    poisoned_path = tmp_path / "poisoned.csv"
    poisoned.to_csv(poisoned_path, index=False)
    assert is_test.sum() > 0
    results = []
    for name, path in (("clean", clean), ("poisoned", poisoned_path)):
        out = tmp_path / name
        code = tune_job.main(["--ratings", str(path), "--id-type", "integer", "--trials", "3",
                              "--epochs", "3", "--ranks", "2,4", "--output", str(out),
                              "--blocks", "2"], spark=spark)
        assert code == 0
        results.append(json.loads((out / "results.json").read_text()))
    a, b = results
    assert [t["val_rmse"] for t in a["trials"]] == [t["val_rmse"] for t in b["trials"]]
    assert len(a["trials"]) == 3 and a["trials"][0]["val_rmse"] <= a["trials"][-1]["val_rmse"]
    # a given --test file is not even opened
    out = tmp_path / "given"
    code = tune_job.main(["--ratings", str(clean), "--test", str(tmp_path / "missing.csv"),
                          "--trials", "2", "--epochs", "2", "--output", str(out)], spark=spark)
    assert code == 0
    # the best configuration holds model settings only: data and output come from the
    # training job's command line (never the tuning run's, never its output)
    from pmf_spark.config.files import load_config_file, resolve

    import train_pmf
    best_toml = tmp_path / "clean" / "best.toml"
    job, model = resolve(load_config_file(str(best_toml)), None)
    best = min(a["trials"], key=lambda t: t["val_rmse"])
    assert (model.model.rank, model.fit.lambda_u) == (best["rank"], best["lambda_u"])
    assert job == JobConfig() and "[job]" not in best_toml.read_text()
    assert str(clean) in best_toml.read_text().splitlines()[0]      # named in the comment
    assert train_pmf.main(["--config", str(best_toml), "--ratings", str(clean), "--epochs", "1",
                           "--output", str(tmp_path / "trained")], spark=spark) == 0
    trained = json.loads((tmp_path / "trained" / "model.json").read_text())
    assert trained["job"]["ratings"] == str(clean) and trained["rank"] == best["rank"]
    table = pd.read_parquet(tmp_path / "clean" / "results.parquet")
    assert len(table) == 3 and table.val_rmse.is_monotonic_increasing


def test_trial_lines_show_what_each_model_uses():
    from pmf_spark.config.params import PMFParams
    from pmf_spark.train.tuning import describe_trial, spread

    base = PMFParams()
    rating = describe_trial(base)
    assert "lambda_bias" in rating and "alpha" not in rating and "w_m" not in rating
    implicit = describe_trial(base.replace(model="implicit", alpha=2.5))
    assert "alpha 2.5" in implicit and "lambda_bias" not in implicit and "w_m" not in implicit
    md = describe_trial(base.replace(model="missing-data", missing_weight=0.05))
    assert "w_m 0.05" in md and "alpha" not in md
    assert spread(0.91234, 0.0, 1) == "0.9123"                  # one split: no spread
    assert spread(0.91234, 0.012, 3) == "0.9123 +- 0.0120"


def test_best_toml_says_when_it_keeps_the_search_s_epochs():
    from pmf_spark.config.params import PMFParams

    params = PMFParams().replace(epochs=5)
    said = tune_job.best_toml(JobConfig(), params, "validation rmse 0.9", epochs_given=True)
    assert "epochs = 5 is the search's --epochs per trial" in said
    assert re.search(r"^epochs = 5 ", said, re.M)            # and the TOML keeps them
    assert "--epochs per trial" not in tune_job.best_toml(JobConfig(), params, "q")
