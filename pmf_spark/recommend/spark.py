"""Top-k recommendations and neighbours on Spark, blockwise (the numpy is in
:mod:`pmf_spark.recommend.topk`): every user with training ratings from the cached user layout,
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
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pmf_spark.evaluate.ranking import empty_stats, list_stats, merge
from pmf_spark.inputs.read import read_id_list
from pmf_spark.models.base import FactorModel
from pmf_spark.outputs.modeldir import ITEM_USERS_TABLE, USER_NEIGHBORS_TABLE
from pmf_spark.recommend.topk import (
    NEIGHBORS_SCHEMA,
    RANKED_SCHEMA,
    RECS_COLUMNS,
    RECS_SCHEMA,
    neighbors_block,
    neighbour_support,
    rank_block,
    recommend_block,
    recommend_rows,
    unit_rows,
)
from pmf_spark.runtime.sparkutil import describe

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


def recommend_all(engine, model, topk: TopK, popular: bool = False, ranker=None,
                  rates: bool = True) -> DataFrame:
    """Top-k (dense indices) for every user with training ratings, ranked by ``ranker``
    (a FactorModel; default: ``model`` itself) with ``predicted_rating`` from ``model``
    (NaN when ``rates`` is False: a model of preferences, not ratings); ``popular`` gives
    the most-popular baseline instead."""
    rating = ("self" if ranker is None else model) if rates else None
    shared = engine.spark.sparkContext.broadcast(
        (ranker if ranker is not None else model, rating, topk.candidates, topk.tiebreak,
         topk.popularity if popular else None))
    fn = functools.partial(recommend_block, shared=shared, k=topk.k,
                           val_dtype=engine.val_dtype)
    return engine.layout["user"].groupBy("block").applyInPandas(fn, RECS_SCHEMA)


def cold_start_one(model, topk: TopK, rates: bool = True, depth: int | None = None):
    """The most-popular list (pandas, RECS_COLUMNS) of a user without training ratings
    (their predicted rating is the rating model's for a user at the prior mean)."""
    empty = np.zeros(0, dtype=np.int64)
    return recommend_rows(np.zeros((1, model.U.shape[1])), np.zeros(1), np.array([0, 0]),
                          empty, model.V, model.item_bias, topk.candidates, topk.tiebreak,
                          depth or topk.k, model.readout, popularity=topk.popularity,
                          rating="self" if rates else None)


def cold_start_recs(spark: SparkSession, users_vocab: DataFrame, model,
                    topk: TopK, rates: bool = True) -> DataFrame:
    """The most-popular list for every user without training ratings."""
    top = spark.createDataFrame(cold_start_one(model, topk, rates).drop(columns=["u"]))
    cold = users_vocab.where(F.col("n_ratings") == 0).select(F.col("idx").alias("u"))
    return cold.crossJoin(F.broadcast(top)).select(*RECS_COLUMNS)


def all_lists(engine, model, topk: TopK, cold_start: str, popular: bool, ranker=None,
              rates: bool = True) -> DataFrame:
    """Every user's list (model or popularity), with the ``cold_start`` flag; users
    without training ratings get the popular list unless ``cold_start == "drop"``."""
    recs = recommend_all(engine, model, topk, popular, ranker, rates).withColumn(
        "cold_start", F.lit(False))
    if cold_start == "popular":
        cold = cold_start_recs(engine.spark, engine.data.users, model, topk, rates)
        recs = recs.unionByName(cold.withColumn("cold_start", F.lit(True)))
    return recs


def persisted_lists(engine, model, topk: TopK, cold_start: str, ranker=None,
                    rates: bool = True) -> tuple[dict[str, DataFrame], int, float]:
    """The model's and the popularity baseline's lists, persisted and materialised,
    the model's row count and the seconds it took; the caller unpersists them."""
    frames = {}
    for name, popular in (("model", False), ("popular", True)):
        describe(engine.spark, f"top-{topk.k}: {name}")
        frames[name] = all_lists(engine, model, topk, cold_start, popular, ranker,
                                 rates).persist(StorageLevel.MEMORY_AND_DISK)
    t0 = time.perf_counter()
    n = frames["model"].count()
    seconds = time.perf_counter() - t0
    log.info("top-%d for all users: %d rows in %.1fs", topk.k, n, seconds)
    describe(engine.spark, None)
    return frames, n, seconds


@dataclass
class RankedLists:
    """Every user's top-k list (``lists``: u, rank, i, predicted_rating, score,
    cold_start; persisted, call :meth:`release`) and the ranking stats of the model's
    and the most-popular lists (``stats``, see :mod:`pmf_spark.evaluate.ranking`)."""

    lists: DataFrame
    stats: dict[str, dict]
    n_rows: int
    seconds: float
    _cached: list

    def release(self) -> None:
        for df in self._cached:
            df.unpersist()


def _cold_stats(engine, one: pd.DataFrame, spec, stats: dict) -> int:
    """Add the users without training ratings (they all get the popular list ``one``)
    to both lists' stats; returns how many there are."""
    d = engine.data
    cold = d.users.where(F.col("n_ratings") == 0).select(F.col("idx").alias("u"))
    rel = (d.ratings.where(F.col("is_test") & (F.col("rating") >= F.lit(spec.threshold)))
           .join(cold, "u").select("u", "i").toArrow())
    n_cold = int(d.cold_users)
    users = np.unique(rel.column("u").to_numpy())
    if users.size == 0:
        return n_cold
    rows = np.repeat(np.arange(users.size), len(one))
    ranks = np.tile(one["rank"].to_numpy(), users.size)
    items = np.tile(one["i"].to_numpy(), users.size)
    rel_rows = np.searchsorted(users, rel.column("u").to_numpy())
    for st in stats.values():
        part = empty_stats(spec, d.n_items)
        list_stats(part, spec, rows, ranks, items, rel_rows, rel.column("i").to_numpy(),
                   np.zeros(users.size, np.int64))
        merge(st, part)
    return n_cold


def ranked_lists(engine, model, topk: TopK, spec, cold_start: str, ranker=None,
                 rates: bool = True) -> RankedLists:
    """Every user's list, ranked by ``ranker`` (default ``model``), with
    ``predicted_rating`` from ``model`` (NaN unless ``rates``), and the ranking metrics
    of those lists and of the most-popular lists: one Spark job over the user layout,
    whose chunks carry each user's test ratings."""
    import pickle

    rating = ("self" if ranker is None else model) if rates else None
    shared = engine.spark.sparkContext.broadcast(
        (ranker if ranker is not None else model, rating, topk.candidates, topk.tiebreak,
         topk.popularity, spec))
    fn = functools.partial(rank_block, shared=shared, k=topk.k, val_dtype=engine.val_dtype)
    describe(engine.spark, f"top-{topk.k} lists and their ranking metrics")
    t0 = time.perf_counter()
    ranked = (engine.layout["user"].groupBy("block").applyInPandas(fn, RANKED_SCHEMA)
              .persist(StorageLevel.MEMORY_AND_DISK))
    stats = {"model": empty_stats(spec, engine.data.n_items),
             "popular": empty_stats(spec, engine.data.n_items)}
    blobs = ranked.where(F.col("kind") == 1).select("stats").toArrow().column(0).to_pylist()
    for blob in blobs:
        for name, part in pickle.loads(blob).items():
            merge(stats[name], part)
    seconds = time.perf_counter() - t0
    lists = ranked.where(F.col("kind") == 0).select(*RECS_COLUMNS).withColumn(
        "cold_start", F.lit(False))
    j = spec.ks.index(topk.k) if topk.k in spec.ks else None
    n_rows = int(stats["model"]["pairs"][j]) if j is not None else lists.count()
    cached = [ranked]
    if cold_start == "popular" and engine.data.cold_users:
        cold = cold_start_recs(engine.spark, engine.data.users, model, topk, rates)
        one = cold_start_one(model, topk, rates, max(spec.ks))
        n_rows += _cold_stats(engine, one, spec, stats) * int((one["rank"] <= topk.k).sum())
        lists = lists.unionByName(cold.withColumn("cold_start", F.lit(True)))
    describe(engine.spark, None)
    log.info("top-%d for all users and ranking metrics at k = %s: %d rows in %.1fs", topk.k,
             ", ".join(map(str, spec.ks)), n_rows, seconds)
    return RankedLists(lists, stats, n_rows, seconds, cached)


def _neighbors(engine, M: np.ndarray, counts: np.ndarray, k: int,
               tiebreak: np.ndarray, at_least: int = 1) -> DataFrame:
    support = neighbour_support(counts, at_least)
    log.info("neighbours need at least %d training ratings (%s)", support,
             "a fifth of the median count" if support > at_least else "min_item_ratings")
    Mn, valid = unit_rows(M, counts, support)
    shared = engine.spark.sparkContext.broadcast((Mn, valid, tiebreak))
    fn = functools.partial(neighbors_block, shared=shared, k=k)
    blocks = max(1, engine.blocks)
    ids = engine.spark.range(0, M.shape[0], 1, blocks).select(
        F.col("id").cast("int").alias("i"), (F.col("id") % blocks).alias("block"))
    return ids.groupBy("block").applyInPandas(fn, NEIGHBORS_SCHEMA)


def item_neighbors(engine, model, *, k: int, tiebreak: np.ndarray,
                   min_item_ratings: int = 1) -> DataFrame:
    """k nearest items by cosine similarity of item factors (trained items only; the
    neighbours with the support of :func:`neighbour_support`)."""
    return _neighbors(engine, model.V, engine.counts["item"], k, tiebreak, min_item_ratings)


def user_neighbors(engine, model, *, k: int, tiebreak: np.ndarray) -> DataFrame:
    """k nearest users by cosine similarity of user factors (trained users only):
    columns (i = the user, rank, j = the neighbour, similarity)."""
    return _neighbors(engine, model.U, engine.counts["user"], k, tiebreak)


def swapped(m: FactorModel) -> FactorModel:
    """The model with its sides exchanged: items as the rows, users as the columns."""
    return FactorModel(U=m.V, V=m.U, user_bias=m.item_bias, item_bias=m.user_bias,
                       readout=m.readout)


def item_users(engine, model, *, k: int, tiebreak: np.ndarray, items: np.ndarray | None = None,
               ranker=None, rates: bool = True) -> DataFrame:
    """The k users who come first for each trained item (or each of ``items``, dense
    indices) by the model that orders the lists (``ranker``, default ``model``), never a
    user who rated it in training: the user top-k with the sides swapped, over the cached
    item layout. Columns (u = the item, rank, i = the user, predicted_rating (from
    ``model``, NaN unless ``rates``), score); ``tiebreak`` orders users by original id."""
    wanted = engine.counts["item"] > 0
    if items is not None:
        chosen = np.zeros_like(wanted)
        chosen[items] = True
        wanted &= chosen
    users_ok = engine.counts["user"] > 0
    rating = ("self" if ranker is None else swapped(model)) if rates else None
    shared = engine.spark.sparkContext.broadcast(
        (swapped(ranker if ranker is not None else model), rating, users_ok, tiebreak, None,
         wanted))
    fn = functools.partial(recommend_block, shared=shared, k=k, val_dtype=engine.val_dtype)
    return engine.layout["item"].groupBy("block").applyInPandas(fn, RECS_SCHEMA)


def user_tables(engine, model, cfg, ranker=None, rates: bool = True) -> dict[str, DataFrame]:
    """The job's user-side tables, dense indices, as asked by ``cfg``: ``item_users``
    (top users per item, :func:`item_users`) and ``user_neighbors``."""
    out: dict[str, DataFrame] = {}
    if cfg.users_per_item <= 0 and cfg.similar_users <= 0:
        return out
    tiebreak = item_tiebreak(engine.data.users, engine.data.n_users)
    if cfg.users_per_item > 0:
        items = listed_items(engine, cfg.users_per_item_items, "users-per-item-items")
        out[ITEM_USERS_TABLE] = item_users(engine, model, k=cfg.users_per_item,
                                           tiebreak=tiebreak, items=items, ranker=ranker,
                                           rates=rates)
    if cfg.similar_users > 0:
        out[USER_NEIGHBORS_TABLE] = user_neighbors(engine, model, k=cfg.similar_users,
                                                   tiebreak=tiebreak)
    return out
