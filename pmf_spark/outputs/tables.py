"""Writing a run's outputs: factor and vocabulary tables, the split, recommendations,
neighbours, metrics, ``model.json`` and the report, into a staging directory that is
committed atomically (:class:`pmf_spark.outputs.commit.AtomicOutput`). The names, schemas and
``model.json`` are :mod:`pmf_spark.outputs.modeldir`'s; ``docs/outputs.md`` is the
contract these tables keep.
"""

from __future__ import annotations

import csv
import functools
import io as _io
import math

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pmf_spark.config.params import JobConfig
from pmf_spark.evaluate.metrics import EpochMetrics
from pmf_spark.outputs.commit import AtomicOutput
from pmf_spark.outputs.modeldir import (
    BUCKET_COLUMN,
    ITEM_USERS_TABLE,
    NEIGHBORS_TABLE,
    RANKING_PREFIX,
    RECS_COLUMNS,
    RECS_TABLE,
    SPLIT_COLUMNS,
    TEST_RATINGS,
    TRAIN_RATINGS,
    USER_NEIGHBORS_TABLE,
    VOCAB_TABLES,
    factors_table,
)
from pmf_spark.runtime.sparkutil import describe


def _arrow_column(values: np.ndarray, field: pa.Field) -> pa.Array:
    if values.ndim == 2:
        n, r = values.shape
        offsets = pa.array(np.arange(0, n * r + 1, r, dtype=np.int32))
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=field.type.value_type)
        return pa.ListArray.from_arrays(offsets, flat, type=field.type)
    return pa.array(values, type=field.type)


def _broadcast_rows(batches, *, shared, n: int, parts: int, schema: pa.Schema):
    """mapInArrow body: the rows of the broadcast columns that fall to this task's ids."""
    columns = shared.value
    for batch in batches:
        for p in batch.column(0).to_pylist():
            lo, hi = n * p // parts, n * (p + 1) // parts
            yield pa.RecordBatch.from_arrays(
                [_arrow_column(columns[f.name][lo:hi], f) for f in schema], schema=schema)


