"""pmf-spark as Spark ML: :class:`PMF` (an ``Estimator``) and :class:`PMFModel` (a
``Model``), drop-ins for ``pyspark.ml.recommendation.ALS``/``ALSModel`` on explicit
ratings. They sit in a ``Pipeline``, are tuned by ``CrossValidator`` and
``TrainValidationSplit`` (also with ``parallelism > 1``), save and load with Spark
ML's persistence (alone or inside a ``PipelineModel``), and are logged by
``mlflow.pyspark.ml.autolog()``::

    from pmf_spark.ml import PMF
    als = PMF(userCol="userIdx", itemCol="itemIdx", ratingCol="rating", rank=10,
              maxIter=10, regParam=0.1, coldStartStrategy="drop")
    model = als.fit(train)
    model.transform(test)                 # + prediction
    model.recommendForAllUsers(10)        # (userIdx, recommendations[itemIdx, rating])
    model.write().overwrite().save("models/pmf")
    PMFModel.load("models/pmf")           # also reads the training job's output

The Params and the ``regParam`` mapping are in :mod:`pmf_spark.ml.params`.
"""

from .estimator import PMF, init_signature
from .model import PMFModel

# the classes' public home: what Spark ML's metadata and MLflow's allowlist name
PMF.__module__ = PMFModel.__module__ = __name__
PMF.__signature__ = init_signature()  # type: ignore[attr-defined]

__all__ = ["PMF", "PMFModel"]
