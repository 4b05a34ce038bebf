"""Top-k recommendations and neighbours on Spark, blockwise (the numpy is in
:mod:`pmf_spark.topk`): every user with training ratings from the cached user layout,
users without them from the popularity list, the top users of every item from the
cached item layout, item and user neighbours by cosine.

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

from .io import read_id_list
from .sparkutil import describe
from .topk import (
    NEIGHBORS_SCHEMA,
    RECS_COLUMNS,
    RECS_SCHEMA,
    neighbors_block,
    recommend_block,
    recommend_rows,
    unit_rows,
)

log = logging.getLogger("pmf_spark")


def listed_items(engine, path: str | None, role: str) -> np.ndarray | None:
    """Dense indices of the item ids listed in ``path`` (one per line) that the data
    knows, or None without a file; logs how many of the listed ids were found."""
    if not path:
        return None
    data = engine.data
    ids = read_id_list(engine.spark, path, data.id_type, role)
    found = ids.join(data.items, "id").select("idx").distinct().toArrow()
    idx = found.column("idx").to_numpy().astype(np.int64)
    log.info("%s: %d item(s) of the data listed in %s", role, idx.size, path)
    return idx


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


def _neighbors(engine, M: np.ndarray, counts: np.ndarray, k: int,
               tiebreak: np.ndarray) -> DataFrame:
    Mn, valid = unit_rows(M, counts)
    shared = engine.spark.sparkContext.broadcast((Mn, valid, tiebreak))
    fn = functools.partial(neighbors_block, shared=shared, k=k)
    blocks = max(1, engine.blocks)
    ids = engine.spark.range(0, M.shape[0], 1, blocks).select(
        F.col("id").cast("int").alias("i"), (F.col("id") % blocks).alias("block"))
    return ids.groupBy("block").applyInPandas(fn, NEIGHBORS_SCHEMA)


def item_neighbors(engine, model, *, k: int, tiebreak: np.ndarray) -> DataFrame:
    """k nearest items by cosine similarity of item factors (trained items only)."""
    return _neighbors(engine, model.V, engine.counts["item"], k, tiebreak)


def user_neighbors(engine, model, *, k: int, tiebreak: np.ndarray) -> DataFrame:
    """k nearest users by cosine similarity of user factors (trained users only):
    columns (i = the user, rank, j = the neighbour, similarity)."""
    return _neighbors(engine, model.U, engine.counts["user"], k, tiebreak)


def item_users(engine, model, *, k: int, tiebreak: np.ndarray,
               items: np.ndarray | None = None) -> DataFrame:
    """The k users with the highest predicted rating for each trained item (or each of
    ``items``, dense indices), never a user who rated it in training: the user top-k
    with the sides swapped, over the cached item layout. Columns (u = the item, rank,
    i = the user, predicted_rating, score); ``tiebreak`` orders users by original id."""
    wanted = engine.counts["item"] > 0
    if items is not None:
        chosen = np.zeros_like(wanted)
        chosen[items] = True
        wanted &= chosen
    users_ok = engine.counts["user"] > 0
    shared = engine.spark.sparkContext.broadcast(
        (model.V, model.item_bias, model.U, model.user_bias, users_ok, tiebreak, None,
         model.readout, wanted))
    fn = functools.partial(recommend_block, shared=shared, k=k, val_dtype=engine.val_dtype)
    return engine.layout["item"].groupBy("block").applyInPandas(fn, RECS_SCHEMA)


def user_tables(engine, model, cfg) -> dict[str, DataFrame]:
    """The job's user-side tables, dense indices, as asked by ``cfg``: ``item_users``
    (top users per item, :func:`item_users`) and ``user_neighbors``."""
    out: dict[str, DataFrame] = {}
    if cfg.users_per_item <= 0 and cfg.similar_users <= 0:
        return out
    tiebreak = item_tiebreak(engine.data.users, engine.data.n_users)
    if cfg.users_per_item > 0:
        items = listed_items(engine, cfg.users_per_item_items, "users-per-item-items")
        out["item_users"] = item_users(engine, model, k=cfg.users_per_item, tiebreak=tiebreak,
                                       items=items)
    if cfg.similar_users > 0:
        out["user_neighbors"] = user_neighbors(engine, model, k=cfg.similar_users,
                                               tiebreak=tiebreak)
    return out


def ranking_note(ranking: dict | None, model: str) -> str:
    """One sentence for the log and the report: which model the lists come from and,
    when the most-popular list ranks better, why a rating model can lose to it."""
    if not ranking:
        return f"recommendations/ holds the {model} model's lists."
    m, p = ranking["model"], ranking["popular"]
    k = m["k"]
    if p["precision"] > m["precision"]:
        return (f"recommendations/ holds the {model} model's lists; the most-popular list "
                f"ranks better here (precision@{k} {p['precision']:.3f} vs "
                f"{m['precision']:.3f}) because a model fitted to predict ratings ranks the "
                f"items a user would rate highest, including rarely seen ones, while the test "
                f"split rewards the items users actually rated, which are mostly popular ones.")
    return (f"recommendations/ holds the {model} model's lists, which rank better than the "
            f"most-popular list here (precision@{k} {m['precision']:.3f} vs "
            f"{p['precision']:.3f}).")
