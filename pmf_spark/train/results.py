"""What a run computes after training, in one place: every user's top-k list and the
popularity baseline's, their ranking metrics on the test split, item neighbours and
the report's diagnostics. :mod:`pmf_spark.outputs.tables` writes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame

from pmf_spark.config.params import JobConfig
from pmf_spark.evaluate.metrics import diagnostics, rating_bins, relevance_threshold
from pmf_spark.evaluate.ranking import EvalSpec, activity_edges, self_information, summarise
from pmf_spark.models.base import FactorModel
from pmf_spark.recommend.spark import (
    RankedLists,
    TopK,
    item_neighbors,
    item_tiebreak,
    listed_items,
    ranked_lists,
    user_tables,
)
from pmf_spark.recommend.topk import candidate_items

log = logging.getLogger("pmf_spark")


@dataclass
class RunResults:
    """``ranked``: every user's list (u, rank, i, predicted_rating, score, cold_start;
    persisted) and the stats of it and of the popularity baseline; ``ranking``: their
    metrics (``model``, ``popular``); ``neighbors``: (i, rank, j, similarity) or None;
    ``diagnostics``: the report's aggregates or None; ``seconds``: what steps took."""

    model: FactorModel
    ranker: FactorModel | None = None
    rates: bool = True
    ranked: RankedLists | None = None
    ranking: dict | None = None
    neighbors: DataFrame | None = None
    diagnostics: dict | None = None
    bins: np.ndarray | None = None
    #: item_users / user_neighbors frames (dense indices), when asked for
    user_tables: dict[str, DataFrame] = field(default_factory=dict)
    #: the sentence on which model ordered the lists (for the report)
    note: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_recs(self) -> int:
        return self.ranked.n_rows if self.ranked is not None else 0

    def release(self) -> None:
        if self.ranked is not None:
            self.ranked.release()


def topk_settings(engine, cfg: JobConfig, tiebreak: np.ndarray) -> TopK:
    """k, the candidate items (after --min-item-ratings, --exclude-items and the
    --candidates allow-list), the tie-break and popularity of every item."""
    counts = engine.counts["item"]
    excluded = listed_items(engine, cfg.exclude_items, "exclude-items")
    allowed = listed_items(engine, cfg.candidates, "candidates")
    return TopK(k=cfg.top_k, candidates=candidate_items(counts, cfg.min_item_ratings, excluded,
                                                        allowed),
                tiebreak=tiebreak, popularity=counts)


WHY = ("a model fitted to observed ratings alone ranks rarely rated items with a few high "
       "ratings first, because ratings are missing not at random: people rate what they chose "
       "to see")


def _log_ranking(ranking: dict, k: int, ranked_by: str, rates: bool = True) -> None:
    """The lists' metrics in the log; ``rates`` False (implicit feedback, no ratings):
    every held-out pair is relevant, said so rather than as a rating threshold."""
    for name, label in (("model", ranked_by), ("popular", "most popular")):
        r = ranking[name]
        relevant = (f"relevant >= {r['relevance_threshold']:g}" if rates
                    else "every held-out pair relevant")
        log.info("%-12s @%d (%s, %d users): precision %.4f recall %.4f ndcg %.4f "
                 "map %.4f mrr %.4f hit rate %.4f coverage %.4f novelty %.2f", label[:12], k,
                 relevant, r["users"], r["precision"], r["recall"], r["ndcg"],
                 r["map"], r["mrr"], r["hit_rate"], r["coverage"], r["novelty"])
    for name, label in (("model", ranked_by), ("popular", "most popular")):
        act = ranking[name]["by_activity"]
        log.info("%-12s by user activity (precision / ndcg @%d): %s", label[:12], k,
                 "; ".join(f"{b} {a['precision']:.3f} / {a['ndcg']:.3f} ({a['users']} users)"
                           for b, a in act.items()))
    others = [kk for kk in ranking["model"]["at"] if int(kk) != k]
    if others:
        log.info("%-12s at other k: %s", ranked_by[:12], "; ".join(
            f"@{kk} precision {ranking['model']['at'][kk]['precision']:.4f} ndcg "
            f"{ranking['model']['at'][kk]['ndcg']:.4f}" for kk in others))


def ranking_entry(summary: dict, k: int) -> dict:
    """A list's metrics: those at the written k at the top level (precision, recall, ndcg,
    map, hit_rate, mrr, coverage, novelty, by_activity), every k under ``at``."""
    return {"k": k, "relevance_threshold": summary["relevance_threshold"],
            "users": summary["users"], **summary["at"][str(k)], "at": summary["at"]}


def eval_spec(engine, cfg: JobConfig, k: int) -> EvalSpec:
    data, counts = engine.data, engine.counts
    return EvalSpec(
        ks=tuple(sorted(set(cfg.eval_ks) | {k})),
        threshold=relevance_threshold(cfg.relevance_threshold, data.rating_lo, data.rating_hi,
                                      cfg.feedback == "implicit"),
        activity_edges=activity_edges(counts["user"]),
        info=self_information(counts["item"], int((counts["user"] > 0).sum())))


