"""Top-k recommendations and item neighbours on Spark, blockwise (the numpy is in
:mod:`pmf_spark.topk`): every user with training ratings from the cached user layout,
users without them from the popularity list, item neighbours by cosine.

The most-popular baseline (items by training rating count, the user's known items
excluded) runs through the same code, so both lists obey the same rules.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .sparkutil import describe
from .topk import (
    NEIGHBORS_SCHEMA,
    RECS_COLUMNS,
    RECS_SCHEMA,
    neighbors_block,
    recommend_block,
    recommend_rows,
)

log = logging.getLogger("pmf_spark")


def item_tiebreak(items_vocab: DataFrame, n_items: int) -> np.ndarray:
    """For each dense item index, its position in original-id order."""
    tbl = items_vocab.select("id", "idx").toArrow()
    ids = tbl.column("id").to_numpy(zero_copy_only=False)
    idx = tbl.column("idx").to_numpy()
    order = np.argsort(ids, kind="stable")
    out = np.empty(n_items, dtype=np.int64)
    out[idx[order]] = np.arange(idx.size)
    return out


@dataclass(frozen=True)
class TopK:
    """What every list of a run shares: k, the candidate items (bool (n_items,)), the
    tie-break order and the popularity (training counts) of each item."""

    k: int
    candidates: np.ndarray
    tiebreak: np.ndarray
    popularity: np.ndarray


def recommend_all(engine, model, topk: TopK, popular: bool = False) -> DataFrame:
    """Top-k (dense indices) for every user with training ratings; ``popular`` gives
    the most-popular baseline instead of the model."""
    shared = engine.spark.sparkContext.broadcast(
        (model.U, model.user_bias, model.V, model.item_bias, topk.candidates, topk.tiebreak,
         topk.popularity if popular else None, model.readout))
    fn = functools.partial(recommend_block, shared=shared, k=topk.k,
                           val_dtype=engine.val_dtype)
    return engine.layout["user"].groupBy("block").applyInPandas(fn, RECS_SCHEMA)


def cold_start_recs(spark: SparkSession, users_vocab: DataFrame, model,
                    topk: TopK) -> DataFrame:
    """The most-popular list for every user without training ratings."""
    empty = np.zeros(0, dtype=np.int64)
    one = recommend_rows(np.zeros((1, model.U.shape[1])), np.zeros(1), np.array([0, 0]), empty,
                         model.V, model.item_bias, topk.candidates, topk.tiebreak, topk.k,
                         model.readout, popularity=topk.popularity)
    top = spark.createDataFrame(one.drop(columns=["u"]))
    cold = users_vocab.where(F.col("n_ratings") == 0).select(F.col("idx").alias("u"))
    return cold.crossJoin(F.broadcast(top)).select(*RECS_COLUMNS)


def all_lists(engine, model, topk: TopK, cold_start: str, popular: bool) -> DataFrame:
    """Every user's list (model or popularity), with the ``cold_start`` flag; users
    without training ratings get the popular list unless ``cold_start == "drop"``."""
    recs = recommend_all(engine, model, topk, popular).withColumn("cold_start", F.lit(False))
    if cold_start == "popular":
        cold = cold_start_recs(engine.spark, engine.data.users, model, topk)
        recs = recs.unionByName(cold.withColumn("cold_start", F.lit(True)))
    return recs


def persisted_lists(engine, model, topk: TopK,
                    cold_start: str) -> tuple[dict[str, DataFrame], int, float]:
    """The model's and the popularity baseline's lists, persisted and materialised,
    the model's row count and the seconds it took; the caller unpersists them."""
    frames = {}
    for name, popular in (("model", False), ("popular", True)):
        describe(engine.spark, f"top-{topk.k}: {name}")
        frames[name] = all_lists(engine, model, topk, cold_start, popular).persist(
            StorageLevel.MEMORY_AND_DISK)
    t0 = time.perf_counter()
    n = frames["model"].count()
    seconds = time.perf_counter() - t0
    log.info("top-%d for all users: %d rows in %.1fs", topk.k, n, seconds)
    describe(engine.spark, None)
    return frames, n, seconds


def item_neighbors(engine, model, *, k: int, tiebreak: np.ndarray) -> DataFrame:
    """k nearest items by cosine similarity of item factors (trained items only)."""
    counts = engine.counts["item"]
    norms = np.linalg.norm(model.V, axis=1)
    valid = (counts > 0) & (norms > 0)
    Vn = np.where(valid[:, None], model.V / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    shared = engine.spark.sparkContext.broadcast((Vn, valid, tiebreak))
    fn = functools.partial(neighbors_block, shared=shared, k=k)
    blocks = max(1, engine.blocks)
    ids = engine.spark.range(0, model.V.shape[0], 1, blocks).select(
        F.col("id").cast("int").alias("i"), (F.col("id") % blocks).alias("block"))
    return ids.groupBy("block").applyInPandas(fn, NEIGHBORS_SCHEMA)
