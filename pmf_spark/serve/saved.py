"""A trained model read back from its output directory (Parquet + model.json) through
Spark, for answering users: one user's list, a new user's fold-in, lists for many
users, fold-in of many new users. Every answer about one user or item is computed by
the numpy it shares with the Spark-free path (:class:`pmf_spark.serve.answers.ModelAnswers`);
what runs on Spark here is the blockwise work for many users at once."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pmf_spark.outputs.modeldir import (
    TEST_RATINGS,
    TRAIN_RATINGS,
    factors_table,
    model_sections,
    ranking_rank,
    read_meta,
    vocabulary_table,
)
from pmf_spark.recommend.foldin import fold_in_block
from pmf_spark.recommend.topk import users_block
from pmf_spark.serve.answers import RECS_COLUMNS, ModelAnswers, Side
from pmf_spark.storage.hadoop import path_exists, read_text

RECS_BY_ID_COLUMNS = RECS_COLUMNS
__all__ = ["SavedModel", "model_sections", "RECS_BY_ID_COLUMNS"]


class SavedModel(ModelAnswers):
    """A model directory: item factors held on the driver (they are broadcast to answer
    users); user factors and the rating splits stay Spark DataFrames."""

    def __init__(self, spark: SparkSession, path: str):
        path = path.rstrip("/")
        meta = read_meta(path, lambda p: read_text(spark, p) if path_exists(spark, p) else None)

        def table(name: str) -> DataFrame:
            return spark.read.parquet(f"{path}/{name}")

        ranking = None
        if ranking_rank(meta) and path_exists(spark, f"{path}/{factors_table('item', True)}"):
            ranking = table(factors_table("item", ranking=True))
        self._setup(spark, path, meta, table(factors_table("item")),
                    table(vocabulary_table("item")).select("item_id", "idx"), ranking)
        self.users = table(factors_table("user"))
        self.train = table(TRAIN_RATINGS)
        self.test = table(TEST_RATINGS)
        if self.ranker is not None:
            self.ranking_users = table(factors_table("user", ranking=True))

    def _setup(self, spark, path, meta, item_factors: DataFrame, item_vocab: DataFrame,
               ranking_items: DataFrame | None = None) -> None:
        self.spark = self.spark_session = spark
        vocab = item_vocab.toArrow()
        items = Side.from_arrow(item_factors.toArrow(), vocab, "item_id", int(meta["rank"]))
        ranking = None
        if ranking_items is not None:
            ranking = Side.from_arrow(ranking_items.toArrow(), vocab, "item_id",
                                      int(meta["ranking_model"]["model"]["rank"]))
        super().__init__(meta, path, items, ranking)
        self._sides: dict[bool, Side] = {}

    @classmethod
    def from_frames(cls, spark: SparkSession, meta: dict, item_factors: DataFrame,
                    item_vocab: DataFrame, ranking_items: DataFrame | None = None
                    ) -> SavedModel:
        """The item side of a model that is not on disk (a freshly fitted one): enough
        to fold in and answer new users (:meth:`fold_in_users_frame`)."""
        model = cls.__new__(cls)
        model._setup(spark, "(in memory)", meta, item_factors, item_vocab, ranking_items)
        return model

    # ---------------------------------------------------------------- hooks
    def user_row(self, user_id):
        row = self.users.where(F.col("user_id") == user_id).select(
            "features", "bias", "n_ratings").first()
        if row is None:
            return None
        return np.asarray(row["features"], dtype=np.float64), float(row["bias"]), \
            int(row["n_ratings"])

    def ranking_row(self, user_id):
        row = self.ranking_users.where(F.col("user_id") == user_id).select(
            "features", "bias").first()
        return None if row is None else (np.asarray(row["features"], np.float64),
                                         float(row["bias"]))

    def rated_items(self, user_id) -> np.ndarray:
        rows = self.train.where(F.col("user_id") == user_id).select("item_id").collect()
        return self.id_array(r[0] for r in rows)

    def test_ratings(self, user_id, threshold: float) -> pd.DataFrame:
        """The user's test ratings at or above ``threshold``, best first, then by item id."""
        return (self.test.where((F.col("user_id") == user_id) & (F.col("rating") >= threshold))
                .orderBy(F.col("rating").desc(), "item_id").select("item_id", "rating")
                .toPandas())

    def user_side(self, ranking: bool = False) -> Side:
        if ranking not in self._sides:
            table = self.ranking_users if ranking else self.users
            vocab = self.spark.read.parquet(f"{self.path}/{vocabulary_table('user')}")
            self._sides[ranking] = Side.from_arrow(
                table.toArrow(), vocab.select("user_id", "idx").toArrow(), "user_id",
                self.ranker[3] if ranking and self.ranker else self.rank)
        return self._sides[ranking]

    def raters(self, item_id) -> np.ndarray:
        rows = self.train.where(F.col("item_id") == item_id).select("user_id").collect()
        return self.id_array(r[0] for r in rows)

    # ---------------------------------------------------------------- many users
    def _vocabulary(self) -> DataFrame:
        """(item_id, idx) of the model's items, from the arrays on the driver."""
        frame = pd.DataFrame({"item_id": self.item_ids,
                              "idx": np.arange(self.item_ids.size, dtype=np.int32)})
        return F.broadcast(self.spark.createDataFrame(frame))

    def _id_type(self) -> str:
        return "bigint" if self.id_type == "long" else "string"

    def _lists(self, rows: DataFrame, k: int, candidates: np.ndarray,
               blocks: int) -> DataFrame:
        """Top-k (RECS_COLUMNS) for rows (user_id, features, bias, n_ratings, rated[,
        rfeatures, rbias])."""
        spark = self.spark
        rows = rows.withColumn("block", F.pmod(F.hash("user_id"), F.lit(max(1, blocks))))
        shared = spark.sparkContext.broadcast(self.lists_shared(candidates))
        schema = (f"user_id {self._id_type()}, rank int, i int, predicted_rating double, "
                  f"score double, cold_start boolean")
        fn = functools.partial(users_block, shared=shared, k=k, rank=self.rank)
        recs = rows.groupBy("block").applyInPandas(fn, schema)
        names = spark.createDataFrame(pd.DataFrame({
            "i": np.arange(self.item_ids.size, dtype=np.int32), "item_id": self.item_ids}))
        return recs.join(F.broadcast(names), "i").select(*RECS_COLUMNS)

    def recommend_users(self, ids: DataFrame, k: int, candidates: np.ndarray,
                        blocks: int) -> DataFrame:
        """Top-k for the users in ``ids`` (column ``id``), blockwise; unknown users and
        users without training ratings get the most popular items (cold_start)."""
        wanted = ids.select(F.col("id").alias("user_id")).distinct()
        rated = (self.train.join(wanted, "user_id").join(self._vocabulary(), "item_id")
                 .groupBy("user_id").agg(F.sort_array(F.collect_list("idx")).alias("rated")))
        rows = (wanted.join(self.users.select("user_id", "features", "bias", "n_ratings"),
                            "user_id", "left").join(rated, "user_id", "left"))
        if self.ranker is not None:
            rows = rows.join(self.ranking_users.select(
                "user_id", F.col("features").alias("rfeatures"), F.col("bias").alias("rbias")),
                "user_id", "left")
        return self._lists(rows, k, candidates, blocks)

    def fold_in_users_frame(self, ratings: DataFrame, blocks: int) -> DataFrame:
        """New users folded in from ``ratings`` (user_id, item_id, rating), blockwise
        against the broadcast item factors: (user_id, features, bias, n_ratings =
        ratings of known items used, rated = their dense indices[, rfeatures, rbias under
        the ranking model]); users none of whose items the model knows get null features
        and n_ratings 0."""
        known = ratings.join(self._vocabulary(), "item_id", "left")
        rows = known.withColumn("block", F.pmod(F.hash("user_id"), F.lit(max(1, blocks))))
        shared = self.spark.sparkContext.broadcast(
            (self.fold_in_spec(), self.ranking_fold_in_spec()))
        fn = functools.partial(fold_in_block, shared=shared)
        schema = (f"user_id {self._id_type()}, features array<double>, bias double, "
                  f"n_ratings int, rated array<int>"
                  + (", rfeatures array<double>, rbias double" if self.ranker else ""))
        return rows.select("block", "user_id", "idx", "rating").groupBy("block") \
            .applyInPandas(fn, schema)

    def recommend_folded_frame(self, folded: DataFrame, k: int, candidates: np.ndarray,
                               blocks: int) -> DataFrame:
        """Top-k (RECS_COLUMNS) for the rows of :meth:`fold_in_users_frame`."""
        return self._lists(folded, k, candidates, blocks)
