"""Top-k for a model's users (items for each user) or items (users for each item), on
Spark, blockwise: the query side's rows with their factors and the indices of what
they rated in training go to ``groupBy(block).applyInPandas``, the other side's
factors are one broadcast (the numpy is :func:`pmf_spark.recommend.topk.users_block`, the same
code the job's and ``recommend.py``'s lists run). Never a cross join, never an item a
user rated in training; ordered by score -- the ranking model's when one was trained
beside the rating model, as in the job -- then by the other side's original id. Query
rows without training ratings (unknown ids, ids seen only in a test split) get the
other side's most-rated rows, flagged ``cold_start``, or are left out.
"""

from __future__ import annotations

import functools

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pmf_spark.recommend.topk import candidate_items, users_block

from .core import FactorCore

OTHER = {"user": "item", "item": "user"}


def top_k(spark: SparkSession, core: FactorCore, side: str, k: int,
          queries: DataFrame | None = None, cold: bool = True,
          min_other_ratings: int = 1, candidates=None) -> DataFrame:
    """Flat top-k: ``{side}_id, rank, {other}_id, predicted_rating, score, cold_start``.

    ``queries``: a frame with one column ``id`` of the ids wanted (default: every id of
    the model's ``side``); ``cold``: give rows without training ratings the popular list
    (else leave them out); ``candidates``: bool (n_other,) the rows that may be
    recommended (default: those with ``min_other_ratings`` training ratings).
    """
    other = OTHER[side]
    me, you = core.side(side), core.side(other)
    key, okey = f"{side}_id", f"{other}_id"
    factors = core.frame(spark, side)
    wanted = (factors.select(key) if queries is None
              else queries.select(F.col("id").cast(core.spark_id_type).alias(key)).distinct())
    rows = wanted.join(factors, key, "left")
    if not cold:
        rows = rows.where(F.col("n_ratings") > 0)
    other_idx = F.broadcast(core.vocabulary(spark, other).select(okey, F.col("idx").alias("j")))
    rated = (core.seen.select(key, okey).join(wanted, key).join(other_idx, okey)
             .groupBy(key).agg(F.sort_array(F.collect_list("j")).alias("rated")))
    ranker = None
    if core.ranking is not None:
        rme, ryou = core.ranking[side], core.ranking[other]
        ranker = (ryou.factors, ryou.bias, core.ranking_readout, rme.factors.shape[1])
        rows = rows.join(core.ranking_frame(spark, side).select(
            key, F.col("features").alias("rfeatures"), F.col("bias").alias("rbias")),
            key, "left")
    blocks = max(1, spark.sparkContext.defaultParallelism)
    rows = (rows.join(rated, key, "left").withColumnRenamed(key, "user_id")
            .withColumn("block", F.pmod(F.hash("user_id"), F.lit(blocks)))
            .repartition(blocks, "block"))
    if candidates is None:
        candidates = candidate_items(you.counts, min_other_ratings)
    shared = spark.sparkContext.broadcast(
        (you.factors, you.bias, candidates, you.tiebreak, you.counts, core.readout,
         core.rates, ranker))
    id_type = "bigint" if core.id_type == "long" else "string"
    schema = (f"user_id {id_type}, rank int, i int, predicted_rating double, score double, "
              f"cold_start boolean")
    fn = functools.partial(users_block, shared=shared, k=k, rank=me.factors.shape[1])
    recs = rows.groupBy("block").applyInPandas(fn, schema)
    names = F.broadcast(core.vocabulary(spark, other)
                        .select(F.col("idx").alias("i"), F.col(okey).alias("__o")))
    return (recs.join(names, "i")
            .select(F.col("user_id").alias(key), "rank", F.col("__o").alias(okey),
                    "predicted_rating", "score", "cold_start"))


def nested(flat: DataFrame, core: FactorCore, side: str, query_col: str,
           other_col: str) -> DataFrame:
    """MLlib's shape of a top-k: ``(query_col, recommendations array<struct<other_col,
    rating float>>)``, each array in rank order.

    ``rating`` means what it means in ALS: the predicted rating (in rating units, as
    ``transform`` predicts it) for a model that predicts ratings, the preference score
    for implicit feedback. The order is the job's: by the ranking model's score when one
    was trained beside the rating model (the default; :meth:`recommend_for_all_users`
    gives that score), so ``rating`` need not fall along the array. The id columns are
    ``int``, as ALS's, when the model was fitted on integer or floating-point id columns
    other than ``bigint`` and every id fits one; else the model's id type."""
    other = OTHER[side]
    ranked = (F.col("score") if core.readout.link == "linear" or core.ranking is not None
              else F.col("predicted_rating"))
    usable = F.col("predicted_rating").isNotNull() & ~F.isnan("predicted_rating")
    if core.rates:
        rating = F.when(usable, F.col("predicted_rating")).otherwise(ranked)
    else:
        rating = ranked
    grouped = flat.groupBy(f"{side}_id").agg(F.sort_array(F.collect_list(
        F.struct(F.col("rank"), F.col(f"{other}_id").alias("o"), rating.alias("v"))))
        .alias("r"))
    recs = F.transform("r", lambda s: F.struct(
        _as_input(s["o"], core, other).alias(other_col), s["v"].cast("float").alias("rating")))
    return grouped.select(_as_input(F.col(f"{side}_id"), core, side).alias(query_col),
                          recs.alias("recommendations"))


#: Spark types of a fitted id column whose ids ALS would hand back as ``int``
NARROW_TYPES = ("tinyint", "smallint", "int", "float", "double")


def _as_input(col, core: FactorCore, side: str):
    """``col`` (the model's id type) as ALS's ``int`` when the fitted DataFrame's id
    column was narrower than ``bigint`` (StringIndexer's doubles, an ``int`` column) and
    every id of the side fits an int (a cast that loses nothing)."""
    typed = (core.meta.get("data") or {}).get("input_id_types") or {}
    if core.id_type != "long" or typed.get(side) not in NARROW_TYPES:
        return col
    ids = core.side(side).ids
    if ids.size and (int(ids.min()) < -(2**31) or int(ids.max()) >= 2**31):
        return col
    return col.cast("int")


def query_ids(dataset: DataFrame, column: str) -> DataFrame:
    """The distinct ids of ``dataset[column]`` as a one-column frame ``id``."""
    return dataset.select(F.col(f"`{column}`").alias("id")).where(F.col("id").isNotNull())
