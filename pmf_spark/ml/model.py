"""``PMFModel``: a fitted model as a Spark ML ``Model`` -- predictions, factors,
top-k in MLlib's shapes and in pmf-spark's, and persistence."""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.errors.exceptions.base import IllegalArgumentException
from pyspark.ml import Model
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pmf_spark.config.params import PMFParams
from pmf_spark.outputs.modeldir import RECS_COLUMNS

from ..errors import InputDataError
from . import recs
from .core import FactorCore
from .params import PMFModelParams


class MissingColumn(InputDataError, IllegalArgumentException):
    """A column the model needs is not in the DataFrame (an ``IllegalArgumentException``
    too, as Spark ML raises for a missing column)."""

    def __init__(self, message: str):
        IllegalArgumentException.__init__(self, message=message)
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0])


def require_columns(df: DataFrame, columns: list[str], where: str) -> None:
    for c in columns:
        if c not in df.columns:
            raise MissingColumn(f"{where}: column {c!r} does not exist (columns: "
                                f"{', '.join(df.columns)})")


def _key(col: Column, dtype: str, id_type: str) -> Column:
    """``col`` comparable with the model's ids (bigint or string)."""
    if id_type == "string":
        return col.cast("string")
    if dtype == "string":
        return F.trim(col).try_cast("long")
    return col


def predict_pairs(core: FactorCore, dataset: DataFrame, ucol: str, icol: str, out: str,
                  cold_start: str) -> DataFrame:
    """``dataset`` with column ``out``: the model's prediction (rating units) for each
    (``ucol``, ``icol``) pair; pairs with an unknown user or item get the mean-based
    prediction, NaN (``cold_start`` 'nan') or are dropped ('drop')."""
    require_columns(dataset, [ucol, icol], "PMFModel.transform")
    spark = dataset.sparkSession
    dtypes = dict(dataset.dtypes)
    tmp = ["__pmf_u", "__pmf_uf", "__pmf_ub", "__pmf_un",
           "__pmf_i", "__pmf_if", "__pmf_ib", "__pmf_in"]
    u = core.frame(spark, "user").toDF(*tmp[:4])
    i = core.frame(spark, "item").toDF(*tmp[4:])
    joined = (dataset.join(u, _key(dataset[ucol], dtypes[ucol], core.id_type) == u[tmp[0]],
                           "left")
              .join(i, _key(dataset[icol], dtypes[icol], core.id_type) == i[tmp[4]], "left"))
    dot = F.aggregate(F.zip_with(tmp[1], tmp[5], lambda a, b: a * b), F.lit(0.0),
                      lambda acc, x: acc + x)
    z = (F.coalesce(dot, F.lit(0.0)) + F.coalesce(F.col(tmp[2]), F.lit(0.0))
         + F.coalesce(F.col(tmp[6]), F.lit(0.0)))
    ro = core.readout
    if ro.link == "sigmoid":
        pred = F.lit(ro.lo) + F.lit(ro.hi - ro.lo) / (F.lit(1.0) + F.exp(-z))
    else:
        pred = F.lit(ro.mu) + F.lit(ro.sigma) * z
        if ro.clip:
            pred = F.least(F.greatest(pred, F.lit(ro.lo)), F.lit(ro.hi))
    known = ((F.coalesce(F.col(tmp[3]), F.lit(0)) > 0)
             & (F.coalesce(F.col(tmp[7]), F.lit(0)) > 0))
    if cold_start == "nan":
        pred = F.when(known, pred).otherwise(F.lit(float("nan")))
    elif cold_start == "drop":
        joined = joined.where(known)
    return joined.withColumn(out, pred).drop(*tmp)


