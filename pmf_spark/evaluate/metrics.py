"""Metrics: the per-epoch line, a fixed model's errors, ranking metrics at k, and the
report's test diagnostics. Errors are in rating units, objectives in z units.

Ranking metrics (precision, recall, NDCG, MAP, hit rate at k; catalogue coverage) are
computed in Spark over the users with at least one relevant test rating (rating >=
the relevance threshold).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pmf_spark.engine.blocks import DIAG_SCHEMA, EVAL_SCHEMA, diagnose_block, evaluate_block
from pmf_spark.runtime.sparkutil import first

NAN = float("nan")


@dataclass
class EpochMetrics:
    """One line of the training log (errors in rating units, objective in z units).

    For BPMF the errors are those of the epoch's sample; the final metrics of a BPMF
    run are those of the prediction averaged over the kept samples.
    """

    epoch: int
    train_rmse: float
    train_mae: float
    test_rmse: float
    test_mae: float
    objective: float
    seconds: float
    val_rmse: float = NAN
    val_mae: float = NAN
    lambda_u: float = NAN
    lambda_v: float = NAN
    noise_var: float = NAN

    def to_dict(self) -> dict:
        return asdict(self)


def _rmse(sse: float, n: float) -> float:
    return math.sqrt(sse / n) if n else NAN


def _mae(sae: float, n: float) -> float:
    return sae / n if n else NAN


def epoch_metrics(epoch: int, sums: dict, *, objective: float, seconds: float,
                  lambdas: tuple[float, float], noise_var: float) -> EpochMetrics:
    """The epoch's line from the summed statistics of its item half-step."""
    return EpochMetrics(
        epoch=epoch,
        train_rmse=_rmse(sums["sse"], sums["n_train"]),
        train_mae=_mae(sums["sae"], sums["n_train"]),
        test_rmse=_rmse(sums["test_sse"], sums["n_test"]),
        test_mae=_mae(sums["test_sae"], sums["n_test"]),
        objective=objective, seconds=seconds,
        val_rmse=_rmse(sums["val_sse"], sums["n_val"]),
        val_mae=_mae(sums["val_sae"], sums["n_val"]),
        lambda_u=lambdas[0], lambda_v=lambdas[1], noise_var=noise_var)


def _shared_model(spark, model):
    return spark.sparkContext.broadcast(
        (model.U, model.user_bias, model.V, model.item_bias, model.readout))


def evaluate_model(engine, model, last: EpochMetrics, epoch: int) -> EpochMetrics:
    """Train and test errors of a fixed model, one pass over the item layout."""
    t0 = time.perf_counter()
    shared = _shared_model(engine.spark, model)
    fn = functools.partial(evaluate_block, shared=shared, val_dtype=engine.val_dtype)
    try:
        tbl = engine.map_blocks("item", fn, EVAL_SCHEMA, "evaluate the averaged model")
    finally:
        shared.destroy(blocking=False)
    s = {c: float(np.sum(tbl.column(c).to_numpy())) for c in tbl.column_names
         if c not in ("block", "chunk")}
    return EpochMetrics(
        epoch=epoch, train_rmse=math.sqrt(s["train_sse"] / max(s["n_train"], 1)),
        train_mae=s["train_sae"] / max(s["n_train"], 1),
        test_rmse=math.sqrt(s["test_sse"] / max(s["n_test"], 1)),
        test_mae=s["test_sae"] / max(s["n_test"], 1), objective=NAN,
        seconds=time.perf_counter() - t0, lambda_u=last.lambda_u, lambda_v=last.lambda_v,
        noise_var=last.noise_var)


def rating_bins(lo: float, hi: float, step: float = 0.25) -> np.ndarray:
    """Histogram edges with one bin centred on every multiple of ``step`` in [lo, hi]."""
    n = int(round((hi - lo) / step))
    return lo - step / 2 + step * np.arange(n + 2)


