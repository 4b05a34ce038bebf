"""The training job's steps, shared by ``jobs/train_pmf.py`` and the Python API: load
and validate the input, prepare it, check resources, train, compute the results and
write the outputs atomically."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.evaluate.metrics import EpochMetrics
from pmf_spark.inputs.read import load_ratings, load_table
from pmf_spark.inputs.synthetic import get_shape, synthetic_ratings
from pmf_spark.inputs.validate import CleanRatings, check_disjoint
from pmf_spark.kernels.backends import prepare_kernels
from pmf_spark.models import REGISTRY
from pmf_spark.models.base import FactorModel, TrainState
from pmf_spark.outputs.catalog import CatalogTables
from pmf_spark.outputs.commit import AtomicOutput
from pmf_spark.outputs.modeldir import (
    ITEM_USERS_TABLE,
    META,
    METRICS_CSV,
    METRICS_JSON,
    USER_NEIGHBORS_TABLE,
    model_meta,
)
from pmf_spark.outputs.report import split_phrase
from pmf_spark.outputs.tables import RunWriter, history_csv
from pmf_spark.prepare.ratings import PreparedData, prepare
from pmf_spark.runtime import interrupt
from pmf_spark.train.checkpoint import Checkpointer, check_resumable, fingerprint
from pmf_spark.train.loop import Trainer
from pmf_spark.train.preflight import (
    blocks_cap,
    check_driver_memory,
    check_paths,
    check_prepared,
    check_worker_memory,
    open_output,
)
from pmf_spark.train.results import RunResults, compute_results
from pmf_spark.train.warmstart import previous_meta, warm_start_state

log = logging.getLogger("pmf_spark")


def load_inputs(spark: SparkSession, cfg: JobConfig) -> tuple[CleanRatings, CleanRatings | None]:
    """The validated training input (and given test split): files, a catalog table or
    synthetic data."""
    if cfg.ratings is None and cfg.ratings_table is None:
        shape = get_shape(cfg.synthetic)
        df = synthetic_ratings(spark, cfg.synthetic, seed=cfg.split_seed)
        log.info("built-in synthetic data %r: %d users x %d items, %d ratings (seed %d)",
                 shape.name, shape.n_users, shape.n_items, shape.n_ratings, cfg.split_seed)
        implicit = cfg.feedback == "implicit"       # the rated pairs as events
        value = F.lit(1.0).alias("rating") if implicit else F.col("rating")
        clean = CleanRatings(
            df=df.select("user", "item", value, F.lit(None).cast("long").alias("ts")),
            path=f"synthetic:{shape.name}", n=shape.n_ratings, id_type="long",
            rating_min=1.0 if implicit else 0.5, rating_max=1.0 if implicit else 5.0,
            scale=None if implicit else (0.5, 5.0), float32_exact=True,
            has_timestamp=False, implicit=implicit)
        return clean, None
    opts: dict = dict(user_col=cfg.user_col, item_col=cfg.item_col, rating_col=cfg.rating_col,
                timestamp_col=cfg.timestamp_col, sep=cfg.sep, rating_min=cfg.rating_min,
                rating_max=cfg.rating_max, feedback=cfg.feedback, value_col=cfg.value_col)
    if cfg.ratings is None:
        table_opts = {k: v for k, v in opts.items() if k != "sep"}
        train = load_table(spark, str(cfg.ratings_table), role="ratings", id_type=cfg.id_type,
                           **table_opts)
    else:
        train = load_ratings(spark, cfg.ratings, cfg.format, role="ratings",
                             id_type=cfg.id_type, **opts)
    test = None
    if cfg.test is not None:
        test = load_ratings(spark, cfg.test, cfg.format, role="test", id_type=train.id_type,
                            **opts)
        check_disjoint(train, test)
    what = "event rows" if train.implicit else "ratings"
    log.info("read %d %s from %s%s", train.n, what, cfg.ratings or f"table {cfg.ratings_table}",
             f" and {test.n} test {what} from {cfg.test}" if test else "")
    return train, test


def check_output_path(spark: SparkSession, cfg: JobConfig) -> None:
    """Refuse an output or checkpoint directory that overlaps the input (the output
    itself is checked when it is opened: :func:`pmf_spark.train.preflight.open_output`)."""
    check_paths(spark, cfg)


def epoch_logger(total: int, rates: bool = True, one_off=None):
    """The default per-epoch log line, with an ETA from the mean epoch time; for a model
    that does not predict ratings (``rates`` False) no errors, its objective.

    ``one_off``: a callable giving the seconds spent so far on one-off costs (compiling
    the kernels): they are left out of the epoch times the ETA is estimated from."""
    times: list[float] = []
    spent = [0.0]

    def _log(m: EpochMetrics):
        now = float(one_off()) if one_off is not None else 0.0
        times.append(max(m.seconds - (now - spent[0]), 0.0))
        spent[0] = now
        eta = (total - m.epoch) * (sum(times) / len(times))
        if not rates:
            log.info("epoch %3d/%d  objective %.6g  lambda %.3g/%.3g  %6.2fs  eta %s",
                     m.epoch, total, m.objective, m.lambda_u, m.lambda_v, m.seconds,
                     _fmt_eta(eta))
            return
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


@dataclass
class TrainResult:
    """What a training run produced (the outputs are on disk under ``output``)."""

    output: str
    model: FactorModel
    history: list[EpochMetrics]
    data: PreparedData
    trainer: Trainer
    state: TrainState
    seconds: float
    final: EpochMetrics


def write_outputs(spark: SparkSession, cfg: JobConfig, trainer: Trainer, state: TrainState,
                  seconds: dict, final: EpochMetrics, out: AtomicOutput | None = None) -> str:
    """Compute the results (top-k, ranking metrics, neighbours, diagnostics), write
    every table and file to a staging directory and swap it in atomically (into
    ``out`` when the caller opened it already)."""
    if out is None:
        with AtomicOutput(spark, cfg.output, job="pmf-spark") as own:
            return write_outputs(spark, cfg, trainer, state, seconds, final, own)
    model = trainer.model(state)
    comp = trainer.companion
    res = compute_results(trainer.engine, model, cfg, trainer.ranking_model(state),
                          trainer.strategy.predicts_ratings,
                          ranked_by=comp.name if comp else trainer.strategy.name)
    catalog = (CatalogTables(spark, cfg.output_table_prefix)
               if cfg.output_table_prefix else None)
    try:
        return _write_all(spark, cfg, trainer, state, seconds, final, res, out, catalog)
    except BaseException:
        if catalog is not None:
            catalog.abort()
        raise
    finally:
        res.release()


def _write_all(spark, cfg, trainer, state, seconds, final, res: RunResults, out,
               catalog=None) -> str:
    data, model = trainer.data, res.model
    w = RunWriter(spark, cfg, data, out)
    w.factors(model)
    if res.ranker is not None:
        w.factors(res.ranker, prefix="ranking_")
    w.splits()
    if res.ranked is not None:
        w.recommendations(res.ranked.lists, res.n_recs)
    if res.neighbors is not None:
        w.neighbors(res.neighbors)
    if ITEM_USERS_TABLE in res.user_tables:
        w.item_users(res.user_tables[ITEM_USERS_TABLE])
    if USER_NEIGHBORS_TABLE in res.user_tables:
        w.user_neighbors(res.user_tables[USER_NEIGHBORS_TABLE])
    seconds = {**seconds, **res.seconds}
    final_d = final.to_dict()
    w.json(METRICS_JSON, {"epochs": [m.to_dict() for m in state.history], "final": final_d,
                          **({"ranking": res.ranking} if res.ranking else {})})
    w.text(METRICS_CSV, history_csv(state.history))
    comp = trainer.params.companion()
    meta = model_meta(cfg, trainer.params, data, rank=int(model.U.shape[1]),
                      ranking_model=comp.to_dict() if comp else None,
                      epochs_run=state.epoch, final=final_d,
                      samples=trainer.strategy.kept_samples(state),
                      blocks=trainer.engine.blocks,
                      baseline_rmse=res.diagnostics["baseline_rmse"] if res.diagnostics else None,
                      ranking=res.ranking, seconds=seconds)
    if res.note:
        meta["ranking_note"] = res.note
    w.json(META, meta)
    if res.diagnostics is not None and res.bins is not None:
        from pmf_spark.outputs.report import figures, render_html

        rates = trainer.strategy.predicts_ratings
        figs = figures(state.history, res.diagnostics, res.bins, trainer.counts["user"], rates)
        w.text("report.html", render_html(meta, figs, res.ranking, rates))
    return w.commit(catalog)


def _reading_line(cfg: JobConfig) -> str:
    if cfg.ratings_table is not None:
        return f"reading and validating table {cfg.ratings_table} (one pass) ..."
    if cfg.ratings is None:
        return (f"generating the built-in synthetic data {cfg.synthetic!r} (no --ratings "
                f"given) ...")
    return f"reading and validating {cfg.ratings} (one pass over the file) ..."


def _preparing_line(cfg: JobConfig, params: PMFParams) -> str:
    split = split_phrase(cfg)
    if params.fit.early_stopping:
        split += f", {cfg.validation_fraction:.0%} of training held out for validation"
    return f"de-duplicating, splitting ({split}) and indexing the ratings ..."


def model_label(params: PMFParams) -> str:
    """The models in a few words, for the log ("pmf rank 30 and ...")."""
    comp = params.companion()
    beside = f" and the {comp.fit.model} ranking model beside it" if comp else ""
    return f"{params.fit.model} rank {params.model.rank}{beside}"


def _checkpointing(spark, cfg: JobConfig, params: PMFParams, data: PreparedData,
                   total_epochs: int):
    """(state to resume from or None, after-epoch hook or None)."""
    if not cfg.checkpoint_dir:
        return None, None
    ck = Checkpointer(spark, cfg.checkpoint_dir, cfg.checkpoint_every,
                      fingerprint(params, cfg, data))
    state = None
    if cfg.resume:
        state = ck.load_latest()
        if state is None:
            log.info("no checkpoint in %s yet: starting from the beginning", cfg.checkpoint_dir)
        else:
            check_resumable(ck, state, total_epochs)

    def after_epoch(st):
        if st.epoch % cfg.checkpoint_every == 0:
            ck.save(st)
    return state, after_epoch


def _prepared(spark: SparkSession, cfg: JobConfig, params: PMFParams) -> PreparedData:
    train, test = load_inputs(spark, cfg)
    log.info("%s", _preparing_line(cfg, params))
    data = prepare(train, test, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed,
                   on_duplicate=cfg.on_duplicate, split=cfg.split, leave_last=cfg.leave_last,
                   validation_fraction=cfg.validation_fraction
                   if params.fit.early_stopping else 0.0)
    rates = REGISTRY[params.fit.model].predicts_ratings
    if rates:
        log.info("%d users x %d items; %d training and %d test ratings; mean %.3f, std %.3f, "
                 "range [%g, %g]", data.n_users, data.n_items, data.n_train, data.n_test,
                 data.mu, data.sigma, data.rating_lo, data.rating_hi)
    else:       # events: their values are confidences, not ratings with a mean and a scale
        log.info("%d users x %d items; %d training and %d test pairs (implicit feedback)",
                 data.n_users, data.n_items, data.n_train, data.n_test)
    if data.cold_users or data.cold_items:
        log.info("%d user(s) and %d item(s) have no training %s: kept at the prior mean, %s",
                 data.cold_users, data.cold_items, "ratings" if rates else "events",
                 ("predicted from the mean plus the known side's bias" if params.model.biases
                  else "predicted as the training mean") if rates else "their scores are 0")
    return data


def run_training(spark: SparkSession, cfg: JobConfig, params: PMFParams,
                 callback=None) -> TrainResult:
    """The whole job: input -> prepared data -> training -> outputs under ``cfg.output``.
    Everything that can be checked is checked before training (:mod:`pmf_spark.train.preflight`)."""
    with open_output(spark, cfg, "pmf-spark train") as out:
        return _run(spark, cfg, params, callback, out)


def _run(spark: SparkSession, cfg: JobConfig, params: PMFParams, callback,
         out: AtomicOutput) -> TrainResult:
    t0 = time.perf_counter()
    if cfg.output_table_prefix:
        CatalogTables(spark, cfg.output_table_prefix).check(cfg.ratings_table)
    if cfg.warm_start:
        previous_meta(spark, cfg.warm_start, params.model.rank)
    log.info("%s", _reading_line(cfg))
    data = _prepared(spark, cfg, params)
    params = blocks_cap(params, data, spark.sparkContext.defaultParallelism)
    check_driver_memory(spark, data, params)
    check_prepared(spark, out, cfg, data, params)
    t_prep = time.perf_counter()
    compile_s = prepare_kernels(params.engine.kernel, say=log.info)
    if compile_s > 0.5:
        log.info("row kernels ready in %.1fs", compile_s)
    trainer = Trainer(spark, data, params)
    log.info("packing the training ratings into blocks for %s ...", model_label(params))
    trainer.setup()
    check_worker_memory(spark, trainer.counts, params, trainer.engine.blocks)
    log_epoch = epoch_logger(trainer.total_epochs, trainer.strategy.predicts_ratings,
                             one_off=lambda: getattr(trainer.engine, "compile_seconds", 0.0))
    log.info("packed the ratings into %d block(s) per side in %.1fs", trainer.engine.blocks,
             trainer.engine.setup_seconds)

    def on_epoch(m):
        log_epoch(m)
        interrupt.check()       # Ctrl-C between Spark jobs stops at the epoch's end
        return callback(m) if callback is not None else None

    trainer.callback = on_epoch
    state, after_epoch = _checkpointing(spark, cfg, params, data, trainer.total_epochs)
    if state is None and cfg.warm_start:
        state = warm_start_state(spark, cfg.warm_start, trainer)
    state = trainer.fit(state, after_epoch=after_epoch)
    final = trainer.final_metrics(state)
    if trainer.strategy.reports_averaged_model(state):
        log.info("%s: averaged %d sample(s): train rmse %.4f  test rmse %.4f mae %.4f",
                 params.fit.model, trainer.strategy.kept_samples(state), final.train_rmse,
                 final.test_rmse, final.test_mae)
    t_fit = time.perf_counter()
    seconds = {"prepare": t_prep - t0, "setup": trainer.engine.setup_seconds,
               "train": t_fit - t_prep - trainer.engine.setup_seconds,
               "per_epoch": [m.seconds for m in state.history]}
    interrupt.check()
    path = write_outputs(spark, cfg, trainer, state, seconds, final, out)
    if trainer.strategy.predicts_ratings:
        log.info("wrote %s (test rmse %.4f, %d epochs, %.1fs in all)", path, final.test_rmse,
                 state.epoch, time.perf_counter() - t0)
    else:
        log.info("wrote %s (%d epochs, %.1fs in all); %s scores are preferences, not "
                 "ratings, so it is judged by the ranking metrics (no RMSE)", path,
                 state.epoch, time.perf_counter() - t0, params.fit.model)
    return TrainResult(output=path, model=trainer.model(state), history=state.history,
                       data=data, trainer=trainer, state=state,
                       seconds=time.perf_counter() - t0, final=final)