class PMFModel(Model, PMFModelParams, MLWritable, MLReadable):
    """A trained PMF model. Made by :meth:`PMF.fit <pmf_spark.ml.PMF.fit>`, or read with
    :meth:`PMFModel.load` from a directory it saved or the training job wrote.

    ``transform`` adds ``predictionCol`` (double, in rating units);
    ``userFactors``/``itemFactors`` are MLlib's ``(id, features)`` frames;
    ``recommendFor*`` return MLlib's ``(userCol|itemCol, recommendations)`` shapes, never
    with an item the user rated in training. ``user_factors``/``item_factors`` and
    :meth:`recommend_for_all_users` are the job's tables (raw factors, biases, ranks,
    cold-start flags).
    """

    def __init__(self, core: FactorCore | None = None):
        super().__init__()
        self._core = core

    @property
    def core(self) -> FactorCore:
        if self._core is None:
            raise InputDataError("PMFModel: no factors (use PMF.fit or PMFModel.load)")
        return self._core

    @property
    def _spark(self) -> SparkSession:
        return SparkSession.active()

    # ---------------------------------------------------------------- what it is
    @property
    def rank(self) -> int:
        """Length of the factor vectors (for BPMF: kept samples x rank)."""
        return int(self.core.meta["rank"])

    @property
    def meta(self) -> dict:
        """The ``model.json`` content: parameters, statistics, metrics, versions."""
        return self.core.meta

    @property
    def pmf_params(self) -> PMFParams:
        """The parameter groups the model was fitted with."""
        return self.core.pmf_params()

    @property
    def history(self) -> list[dict]:
        """Per-epoch metrics of the fit."""
        return list(self.core.history)

    @property
    def userFactors(self) -> DataFrame:
        """MLlib's ``(id, features array<float>)``; ``dot(user, item)`` is the unclipped
        prediction in rating units (the factors scaled, then two bias columns)."""
        return self.core.mllib_factors(self._spark, "user")

    @property
    def itemFactors(self) -> DataFrame:
        """MLlib's ``(id, features array<float>)``, the item half of :attr:`userFactors`."""
        return self.core.mllib_factors(self._spark, "item")

    @property
    def user_factors(self) -> DataFrame:
        """The job's ``user_factors`` table: ``user_id, features, bias, n_ratings``."""
        return self.core.frame(self._spark, "user")

    @property
    def item_factors(self) -> DataFrame:
        """The job's ``item_factors`` table: ``item_id, features, bias, n_ratings``."""
        return self.core.frame(self._spark, "item")

    # ---------------------------------------------------------------- predictions
    def _transform(self, dataset: DataFrame) -> DataFrame:
        return predict_pairs(self.core, dataset, self.getUserCol(), self.getItemCol(),
                             self.getPredictionCol(), self.getColdStartStrategy())

    # ---------------------------------------------------------------- top-k
    def _nested(self, side: str, k: int, queries: DataFrame | None) -> DataFrame:
        _check_k(k)
        cold = self.getColdStartStrategy() == "mean"
        flat = recs.top_k(self._spark, self.core, side, k, queries, cold=cold)
        names = (self.getUserCol(), self.getItemCol())
        query_col, other_col = names if side == "user" else names[::-1]
        return recs.nested(flat, self.core, side, query_col, other_col)

    def recommendForAllUsers(self, numItems: int) -> DataFrame:
        """``(userCol, recommendations array<struct<itemCol, rating>>)`` for every user;
        items the user rated in training never appear. Users without training ratings
        get the most-rated items with ``coldStartStrategy`` 'mean', else are left out."""
        return self._nested("user", numItems, None)

    def recommendForAllItems(self, numUsers: int) -> DataFrame:
        """``(itemCol, recommendations array<struct<userCol, rating>>)`` for every item:
        the users predicted to rate it highest, never one who rated it in training."""
        return self._nested("item", numUsers, None)

    def recommendForUserSubset(self, dataset: DataFrame, numItems: int) -> DataFrame:
        """:meth:`recommendForAllUsers` for the distinct ids of ``dataset[userCol]``."""
        require_columns(dataset, [self.getUserCol()], "recommendForUserSubset")
        return self._nested("user", numItems, recs.query_ids(dataset, self.getUserCol()))

    def recommendForItemSubset(self, dataset: DataFrame, numUsers: int) -> DataFrame:
        """:meth:`recommendForAllItems` for the distinct ids of ``dataset[itemCol]``."""
        require_columns(dataset, [self.getItemCol()], "recommendForItemSubset")
        return self._nested("item", numUsers, recs.query_ids(dataset, self.getItemCol()))

    def recommend_for_all_users(self, k: int = 10, min_item_ratings: int = 1,
                                candidates=None, exclude=None) -> DataFrame:
        """The job's ``recommendations`` table: ``user_id, rank, item_id,
        predicted_rating, score, cold_start``, every user (users without training
        ratings get the most-rated items, flagged). ``candidates``: item ids to recommend
        from (an allow-list), ``exclude``: item ids never to recommend."""
        _check_k(k)
        allowed = None
        if candidates is not None or exclude is not None:
            allowed = self._answers().candidates(min_item_ratings, exclude, candidates)
        return recs.top_k(self._spark, self.core, "user", k, min_other_ratings=min_item_ratings,
                          candidates=allowed).select(*RECS_COLUMNS)

    def fold_in_users(self, ratings: DataFrame, k: int = 10, userCol: str = "user",
                      itemCol: str = "item", ratingCol: str = "rating", candidates=None,
                      exclude=None) -> tuple[DataFrame, DataFrame]:
        """Users the model was not trained on, folded in from their ``ratings`` against
        the fixed item factors (one ridge solve each, blockwise on Spark; unknown items
        are ignored): ``(factors, recommendations)`` -- (user_id, features, bias,
        n_ratings = ratings used) and their top-k (items they rated excluded; users with
        no known item get the most popular ones)."""
        answers = self._answers()
        blocks = self._spark.sparkContext.defaultParallelism
        df = ratings.select(F.col(userCol).alias("user_id"), F.col(itemCol).alias("item_id"),
                            F.col(ratingCol).cast("double").alias("rating"))
        folded = answers.fold_in_users_frame(df, blocks)
        allowed = answers.candidates(None, exclude, candidates)
        lists = answers.recommend_folded_frame(folded, k, allowed, blocks)
        return folded.select("user_id", "features", "bias", "n_ratings"), lists

    def _answers(self):
        """The model's item side on the driver (:class:`~pmf_spark.serve.saved.SavedModel`)."""
        core = self.core
        if "answers" not in core._frames:
            from pmf_spark.serve.saved import SavedModel

            spark = self._spark
            meta = {**core.meta, "job": {"min_item_ratings": 1}}
            ranking = core.ranking_frame(spark, "item") if core.ranking is not None else None
            core._frames["answers"] = SavedModel.from_frames(
                spark, meta, core.frame(spark, "item"),
                core.vocabulary(spark, "item").select("item_id", "idx"), ranking)
        return core._frames["answers"]

    # ---------------------------------------------------------------- persistence
    def write(self):
        """A writer of the training job's output layout plus Spark ML's ``metadata/``:
        ``model.write().overwrite().option("topK", 10).save(path)`` (no recommendations
        table unless ``topK`` is given)."""
        from .persist import PMFModelWriter

        return PMFModelWriter(self)

    def save(self, path: str, top_k: int = 10) -> None:
        """The notebook API's save: the training job's output layout with the top
        ``top_k`` recommendations per user (0 = none), replacing a previous pmf-spark
        model at ``path`` atomically (anything else there is refused)."""
        self.write().overwrite().option("topK", top_k).save(path)

    @classmethod
    def read(cls):
        from .persist import PMFModelReader

        return PMFModelReader(cls)

    def copy(self, extra: dict | None = None) -> PMFModel:
        that = super().copy(extra)
        that._core = self._core
        return that

    def __repr__(self) -> str:
        if self._core is None:
            return f"PMFModel(uid={self.uid})"
        f = self.meta.get("final_metrics", {}) or {}
        test = f.get("test_rmse")
        train = f.get("train_rmse")
        shown = f"test_rmse={test:.4f}" if isinstance(test, float) and test == test else (
            f"train_rmse={train:.4f}" if isinstance(train, float) else "")
        d = self.meta.get("data", {})
        return (f"PMFModel(rank={self.rank}, users={d.get('n_users')}, "
                f"items={d.get('n_items')}, {shown})")


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputDataError(f"number of recommendations: expected an integer >= 1, got {k!r}")
