"""Checks before the expensive steps, so a run never trains for an hour and then fails
on something that could have been seen at the start.

Before reading the input (:func:`open_output`): the output and the checkpoint
directory are neither the input, nor inside it, nor contain it; the output is opened
(:class:`~pmf_spark.outputs.commit.AtomicOutput`: its parent exists or is created, is a
directory and writable; a foreign directory, a file, a mount point or an object store
is refused; the lock is taken); the checkpoint directory is a writable directory.
After preparing the data, before training (:func:`check_prepared`): both have room
for an estimate of what will be written, and the recommendation filters leave
something to recommend.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import uuid

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.errors import ConfigError, OutputError
from pmf_spark.models import REGISTRY
from pmf_spark.outputs.commit import AtomicOutput
from pmf_spark.prepare.ratings import PreparedData
from pmf_spark.runtime.sparkutil import jvm
from pmf_spark.storage.hadoop import is_local_uri, qualify, short
from pmf_spark.storage.ops import HadoopOps, LocalOps, os_reason

log = logging.getLogger("pmf_spark")


def _real(spark: SparkSession, path: str) -> str:
    """A comparable form of ``path``: qualified, local paths with symlinks resolved."""
    try:
        uri = qualify(spark, path).rstrip("/")
    except Exception:  # a scheme without a filesystem here: compared as given
        return path.rstrip("/")
    if is_local_uri(uri):
        return "file:" + os.path.realpath(short(uri))
    return uri


def _inside(a: str, b: str) -> bool:
    """``a`` is ``b`` or below it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_paths(spark: SparkSession, cfg: JobConfig, output: str | None = None) -> None:
    """Refuse an output or checkpoint directory that is, holds or lies inside an input."""
    output = output or cfg.output
    out = _real(spark, output)
    inputs = [(flag, p) for flag, p in (("ratings", cfg.ratings), ("test", cfg.test),
                                        ("exclude-items", cfg.exclude_items)) if p]
    for flag, given in inputs:
        src = _real(spark, given)
        if _inside(src, out):
            raise ConfigError(f"output {output}: is the input {given} or contains it; choose "
                              f"another --output")
        if _inside(out, src):
            raise ConfigError(f"output {output}: is inside the input --{flag} {given}; a later "
                              f"run would read it as input: choose another --output")
    if cfg.checkpoint_dir:
        ck = _real(spark, cfg.checkpoint_dir)
        if _inside(ck, out):
            raise ConfigError(f"checkpoint-dir {cfg.checkpoint_dir}: must not be inside --output "
                              f"{output} (a new output replaces that directory)")
        if _inside(out, ck):
            raise ConfigError(f"output {output}: must not be inside --checkpoint-dir "
                              f"{cfg.checkpoint_dir}")
        for flag, given in inputs:
            src = _real(spark, given)
            if _inside(ck, src) or _inside(src, ck):
                raise ConfigError(f"checkpoint-dir {cfg.checkpoint_dir}: overlaps the input "
                                  f"--{flag} {given}; choose another directory")


def check_checkpoint_dir(spark: SparkSession, directory: str) -> None:
    """The checkpoint directory is (or can be created as) a writable directory."""
    uri = qualify(spark, directory).rstrip("/")
    ops = LocalOps() if is_local_uri(uri) else HadoopOps(spark)
    path = os.path.realpath(short(uri)) if ops.local else uri
    if ops.exists(path) and not (os.path.isdir(path) if ops.local else ops.is_dir(path)):
        raise ConfigError(f"checkpoint-dir {directory}: exists and is a file, not a directory")
    probe = posixpath.join(path, f".pmf-write-test-{uuid.uuid4().hex[:8]}")
    try:
        ops.mkdirs(path)
        ops.write_text(probe, "")
        ops.remove_file(probe)
    except OSError as exc:
        raise OutputError(f"checkpoint-dir {directory}: cannot write there "
                          f"({os_reason(exc)})") from None


def open_output(spark: SparkSession, cfg: JobConfig, job: str,
                output: str | None = None) -> AtomicOutput:
    """Every check that needs no data, then the opened output (lock held)."""
    check_paths(spark, cfg, output)
    if cfg.checkpoint_dir:
        check_checkpoint_dir(spark, cfg.checkpoint_dir)
    return AtomicOutput(spark, output or cfg.output, job=job)


# --------------------------------------------------------------------------- estimates

def output_bytes(cfg: JobConfig, data, params: PMFParams) -> int:
    """An upper estimate of the output's size (uncompressed Parquet and the files)."""
    k = params.model.rank
    rows = data.n_users + data.n_items
    factors = rows * (k * 8 + 48) + rows * 32
    splits = (data.n_train + data.n_test + data.n_val) * 32
    recs = data.n_users * cfg.top_k * 48
    neighbors = data.n_items * cfg.similar_items * 32
    return int(factors + splits + recs + neighbors + (8 << 20))


