"""The training job's steps, shared by ``jobs/train_pmf.py`` and the Python API:
load and validate the input, prepare, train, write the outputs atomically."""

from __future__ import annotations

import csv
import io as _io
import logging
import math
import platform
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import __version__
from .errors import ConfigError, InputDataError
from .checkpoint import Checkpointer, fingerprint
from .io import (AtomicOutput, CleanRatings, load_ratings, path_exists, qualify, read_id_list,
                 read_text)
from .params import JobConfig, PMFParams
from .prepare import PreparedData, prepare
from .recommend import (candidate_items, cold_start_recs, item_neighbors, item_tiebreak,
                        ranking_metrics, recommend_all, relevance_threshold)
from .synthetic import get_shape, synthetic_ratings
from .train import ALSTrainer, EpochMetrics, FactorModel, TrainState

log = logging.getLogger("pmf_spark")

MODEL_FORMAT_VERSION = 1
FACTOR_TABLES = {"user": "user_factors", "item": "item_factors"}
VOCAB_TABLES = {"user": "user_vocabulary", "item": "item_vocabulary"}
RECS_TABLE = "recommendations"
NEIGHBORS_TABLE = "item_neighbors"


def factor_schema(side: str, id_type: str) -> T.StructType:
    """Schema of ``user_factors`` / ``item_factors``: the original id, the factor
    vector, the bias (z units) and the number of training ratings."""
    return T.StructType([
        T.StructField(f"{side}_id", T.LongType() if id_type == "long" else T.StringType()),
        T.StructField("features", T.ArrayType(T.DoubleType())),
        T.StructField("bias", T.DoubleType()),
        T.StructField("n_ratings", T.IntegerType()),
    ])


def vocabulary_schema(side: str, id_type: str) -> T.StructType:
    """Schema of ``user_vocabulary`` / ``item_vocabulary``: original id <-> dense index."""
    return T.StructType([
        T.StructField(f"{side}_id", T.LongType() if id_type == "long" else T.StringType()),
        T.StructField("idx", T.IntegerType()),
        T.StructField("n_ratings", T.IntegerType()),
    ])


def versions() -> dict:
    import pandas
    import pyspark

    return {"pmf_spark": __version__, "pyspark": pyspark.__version__, "numpy": np.__version__,
            "pandas": pandas.__version__, "pyarrow": pa.__version__,
            "python": platform.python_version()}


def load_inputs(spark: SparkSession, cfg: JobConfig) -> tuple[CleanRatings, CleanRatings | None]:
    """The validated training input (and given test split): files or synthetic data."""
    if cfg.ratings is None:
        shape = get_shape(cfg.synthetic)
        df = synthetic_ratings(spark, cfg.synthetic, seed=cfg.split_seed)
        log.info("built-in synthetic data %r: %d users x %d items, %d ratings (seed %d)",
                 shape.name, shape.n_users, shape.n_items, shape.n_ratings, cfg.split_seed)
        clean = CleanRatings(
            df=df.select("user", "item", "rating", F.lit(None).cast("long").alias("ts")),
            path=f"synthetic:{shape.name}", n=shape.n_ratings, id_type="long",
            rating_min=0.5, rating_max=5.0, scale=(0.5, 5.0), float32_exact=True,
            has_timestamp=False)
        return clean, None
    opts = dict(user_col=cfg.user_col, item_col=cfg.item_col, rating_col=cfg.rating_col,
                timestamp_col=cfg.timestamp_col, sep=cfg.sep, rating_min=cfg.rating_min,
                rating_max=cfg.rating_max)
    train = load_ratings(spark, cfg.ratings, cfg.format, role="ratings", **opts)
    test = None
    if cfg.test is not None:
        test = load_ratings(spark, cfg.test, cfg.format, role="test", **opts)
    log.info("read %d ratings from %s%s", train.n, cfg.ratings,
             f" and {test.n} test ratings from {cfg.test}" if test else "")
    return train, test


