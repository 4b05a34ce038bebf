"""Raw ids <-> dense indices, as a saved vocabulary.

Dense indices are assigned by descending training-rating count, ties by id, so
index order is deterministic and ``index % B`` deals rows round-robin in count
order: blocks formed that way carry nearly equal numbers of ratings (the
balanced-block layout :mod:`pmf_spark.train.loop` relies on). Ids seen only in the
test split get indices after every trained id, with a count of 0.

For inputs of up to :data:`LOCAL_MAX_RATINGS` ratings the ids and their counts are
collected and ordered on the driver with Arrow (one Spark job instead of a sampled
global sort, a tagging pass and two counts: what a small job's wall time is made of);
the order is the same, Arrow's string order being Spark's (UTF-8 bytes). Beyond that
the assignment runs distributed: a global sort, then per-partition offsets from a tiny
collected table; no id list is collected to the driver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pmf_spark.runtime.sparkutil import first

VOCAB_COLUMNS = ("id", "idx", "n_ratings")
#: vocabularies of inputs up to this many ratings are ordered on the driver (the ids are
#: then at most this many; the driver holds ~250 bytes of factors per id anyway)
LOCAL_MAX_RATINGS = 20_000_000


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


def build_vocabulary(ratings: DataFrame, id_col: str,
                     local: bool = False) -> tuple[DataFrame, int, int]:
    """Vocabulary of ``id_col`` over ``ratings`` (which has ``kind``, 0 = training);
    ``local``: order it on the driver (small inputs, see the module docstring).

    Returns:
        (vocab, size, cold): vocab has columns ``id`` (the raw id), ``idx`` (int, dense
        0..size-1) and ``n_ratings`` (int, training ratings of the id); it is
        persisted, call ``unpersist`` when done. ``cold``: the ids with no training
        rating (``n_ratings`` 0).
    """
    trained = F.when(F.col("kind") == 0, 1).otherwise(0)
    counts = (ratings.groupBy(F.col(id_col).alias("id"))
              .agg(F.sum(trained).cast("int").alias("n_ratings")))
    if local:
        return _local_vocabulary(ratings, counts)
    ordered = counts.orderBy(F.col("n_ratings").desc(), F.col("id").asc())
    placed, total, tagged = positions(ordered)
    vocab = (placed.select("id", F.col("_idx").cast("int").alias("idx"), "n_ratings")
             .persist(StorageLevel.MEMORY_AND_DISK))
    cold = first(vocab.agg(F.sum(F.when(F.col("n_ratings") == 0, 1).otherwise(0))))[0]
    tagged.unpersist()
    return vocab, total, int(cold or 0)


def _local_vocabulary(ratings: DataFrame, counts: DataFrame) -> tuple[DataFrame, int, int]:
    """:func:`build_vocabulary` with the ordering done on the driver by Arrow."""
    tbl = counts.toArrow()
    order = pc.sort_indices(tbl, sort_keys=[("n_ratings", "descending"), ("id", "ascending")])
    tbl = tbl.take(order)
    n = tbl.num_rows
    local = pa.table({"id": tbl.column("id"), "idx": pa.array(np.arange(n, dtype=np.int32)),
                      "n_ratings": tbl.column("n_ratings").cast(pa.int32())})
    schema = counts.schema["id"].dataType.simpleString()
    vocab = (ratings.sparkSession.createDataFrame(local, schema=f"id {schema}, idx int, "
                                                               f"n_ratings int")
             .persist(StorageLevel.MEMORY_AND_DISK))     # cached on first use
    n_ratings = tbl.column("n_ratings").to_numpy(zero_copy_only=False)
    return vocab, n, int(np.count_nonzero(n_ratings == 0))


def index_ratings(ratings: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Replace raw ids by dense indices: columns u, i (int), rating, is_test, kind."""
    u = users.select(F.col("id").alias("user"), F.col("idx").alias("u"))
    i = items.select(F.col("id").alias("item"), F.col("idx").alias("i"))
    return (ratings.join(u, "user").join(i, "item")
            .select("u", "i", "rating", "is_test", "kind"))
