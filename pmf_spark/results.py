"""What a run computes after training, in one place: every user's top-k list and the
popularity baseline's, their ranking metrics on the test split, item neighbours and
the report's diagnostics. :mod:`pmf_spark.outputs` writes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .evaluate import diagnostics, ranking_metrics, rating_bins, relevance_threshold
from .models.base import FactorModel
from .params import JobConfig
from .recommend import (
    TopK,
    item_neighbors,
    item_tiebreak,
    listed_items,
    persisted_lists,
    user_tables,
)
from .sparkutil import describe
from .topk import candidate_items

log = logging.getLogger("pmf_spark")


@dataclass
class RunResults:
    """``lists``: persisted (u, rank, i, predicted_rating, score, cold_start) frames of
    the model ("model") and the baseline ("popular"); ``ranking``: their metrics;
    ``neighbors``: (i, rank, j, similarity) or None; ``diagnostics``: the report's
    aggregates or None; ``seconds``: what each step took."""

    model: FactorModel
    lists: dict[str, DataFrame] = field(default_factory=dict)
    ranking: dict | None = None
    neighbors: DataFrame | None = None
    diagnostics: dict | None = None
    bins: np.ndarray | None = None
    #: item_users / user_neighbors frames (dense indices), when asked for
    user_tables: dict[str, DataFrame] = field(default_factory=dict)
    n_recs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def release(self) -> None:
        for df in self.lists.values():
            df.unpersist()
        self.lists = {}


def topk_settings(engine, cfg: JobConfig, tiebreak: np.ndarray) -> TopK:
    """k, the candidate items (after --min-item-ratings, --exclude-items and the
    --candidates allow-list), the tie-break and popularity of every item."""
    counts = engine.counts["item"]
    excluded = listed_items(engine, cfg.exclude_items, "exclude-items")
    allowed = listed_items(engine, cfg.candidates, "candidates")
    return TopK(k=cfg.top_k, candidates=candidate_items(counts, cfg.min_item_ratings, excluded,
                                                        allowed),
                tiebreak=tiebreak, popularity=counts)


def _log_ranking(ranking: dict, k: int, threshold: float) -> None:
    for name, label in (("model", "PMF"), ("popular", "most popular")):
        r = ranking[name]
        log.info("%-12s @%d (relevant >= %g, %d users): precision %.4f recall %.4f ndcg %.4f "
                 "map %.4f hit rate %.4f coverage %.4f", label, k, threshold,
                 r["users"], r["precision"], r["recall"], r["ndcg"], r["map"], r["hit_rate"],
                 r["coverage"])


def rank_lists(engine, model: FactorModel, cfg: JobConfig, res: RunResults,
               tiebreak: np.ndarray) -> None:
    """Every user's lists and their ranking metrics next to the baseline's."""
    topk = topk_settings(engine, cfg, tiebreak)
    res.lists, res.n_recs, res.seconds["top_k"] = persisted_lists(engine, model, topk,
                                                                  cfg.cold_start)
    data = engine.data
    test = data.ratings.where(F.col("is_test")).select("u", "i", "rating")
    describe(engine.spark, "ranking metrics")
    threshold = relevance_threshold(cfg.relevance_threshold, data.rating_lo, data.rating_hi)
    res.ranking = {name: ranking_metrics(df, test, k=topk.k, threshold=threshold,
                                         n_catalogue=int(topk.candidates.sum()))
                   for name, df in res.lists.items()}
    describe(engine.spark, None)
    _log_ranking(res.ranking, topk.k, threshold)


def compute_results(engine, model: FactorModel, cfg: JobConfig) -> RunResults:
    """Everything the outputs need beyond the factors (see :class:`RunResults`)."""
    res = RunResults(model=model)
    try:
        tiebreak = np.zeros(0, np.int64)
        if cfg.top_k > 0 or cfg.similar_items > 0:
            tiebreak = item_tiebreak(engine.data.items, engine.data.n_items)
        if cfg.top_k > 0:
            rank_lists(engine, model, cfg, res, tiebreak)
        if cfg.similar_items > 0:
            res.neighbors = item_neighbors(engine, model, k=cfg.similar_items,
                                           tiebreak=tiebreak)
        res.user_tables = user_tables(engine, model, cfg)
        if cfg.report and engine.data.n_test > 0:
            res.bins = rating_bins(engine.data.rating_lo, engine.data.rating_hi)
            res.diagnostics = diagnostics(engine, model, res.bins)
    except BaseException:
        res.release()
        raise
    return res
