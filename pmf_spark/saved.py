"""A trained model read back from its output directory (Parquet + model.json), for
answering users: one user's list, a new user's fold-in, lists for many users."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .errors import InputDataError
from .fs import path_exists, read_text
from .kernels import ReadOut
from .topk import fold_in, recommend_rows, users_block

RECS_BY_ID_COLUMNS = ["user_id", "rank", "item_id", "predicted_rating", "score", "cold_start"]


def model_sections(meta: dict) -> dict:
    """The flat parameters of a model.json (format 2: model/fit/engine sections;
    format 1 kept every parameter under ``model``)."""
    flat = dict(meta.get("model", {}))
    for section in ("fit", "engine", "ranker"):
        flat.update(meta.get(section, {}))
    return flat


class SavedModel:
    """A model directory: item factors held on the driver (they are broadcast to answer
    users); user factors and the rating splits stay Spark DataFrames."""

    def __init__(self, spark: SparkSession, path: str):
        self.spark, self.path = spark, path.rstrip("/")
        if not path_exists(spark, self.path + "/model.json"):
            raise InputDataError(f"model {path}: no model.json (not a pmf-spark output?)")
        try:
            self.meta = json.loads(read_text(spark, self.path + "/model.json"))
        except json.JSONDecodeError as exc:
            raise InputDataError(f"model {path}/model.json: not valid JSON ({exc})") from None
        m = self.meta
        self.params = model_sections(m)
        self.rank = int(m["rank"])
        lo, hi = map(float, m["rating_range"])
        self.readout = ReadOut(mu=float(m["mu"]), sigma=float(m["sigma"]), lo=lo, hi=hi,
                               link=self.params["link"], clip=bool(self.params["clip"]))
        self.lo, self.hi = lo, hi
        self.id_type = m["data"]["id_type"]
        self.users = spark.read.parquet(self.path + "/user_factors")
        self.train = spark.read.parquet(self.path + "/train_ratings")
        self.test = spark.read.parquet(self.path + "/test_ratings")
        items = (spark.read.parquet(self.path + "/item_factors")
                 .join(spark.read.parquet(self.path + "/item_vocabulary").select("item_id", "idx"),
                       "item_id").orderBy("idx").toArrow())
        n = items.num_rows
        self.item_ids = items.column("item_id").to_numpy(zero_copy_only=False)
        feats = items.column("features").combine_chunks()
        self.V = feats.flatten().to_numpy().reshape(n, self.rank)
        self.item_bias = items.column("bias").to_numpy()
        self.item_counts = items.column("n_ratings").to_numpy().astype(np.int64)
        self.item_index = pd.Index(self.item_ids)
        order = np.argsort(self.item_ids, kind="stable")
        self.tiebreak = np.empty(n, dtype=np.int64)
        self.tiebreak[order] = np.arange(n)

    def parse_id(self, raw: str):
        if self.id_type == "long":
            try:
                return int(raw)
            except ValueError:
                raise InputDataError(f"user id {raw!r}: this model's ids are integers") from None
        return raw

    def item_idx(self, ids) -> np.ndarray:
        """Dense indices of item ids (-1 for ids the model does not know)."""
        return self.item_index.get_indexer(pd.Index(ids))

    def recommend_one(self, factors, bias, rated_items, k, candidates):
        """Top-k for one user given as (factors, bias, rated item ids); a user
        without factors (None) gets the most popular items."""
        rated = self.item_idx(rated_items)
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        cold = factors is None
        U = np.zeros((1, self.rank)) if cold else np.asarray(factors, dtype=np.float64)[None, :]
        recs = recommend_rows(U, np.array([0.0 if cold else float(bias)]),
                              np.array([0, rated.size]), rated, self.V, self.item_bias,
                              candidates, self.tiebreak, k, self.readout,
                              popularity=self.item_counts if cold else None)
        recs["item_id"] = self.item_ids[recs["i"].to_numpy()]
        recs["cold_start"] = cold
        return recs

    def fold_in(self, items, ratings):
        """Factors and bias of a new user from (item id, rating) pairs; unknown items
        are ignored. Returns (factors, bias, n_used)."""
        p = self.params
        idx = self.item_idx(items)
        keep = idx >= 0
        if not keep.any():
            return None, 0.0, 0
        f, b = fold_in(self.V, self.item_bias, idx[keep], np.asarray(ratings)[keep],
                       lam=float(p["lambda_u"]), lam_bias=float(p["lambda_bias"]),
                       biases=bool(p["biases"]), count_scaling=p["reg_scaling"] == "count",
                       ro=self.readout)
        return f, b, int(keep.sum())

    def recommend_users(self, ids: DataFrame, k: int, candidates: np.ndarray,
                        blocks: int) -> DataFrame:
        """Top-k for the users in ``ids`` (column ``id``), blockwise; unknown users and
        users without training ratings get the most popular items (cold_start)."""
        spark = self.spark
        wanted = ids.select(F.col("id").alias("user_id")).distinct()
        rated = (self.train.join(wanted, "user_id")
                 .join(F.broadcast(spark.read.parquet(self.path + "/item_vocabulary")
                                   .select("item_id", "idx")), "item_id")
                 .groupBy("user_id").agg(F.sort_array(F.collect_list("idx")).alias("rated")))
        rows = (wanted.join(self.users.select("user_id", "features", "bias", "n_ratings"),
                            "user_id", "left").join(rated, "user_id", "left")
                .withColumn("block", F.pmod(F.hash("user_id"), F.lit(max(1, blocks)))))
        shared = spark.sparkContext.broadcast(
            (self.V, self.item_bias, candidates, self.tiebreak, self.item_counts, self.readout))
        id_type = "bigint" if self.id_type == "long" else "string"
        schema = (f"user_id {id_type}, rank int, i int, predicted_rating double, score double, "
                  f"cold_start boolean")
        fn = functools.partial(users_block, shared=shared, k=k, rank=self.rank)
        recs = rows.groupBy("block").applyInPandas(fn, schema)
        names = spark.createDataFrame(pd.DataFrame({
            "i": np.arange(self.item_ids.size, dtype=np.int32), "item_id": self.item_ids}))
        return recs.join(F.broadcast(names), "i").select(*RECS_BY_ID_COLUMNS)