def checkpoint_bytes(data, params: PMFParams) -> int:
    """Two kept checkpoints and one being written, each the state's arrays."""
    copies, _ = REGISTRY[params.fit.model].driver_copies(params.fit)
    state = (data.n_users + data.n_items) * params.model.k * 8 * max(2, copies - 4)
    return int(3 * state + (1 << 20))


def check_room(spark: SparkSession, out: AtomicOutput, cfg: JobConfig, data,
               params: PMFParams) -> None:
    out.check_room(output_bytes(cfg, data, params))
    if not cfg.checkpoint_dir:
        return
    uri = qualify(spark, cfg.checkpoint_dir).rstrip("/")
    ops = LocalOps() if is_local_uri(uri) else HadoopOps(spark)
    need = checkpoint_bytes(data, params)
    try:
        free = ops.free_bytes(short(uri) if ops.local else uri)
    except OSError:
        free = None
    if free is not None and free < need:
        mb = 1 << 20
        raise OutputError(f"checkpoint-dir {cfg.checkpoint_dir}: checkpoints need about "
                          f"{need / mb:.0f} MB but it has {free / mb:.0f} MB free; free some "
                          f"space or choose another --checkpoint-dir")


def check_recommendable(spark: SparkSession, cfg: JobConfig, data) -> None:
    """Refuse filters that leave no item to recommend (or to find neighbours among)."""
    if cfg.top_k == 0:
        return
    from pmf_spark.inputs.read import read_id_list

    least = max(1, cfg.min_item_ratings)
    items = data.items
    st = items.agg(F.max("n_ratings").alias("most"),
                   F.sum(F.when(F.col("n_ratings") >= least, 1).otherwise(0)).alias("kept")
                   ).first()
    most, kept = int(st["most"] or 0), int(st["kept"] or 0)
    if kept == 0:
        raise ConfigError(f"min_item_ratings: {cfg.min_item_ratings} is above every item's "
                          f"number of training ratings (the most is {most}); no item is left "
                          f"to recommend (lower --min-item-ratings, or --top-k 0)")
    if cfg.exclude_items:
        ids = read_id_list(spark, cfg.exclude_items, data.id_type, "exclude-items")
        left = (items.where(F.col("n_ratings") >= least).join(ids, "id", "left_anti")
                .limit(1).count())
        if left == 0:
            raise ConfigError(f"exclude-items {cfg.exclude_items}: excludes every item that "
                              f"could be recommended ({kept} with at least {least} training "
                              f"rating(s)); nothing is left to recommend")


def check_prepared(spark: SparkSession, out: AtomicOutput, cfg: JobConfig, data,
                   params: PMFParams) -> None:
    """The checks that need the prepared data, before training."""
    check_room(spark, out, cfg, data, params)
    check_recommendable(spark, cfg, data)


def blocks_cap(params: PMFParams, data, parallelism: int) -> PMFParams:
    """``params`` with an absurd ``--blocks`` lowered (one line says so): at most one
    block per row of the smaller side, and about 1,000 training ratings per block
    (but never below the cluster's parallelism)."""
    given = params.engine.blocks
    if given == 0:
        return params
    cap = min(max(parallelism, math.ceil(data.n_train / 1000)),
              max(1, min(data.n_users, data.n_items)))
    if given <= cap:
        return params
    log.info("--blocks %d is far more than %d training ratings can use (%d users, %d items); "
             "using %d", given, data.n_train, data.n_users, data.n_items, cap)
    return params.replace(blocks=cap)


def worker_memory_needed(counts: dict, k: int, blocks: int, gram_bytes: int = 8) -> int:
    """Bytes one Python worker needs to solve its largest half-step block.

    ``counts``: training ratings per row by side (int arrays). A block solves its rows
    in chunks of at most :data:`~pmf_spark.kernels.rows.CHUNK_ENTRIES` ratings into reused
    buffers of (rows in the largest chunk) k x k Gram matrices and k right-hand sides;
    the other side's factors (n x k, float64) arrive as a broadcast and are held
    unpickled and as the Gram dtype; a chunk's ratings gather their k-vectors.
    Rows are dealt to blocks by index, so a block's lightest rows are about every
    ``blocks``-th of the side's lightest.
    """
    from pmf_spark.kernels.rows import CHUNK_ENTRIES

    most = 0
    for side, other in (("user", "item"), ("item", "user")):
        c = counts[side]
        light = c[c > 0]
        light.sort()
        per_block = light[::max(1, blocks)]
        rows = int(max(1, min(per_block.size, (per_block.cumsum() <= CHUNK_ENTRIES).sum())))
        gram = rows * (k * k * gram_bytes + k * 8 * 2)
        design = counts[other].size * k * (8 * 2 + gram_bytes)
        gathered = CHUNK_ENTRIES * k * (8 + gram_bytes)
        ratings = int(c.sum()) // max(1, blocks) * 16 * 2
        most = max(most, gram + design + gathered + ratings)
    return most + (128 << 20)          # the interpreter, pandas, Arrow buffers


