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
from .foldin import fold_in_user
from .fs import path_exists, read_text
from .kernels import ReadOut
from .params import PMFParams, group_of
from .topk import recommend_rows, users_block

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
        #: the model predicts ratings (implicit ALS scores preferences)
        self.rates = self.params.get("model") != "implicit"
        if not self.rates:
            self.readout = ReadOut(mu=0.0, sigma=1.0, lo=-np.inf, hi=np.inf, clip=False)
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
        self.ranker = self._ranker(items)

    def _ranker(self, items):
        """(V, item_bias, read-out, rank) of the ranking model written beside the rating
        model (``ranking_item_factors``), its user table as ``self.ranking_users``; None
        when the lists are ranked by the rating model itself."""
        spec = self.meta.get("ranking_model")
        if not spec or not path_exists(self.spark, self.path + "/ranking_item_factors"):
            return None
        self.ranking_users = self.spark.read.parquet(self.path + "/ranking_user_factors")
        tbl = (self.spark.read.parquet(self.path + "/ranking_item_factors")
               .join(self.spark.read.parquet(self.path + "/item_vocabulary")
                     .select("item_id", "idx"), "item_id").orderBy("idx").toArrow())
        rank = int(spec["model"]["rank"])
        V = tbl.column("features").combine_chunks().flatten().to_numpy().reshape(-1, rank)
        ro = self.readout
        if spec["fit"]["model"] == "implicit":
            ro = ReadOut(mu=0.0, sigma=1.0, lo=-np.inf, hi=np.inf, clip=False)
        return V, tbl.column("bias").to_numpy(), ro, rank

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

    def recommend_one(self, factors, bias, rated_items, k, candidates, ranking=None):
        """Top-k for one user given as (factors, bias, rated item ids); a user without
        factors (None) gets the most popular items. With a ranking model, ``ranking`` is
        the user's (factors, bias) under it and orders the list."""
        rated = self.item_idx(rated_items)
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        cold = factors is None
        U = np.zeros((1, self.rank)) if cold else np.asarray(factors, dtype=np.float64)[None, :]
        ub = np.array([0.0 if cold else float(bias)])
        indptr = np.array([0, rated.size])
        if not cold and self.ranker is not None and ranking is not None:
            rV, rib, rro, _ = self.ranker
            recs = recommend_rows(np.asarray(ranking[0], np.float64)[None, :],
                                  np.array([float(ranking[1])]), indptr, rated, rV, rib,
                                  candidates, self.tiebreak, k, rro,
                                  rating=(U, ub, self.V, self.item_bias, self.readout)
                                  if self.rates else None)
        else:
            recs = recommend_rows(U, ub, indptr, rated, self.V, self.item_bias, candidates,
                                  self.tiebreak, k, self.readout,
                                  popularity=self.item_counts if cold else None,
                                  rating="self" if self.rates else None)
        recs["item_id"] = self.item_ids[recs["i"].to_numpy()]
        recs["cold_start"] = cold
        return recs

    def fold_in(self, items, ratings):
        """Factors and bias of a new user from (item id, rating) pairs (unknown items are
        ignored), by the model's own user half-step for one row. Returns (factors, bias,
        n_used); with a ranking model, :meth:`fold_in_ranking` gives the same user's
        factors under it."""
        idx = self.item_idx(items)
        keep = idx >= 0
        if not keep.any():
            return None, 0.0, 0
        params = PMFParams.of(**{k: v for k, v in self.params.items()
                                 if group_of(k) is not None})
        f, b = fold_in_user(params, self.V, self.item_bias, self.item_counts, self.readout,
                            idx[keep], np.asarray(ratings, np.float64)[keep])
        return f, b, int(keep.sum())

    def fold_in_ranking(self, items, ratings):
        """(factors, bias) of a new user under the ranking model, or None."""
        spec = self.meta.get("ranking_model")
        idx = self.item_idx(items)
        keep = idx >= 0
        if self.ranker is None or not spec or not keep.any():
            return None
        rV, rib, _, _ = self.ranker
        m = self.meta
        data = ReadOut(mu=float(m["mu"]), sigma=float(m["sigma"]), lo=self.lo, hi=self.hi)
        return fold_in_user(PMFParams.from_dict(spec), rV, rib, self.item_counts, data,
                            idx[keep], np.asarray(ratings, np.float64)[keep])

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
                            "user_id", "left").join(rated, "user_id", "left"))
        if self.ranker is not None:
            rows = rows.join(self.ranking_users.select(
                "user_id", F.col("features").alias("rfeatures"), F.col("bias").alias("rbias")),
                "user_id", "left")
        rows = rows.withColumn("block", F.pmod(F.hash("user_id"), F.lit(max(1, blocks))))
        shared = spark.sparkContext.broadcast(
            (self.V, self.item_bias, candidates, self.tiebreak, self.item_counts,
             self.readout, self.rates, self.ranker))
        id_type = "bigint" if self.id_type == "long" else "string"
        schema = (f"user_id {id_type}, rank int, i int, predicted_rating double, score double, "
                  f"cold_start boolean")
        fn = functools.partial(users_block, shared=shared, k=k, rank=self.rank)
        recs = rows.groupBy("block").applyInPandas(fn, schema)
        names = spark.createDataFrame(pd.DataFrame({
            "i": np.arange(self.item_ids.size, dtype=np.int32), "item_id": self.item_ids}))
        return recs.join(F.broadcast(names), "i").select(*RECS_BY_ID_COLUMNS)
