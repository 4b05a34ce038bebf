"""Hyperparameter search on Spark, on validation data carved from the training split.

The test split (the training job's, by its own --split) is removed before anything
else reads the ratings, so no trial, fold or statistic can see it. Validation is either
one held-out share of the training ratings or k folds (a seeded hash of (user, item)
picks each rating's fold). Every fold is indexed and packed once; the trials then share
that layout. Trials are a seeded random search (Bergstra & Bengio 2012); trial 0 is the
base configuration. Trials run in a thread pool when the cluster has room for more than
one training at a time.

The metric decides what is searched: ``rmse`` tunes the rating model (rank from a
list; λ_u, λ_v, λ_bias log-uniform; prior mode from a list); a ranking metric
(``ndcg@10``, ``precision@10``, ``recall@20``, ``map@10``, ``mrr@10``, ``hit_rate@10``)
tunes the ranking model that orders the lists (model from a list, rank, λ, and w_m or α
log-uniform), scored on its top-k lists against the validation ratings.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pmf_spark.config.params import PMFParams, RankingParams
from pmf_spark.errors import ConfigError
from pmf_spark.inputs.validate import CleanRatings
from pmf_spark.models import REGISTRY
from pmf_spark.prepare.ratings import dedupe, prepare
from pmf_spark.prepare.splits import HASH_BUCKETS as _HASH_BUCKETS
from pmf_spark.prepare.splits import mark_test, split_column
from pmf_spark.train.loop import Trainer

log = logging.getLogger("pmf_spark")

_FOLD_SALT = 104729


RANKING_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")


def parse_metric(text: str) -> tuple[str, int | None]:
    """('rmse', None) or (a ranking metric, k) from 'rmse' / 'ndcg@10'."""
    if text == "rmse":
        return "rmse", None
    name, _, k = text.partition("@")
    if name not in RANKING_METRICS or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"metric: {text!r} is not rmse or one of "
                          f"{', '.join(m + '@K' for m in RANKING_METRICS)} (e.g. ndcg@10)")
    return name, int(k)


def higher_is_better(metric: str) -> bool:
    return metric != "rmse"


@dataclass(frozen=True)
class SearchSpace:
    """Where the random search looks."""

    ranks: tuple[int, ...] = (10, 20, 30, 50, 80)
    lambda_range: tuple[float, float] = (1.0, 100.0)
    lambda_bias_range: tuple[float, float] = (1.0, 100.0)
    priors: tuple[str, ...] = ("fixed",)
    #: every registered ranking model by default
    ranking_models: tuple[str, ...] = field(default_factory=lambda: _ranking_models())
    missing_weight_range: tuple[float, float] = (0.01, 0.5)
    alpha_range: tuple[float, float] = (0.5, 50.0)

    def __post_init__(self):
        if not self.ranks or min(self.ranks) < 1:
            raise ConfigError(f"ranks: need positive integers, got {self.ranks}")
        for name in ("lambda_range", "lambda_bias_range", "missing_weight_range",
                     "alpha_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ConfigError(f"{name}: need 0 < low <= high, got {lo}, {hi}")
        if self.missing_weight_range[1] >= 1:
            raise ConfigError("missing_weight_range: weights must be below 1")
        for p in self.priors:
            if p not in ("fixed", "spherical", "diagonal"):
                raise ConfigError(f"priors: {p!r} is not one of fixed, spherical, diagonal")
        for m in self.ranking_models:
            if m not in REGISTRY or not REGISTRY[m].ranks:
                raise ConfigError(f"ranking_models: {m!r} is not a ranking model")


def _ranking_models() -> tuple[str, ...]:
    return tuple(name for name, cls in REGISTRY.items() if cls.ranks)


def ranking_base(base: PMFParams) -> PMFParams:
    """The base configuration's ranking model as a model of its own: its companion, the
    model itself when it ranks, else the default ranking model."""
    comp = base.companion()
    if comp is not None:
        return comp
    if REGISTRY[base.fit.model].ranks:
        return base.replace(recommend_by="rating")
    return base.replace(model=RankingParams().recommend_by, recommend_by="rating")


def sample_trials(space: SearchSpace, base: PMFParams, n: int, seed: int,
                  metric: str = "rmse") -> list[PMFParams]:
    """Trial 0 is the base (its ranking model for a ranking metric); the others draw
    from ``space`` with a seeded RNG. Trials train one model each (no ranking model
    beside a rating model: only the model the metric judges)."""
    rng = np.random.default_rng(seed)

    def logu(lo, hi):
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    if metric == "rmse":
        first = base.replace(recommend_by="rating")
        trials = [first]
        while len(trials) < n:
            trials.append(first.replace(
                rank=int(rng.choice(space.ranks)),
                lambda_u=round(logu(*space.lambda_range), 4),
                lambda_v=round(logu(*space.lambda_range), 4),
                lambda_bias=round(logu(*space.lambda_bias_range), 4),
                priors=str(rng.choice(space.priors))))
        return trials
    first = ranking_base(base)
    trials = [first]
    while len(trials) < n:
        lam = round(logu(*space.lambda_range), 4)
        trials.append(first.replace(
            model=str(rng.choice(space.ranking_models)), rank=int(rng.choice(space.ranks)),
            lambda_u=lam, lambda_v=lam,
            missing_weight=round(logu(*space.missing_weight_range), 4),
            alpha=round(logu(*space.alpha_range), 4)))
    return trials


def best_params(base: PMFParams, best: PMFParams, metric: str) -> PMFParams:
    """The configuration to train with: the best trial's rating model with the base's
    ranking model (rmse), or the base's rating model with the best trial as its ranking
    model (a ranking metric)."""
    if metric == "rmse":
        return best.replace(**base.ranker.to_dict())
    f = best.fit
    return base.replace(recommend_by=f.model, ranking_rank=best.model.rank,
                        ranking_lambda=f.lambda_u, missing_weight=f.missing_weight,
                        missing_rating=f.missing_rating, alpha=f.alpha)


def describe_trial(params: PMFParams) -> str:
    """A trial's settings as a log line shows them: only what its model uses (no
    lambda_bias without biases, no alpha for a model without confidences)."""
    f = params.fit
    strategy = REGISTRY[f.model]
    parts = [f"{f.model} rank {params.model.rank:3d}", f"lambda_u {f.lambda_u:8.3f}",
             f"lambda_v {f.lambda_v:8.3f}"]
    if strategy.normalize_model(params.model).biases:
        parts.append(f"lambda_bias {f.lambda_bias:8.3f}")
    if f.priors != "fixed":
        parts.append(f"priors {f.priors}")
    parts += [f"{short} {getattr(f, name):.3g}" for name, short in strategy.own_params]
    return "  ".join(parts)


def spread(mean: float, sd: float, folds: int) -> str:
    """``mean +- sd`` over folds; one validation split has no spread to show."""
    return f"{mean:.4f} +- {sd:.4f}" if folds > 1 else f"{mean:.4f}"


def fold_holdouts(folds: int, seed: int, validation_fraction: float) -> list[F.Column]:
    """One boolean column per fold marking its validation ratings."""
    if folds == 1:
        return [split_column(seed + _FOLD_SALT, validation_fraction)]
    h = F.pmod(F.xxhash64(F.col("user"), F.col("item"), F.lit(int(seed + _FOLD_SALT))),
               F.lit(_HASH_BUCKETS))
    fold = F.pmod(h, F.lit(folds))
    return [fold == F.lit(f) for f in range(folds)]


@dataclass
class TrialResult:
    trial: int
    params: PMFParams
    fold_scores: list
    seconds: float
    metric: str = "rmse"

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def sd(self) -> float:
        return float(np.std(self.fold_scores, ddof=1)) if len(self.fold_scores) > 1 else 0.0

    def row(self) -> dict:
        m, f = self.params.model, self.params.fit
        return {"trial": self.trial, "model": f.model, "rank": m.rank, "lambda_u": f.lambda_u,
                "lambda_v": f.lambda_v, "lambda_bias": f.lambda_bias, "priors": f.priors,
                "reg_scaling": f.reg_scaling, "epochs": f.epochs,
                "missing_weight": f.missing_weight, "alpha": f.alpha, "metric": self.metric,
                f"val_{self.metric}": self.mean, f"val_{self.metric}_sd": self.sd,
                "val_score": self.mean,
                "fold_scores": [float(x) for x in self.fold_scores], "seconds": self.seconds}


def training_part(clean: CleanRatings, *, split: str, split_seed: int, test_fraction: float,
                  leave_last: int, on_duplicate: str) -> CleanRatings:
    """The training job's training ratings only: its test split, by the same --split,
    removed before anything else reads them."""
    tr, _ = dedupe(clean, on_duplicate, "ratings")
    marked = mark_test(tr, split, seed=split_seed, fraction=test_fraction, n_last=leave_last,
                       has_timestamp=clean.has_timestamp, path=clean.path)
    return dataclasses.replace(clean, df=marked.where(~F.col("is_test")).drop("is_test"))


def _score(trainer: Trainer, state, metric: str, k: int | None, topk) -> float:
    """The trial's validation score: RMSE, or a ranking metric of its top-k lists."""
    if k is None:
        return trainer.final_metrics(state).test_rmse
    from pmf_spark.evaluate.ranking import EvalSpec, activity_edges, self_information, summarise
    from pmf_spark.recommend.spark import ranked_lists

    e, data = trainer.engine, trainer.data
    spec = EvalSpec(ks=(k,), threshold=topk.threshold,
                    activity_edges=activity_edges(e.counts["user"]),
                    info=self_information(e.counts["item"], int((e.counts["user"] > 0).sum())))
    ranked = ranked_lists(e, trainer.model(state), topk.settings(k, e, data), spec, "popular",
                          None, trainer.strategy.predicts_ratings)
    try:
        return summarise(ranked.stats["model"], spec, 1)["at"][str(k)][metric]
    finally:
        ranked.release()