def rank_lists(engine, model: FactorModel, cfg: JobConfig, res: RunResults,
               tiebreak: np.ndarray, ranked_by: str) -> None:
    """Every user's lists and their ranking metrics next to the baseline's, in one job."""
    topk = topk_settings(engine, cfg, tiebreak)
    spec = eval_spec(engine, cfg, topk.k)
    res.ranked = ranked_lists(engine, model, topk, spec, cfg.cold_start, res.ranker, res.rates)
    res.seconds["top_k"] = res.ranked.seconds
    n_cat = int(topk.candidates.sum())
    res.ranking = {name: ranking_entry(summarise(st, spec, n_cat), topk.k)
                   for name, st in res.ranked.stats.items()}
    res.ranking["ranked_by"] = ranked_by
    _log_ranking(res.ranking, topk.k, ranked_by, res.rates)
    res.note = ranking_note(ranked_by, res.ranker is not None, res.rates)
    log.info("%s", res.note)
    res.ranking["verdict"] = verdict(res.ranking, topk.k, res.rates)
    (log.info if res.ranking["verdict"].startswith("the lists beat") else log.warning)(
        "%s", res.ranking["verdict"])


def verdict(ranking: dict, k: int, rates: bool = True) -> str:
    """Whether the lists beat the most-popular list on the test split, said plainly
    (precision and NDCG at ``k``): the ranking model is there to beat it, and on data
    where it does not, the log and the report say so. ``rates`` False (implicit
    feedback): the lists' model is fixed, so the advice is to tune it."""
    m, p = ranking["model"], ranking["popular"]
    if not m.get("users"):
        return ("the lists could not be compared with the most-popular list: no test user "
                "has a relevant held-out item")
    nums = (f"precision@{k} {m['precision']:.4f} vs {p['precision']:.4f}, ndcg@{k} "
            f"{m['ndcg']:.4f} vs {p['ndcg']:.4f}")
    if m["precision"] > p["precision"] and m["ndcg"] > p["ndcg"]:
        ratio = m["ndcg"] / p["ndcg"] if p["ndcg"] > 0 else float("inf")
        return f"the lists beat the most-popular list on the test split ({nums}; {ratio:.2f}x " \
               f"the ndcg)"
    if m["precision"] <= p["precision"] and m["ndcg"] <= p["ndcg"]:
        return (f"the lists did NOT beat the most-popular list on the test split ({nums}): "
                f"on this data recommending what is popular is as good; try jobs/tune.py"
                + (" or another --recommend-by" if rates else " (--metric ndcg@10)"))
    return (f"the lists and the most-popular list are mixed on the test split ({nums}): "
            f"neither is better on both")


def ranking_note(ranked_by: str, beside: bool, rates: bool = True) -> str:
    """The sentence the log and the report give: which model orders the lists, and why."""
    if not rates:     # the only model is a ranking model (implicit feedback)
        return (f"the lists are ranked by the {ranked_by} model, trained on implicit "
                f"feedback: it models which items a user interacts with, not ratings")
    if not beside:
        return (f"the lists are ranked by the rating model's predictions; {WHY} (a ranking "
                f"model beside it fixes that: --recommend-by missing-data)")
    return (f"the lists are ranked by the {ranked_by} model trained beside the rating model "
            f"(predicted_rating is the rating model's): {WHY}")


def compute_results(engine, model: FactorModel, cfg: JobConfig,
                    ranker: FactorModel | None = None, rates: bool = True,
                    ranked_by: str = "pmf") -> RunResults:
    """Everything the outputs need beyond the factors (see :class:`RunResults`):
    ``ranker`` orders the lists when given (the ranking model, named ``ranked_by``),
    ``rates``: ``model``'s predictions are ratings."""
    res = RunResults(model=model, ranker=ranker, rates=rates)
    try:
        tiebreak = np.zeros(0, np.int64)
        if cfg.top_k > 0 or cfg.similar_items > 0:
            tiebreak = item_tiebreak(engine.data.items, engine.data.n_items)
        if cfg.top_k > 0:
            rank_lists(engine, model, cfg, res, tiebreak, ranked_by)
        if cfg.similar_items > 0:
            res.neighbors = item_neighbors(engine, model, k=cfg.similar_items,
                                           tiebreak=tiebreak,
                                           min_item_ratings=cfg.min_item_ratings)
        res.user_tables = user_tables(engine, model, cfg, res.ranker, res.rates)
        if cfg.report and engine.data.n_test > 0:
            res.bins = rating_bins(engine.data.rating_lo, engine.data.rating_hi)
            res.diagnostics = diagnostics(engine, model, res.bins)
    except BaseException:
        res.release()
        raise
    return res
