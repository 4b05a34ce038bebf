"""A Spark-ML-style Python API for notebooks, on the training job's code path.

    from pmf_spark import PMF
    model = PMF(rank=30).fit(ratings_df)            # columns user, item, rating
    scored = model.transform(pairs_df)              # adds "prediction"
    recs = model.recommend_for_all_users(10)        # (user_id, rank, item_id, ...)
    model.save("models/pmf")
    same = PMF.load("models/pmf")                   # same predictions

``fit`` validates the DataFrame like the job validates files, indexes it and runs
the same ALS (or BPMF) trainer; ``save`` writes the job's output layout, so a
saved model is also a model directory for ``jobs/recommend.py`` and vice versa.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .errors import ConfigError
from .params import JobConfig, PMFParams


class PMF:
    """Estimator. Keyword arguments are parameters by their plain names (``rank``,
    ``lambda_u``, ``blocks``, ...: :class:`~pmf_spark.params.PMFParams`), plus the column
    names ``userCol``/``itemCol``/``ratingCol``/``timestampCol`` (Spark ML style)."""

    def __init__(self, userCol: str = "user", itemCol: str = "item", ratingCol: str = "rating",
                 timestampCol: str | None = None, **params):
        self.params = PMFParams.of(where="PMF(...)", **params)
        self.cols: dict = dict(user_col=userCol, item_col=itemCol, rating_col=ratingCol,
                         timestamp_col=timestampCol)

    def fit(self, df: DataFrame, test: DataFrame | None = None) -> PMFModel:
        """Train on all of ``df`` (metrics on ``test`` when given)."""
        from .io import frame_ratings
        from .prepare import prepare
        from .train import Trainer

        spark = df.sparkSession
        train = frame_ratings(df, **self.cols)
        held = frame_ratings(test, **self.cols, role="test") if test is not None else None
        data = prepare(train, held, test_fraction=0.5, split_seed=0, on_duplicate="latest",
                       holdout=None if held is not None else F.lit(False),
                       require_test=False)
        trainer = Trainer(spark, data, self.params)
        state = trainer.fit()
        return PMFModel._fitted(spark, trainer, state)

    @staticmethod
    def load(path: str, spark: SparkSession | None = None) -> PMFModel:
        """A model saved by :meth:`PMFModel.save` or written by the training job."""
        spark = spark or SparkSession.getActiveSession()
        if spark is None:
            raise ConfigError("PMF.load: no active SparkSession")
        return PMFModel._loaded(spark, path)


class PMFModel:
    """A trained model: factor tables (original ids) and how to read them."""

    def __init__(self, spark, user_factors, item_factors, meta, trainer=None, state=None,
                 saved=None):
        self.spark = spark
        self.user_factors = user_factors
        self.item_factors = item_factors
        self.meta = meta
        self._trainer, self._state, self._saved = trainer, state, saved

    @classmethod
    def _fitted(cls, spark, trainer, state):
        from .outputs import factor_frame

        model = trainer.model(state)
        data = trainer.data
        uf = factor_frame(spark, model.U, model.user_bias, data.users, "user_id").cache()
        itf = factor_frame(spark, model.V, model.item_bias, data.items, "item_id").cache()
        meta = {"mu": data.mu, "sigma": data.sigma,
                "rating_range": [data.rating_lo, data.rating_hi],
                **trainer.params.to_dict(), "data": data.summary(),
                "rank": int(model.U.shape[1]),
                "final_metrics": trainer.final_metrics(state).to_dict()}
        return cls(spark, uf, itf, meta, trainer=trainer, state=state)

    @classmethod
    def _loaded(cls, spark, path):
        from .saved import SavedModel

        saved = SavedModel(spark, path)
        return cls(spark, saved.users, spark.read.parquet(saved.path + "/item_factors"),
                   saved.meta, saved=saved)

    # ---------------------------------------------------------------- predictions
    def transform(self, df: DataFrame, userCol: str = "user", itemCol: str = "item",
                  outputCol: str = "prediction") -> DataFrame:
        """``df`` with a prediction column; unknown users or items predict the mean
        plus the known side's bias (never NaN)."""
        from .saved import model_sections

        m = self.meta
        p = model_sections(m)
        lo, hi = m["rating_range"]
        u = self.user_factors.select(F.col("user_id").alias("_u"), F.col("features").alias("_uf"),
                                     F.col("bias").alias("_ub"))
        i = self.item_factors.select(F.col("item_id").alias("_i"), F.col("features").alias("_vf"),
                                     F.col("bias").alias("_ib"))
        joined = (df.join(u, df[userCol] == u["_u"], "left")
                  .join(i, df[itemCol] == i["_i"], "left"))
        dot = F.coalesce(F.aggregate(F.zip_with("_uf", "_vf", lambda a, b: a * b), F.lit(0.0),
                                     lambda acc, x: acc + x), F.lit(0.0))
        z = dot + F.coalesce(F.col("_ub"), F.lit(0.0)) + F.coalesce(F.col("_ib"), F.lit(0.0))
        if p["link"] == "sigmoid":
            pred = F.lit(lo) + F.lit(hi - lo) / (F.lit(1.0) + F.exp(-z))
        else:
            pred = F.lit(m["mu"]) + F.lit(m["sigma"]) * z
            if p["clip"]:
                pred = F.least(F.greatest(pred, F.lit(lo)), F.lit(hi))
        return joined.withColumn(outputCol, pred).drop("_u", "_uf", "_ub", "_i", "_vf", "_ib")

    def recommend_for_all_users(self, k: int = 10, min_item_ratings: int = 1,
                                candidates=None, exclude=None) -> DataFrame:
        """Top-k for every known user, never an item they rated in training;
        ``candidates``: item ids to recommend from (an allow-list), ``exclude``: item ids
        never to recommend."""
        from .outputs import RECS_COLUMNS, ids_frame
        from .recommend import TopK, all_lists, item_tiebreak

        if self._trainer is not None:
            tr, data = self._trainer, self._trainer.data
            counts = tr.counts["item"]
            cand = self._answers().candidates(min_item_ratings, exclude, candidates)
            topk = TopK(k=k, candidates=cand, tiebreak=item_tiebreak(data.items, data.n_items),
                        popularity=counts)
            recs = all_lists(tr.engine, tr.model(self._state), topk, "popular", popular=False,
                             ranker=tr.ranking_model(self._state),
                             rates=tr.strategy.predicts_ratings)
            return ids_frame(recs, data).select(*RECS_COLUMNS)
        saved = self._saved
        cand = saved.candidates(min_item_ratings, exclude, candidates)
        ids = saved.users.select(F.col("user_id").alias("id"))
        return saved.recommend_users(ids, k, cand, self.spark.sparkContext.defaultParallelism)

    def fold_in_users(self, ratings: DataFrame, k: int = 10, userCol: str = "user",
                      itemCol: str = "item", ratingCol: str = "rating", candidates=None,
                      exclude=None) -> tuple[DataFrame, DataFrame]:
        """Users the model was not trained on, folded in from their ``ratings`` against
        the fixed item factors (one ridge solve each, blockwise on Spark; items the
        model does not know are ignored): ``(factors, recommendations)`` -- factors
        (user_id, features, bias, n_ratings = ratings used), and their top-k (items
        they rated excluded; users with no known item get the most popular ones)."""
        answers = self._answers()
        blocks = self.spark.sparkContext.defaultParallelism
        df = ratings.select(F.col(userCol).alias("user_id"), F.col(itemCol).alias("item_id"),
                            F.col(ratingCol).cast("double").alias("rating"))
        folded = answers.fold_in_users_frame(df, blocks)
        cand = answers.candidates(None, exclude, candidates)
        recs = answers.recommend_folded_frame(folded, k, cand, blocks)
        return folded.select("user_id", "features", "bias", "n_ratings"), recs

    def _answers(self):
        """The model's item side on the driver (:class:`~pmf_spark.saved.SavedModel`)."""
        if self._saved is not None:
            return self._saved
        if getattr(self, "_in_memory", None) is None:
            from .outputs import factor_frame
            from .saved import SavedModel

            tr = self._trainer
            items = tr.data.items.select(F.col("id").alias("item_id"), "idx")
            meta = {**self.meta, "job": {"min_item_ratings": 1}}
            ranker, ranking_items = tr.ranking_model(self._state), None
            if ranker is not None:
                comp = tr.params.companion()
                meta["ranking_model"] = comp.to_dict() if comp else None
                ranking_items = factor_frame(self.spark, ranker.V, ranker.item_bias,
                                             tr.data.items, "item_id")
            self._in_memory = SavedModel.from_frames(self.spark, meta, self.item_factors, items,
                                                     ranking_items)
        return self._in_memory

    # ---------------------------------------------------------------- persistence
    def save(self, path: str, top_k: int = 10) -> str:
        """Write the training job's output layout to ``path`` (atomically)."""
        if self._trainer is None:
            raise ConfigError("save: this model was loaded from a directory already "
                              f"({self._saved.path}); copy that directory instead")
        from .pipeline import write_outputs

        tr, st = self._trainer, self._state
        cfg = JobConfig(output=path, top_k=top_k, report=False)
        return write_outputs(self.spark, cfg, tr, st,
                             {"per_epoch": [m.seconds for m in st.history]},
                             tr.final_metrics(st))

    @property
    def rank(self) -> int:
        return int(self.meta["rank"])

    def __repr__(self) -> str:
        f = self.meta.get("final_metrics", {})
        return (f"PMFModel(rank={self.rank}, test_rmse={f.get('test_rmse', np.nan):.4f})")


__all__ = ["PMF", "PMFModel"]