def check_output_path(spark: SparkSession, cfg: JobConfig) -> None:
    """Refuse an output that would overwrite the input or something that is not ours."""
    out = qualify(spark, cfg.output).rstrip("/")
    for given in (cfg.ratings, cfg.test):
        if given is None:
            continue
        src = qualify(spark, given).rstrip("/")
        if src == out or src.startswith(out + "/"):
            raise ConfigError(f"output {cfg.output}: is the input {given} or contains it; "
                              f"choose another --output")
    if cfg.checkpoint_dir:
        ck = qualify(spark, cfg.checkpoint_dir).rstrip("/")
        if ck == out or ck.startswith(out + "/"):
            raise ConfigError(f"checkpoint-dir {cfg.checkpoint_dir}: must not be inside "
                              f"--output {cfg.output} (a new output replaces that directory)")
    if path_exists(spark, cfg.output) and not is_pmf_output(spark, cfg.output):
        raise ConfigError(f"output {cfg.output}: exists and is not a pmf-spark output; "
                          f"refusing to replace it (choose another --output or remove it)")


def driver_memory_needed(n_users: int, n_items: int, params: PMFParams) -> tuple[int, int]:
    """Bytes the driver needs for the factor matrices: (JVM heap, Python process).

    The Python driver holds both sides' state (factors and bias, float64), a design
    copy for the broadcast and its pickle, the collected half-epoch, and what the
    model needs on top: posterior variances (adaptive priors), the best epoch's copy
    (early stopping), the kept samples (BPMF). The JVM holds one side's broadcast and
    one collected side at a time, and the final factor tables while writing them.
    """
    w = (params.rank + 1) * 8
    rows = n_users + n_items
    copies = 6
    if params.priors != "fixed":
        copies += 2
    if params.early_stopping:
        copies += 2
    python = copies * rows * w
    jvm = 3 * max(n_users, n_items) * w
    if params.model == "bpmf":
        kept = max(1, params.samples // params.thin)
        python += 2 * kept * rows * w
        jvm = max(jvm, 2 * kept * max(n_users, n_items) * w)
    return jvm + (256 << 20), python


def _available_memory() -> int | None:
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
        jvm_max = int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
    if available is None:
        available = _available_memory()
    gib = 1024.0 ** 3
    what = (f"{data.n_users} users + {data.n_items} items at rank {params.rank}"
            + (f" with {params.samples // params.thin} BPMF samples kept"
               if params.model == "bpmf" else ""))
    if jvm_need > 0.6 * jvm_max:
        raise ConfigError(f"driver memory: {what} need about {jvm_need / gib:.1f} GiB of "
                          f"driver JVM heap, but it has {jvm_max / gib:.1f} GiB; raise "
                          f"--driver-memory to at least {math.ceil(jvm_need / 0.6 / gib)}g")
    if available is not None and py_need > available:
        raise ConfigError(f"driver memory: {what} need about {py_need / gib:.1f} GiB in the "
                          f"Python driver, but the machine has {available / gib:.1f} GiB "
                          f"available; use a larger driver machine or a lower rank")


def is_pmf_output(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(jpath):
        return False
    if not fs.getFileStatus(jpath).isDirectory():
        return False
    listing = fs.listStatus(jpath)
    if len(listing) == 0:
        return True
    return fs.exists(jvm.org.apache.hadoop.fs.Path(jpath, "model.json"))


def factor_frame(spark: SparkSession, matrix: np.ndarray, bias: np.ndarray,
                 vocab: DataFrame, id_name: str) -> DataFrame:
    """(id, features array<double>, bias, n_ratings) from a dense-index factor matrix."""
    n, r = matrix.shape
    offsets = pa.array(np.arange(0, n * r + 1, r, dtype=np.int32))
    features = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
    tbl = pa.table({"idx": pa.array(np.arange(n, dtype=np.int32)), "features": features,
                    "bias": pa.array(bias)})
    fac = spark.createDataFrame(tbl)
    return (vocab.join(fac, "idx")
            .select(F.col("id").alias(id_name), "features", "bias", "n_ratings"))


def _n_files(cfg: JobConfig, n_rows: int, rank: int) -> int:
    if cfg.output_files:
        return cfg.output_files
    return max(1, math.ceil(n_rows * (rank * 8 + 24) / (128 << 20)))


def history_csv(history: list[EpochMetrics]) -> str:
    buf = _io.StringIO()
    names = list(EpochMetrics.__dataclass_fields__)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for m in history:
        w.writerow([getattr(m, k) for k in names])
    return buf.getvalue()


@dataclass
class TrainResult:
    """What a training run produced (the outputs are on disk under ``output``)."""

    output: str
    model: FactorModel
    history: list[EpochMetrics]
    data: PreparedData
    trainer: ALSTrainer
    state: TrainState
    seconds: float
    final: EpochMetrics


def ids_frame(df: DataFrame, data: PreparedData, user_col: str = "u",
              item_col: str | None = "i") -> DataFrame:
    """Replace dense indices by original ids (broadcast joins with the vocabularies)."""
    out = df.join(F.broadcast(data.users.select(F.col("idx").alias(user_col),
                                                F.col("id").alias("user_id"))), user_col)
    if item_col is not None:
        out = out.join(F.broadcast(data.items.select(F.col("idx").alias(item_col),
                                                     F.col("id").alias("item_id"))), item_col)
    return out


def _write_sorted(df: DataFrame, path: str, n_files: int, *keys: str) -> None:
    df.repartitionByRange(n_files, keys[0]).sortWithinPartitions(*keys).write.parquet(path)


def write_recommendations(spark: SparkSession, cfg: JobConfig, params: PMFParams,
                          data: PreparedData, trainer: ALSTrainer, model: FactorModel,
                          out: AtomicOutput) -> tuple[dict, int]:
    """Top-k for every user, the popularity baseline and their ranking metrics."""
    k = cfg.top_k
    counts = trainer.item_counts
    excluded = None
    if cfg.exclude_items:
        ids = read_id_list(spark, cfg.exclude_items, data.id_type, "exclude-items")
        found = ids.join(data.items, "id").select("idx").distinct().toArrow()
        excluded = found.column("idx").to_numpy().astype(np.int64)
        log.info("excluding %d item(s) listed in %s", excluded.size, cfg.exclude_items)
    candidates = candidate_items(counts, cfg.min_item_ratings, excluded)
    tiebreak = item_tiebreak(data.items, data.n_items)
    common = dict(k=k, candidates=candidates, tiebreak=tiebreak, popularity=counts)
    sc = spark.sparkContext
    frames = {}
    for name, popular in (("model", False), ("popular", True)):
        sc.setJobDescription(f"top-{k}: {name}")
        recs = recommend_all(spark, trainer.packed_users, model, val_dtype=trainer.val_dtype,
                             popular=popular, **common).withColumn("cold_start", F.lit(False))
        if cfg.cold_start == "popular":
            cold = cold_start_recs(spark, data.users, model, **common)
            recs = recs.unionByName(cold.withColumn("cold_start", F.lit(True)))
        frames[name] = recs.persist(StorageLevel.MEMORY_AND_DISK)
    t0 = time.perf_counter()
    n_recs = frames["model"].count()
    seconds = time.perf_counter() - t0
    log.info("top-%d for all users: %d rows in %.1fs", k, n_recs, seconds)
    sc.setJobDescription("write recommendations")
    named = ids_frame(frames["model"], data).select(
        "user_id", "rank", "item_id", "predicted_rating", "score", "cold_start")
    _write_sorted(named, out.path(RECS_TABLE), _n_files(cfg, n_recs // max(1, k) + 1, k),
                  "user_id", "rank")
    test = data.ratings.where(F.col("is_test")).select("u", "i", "rating")
    sc.setJobDescription("ranking metrics")
    threshold = relevance_threshold(cfg.relevance_threshold, data.rating_lo, data.rating_hi)
    ranking = {name: ranking_metrics(df, test, k=k, threshold=threshold,
                                     n_catalogue=int(candidates.sum()))
               for name, df in frames.items()}
    ranking["top_k_seconds"] = seconds
    for df in frames.values():
        df.unpersist()
    sc.setJobDescription(None)
    for name, label in (("model", "PMF"), ("popular", "most popular")):
        r = ranking[name]
        log.info("%-12s @%d (relevant >= %g, %d users): precision %.4f recall %.4f ndcg %.4f "
                 "map %.4f hit rate %.4f coverage %.4f", label, k, threshold,
                 r["users"], r["precision"], r["recall"], r["ndcg"], r["map"], r["hit_rate"],
                 r["coverage"])
    return ranking, n_recs


def write_outputs(spark: SparkSession, cfg: JobConfig, params: PMFParams, data: PreparedData,
                  trainer: ALSTrainer, state: TrainState, seconds: dict,
                  final: EpochMetrics) -> str:
    """Write factors, vocabularies, splits, recommendations, metrics and model.json;
    swap them in atomically."""
    model = trainer.model(state)
    rank = model.U.shape[1]
    out = AtomicOutput(spark, cfg.output)
    try:
        counts = {}
        sc = spark.sparkContext
        sc.setJobDescription("write factors")
        for side, mat, bias, vocab in (("user", model.U, model.user_bias, data.users),
                                       ("item", model.V, model.item_bias, data.items)):
            n_files = _n_files(cfg, mat.shape[0], rank)
            df = factor_frame(spark, mat, bias, vocab, f"{side}_id")
            _write_sorted(df, out.path(FACTOR_TABLES[side]), n_files, f"{side}_id")
            counts[FACTOR_TABLES[side]] = int(mat.shape[0])
            _write_sorted(vocab.select(F.col("id").alias(f"{side}_id"), "idx", "n_ratings"),
                          out.path(VOCAB_TABLES[side]), n_files, "idx")
            counts[VOCAB_TABLES[side]] = int(mat.shape[0])
        sc.setJobDescription("write splits")
        for name, is_test, n in (("train_ratings", False, data.n_train + data.n_val),
                                 ("test_ratings", True, data.n_test)):
            split = ids_frame(data.ratings.where(F.col("is_test") == F.lit(is_test)), data)
            _write_sorted(split.select("user_id", "item_id", "rating"), out.path(name),
                          _n_files(cfg, n // 8 + 1, 1), "user_id", "item_id")
            counts[name] = n
        ranking = None
        if cfg.top_k > 0:
            ranking, counts[RECS_TABLE] = write_recommendations(
                spark, cfg, params, data, trainer, model, out)
            seconds["top_k"] = ranking.pop("top_k_seconds")
        if cfg.similar_items > 0:
            sc.setJobDescription(f"item neighbours: {cfg.similar_items}")
            tiebreak = item_tiebreak(data.items, data.n_items)
            nb = item_neighbors(spark, model, data.n_items, trainer.item_counts,
                                k=cfg.similar_items, tiebreak=tiebreak, blocks=trainer.blocks)
            item_ids = data.items.select(F.col("idx").alias("i"), F.col("id").alias("item_id"))
            neighbor_ids = data.items.select(F.col("idx").alias("j"),
                                             F.col("id").alias("neighbor_id"))
            named = (nb.join(F.broadcast(item_ids), "i").join(F.broadcast(neighbor_ids), "j")
                     .select("item_id", "rank", "neighbor_id", "similarity"))
            _write_sorted(named, out.path(NEIGHBORS_TABLE),
                          _n_files(cfg, data.n_items, cfg.similar_items), "item_id", "rank")
            counts[NEIGHBORS_TABLE] = spark.read.parquet(out.path(NEIGHBORS_TABLE)).count()
        sc.setJobDescription(None)
        diag = None
        if cfg.report and data.n_test > 0:
            from .report import diagnostics, rating_bins
            bins = rating_bins(data.rating_lo, data.rating_hi)
            diag = diagnostics(spark, trainer, model, bins)
        history = [m.to_dict() for m in state.history]
        final_metrics = final
        final = final.to_dict()
        metrics = {"epochs": history, "final": final}
        if ranking is not None:
            metrics["ranking"] = ranking
        out.write_json("metrics.json", metrics)
        out.write_text("metrics.csv", history_csv(state.history))
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "model": params.to_dict(),
            "job": cfg.to_dict(),
            "data": data.summary(),
            "mu": data.mu, "sigma": data.sigma,
            "rating_range": [data.rating_lo, data.rating_hi],
            "rank": rank,
            "latent_rank": params.rank,
            "epochs_run": state.epoch,
            "best_epoch": final["epoch"],
            "samples_averaged": len(state.samples),
            "blocks": trainer.blocks,
            "final_metrics": final,
            "baseline_rmse": diag["baseline_rmse"] if diag else None,
            "ranking": ranking,
            "seconds": seconds,
            "versions": versions(),
        }
        out.write_json("model.json", meta)
        files = ["model.json", "metrics.json", "metrics.csv"]
        if diag is not None:
            from .report import figures, render_html
            figs = figures(state.history, diag, bins, trainer.user_counts)
            out.write_text("report.html", render_html(meta, figs, ranking))
            files.append("report.html")
            del final_metrics
        return out.commit({"tables": counts, "files": files})
    except BaseException:
        out.abort()
        raise


def epoch_logger(total: int) -> "callable":
    """The default per-epoch log line, with an ETA from the mean epoch time."""
    times: list[float] = []

    def _log(m: EpochMetrics):
        times.append(m.seconds)
        eta = (total - m.epoch) * (sum(times) / len(times))
        extra = ""
        if m.val_rmse == m.val_rmse:  # not NaN
            extra += f"  val rmse {m.val_rmse:.4f}"
        if m.objective == m.objective:
            extra += f"  objective {m.objective:.6g}"
        log.info("epoch %3d/%d  train rmse %.4f mae %.4f  test rmse %.4f mae %.4f%s  "
                 "lambda %.3g/%.3g  %6.2fs  eta %s", m.epoch, total, m.train_rmse, m.train_mae,
                 m.test_rmse, m.test_mae, extra, m.lambda_u, m.lambda_v, m.seconds,
                 _fmt_eta(eta))
    return _log


def _fmt_eta(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_training(spark: SparkSession, cfg: JobConfig, params: PMFParams,
                 callback=None) -> TrainResult:
    """The whole job: input -> prepared data -> ALS -> outputs under ``cfg.output``."""
    t0 = time.perf_counter()
    check_output_path(spark, cfg)
    train, test = load_inputs(spark, cfg)
    data = prepare(train, test, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed,
                   on_duplicate=cfg.on_duplicate,
                   validation_fraction=cfg.validation_fraction if params.early_stopping else 0.0)
    log.info("%d users x %d items; %d training and %d test ratings; mean %.3f, std %.3f, "
             "range [%g, %g]", data.n_users, data.n_items, data.n_train, data.n_test,
             data.mu, data.sigma, data.rating_lo, data.rating_hi)
    if data.cold_users or data.cold_items:
        log.info("%d user(s) and %d item(s) have no training ratings: kept at the prior mean, "
                 "predicted from the mean plus the known side's bias",
                 data.cold_users, data.cold_items)
    check_driver_memory(spark, data, params)
    t_prep = time.perf_counter()
    log_epoch = epoch_logger(params.burn_in + params.samples if params.model == "bpmf"
                             else params.epochs)

    def on_epoch(m):
        log_epoch(m)
        return callback(m) if callback is not None else None

    trainer = ALSTrainer(spark, data, params, callback=on_epoch)
    state, after_epoch = None, None
    if cfg.checkpoint_dir:
        ck = Checkpointer(spark, cfg.checkpoint_dir, cfg.checkpoint_every,
                          fingerprint(params, cfg, data))
        if cfg.resume:
            loaded = ck.load_latest(lambda d: EpochMetrics(**d))
            if loaded is None:
                log.info("no checkpoint in %s yet: starting from the beginning",
                         cfg.checkpoint_dir)
            else:
                state = TrainState(**loaded[1])
                log.info("resuming from the checkpoint of epoch %d in %s", loaded[0],
                         cfg.checkpoint_dir)

        def after_epoch(st):
            if st.epoch % cfg.checkpoint_every == 0:
                ck.save(st)
    trainer.setup()
    log.info("packed the ratings into %d block(s) per side in %.1fs", trainer.blocks,
             trainer.setup_seconds)
    state = trainer.fit(state, after_epoch=after_epoch)
    final = trainer.final_metrics(state)
    if params.model == "bpmf":
        log.info("BPMF: averaged %d sample(s): train rmse %.4f  test rmse %.4f mae %.4f",
                 len(state.samples), final.train_rmse, final.test_rmse, final.test_mae)
    t_fit = time.perf_counter()
    seconds = {"prepare": t_prep - t0, "setup": trainer.setup_seconds,
               "train": t_fit - t_prep - trainer.setup_seconds,
               "per_epoch": [m.seconds for m in state.history]}
    path = write_outputs(spark, cfg, params, data, trainer, state, seconds, final)
    total = time.perf_counter() - t0
    log.info("wrote %s (test rmse %.4f, %d epochs, %.1fs in all)", path, final.test_rmse,
             state.epoch, total)
    return TrainResult(output=path, model=trainer.model(state), history=state.history,
                       data=data, trainer=trainer, state=state, seconds=total, final=final)


def read_model_meta(spark: SparkSession, path: str) -> dict:
    import json

    text = read_text(spark, path.rstrip("/") + "/model.json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}/model.json: not valid JSON ({exc})") from None