def arrays_frame(spark: SparkSession, columns: dict[str, np.ndarray],
                 schema: T.StructType) -> DataFrame:
    """A DataFrame of driver-side numpy columns of equal length (2-d float arrays become
    ``array<...>`` columns), shipped to the executors as one broadcast: tasks stay small
    (``createDataFrame`` puts the data into the tasks, which Spark warns about from
    1 MB on). The frame stays valid as long as it is referenced."""
    from pyspark.sql.pandas.types import to_arrow_schema

    n = len(next(iter(columns.values())))
    parts = max(1, min(spark.sparkContext.defaultParallelism, -(-n // 50_000)))
    shared = spark.sparkContext.broadcast(columns)
    fn = functools.partial(_broadcast_rows, shared=shared, n=n, parts=parts,
                           schema=to_arrow_schema(schema))
    return spark.range(0, parts, 1, parts).mapInArrow(fn, schema)


def factor_frame(spark: SparkSession, matrix: np.ndarray, bias: np.ndarray,
                 vocab: DataFrame, id_name: str) -> DataFrame:
    """(id, features array<double>, bias, n_ratings) from a dense-index factor matrix."""
    n = matrix.shape[0]
    fac = arrays_frame(spark, {"idx": np.arange(n, dtype=np.int32), "features": matrix,
                               "bias": np.asarray(bias, dtype=np.float64)},
                       T.StructType([T.StructField("idx", T.IntegerType()),
                                     T.StructField("features", T.ArrayType(T.DoubleType())),
                                     T.StructField("bias", T.DoubleType())]))
    return (vocab.join(fac, "idx")
            .select(F.col("id").alias(id_name), "features", "bias", "n_ratings"))


def ids_frame(df: DataFrame, data, user_col: str = "u", item_col: str | None = "i") -> DataFrame:
    """Replace dense indices by original ids (broadcast joins with the vocabularies)."""
    out = df.join(F.broadcast(data.users.select(F.col("idx").alias(user_col),
                                                F.col("id").alias("user_id"))), user_col)
    if item_col is not None:
        out = out.join(F.broadcast(data.items.select(F.col("idx").alias(item_col),
                                                     F.col("id").alias("item_id"))), item_col)
    return out


def n_files(cfg: JobConfig, n_rows: int, width: int) -> int:
    """Parquet files for a table: ``--output-files``, or ~128 MB each."""
    if cfg.output_files:
        return cfg.output_files
    return max(1, math.ceil(n_rows * (width * 8 + 24) / (128 << 20)))


def write_sorted(df: DataFrame, path: str, files: int, *keys: str) -> None:
    """``df`` as ``files`` Parquet files ordered by ``keys`` (file by file, by range of
    the first key). One file needs no range partitioning: its rows are brought into one
    task without a shuffle (one Spark job fewer per table; most tables are one file)."""
    if files == 1:
        df.coalesce(1).sortWithinPartitions(*keys).write.parquet(path)
        return
    df.repartitionByRange(files, keys[0]).sortWithinPartitions(*keys).write.parquet(path)


def bucket_column(user_id, buckets: int):
    """Spark: the ``user_bucket`` of ``user_id`` (see :func:`user_bucket`)."""
    h = F.conv(F.substring(F.md5(user_id.cast("string")), 1, 8), 16, 10).cast("long")
    return F.pmod(h, F.lit(int(buckets))).cast("int")


def user_bucket(user_id, buckets: int) -> int:
    """The partition of ``recommendations/`` holding a user's rows, computable anywhere:
    the first 8 hex digits of the MD5 of the id as text (UTF-8), as an integer, modulo
    the number of buckets (``_SUCCESS`` -> ``partitions``)."""
    import hashlib

    return int(hashlib.md5(str(user_id).encode("utf-8")).hexdigest()[:8], 16) % buckets


def history_csv(history: list[EpochMetrics]) -> str:
    buf = _io.StringIO()
    names = list(EpochMetrics.__dataclass_fields__)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for m in history:
        w.writerow([getattr(m, k) for k in names])
    return buf.getvalue()


class RunWriter:
    """Writes one run's tables and files into ``out`` and counts what it wrote (the
    ``_SUCCESS`` manifest lists them)."""

    def __init__(self, spark: SparkSession, cfg: JobConfig, data, out: AtomicOutput):
        self.spark, self.cfg, self.data, self.out = spark, cfg, data, out
        self.tables: dict[str, int] = {}
        self.files: list[str] = []
        self.partitions: dict[str, dict] = {}

    def _describe(self, text: str | None) -> None:
        describe(self.spark, text)

    def factors(self, model, prefix: str = "") -> None:
        """The factor tables (and, for the rating model, the vocabularies); ``prefix``
        ``ranking_`` writes the ranking model's tables instead."""
        assert prefix in ("", RANKING_PREFIX), prefix
        self._describe(f"write {prefix}factors")
        rank = model.U.shape[1]
        for side, mat, bias, vocab in (("user", model.U, model.user_bias, self.data.users),
                                       ("item", model.V, model.item_bias, self.data.items)):
            files = n_files(self.cfg, mat.shape[0], rank)
            name = factors_table(side, ranking=bool(prefix))
            df = factor_frame(self.spark, mat, bias, vocab, f"{side}_id")
            write_sorted(df, self.out.path(name), files, f"{side}_id")
            self.tables[name] = int(mat.shape[0])
            if prefix:
                continue
            write_sorted(vocab.select(F.col("id").alias(f"{side}_id"), "idx", "n_ratings"),
                         self.out.path(VOCAB_TABLES[side]), files, "idx")
            self.tables[VOCAB_TABLES[side]] = int(mat.shape[0])

    def splits(self) -> None:
        self._describe("write splits")
        d = self.data
        for name, is_test, n in ((TRAIN_RATINGS, False, d.n_train + d.n_val),
                                 (TEST_RATINGS, True, d.n_test)):
            split = ids_frame(d.ratings.where(F.col("is_test") == F.lit(is_test)), d)
            write_sorted(split.select(*SPLIT_COLUMNS), self.out.path(name),
                         n_files(self.cfg, n // 8 + 1, 1), "user_id", "item_id")
            self.tables[name] = n

    def recommendations(self, lists: DataFrame, n_rows: int) -> None:
        self._describe("write recommendations")
        k, buckets = self.cfg.top_k, self.cfg.output_partitions
        named = ids_frame(lists, self.data).select(*RECS_COLUMNS)
        if buckets:
            (named.withColumn(BUCKET_COLUMN, bucket_column(F.col("user_id"), buckets))
             .repartition(min(buckets, 64), BUCKET_COLUMN)
             .sortWithinPartitions(BUCKET_COLUMN, "user_id", "rank")
             .write.partitionBy(BUCKET_COLUMN).parquet(self.out.path(RECS_TABLE)))
            self.partitions[RECS_TABLE] = {"column": BUCKET_COLUMN, "buckets": buckets}
        else:
            write_sorted(named, self.out.path(RECS_TABLE),
                         n_files(self.cfg, n_rows // max(1, k) + 1, k), "user_id", "rank")
        self.tables[RECS_TABLE] = n_rows

    def neighbors(self, nb: DataFrame) -> None:
        self._describe(f"item neighbours: {self.cfg.similar_items}")
        items = self.data.items
        item_ids = items.select(F.col("idx").alias("i"), F.col("id").alias("item_id"))
        neighbor_ids = items.select(F.col("idx").alias("j"), F.col("id").alias("neighbor_id"))
        named = (nb.join(F.broadcast(item_ids), "i").join(F.broadcast(neighbor_ids), "j")
                 .select("item_id", "rank", "neighbor_id", "similarity"))
        write_sorted(named, self.out.path(NEIGHBORS_TABLE),
                     n_files(self.cfg, self.data.n_items, self.cfg.similar_items),
                     "item_id", "rank")
        self.tables[NEIGHBORS_TABLE] = int(
            self.spark.read.parquet(self.out.path(NEIGHBORS_TABLE)).count())

    def item_users(self, df: DataFrame) -> None:
        """``item_users``: (item_id, rank, user_id, predicted_rating, score)."""
        self._describe(f"top users per item: {self.cfg.users_per_item}")
        named = ids_frame(df, self.data, user_col="i", item_col="u").select(
            "item_id", "rank", "user_id", "predicted_rating", "score")
        self._write_counted(named, ITEM_USERS_TABLE, self.data.n_items,
                            self.cfg.users_per_item, "item_id")

    def user_neighbors(self, df: DataFrame) -> None:
        """``user_neighbors``: (user_id, rank, neighbor_id, similarity)."""
        self._describe(f"user neighbours: {self.cfg.similar_users}")
        users = self.data.users
        named = (df.join(F.broadcast(users.select(F.col("idx").alias("i"),
                                                  F.col("id").alias("user_id"))), "i")
                 .join(F.broadcast(users.select(F.col("idx").alias("j"),
                                                F.col("id").alias("neighbor_id"))), "j")
                 .select("user_id", "rank", "neighbor_id", "similarity"))
        self._write_counted(named, USER_NEIGHBORS_TABLE, self.data.n_users,
                            self.cfg.similar_users, "user_id")

    def _write_counted(self, df: DataFrame, name: str, rows: int, k: int, key: str) -> None:
        write_sorted(df, self.out.path(name), n_files(self.cfg, rows, k), key, "rank")
        self.tables[name] = int(self.spark.read.parquet(self.out.path(name)).count())

    def json(self, name: str, obj) -> None:
        self.out.write_json(name, obj)
        self.files.append(name)

    def text(self, name: str, text: str) -> None:
        self.out.write_text(name, text)
        self.files.append(name)

    def commit(self, catalog=None) -> str:
        """Commit the directory; with ``catalog``
        (:class:`pmf_spark.outputs.catalog.CatalogTables`),
        stage its tables from the staging directory first and swap them in after the
        directory is in place."""
        self._describe(None)
        marker: dict = {"tables": self.tables, "files": self.files}
        if self.partitions:
            marker["partitions"] = self.partitions
        if catalog is not None:
            catalog.stage(self.out.path, self.tables, self.partitions)
        final = self.out.commit(marker)
        if catalog is not None:
            catalog.swap()
        return final
