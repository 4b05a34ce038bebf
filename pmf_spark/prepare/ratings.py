"""From validated ratings to the indexed, split training data.

Steps: drop duplicate (user, item) pairs (keep the latest by timestamp), split into
train/test (:mod:`pmf_spark.prepare.splits`: seeded and deterministic whatever the
partitioning, so recomputation can never move a rating across the split), carve a
validation share for early stopping, materialise the split, compute the training
statistics (mean, std, range) and build the vocabularies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pmf_spark.engine.layout import TEST, VALIDATION
from pmf_spark.errors import InputDataError
from pmf_spark.inputs.read import CleanRatings
from pmf_spark.prepare.indexing import LOCAL_MAX_RATINGS, build_vocabulary, index_ratings
from pmf_spark.prepare.splits import HASH_BUCKETS as _HASH_BUCKETS
from pmf_spark.prepare.splits import mark_test, split_column
from pmf_spark.runtime.sparkutil import first

log = logging.getLogger("pmf_spark")

_VALIDATION_SALT = 7919

__all__ = ["PreparedData", "dedupe", "prepare", "split_column"]


@dataclass
class PreparedData:
    """Indexed ratings ready for training, with what the model needs to know.

    ``ratings`` (u int, i int, rating double, is_test boolean, kind tinyint: 0
    train, 1 test, 2 validation) and both
    vocabularies are persisted; ``release()`` unpersists them.
    """

    ratings: DataFrame
    users: DataFrame
    items: DataFrame
    n_users: int
    n_items: int
    n_train: int
    n_test: int
    n_val: int
    mu: float
    sigma: float
    rating_lo: float
    rating_hi: float
    id_type: str
    float32_exact: bool
    duplicates_dropped: int
    cold_users: int
    cold_items: int
    fingerprint: str = ""

    def release(self) -> None:
        for df in (self.ratings, self.users, self.items):
            df.unpersist()

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in (
            "n_users", "n_items", "n_train", "n_test", "n_val", "mu", "sigma", "rating_lo",
            "rating_hi", "id_type", "duplicates_dropped", "cold_users", "cold_items",
            "fingerprint")}


def dedupe(clean: CleanRatings, policy: str, role: str = "ratings") -> tuple[DataFrame, int]:
    """Keep one rating per (user, item): the latest by timestamp, ties by the higher
    rating ('latest'); or, for implicit feedback ('sum'), the sum of the pair's values
    (pairs whose values add up to 0 carry no event and are dropped). Returns
    (persisted frame, number of rows merged or dropped)."""
    order = F.struct(F.col("ts"), F.col("rating"))
    value = F.sum("rating") if policy == "sum" else F.max_by("rating", order)
    # implicit values are >= 0 (validated): a pair sums to 0 only when each of its rows
    # is 0, an event that did not happen (counted and logged by the validation pass)
    df = clean.df.where(F.col("rating") > 0) if clean.implicit else clean.df
    grouped = (df.groupBy("user", "item")
               .agg(F.count(F.lit(1)).alias("_n"), value.alias("rating"),
                    F.max("ts").alias("ts"))
               .persist(StorageLevel.MEMORY_AND_DISK))
    st = first(grouped.agg(F.sum(F.col("_n") - 1).alias("dropped"),
                           F.min(F.when(F.col("_n") > 1, F.struct("user", "item"))).alias("ex")))
    dropped = int(st["dropped"] or 0)
    if policy == "sum":
        if dropped:
            log.info("%s %s: summed the values of %d duplicate row(s) of the same (user, "
                     "item), e.g. user %s item %s", role, clean.path, dropped, *st["ex"])
        return grouped.drop("_n"), dropped
    if dropped:
        ex = st["ex"]
        what = (f"{role} {clean.path}: {dropped} duplicate rating(s) of the same (user, item), "
                f"e.g. user {ex[0]} item {ex[1]}")
        if policy == "error":
            grouped.unpersist()
            raise InputDataError(what + " (--on-duplicate error)")
        if not clean.has_timestamp:
            grouped.unpersist()
            raise InputDataError(what + "; there is no timestamp column to keep the latest by: "
                                 "name one with --timestamp-col or use --on-duplicate error")
        log.info("%s: kept the latest of each duplicated (user, item); dropped %d row(s)",
                 clean.path, dropped)
    return grouped.drop("_n"), dropped


def _combined(train: CleanRatings, test: CleanRatings | None, on_duplicate: str,
              keep: F.Column | None, mark) -> tuple[DataFrame, list, int]:
    """Deduplicated training (and test) ratings with ``is_test`` (``mark`` adds it when
    there is no given test split); the intermediate frames to unpersist once the
    result is cached; the duplicates dropped."""
    tr, dropped = dedupe(train, on_duplicate, "ratings")
    if keep is not None:
        tr = tr.where(keep)
    if test is None:
        return mark(tr), [tr], dropped
    te, dropped_test = dedupe(test, on_duplicate, "test")
    combined = (tr.withColumn("is_test", F.lit(False))
                .unionByName(te.withColumn("is_test", F.lit(True))))
    return combined, [tr, te], dropped + dropped_test


def _statistics(combined: DataFrame):
    """Counts per kind, the training ratings' mean, std and range, and a fingerprint
    of the whole split, in one aggregation."""
    train_r = F.when(F.col("kind") == 0, F.col("rating"))
    return first(combined.agg(
        F.sum(F.when(F.col("kind") == 0, 1).otherwise(0)).alias("n_train"),
        F.sum(F.when(F.col("is_test"), 1).otherwise(0)).alias("n_test"),
        F.sum(F.when(F.col("kind") == VALIDATION, 1).otherwise(0)).alias("n_val"),
        F.avg(train_r).alias("mu"), F.stddev_pop(train_r).alias("sigma"),
        F.min(train_r).alias("lo"), F.max(train_r).alias("hi"),
        F.sum(F.pmod(F.xxhash64("user", "item", "rating", "kind"), F.lit(_HASH_BUCKETS)))
        .alias("fingerprint")))


def _check_split(st, train: CleanRatings, test: CleanRatings | None,
                 require_test: bool) -> tuple[int, int, float]:
    """(n_train, n_test, sigma); refuses splits that leave nothing to train or test."""
    n_train, n_test = int(st["n_train"] or 0), int(st["n_test"] or 0)
    if n_train + n_test < 2:
        raise InputDataError(f"ratings {train.path}: {n_train + n_test} rating(s); "
                             f"training needs at least 2")
    if n_train == 0:
        raise InputDataError(f"ratings {train.path}: the split left no training ratings "
                             f"(lower --test-fraction)")
    if n_test == 0 and require_test:
        where = test.path if test is not None else train.path
        raise InputDataError(f"ratings {where}: the split left no test ratings "
                             f"(raise --test-fraction or give --test)")
    sigma = float(st["sigma"])
    if not sigma > 0.0:       # z-scores would divide by 0
        if not train.implicit:        # (presence data: every value is 1 by design)
            log.warning("all training ratings equal %g; the model can only predict that "
                        "value", st["mu"])
        sigma = 1.0
    return n_train, n_test, sigma


def prepare(train: CleanRatings, test: CleanRatings | None, *, test_fraction: float,
            split_seed: int, on_duplicate: str,
            validation_fraction: float = 0.0,
            keep: F.Column | None = None,
            holdout: F.Column | None = None,
            require_test: bool = True,
            split: str = "random", leave_last: int = 1) -> PreparedData:
    """Dedupe, split (or take the given test split), index and summarise.

    ``split`` and ``leave_last`` choose how (:mod:`pmf_spark.prepare.splits`). With
    ``validation_fraction`` > 0 a share of the training ratings is held out as a
    validation split (``kind`` 2) for early stopping, by another seeded hash.
    ``keep`` drops ratings before anything else looks at them (tuning removes the
    test split this way) and ``holdout`` replaces the test split (the rows it marks
    play the test role: a validation fold).
    """
    if test is not None and test.id_type != train.id_type:
        raise InputDataError(f"test {test.path}: ids are {test.id_type}s but the training "
                             f"ratings' are {train.id_type}s")
    def mark(df: DataFrame) -> DataFrame:
        if holdout is not None:
            return df.withColumn("is_test", holdout)
        return mark_test(df, split, seed=split_seed, fraction=test_fraction, n_last=leave_last,
                         has_timestamp=train.has_timestamp, path=train.path)

    combined, parts, dropped = _combined(train, test, on_duplicate, keep, mark)
    is_val = F.lit(False)
    if validation_fraction > 0:
        is_val = ~F.col("is_test") & split_column(split_seed + _VALIDATION_SALT,
                                                  validation_fraction)
    kind = (F.when(F.col("is_test"), TEST).when(is_val, VALIDATION).otherwise(0)
            .cast("tinyint").alias("kind"))
    combined = combined.select("user", "item", "rating", "is_test", kind).persist(
        StorageLevel.MEMORY_AND_DISK)
    st = _statistics(combined)
    for p in parts:
        p.unpersist()
    n_train, n_test, sigma = _check_split(st, train, test, require_test)
    local = train.n + (test.n if test is not None else 0) <= LOCAL_MAX_RATINGS
    users, n_users, cold_users = build_vocabulary(combined, "user", local)
    items, n_items, cold_items = build_vocabulary(combined, "item", local)
    indexed = index_ratings(combined, users, items).persist(StorageLevel.MEMORY_AND_DISK)
    indexed.count()
    combined.unpersist()
    # predictions are clipped to the range the training ratings span (within the
    # declared scale): ML-1M's ratings.dat is on 1..5 although the format allows 0.5
    lo_train, hi_train = float(st["lo"]), float(st["hi"])
    if lo_train == hi_train and train.scale is not None:
        lo_train, hi_train = train.scale
    return PreparedData(
        ratings=indexed, users=users, items=items, n_users=n_users, n_items=n_items,
        n_train=n_train, n_test=n_test, n_val=int(st["n_val"] or 0), mu=float(st["mu"]),
        sigma=sigma, rating_lo=lo_train, rating_hi=hi_train, id_type=train.id_type,
        float32_exact=train.float32_exact and (test is None or test.float32_exact),
        duplicates_dropped=dropped, cold_users=cold_users, cold_items=cold_items,
        fingerprint=f"{int(st['fingerprint'] or 0):x}")