def diagnostics(engine, model, bins: np.ndarray) -> dict:
    """Histograms of predicted/true test ratings, the mean and spread of the
    predictions per true-rating bin, and per-user test errors."""
    d = engine.data
    shared = _shared_model(engine.spark, model)
    fn = functools.partial(diagnose_block, shared=shared, bins=tuple(bins), n_users=d.n_users,
                           val_dtype=engine.val_dtype)
    try:
        tbl = engine.map_blocks("item", fn, DIAG_SCHEMA, "report: test diagnostics")
    finally:
        shared.destroy(blocking=False)
    nb = len(bins) - 1
    out: dict = {"pred_hist": np.zeros(nb, np.int64), "true_hist": np.zeros(nb, np.int64),
           "user_sse": np.zeros(d.n_users), "user_n": np.zeros(d.n_users, np.int64),
           "pred_sum": np.zeros(nb), "pred_sq": np.zeros(nb)}
    for name, dtype in (("pred_hist", np.int64), ("true_hist", np.int64),
                        ("user_sse", np.float64), ("user_n", np.int64),
                        ("pred_sum", np.float64), ("pred_sq", np.float64)):
        for b in tbl.column(name).to_pylist():
            out[name] += np.frombuffer(b, dtype=dtype)
    n = out["user_n"].sum()
    base = float(np.sum(tbl.column("base_sse").to_numpy())) if tbl.num_rows else 0.0
    out["baseline_rmse"] = math.sqrt(base / n) if n else NAN
    return out


def relevance_threshold(given: float | None, lo: float, hi: float,
                        implicit: bool = False) -> float:
    """The rating at or above which a test rating counts as relevant: ``given``, or
    three quarters of the way up the scale [lo, hi] (4 on MovieLens' 1-5, the seed's
    threshold; 8 on a 2-10 scale), snapped to the scale's half steps; with implicit
    feedback 0, every held-out event."""
    if given is not None:
        return float(given)
    if implicit:
        return 0.0
    return float(lo + math.ceil(2 * 0.75 * (hi - lo)) / 2)


def _idcg(k: int) -> F.Column:
    table = [0.0]
    for j in range(1, k + 1):
        table.append(table[-1] + 1.0 / math.log2(j + 1.0))
    return F.element_at(F.array(*[F.lit(x) for x in table]),
                        (F.least(F.col("n_rel"), F.lit(k)) + 1).cast("int"))


def ranking_metrics(recs: DataFrame, test: DataFrame, *, k: int, threshold: float,
                    n_catalogue: int) -> dict:
    """Mean ranking metrics at k over users with >= 1 relevant test rating.

    Args:
        recs: (u, rank, i) recommendations, ranks 1..k.
        test: (u, i, rating) held-out ratings.
        n_catalogue: items that could be recommended (coverage's denominator).

    Definitions, for a user with R relevant test items and hits at ranks r_1 < r_2 < ...:
    precision = hits / k; recall = hits / R; hit rate = [hits > 0];
    NDCG = sum 1/log2(r + 1) / sum_{j=1..min(R,k)} 1/log2(j + 1);
    MAP = sum_n (n / r_n) / min(R, k); coverage = distinct recommended items / catalogue.
    """
    rel = (test.where(F.col("rating") >= F.lit(float(threshold)))
           .select("u", "i").distinct())
    n_rel = rel.groupBy("u").agg(F.count(F.lit(1)).alias("n_rel"))
    top = recs.where(F.col("rank") <= k).select("u", "i", "rank")
    hits = top.join(rel, ["u", "i"])
    w = Window.partitionBy("u").orderBy("rank")
    hits = hits.withColumn("nth", F.row_number().over(w))
    per_hit = hits.groupBy("u").agg(
        F.count(F.lit(1)).alias("hits"),
        F.sum(1.0 / F.log2(F.col("rank") + 1.0)).alias("dcg"),
        F.sum(F.col("nth") / F.col("rank")).alias("ap_sum"))
    per_user = (n_rel.join(per_hit, "u", "left").fillna(0, ["hits", "dcg", "ap_sum"])
                .select(
                    (F.col("hits") / F.lit(float(k))).alias("precision"),
                    (F.col("hits") / F.col("n_rel")).alias("recall"),
                    (F.col("dcg") / _idcg(k)).alias("ndcg"),
                    (F.col("ap_sum") / F.least(F.col("n_rel"), F.lit(k))).alias("map"),
                    (F.col("hits") > 0).cast("double").alias("hit_rate")))
    agg = first(per_user.agg(F.count(F.lit(1)).alias("users"),
                             *[F.avg(c).alias(c) for c in
                               ("precision", "recall", "ndcg", "map", "hit_rate")]))
    distinct = top.select("i").distinct().count()
    out = {"k": k, "relevance_threshold": threshold, "users": int(agg["users"])}
    for c in ("precision", "recall", "ndcg", "map", "hit_rate"):
        out[c] = float(agg[c]) if agg[c] is not None else 0.0
    out["coverage"] = distinct / max(1, n_catalogue)
    return out
