"""Raw ids <-> dense indices, as a saved vocabulary.

Dense indices are assigned by descending training-rating count, ties by id, so
index order is deterministic and ``index % B`` deals rows round-robin in count
order: blocks formed that way carry nearly equal numbers of ratings (the
balanced-block layout :mod:`pmf_spark.train` relies on). Ids seen only in the
test split get indices after every trained id, with a count of 0.

The assignment runs distributed: a global sort, then per-partition offsets
from a tiny collected table; no id list is collected to the driver.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

VOCAB_COLUMNS = ("id", "idx", "n_ratings")


def positions(ordered: DataFrame, name: str = "_idx") -> tuple[DataFrame, int, DataFrame]:
    """``ordered`` (a sorted frame) with its rows' global positions 0..n-1 in column
    ``name``, without collecting anything but one count per partition. Returns that
    frame, n, and the persisted frame it reads (unpersist it once the result is
    materialised)."""
    tagged = (ordered.withColumn("_pid", F.spark_partition_id())
              .withColumn("_pos", F.monotonically_increasing_id()
                          .bitwiseAND(F.lit((1 << 33) - 1))))
    tagged = tagged.persist(StorageLevel.MEMORY_AND_DISK)
    sizes = sorted((r["_pid"], r["n"]) for r in
                   tagged.groupBy("_pid").agg(F.count(F.lit(1)).alias("n")).collect())
    offsets, total = {}, 0
    for pid, n in sizes:
        offsets[pid] = total
        total += n
    if offsets:
        mapping = F.create_map(*[x for pid, off in offsets.items()
                                 for x in (F.lit(pid), F.lit(off))])
        offset = F.element_at(mapping, F.col("_pid"))
    else:
        offset = F.lit(0)
    return tagged.withColumn(name, offset + F.col("_pos")).drop("_pid", "_pos"), total, tagged


def build_vocabulary(ratings: DataFrame, id_col: str) -> tuple[DataFrame, int]:
    """Vocabulary of ``id_col`` over ``ratings`` (which has ``kind``, 0 = training).

    Returns:
        (vocab, size): vocab has columns ``id`` (the raw id), ``idx`` (int, dense
        0..size-1) and ``n_ratings`` (int, training ratings of the id); it is
        persisted, call ``unpersist`` when done.
    """
    trained = F.when(F.col("kind") == 0, 1).otherwise(0)
    counts = (ratings.groupBy(F.col(id_col).alias("id"))
              .agg(F.sum(trained).cast("int").alias("n_ratings")))
    ordered = counts.orderBy(F.col("n_ratings").desc(), F.col("id").asc())
    placed, total, tagged = positions(ordered)
    vocab = (placed.select("id", F.col("_idx").cast("int").alias("idx"), "n_ratings")
             .persist(StorageLevel.MEMORY_AND_DISK))
    vocab.count()
    tagged.unpersist()
    return vocab, total


def index_ratings(ratings: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Replace raw ids by dense indices: columns u, i (int), rating, is_test, kind."""
    u = users.select(F.col("id").alias("user"), F.col("idx").alias("u"))
    i = items.select(F.col("id").alias("item"), F.col("idx").alias("i"))
    return (ratings.join(u, "user").join(i, "item")
            .select("u", "i", "rating", "is_test", "kind"))