@dataclass
class _ListSettings:
    """What a ranking metric's lists need (built once per fold)."""

    threshold: float
    min_item_ratings: int
    tiebreak: np.ndarray | None = None

    def settings(self, k: int, engine, data):
        from pmf_spark.recommend.spark import TopK, item_tiebreak
        from pmf_spark.recommend.topk import candidate_items

        if self.tiebreak is None:
            self.tiebreak = item_tiebreak(data.items, data.n_items)
        counts = engine.counts["item"]
        return TopK(k=k, candidates=candidate_items(counts, self.min_item_ratings),
                    tiebreak=self.tiebreak, popularity=counts)


def run_search(spark: SparkSession, ratings: CleanRatings, trials: list[PMFParams], *,
               split_seed: int, on_duplicate: str, folds: int, validation_fraction: float,
               parallel: int, blocks: int, metric: str = "rmse",
               relevance_threshold: float | None = None,
               min_item_ratings: int = 1) -> list[TrialResult]:
    """Train every trial on every fold of ``ratings`` (training ratings only: see
    :func:`training_part`) and score it by ``metric``; returns results in trial order."""
    name, k = parse_metric(metric)
    results = [TrialResult(i, p, [], 0.0, metric) for i, p in enumerate(trials)]
    for f, holdout in enumerate(fold_holdouts(folds, split_seed, validation_fraction)):
        data = prepare(ratings, None, test_fraction=0.5, split_seed=split_seed,
                       on_duplicate=on_duplicate, holdout=holdout)
        log.info("fold %d/%d: %d training and %d validation ratings", f + 1, folds,
                 data.n_train, data.n_test)
        lists = _ListSettings(relevance_threshold_of(relevance_threshold, data),
                              min_item_ratings)
        base = Trainer(spark, data, trials[0].replace(blocks=blocks))
        base.setup()

        def run(i: int, base: Trainer = base, lists: _ListSettings = lists):
            t0 = time.perf_counter()
            trainer = base.with_params(trials[i])
            state = trainer.fit()
            return i, _score(trainer, state, name, k, lists), time.perf_counter() - t0

        try:
            with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
                for i, score, secs in pool.map(run, range(len(trials))):
                    r = results[i]
                    r.fold_scores.append(score)
                    r.seconds += secs
                    log.info("fold %d/%d trial %3d: %s  validation %s %.4f  (%.1fs)",
                             f + 1, folds, i, describe_trial(r.params), metric, score, secs)
        finally:
            base.release()
            data.release()
    return results


def relevance_threshold_of(given: float | None, data) -> float:
    from pmf_spark.evaluate.metrics import relevance_threshold

    return relevance_threshold(given, data.rating_lo, data.rating_hi)
