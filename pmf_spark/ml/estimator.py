"""``PMF``: the estimator. ``fit`` validates the DataFrame as the job validates files,
prepares it (dedupe, vocabularies, indexing), runs the same trainer as the job, keeps
the factors on the driver and releases everything it cached."""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pyspark.ml import Estimator
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWritable, MLReadable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pmf_spark.evaluate.metrics import EpochMetrics

from ..errors import ConfigError
from .model import PMFModel, require_columns
from .params import PMFParamsMixin
from .session import own_shuffle_partitions, use_driver_python

log = logging.getLogger("pmf_spark")


class PMF(Estimator, PMFParamsMixin, DefaultParamsWritable, MLReadable):
    """Probabilistic matrix factorisation as a Spark ML estimator; a drop-in for
    ``pyspark.ml.recommendation.ALS`` (explicit ratings).

    Keyword arguments are Params (``PMF().explainParams()`` lists them): ALS's names
    where the meaning is the same (``rank``, ``maxIter``, ``regParam``, ``userCol``, ...)
    and pmf-spark's for the rest (``lambdaU``, ``biases``, ``model``, ``priors``, ...).
    The plain parameter names of the job (``epochs``, ``lambda_u``, ``blocks``, ...) are
    accepted too. Differences from ALS: the defaults are pmf-spark's (rank 30, 20
    epochs, PMF priors instead of ``regParam`` -- see :mod:`pmf_spark.ml.params` for
    the ``regParam`` mapping), ``coldStartStrategy`` defaults to ``'mean'``, ids may be
    any integers or strings, and recommendations never contain a training item.

    ``fit(df, callback=fn, test=test_df)``: ``fn`` is called with each epoch's
    :class:`~pmf_spark.evaluate.metrics.EpochMetrics` (returning ``False`` stops training);
    each epoch is also logged at INFO on the ``pmf_spark`` logger; ``test`` adds test
    RMSE/MAE to every epoch.
    """

    def __init__(self, **kwargs: Any):
        super().__init__()
        self._callback: Callable[[EpochMetrics], object] | None = None
        self._test: DataFrame | None = None
        self.set_checked(kwargs)

    def setParams(self, **kwargs: Any) -> PMF:
        """Set Params by name (the constructor's keywords)."""
        self.set_checked(kwargs, where="PMF.setParams")
        return self

    def fit(self, dataset: DataFrame, params=None, callback=None,
            test: DataFrame | None = None):
        """Fit on ``dataset`` (with extra ``params`` as Spark ML allows: a param map, or a
        list of them for several models)."""
        if callback is None and test is None:
            return super().fit(dataset, params)
        est = self.copy()
        est._callback, est._test = callback, test
        return Estimator.fit(est, dataset, params)

    def _fit(self, dataset: DataFrame) -> PMFModel:
        from pmf_spark.inputs.read import frame_ratings
        from pmf_spark.prepare.ratings import prepare


        spark = dataset.sparkSession
        use_driver_python(spark)
        get = self.getOrDefault
        self.pmf_params()                        # every Param checked before any Spark job
        cols = dict(user_col=get(self.userCol), item_col=get(self.itemCol),
                    rating_col=get(self.ratingCol), timestamp_col=get(self.timestampCol),
                    rating_min=get(self.ratingMin), rating_max=get(self.ratingMax))
        require_columns(dataset, [c for c in list(cols.values())[:4] if c], "PMF.fit")
        t0 = time.perf_counter()
        with own_shuffle_partitions(spark):
            implicit = bool(get(self.implicitPrefs))   # counts or weights >= 0, summed
            clean = frame_ratings(_own_plan(dataset), **cols, implicit=implicit)
            held = (frame_ratings(_own_plan(self._test), **cols, role="test",
                                  implicit=implicit)
                    if self._test is not None else None)
            early = self.pmf_params().fit.early_stopping
            dup = get(self.onDuplicate)
            if dup == "sum" and not implicit:
                raise ConfigError("onDuplicate: 'sum' adds implicit feedback "
                                  "(implicitPrefs=True); ratings keep the 'latest' or refuse")
            data = prepare(clean, held, test_fraction=0.5, split_seed=get(self.seed) % (2**31),
                           on_duplicate="sum" if implicit and dup == "latest" else dup,
                           validation_fraction=get(self.validationFraction) if early else 0.0,
                           holdout=None if held is not None else F.lit(False),
                           require_test=False)
            try:
                core = self._train(spark, data, clean, held, dataset, t0)
            finally:
                data.release()
        model = PMFModel(core)
        model._resetUid(self.uid)
        return self._copyValues(model)

    def _train(self, spark, data, clean, held, dataset: DataFrame, t0: float):
        """Train on the prepared ``data``; the fitted model's FactorCore (the trainer's
        layout released)."""
        from pmf_spark.train.loop import Trainer
        from pmf_spark.train.preflight import check_driver_memory

        from .core import FactorCore, seen_ratings

        get = self.getOrDefault
        trainer = None
        try:
            params = self.pmf_params(sigma=data.sigma)
            check_driver_memory(spark, data, params)
            trainer = Trainer(spark, data, params)
            trainer.setup()
            trainer.callback = _epoch_hook(trainer.total_epochs, self._callback)
            log.info("PMF.fit: %d users x %d items, %d ratings; %s rank %d, %d epoch(s), "
                     "%d block(s)", data.n_users, data.n_items, data.n_train,
                     params.fit.model, params.model.rank, trainer.total_epochs,
                     trainer.engine.blocks)
            state = trainer.fit()
            seconds = {"train": time.perf_counter() - t0,
                       "per_epoch": [m.seconds for m in state.history]}
            test = None
            if held is not None:
                test = seen_ratings(held)
            core = FactorCore.from_training(trainer, state, seen_ratings(clean), test,
                                            seconds)
            core.meta["data"]["input_id_types"] = {
                side: dataset.schema[get(col)].dataType.simpleString()
                for side, col in (("user", self.userCol), ("item", self.itemCol))}
            return core
        finally:
            if trainer is not None:
                trainer.release()

    def copy(self, extra: dict | None = None) -> PMF:
        that = super().copy(extra)
        that._callback, that._test = self._callback, self._test
        return that

    @classmethod
    def load(cls, path: str, spark: SparkSession | None = None):
        """A saved ``PMF`` estimator; for a model directory (a saved ``PMFModel`` or the
        training job's output) the :class:`PMFModel`, as the notebook API always did."""
        from .persist import MODEL_CLASS, saved_class

        spark = spark or SparkSession.getActiveSession()
        if spark is None:
            raise ConfigError("PMF.load: no active SparkSession")
        kind = saved_class(spark, path)
        if kind is None or kind == MODEL_CLASS:
            return PMFModel.read().session(spark).load(path)
        return DefaultParamsReader(cls).session(spark).load(path)  # type: ignore[arg-type]


