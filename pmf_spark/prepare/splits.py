"""Train/test splits that match how recommenders are used, all seeded and
deterministic whatever the partitioning (so recomputation never moves a rating across
the split):

- ``random``: a seeded hash of (user, item) below the test fraction (the default);
- ``user-fraction``: each user's test fraction of their ratings (rounded down, so a
  user with few ratings keeps them all in training), chosen by the same hash;
- ``temporal``: one global cut-off in time -- the latest test fraction of all ratings
  by (timestamp, user, item) are the test split;
- ``leave-last-n``: each user's last N ratings by (timestamp, item) are the test
  split, for users with more than N ratings.

Input: deduplicated ratings (user, item, rating, ts). Output: the same with
``is_test``. The time-based splits need timestamps.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pmf_spark.errors import InputDataError
from pmf_spark.prepare.indexing import positions

HASH_BUCKETS = 1 << 30


def hash_fraction(seed: int) -> F.Column:
    """A seeded hash of (user, item) as a number in [0, 1)."""
    h = F.pmod(F.xxhash64(F.col("user"), F.col("item"), F.lit(int(seed))), F.lit(HASH_BUCKETS))
    return h.cast("double") / float(HASH_BUCKETS)


def split_column(seed: int, fraction: float) -> F.Column:
    """True for the ratings that go to the test split: a seeded hash of (user, item)."""
    return hash_fraction(seed) < F.lit(float(fraction))


def _user_fraction(df: DataFrame, seed: int, fraction: float) -> DataFrame:
    by_user = Window.partitionBy("user")
    order = Window.partitionBy("user").orderBy(hash_fraction(seed), F.col("item"))
    return (df.withColumn("_n", F.count(F.lit(1)).over(by_user))
            .withColumn("_r", F.row_number().over(order))
            .withColumn("is_test", F.col("_r") <= F.floor(F.col("_n") * F.lit(fraction)))
            .drop("_n", "_r"))


def _temporal(df: DataFrame, fraction: float) -> DataFrame:
    placed, n, tagged = positions(df.orderBy("ts", "user", "item"), "_pos_t")
    cut = n - int(round(fraction * n))
    out = placed.withColumn("is_test", F.col("_pos_t") >= F.lit(cut)).drop("_pos_t")
    out.count()  # materialise before the sorted input is released
    tagged.unpersist()
    return out


def _leave_last(df: DataFrame, n_last: int) -> DataFrame:
    by_user = Window.partitionBy("user")
    latest = Window.partitionBy("user").orderBy(F.col("ts").desc(), F.col("item").desc())
    return (df.withColumn("_n", F.count(F.lit(1)).over(by_user))
            .withColumn("_r", F.row_number().over(latest))
            .withColumn("is_test", (F.col("_r") <= F.lit(n_last)) & (F.col("_n") > F.lit(n_last)))
            .drop("_n", "_r"))


def mark_test(df: DataFrame, split: str, *, seed: int, fraction: float, n_last: int,
              has_timestamp: bool, path: str) -> DataFrame:
    """``df`` with ``is_test`` by ``split`` (see the module docstring)."""
    if split in ("temporal", "leave-last-n") and not has_timestamp:
        raise InputDataError(f"ratings {path}: --split {split} needs a timestamp column "
                             f"(name it with --timestamp-col)")
    if split == "random":
        return df.withColumn("is_test", split_column(seed, fraction))
    if split == "user-fraction":
        return _user_fraction(df, seed, fraction)
    if split == "temporal":
        if has_timestamp:
            missing = df.where(F.col("ts").isNull()).select("user", "item").first()
            if missing is not None:
                raise InputDataError(f"ratings {path}: --split temporal needs a timestamp on "
                                     f"every rating; user {missing[0]} item {missing[1]} has "
                                     f"none")
        return _temporal(df, fraction)
    return _leave_last(df, n_last)
