"""The Spark engine: packing the layout, running half-steps, collecting. Nothing here
knows a model: it runs the :class:`~pmf_spark.models.base.KernelTask` s it is given.

The layout
----------
Ratings are packed once per side into B blocks (``index % B``, labels chosen so each
block lands in its own partition; dense indices are in descending count order, so
blocks carry nearly equal numbers of ratings), repartitioned by block, sorted within
partitions and cached. A half-step broadcasts its tasks' payloads, runs
``groupBy("block").applyInPandas(solve_block)`` over the cached layout -- its plan is
``FlatMapGroupsInPandas <- InMemoryTableScan``, no shuffle, no sort -- and collects
the solved rows (Arrow) to the driver. Several models' tasks share one job, so the
per-job cost (~0.13 s here) is paid once per half-step however many models ride it.

Resident blocks
---------------
Blocks of :data:`RESIDENT_MIN_BLOCK_MB` or more stay decoded in the Python workers
between epochs (:mod:`pmf_spark.engine.layout`): once a side is warm, a half-step sends only
the chunk keys, and the blocks a worker reports missing are run again with their data.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pmf_spark.engine.blocks import SOLVED_SCHEMA, SUMS, solve_block
from pmf_spark.engine.layout import LIGHT_COLUMNS, PACKED_SCHEMA, TRAIN, pack_block
from pmf_spark.models.base import HalfResult, KernelTask
from pmf_spark.runtime.sparkutil import describe

log = logging.getLogger("pmf_spark")

#: blocks smaller than this (MB sent to Python per half-epoch) are always sent in full
RESIDENT_MIN_BLOCK_MB = 32.0


_M32 = 0xFFFFFFFF


def spark_hash_int(k: int, seed: int = 42) -> int:
    """Spark's ``hash()`` of an int column (Murmur3 x86 32-bit, seed 42), in Python: what
    ``repartition(n, col)`` places rows by (``pmod(hash, n)``)."""
    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & _M32

    k1 = rotl((k & _M32) * 0xCC9E2D51 & _M32, 15) * 0x1B873593 & _M32
    h1 = (rotl(seed ^ k1, 13) * 5 + 0xE6546B64) & _M32
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & _M32
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & _M32
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def block_labels(spark: SparkSession | None, blocks: int) -> list[int]:
    """For each partition p of ``repartition(blocks, int_col)``, the smallest int label
    that Spark's hash partitioner sends to p: one block per partition. Computed on the
    driver with Spark's own hash (no Spark job)."""
    by_p: dict[int, int] = {}
    k = 0
    while len(by_p) < blocks:
        by_p.setdefault(spark_hash_int(k) % blocks, k)
        k += 1
    return [by_p[p] for p in range(blocks)]


def block_of(idx_col: str, labels: list[int]) -> F.Column:
    """The block label of a dense index column: ``labels[idx % B]``."""
    arr = F.array(*[F.lit(int(x)) for x in labels])
    return F.element_at(arr, ((F.col(idx_col) % F.lit(len(labels))) + 1).cast("int")).cast("int")


def pack_side(ratings: DataFrame, row: str, col: str, labels: list[int], *,
              with_test: bool, chunk_ratings: int, val_dtype: str,
              trained_rows_only: bool = False) -> DataFrame:
    """Pack one side's ratings into the cached block layout (:mod:`pmf_spark.engine.layout`).

    ``with_test``: every held-out rating (test and validation) rides along: the item
    side's for the epoch metrics, the user side's for top-k (which masks the validation
    slice) and its ranking metrics. ``trained_rows_only``: rows without training ratings
    are left out (the user side: users without them get the popular list).
    """
    df = ratings if with_test else ratings.filter(F.col("kind") == TRAIN)
    cols = [F.col(row).alias("row"), F.col(col).alias("col"), F.col("rating")]
    if with_test:
        cols.append(F.col("kind"))
    df = df.select(*cols, block_of(row, labels).alias("block"))
    fn = functools.partial(pack_block, chunk_ratings=chunk_ratings, val_dtype=val_dtype,
                           with_test=with_test, trained_rows_only=trained_rows_only)
    return (df.groupBy("block").applyInPandas(fn, PACKED_SCHEMA)
            .repartition(len(labels), "block")
            .sortWithinPartitions("block", "chunk")
            .persist(StorageLevel.MEMORY_AND_DISK))