def _own_plan(df: DataFrame) -> DataFrame:
    """``df`` under a plan no other fit has. Spark shares cached data between equal
    plans, so two fits of one DataFrame running at once (a CrossValidator with
    parallelism > 1) would share the prepared data and the block layout, and the first
    to finish would unpersist them under the other. A unique literal column (dropped
    again by the validation's projection) keeps every fit's plans its own."""
    return df.withColumn("__pmf_fit", F.lit(uuid.uuid4().hex))


def _epoch_hook(total: int, callback):
    """One INFO line per epoch on the ``pmf_spark`` logger, then the user's callback."""
    times: list[float] = []

    def hook(m: EpochMetrics):
        times.append(m.seconds)
        parts = [f"PMF epoch {m.epoch}/{total}", f"train rmse {m.train_rmse:.4f}"]
        for name in ("test_rmse", "val_rmse", "objective"):
            v = getattr(m, name)
            if v == v:
                parts.append(f"{name.replace('_', ' ')} {v:.6g}")
        eta = (total - m.epoch) * sum(times) / len(times)
        parts.append(f"{m.seconds:.2f}s, eta {eta:.0f}s")
        log.info("  ".join(parts))
        return callback(m) if callback is not None else None
    return hook


def init_signature() -> inspect.Signature:
    """Keyword-only parameters with their defaults, for help() and notebook completion."""
    est = PMF()
    params = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                                default=est.getOrDefault(p) if est.hasDefault(p) else None)
              for p in est.params]
    params.append(inspect.Parameter("plain", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)
