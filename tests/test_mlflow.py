"""MLflow's pyspark.ml autologging records a PMF fit: its Params and the fitted model,
which loads back (as MLflow's spark flavor, a PipelineModel) with the same predictions.
Needs the optional extra ``.[mlflow]`` (installed by .ci/run)."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from pmf_spark.ml import PMF, PMFModel

from helpers import random_ratings

mlflow = pytest.importorskip("mlflow", reason="the optional extra .[mlflow] is not installed")
pytestmark = pytest.mark.spark


def test_autolog_records_params_and_the_fitted_model(spark, tmp_path, monkeypatch):
    import mlflow.pyspark.ml
    import mlflow.spark

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")     # a local file store
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    mlflow.set_experiment("pmf")
    # MLflow logs only allowlisted model classes (its own list leaves out ALS too)
    mlflow.pyspark.ml.autolog(log_model_allowlist=["pmf_spark.ml.PMFModel"],
                              log_datasets=False, log_model_signatures=False, silent=True)
    try:
        df = spark.createDataFrame(random_ratings(3, 30, 20, 0.4))
        with mlflow.start_run() as run:
            model = PMF(rank=3, maxIter=2, lambdaU=5.0, numUserBlocks=2).fit(df)
    finally:
        mlflow.pyspark.ml.autolog(disable=True)
    logged = mlflow.get_run(run.info.run_id)
    params = logged.data.params
    assert (params["rank"], params["maxIter"], params["lambdaU"]) == ("3", "2", "5.0")
    assert params["coldStartStrategy"] == "mean" and params["userCol"] == "user"
    assert logged.data.tags["estimator_class"] == "pmf_spark.ml.PMF"
    back = mlflow.spark.load_model(f"runs:/{run.info.run_id}/model")
    assert isinstance(back.stages[0], PMFModel) and back.stages[0].uid == model.uid
    key = ["user", "item"]
    assert_df_equality(model.transform(df).orderBy(key), back.transform(df).orderBy(key),
                       ignore_nullable=True)