def collect_solved(tbl: pa.Table, tasks: list[KernelTask], sizes: int) -> list[HalfResult]:
    """The collected half-step table as one HalfResult per task: rows placed by their
    dense index into fresh (sizes, width) arrays (rows absent stay 0, the prior mean),
    statistics summed."""
    out = []
    for t, task in enumerate(tasks):
        sel = tbl.filter(pc.equal(tbl.column("task"), t)) if len(tasks) > 1 else tbl
        factors = np.zeros((sizes, task.width))
        var = np.zeros((sizes, task.width)) if task.variances else None
        ids = [np.frombuffer(b, dtype=np.int32) for b in sel.column("row_ids").to_pylist()]
        for r, fac in zip(ids, sel.column("factors").to_pylist()):
            if r.size:
                factors[r] = np.frombuffer(fac, dtype=np.float64).reshape(r.size, task.width)
        if var is not None:
            for r, v in zip(ids, sel.column("variances").to_pylist()):
                if r.size:
                    var[r] = np.frombuffer(v, dtype=np.float64).reshape(r.size, task.width)
        stats = {name: float(np.sum(sel.column(name).to_numpy())) if sel.num_rows else 0.0
                 for name in SUMS}
        out.append(HalfResult(factors, var, stats))
    return out


class Engine:
    """The cached block layout of one prepared data set and the jobs that run on it.

    Args:
        spark: the active session.
        data: indexed ratings (:class:`~pmf_spark.prepare.ratings.PreparedData`).
        params: :class:`~pmf_spark.config.params.EngineParams`.
    """

    def __init__(self, spark: SparkSession, data, params):
        self.spark = spark
        self.data = data
        self.params = params
        self.blocks = params.blocks or max(1, spark.sparkContext.defaultParallelism)
        self.val_dtype = "float32" if data.float32_exact else "float64"
        self.layout: dict[str, DataFrame] = {}
        self.sizes = {"user": data.n_users, "item": data.n_items}
        self.counts: dict[str, np.ndarray] = {}
        self.block_mb = {"user": 0.0, "item": 0.0}
        self.resident = _ResidentProtocol(params.resident_mb)
        self.setup_seconds = 0.0
        self.backends: set[str] = set()
        #: seconds the workers spent compiling kernels (one-off costs, not an epoch's)
        self.compile_seconds = 0.0
        #: where the half-steps' time went: Spark jobs run, their wall seconds on the
        #: driver, and the seconds the Python tasks took in all and inside the kernels
        self.timing = {"jobs": 0, "wall_s": 0.0, "task_s": 0.0, "kernel_s": 0.0}

    # ---------------------------------------------------------------- setup
    @property
    def packed(self) -> bool:
        return bool(self.layout)

    def pack(self) -> None:
        """Pack and cache both sides; log their sizes. Once per data set."""
        t0 = time.perf_counter()
        d, p = self.data, self.params
        describe(self.spark, "setup: pack ratings into blocks")
        labels = block_labels(self.spark, self.blocks)
        common = dict(chunk_ratings=p.chunk_ratings, val_dtype=self.val_dtype)
        self.layout["user"] = pack_side(d.ratings, "u", "i", labels, with_test=True,
                                        trained_rows_only=True, **common)
        self.layout["item"] = pack_side(d.ratings, "i", "u", labels, with_test=True, **common)
        vbytes = 4 if self.val_dtype == "float32" else 8
        for side, packed in self.layout.items():
            rows = packed.groupBy("block").agg(F.sum("nnz").alias("nnz"),
                                               F.sum("n_test").alias("n_test"),
                                               F.count(F.lit(1)).alias("chunks")).collect()
            nnz = sorted(int(r["nnz"]) for r in rows)
            wire = sum(int(r["nnz"]) * (4 + vbytes) + int(r["n_test"]) * (9 + vbytes)
                       for r in rows)
            self.block_mb[side] = wire / max(1, len(rows)) / (1 << 20)
            log.info("%s blocks: %d, ratings per block %s..%s, %d chunk(s), %.1f MB per block%s",
                     side, len(rows), nnz[0] if nnz else 0, nnz[-1] if nnz else 0,
                     sum(int(r["chunks"]) for r in rows), self.block_mb[side],
                     " (kept in the Python workers between epochs)"
                     if self.uses_resident(side) else "")
        self.counts = {"user": _read_counts(d.users, d.n_users),
                       "item": _read_counts(d.items, d.n_items)}
        describe(self.spark, None)
        self.setup_seconds = time.perf_counter() - t0

    def uses_resident(self, side: str) -> bool:
        """Keep blocks in the workers only where it pays: a miss costs one more Spark job
        (~0.1 s), so blocks must be big enough for the saved transfer to outweigh it."""
        return self.params.resident_mb > 0 and self.block_mb[side] >= RESIDENT_MIN_BLOCK_MB

    # ---------------------------------------------------------------- half-steps
    def frame(self, solving: str, tasks: list[KernelTask], metrics: bool = False,
              light: bool = False, blocks=None):
        """(DataFrame, broadcast) of one half-step job over ``solving``'s layout; the
        caller destroys the broadcast after collecting.

        ``light``: send only the chunks' keys (workers use their resident copies);
        ``blocks``: only these blocks (the full data, for chunks reported missing).
        """
        bc = self.spark.sparkContext.broadcast(tuple(t.payload for t in tasks))
        packed = self.layout[solving]
        if light:
            packed = packed.select([F.col(c) for c in LIGHT_COLUMNS])
        if blocks is not None:
            packed = packed.where(F.col("block").isin([int(b) for b in blocks]))
        fn = functools.partial(
            solve_block, shared=bc, kernels=tuple(t.kernel for t in tasks),
            widths=tuple(t.width for t in tasks),
            metrics=tuple(metrics and t.rating_model for t in tasks),
            fitted=tuple(metrics for _ in tasks),
            variances=tuple(t.variances for t in tasks), val_dtype=self.val_dtype,
            resident=self.resident.key(solving) if self.uses_resident(solving) else None)
        return packed.groupBy("block").applyInPandas(fn, SOLVED_SCHEMA), bc

    def _run(self, solving, tasks, metrics, light=False, blocks=None) -> pa.Table:
        df, bc = self.frame(solving, tasks, metrics, light, blocks)
        t0 = time.perf_counter()
        try:
            tbl = df.toArrow()
        finally:
            bc.destroy(blocking=False)
        t = self.timing
        t["jobs"] += 1
        t["wall_s"] += time.perf_counter() - t0
        for c in ("kernel_s", "task_s"):
            t[c] += float(pc.sum(tbl.column(c)).as_py() or 0.0)
        return tbl

    def _note_kernels(self, tbl: pa.Table) -> None:
        """Log, once, which kernels the workers ran and what compiling them cost."""
        names = {b for b in tbl.column("backend").to_pylist() if b} - self.backends
        compile_s = float(np.max(tbl.column("compile_s").to_numpy())) if tbl.num_rows else 0.0
        for name in sorted(names):
            if name == "numba":
                log.info("row kernels: compiled (numba) in the Python workers")
            elif name.startswith("numpy (") and self.params.kernel == "auto":
                log.warning("numba could not be loaded in the Python workers %s: the numpy "
                            "kernels run instead (2-6x slower per epoch)", name[6:])
        self.compile_seconds += compile_s
        if compile_s > 0.5:
            log.info("the workers compiled the numba kernels in %.1fs (cached for later runs "
                     "in %s; left out of the ETA)", compile_s,
                     os.environ.get("NUMBA_CACHE_DIR", "the temporary directory"))
        self.backends |= names

    def half_step(self, solving: str, tasks: list[KernelTask],
                  metrics: bool = False) -> list[HalfResult]:
        """Solve every row of ``solving`` for each task; one Spark job (two when a warm
        side's workers miss some blocks)."""
        resident = self.uses_resident(solving)
        if not (resident and self.resident.warm[solving]):
            tbl = self._run(solving, tasks, metrics)
            self.resident.warm[solving] = resident
            self._note_kernels(tbl)
            return collect_solved(tbl, tasks, self.sizes[solving])
        tbl = self._run(solving, tasks, metrics, light=True)
        missing = pc.filter(tbl.column("block"), tbl.column("missing")).to_pylist()
        self.resident.stats["light_chunks"] += tbl.num_rows
        if missing:
            # the workers that ran these blocks do not hold them: send those blocks again
            gone = sorted(set(missing))
            keep = pc.invert(pc.is_in(tbl.column("block"), value_set=pa.array(gone, pa.int32())))
            resent = self._run(solving, tasks, metrics, blocks=gone)
            self.resident.stats["resent_chunks"] += resent.num_rows
            tbl = pa.concat_tables([tbl.filter(keep), resent])
        return collect_solved(tbl, tasks, self.sizes[solving])

    def map_blocks(self, side: str, fn, schema: str, description: str) -> pa.Table:
        """Run a block function (``(key, pdf) -> pdf``) over a side's layout, collected."""
        describe(self.spark, description)
        try:
            return self.layout[side].groupBy("block").applyInPandas(fn, schema).toArrow()
        finally:
            describe(self.spark, None)

    def release(self) -> None:
        for df in self.layout.values():
            df.unpersist()


class _ResidentProtocol:
    """The driver's side of the resident blocks: which sides are warm, the key prefix
    naming this layout in the workers' stores, and how often workers missed."""

    def __init__(self, budget_mb: int):
        self.budget_mb = budget_mb
        self.token = uuid.uuid4().hex
        self.warm = {"user": False, "item": False}
        self.stats = {"light_chunks": 0, "resent_chunks": 0}

    def key(self, side: str):
        return (self.token, side), self.budget_mb


def _read_counts(vocab: DataFrame, n: int) -> np.ndarray:
    tbl = vocab.select("idx", "n_ratings").toArrow()
    counts = np.zeros(n, dtype=np.int64)
    counts[tbl.column("idx").to_numpy()] = tbl.column("n_ratings").to_numpy()
    return counts