def worker_memory_available(spark: SparkSession) -> int | None:
    """Memory one Python worker may use: ``spark.executor.pyspark.memory`` shared by an
    executor's cores, or on a local master the machine's available memory shared by
    its cores; None when it cannot be known."""
    conf = spark.sparkContext.getConf()
    cores = int(conf.get("spark.executor.cores", "1") or 1)
    limit = conf.get("spark.executor.pyspark.memory", None)
    if limit:
        return int(jvm(spark).org.apache.spark.network.util.JavaUtils
                   .byteStringAsBytes(limit)) // max(1, cores)
    if (conf.get("spark.master", "") or "").startswith("local"):
        avail = available_memory()
        return None if avail is None else avail // max(1, spark.sparkContext.defaultParallelism)
    return None


def check_worker_memory(spark: SparkSession, counts: dict, params: PMFParams,
                        blocks: int, available: int | None = None) -> None:
    """Refuse to train when one Python worker would need more memory than it has."""
    k = params.model.k
    gram_bytes = 4 if params.engine.gram_dtype == "float32" else 8
    need = worker_memory_needed(counts, k, blocks, gram_bytes)
    if available is None:
        available = worker_memory_available(spark)
    gib = 1024.0 ** 3
    log.info("each Python worker needs about %.2f GiB at rank %d (Gram buffers, the "
             "broadcast side, one block)", need / gib, params.model.rank)
    if available is not None and need > available:
        raise ConfigError(f"worker memory: at rank {params.model.rank} each Python worker "
                          f"needs about {need / gib:.1f} GiB (k x k Gram buffers, the other "
                          f"side's factors, its block of ratings) but has about "
                          f"{available / gib:.1f} GiB; use a lower --rank, --gram-dtype "
                          f"float32, or give the workers more memory "
                          f"(spark.executor.pyspark.memory)")


def driver_memory_needed(n_users: int, n_items: int, params: PMFParams) -> tuple[int, int]:
    """Bytes the driver needs for the factor matrices: (JVM heap, Python process).

    The Python driver holds copies of both sides' state (factors and bias, float64): the
    state, a design copy for the broadcast and its pickle, the collected half-step, and
    what the model keeps on top (its :meth:`~pmf_spark.models.base.Strategy.driver_copies`),
    plus the best epoch's copy with early stopping. The JVM holds one side's broadcast and
    one collected side at a time, and the final factor tables while writing them. The
    ranking model trained beside the rating model adds its own copies at its rank.
    """
    rows = n_users + n_items
    jvm, python = 256 << 20, 0
    for p in (params, params.companion()):
        if p is None:
            continue
        w = (p.model.rank + 1) * 8
        python_copies, jvm_copies = REGISTRY[p.fit.model].driver_copies(p.fit)
        if p.fit.early_stopping:
            python_copies += 2
        jvm += jvm_copies * max(n_users, n_items) * w
        python += python_copies * rows * w
    return jvm, python


def available_memory() -> int | None:
    """This machine's available memory (``MemAvailable``), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_driver_memory(spark: SparkSession, data: PreparedData, params: PMFParams,
                        jvm_max: int | None = None, available: int | None = None) -> None:
    """Refuse to start when the driver cannot hold the factor matrices."""
    jvm_need, py_need = driver_memory_needed(data.n_users, data.n_items, params)
    if jvm_max is None:
        jvm_max = int(jvm(spark).java.lang.Runtime.getRuntime().maxMemory())
    if available is None:
        available = available_memory()
    gib = 1024.0 ** 3
    what = (f"{data.n_users} users + {data.n_items} items at rank {params.model.rank}"
            + REGISTRY[params.fit.model].memory_note(params.fit))
    if jvm_need > 0.6 * jvm_max:
        raise ConfigError(f"driver memory: {what} need about {jvm_need / gib:.1f} GiB of "
                          f"driver JVM heap, but it has {jvm_max / gib:.1f} GiB; raise "
                          f"--driver-memory to at least {math.ceil(jvm_need / 0.6 / gib)}g")
    if available is not None and py_need > available:
        raise ConfigError(f"driver memory: {what} need about {py_need / gib:.1f} GiB in the "
                          f"Python driver, but the machine has {available / gib:.1f} GiB "
                          f"available; use a larger driver machine or a lower rank")
