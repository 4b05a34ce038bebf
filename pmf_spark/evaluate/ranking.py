"""Ranking metrics of top-k lists against held-out ratings, computed where the lists are
made: in the block function that scores a user block (whose packed chunks carry each
user's test ratings), so a run's lists and all their metrics cost one Spark job.

For a user with R relevant test items (rating >= the relevance threshold) and list
hits at ranks r_1 < r_2 < ... <= k:

- precision@k = hits / k; recall@k = hits / R; hit rate@k = [hits > 0];
- NDCG@k = sum 1/log2(r + 1) / sum_{j <= min(R, k)} 1/log2(j + 1);
- MAP@k = sum_n (n / r_n) / min(R, k); MRR@k = 1 / r_1;

each averaged over the users with a relevant test rating (and within light, medium and
heavy users by training activity); over every list: catalogue coverage@k (distinct
recommended items / candidate items) and novelty@k (mean self-information
-log2(users who rated the item / users) of the recommended items).

Pure numpy; :class:`EvalSpec` travels to the workers, :func:`list_stats` runs there,
:func:`summarise` combines the collected stats on the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
BUCKETS = ("all", "light", "medium", "heavy")


@dataclass(frozen=True)
class EvalSpec:
    """What the evaluation needs in a worker.

    Attributes:
        ks: the cut-offs (ascending); lists are made at least ``max(ks)`` long.
        threshold: a test rating at or above this is relevant.
        activity_edges: the two training counts separating light | medium | heavy users.
        info: float64 (n_items,) each item's self-information (0 for untrained items).
    """

    ks: tuple[int, ...]
    threshold: float
    activity_edges: tuple[float, float]
    info: np.ndarray


def empty_stats(spec: EvalSpec, n_items: int) -> dict[str, np.ndarray]:
    nk = len(spec.ks)
    return {"sums": np.zeros((nk, len(METRICS), len(BUCKETS))),
            "users": np.zeros(len(BUCKETS)), "novelty": np.zeros(nk), "pairs": np.zeros(nk),
            "covered": np.zeros((nk, n_items), bool)}


def _idcg(n_rel: np.ndarray, k: int) -> np.ndarray:
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return table[np.minimum(n_rel, k)]


def list_stats(stats: dict, spec: EvalSpec, rows: np.ndarray, ranks: np.ndarray,
               items: np.ndarray, rel_rows: np.ndarray, rel_items: np.ndarray,
               activity: np.ndarray) -> None:
    """Add one batch of lists to ``stats``.

    Args:
        rows, ranks, items: int (m,) the lists, sorted by row then rank (as
            :func:`pmf_spark.kernels.rows.top_k` returns them); row = position in the batch.
        rel_rows, rel_items: int (h,) the batch's relevant (row, item) test pairs.
        activity: int (n_batch,) each row's training count (for the buckets).
    """
    n_batch = activity.size
    n_items = stats["covered"].shape[1]
    n_rel = np.bincount(rel_rows, minlength=n_batch)
    evaluated = n_rel > 0
    bucket = 1 + np.digitize(activity, spec.activity_edges)
    is_rel = np.isin(rows.astype(np.int64) * n_items + items,
                     rel_rows.astype(np.int64) * n_items + rel_items)
    # the n-th hit of its row, in rank order: hits so far minus hits before the row
    hits_so_far = np.cumsum(is_rel)
    first = np.searchsorted(rows, np.arange(n_batch))
    before = np.concatenate([[0], hits_so_far])[first]
    nth = hits_so_far - before[rows]
    for b in range(len(BUCKETS)):
        sel = evaluated if b == 0 else evaluated & (bucket == b)
        stats["users"][b] += sel.sum()
    for j, k in enumerate(spec.ks):
        top = ranks <= k
        stats["novelty"][j] += spec.info[items[top]].sum()
        stats["pairs"][j] += top.sum()
        stats["covered"][j, items[top]] = True
        h = top & is_rel
        hits = np.bincount(rows[h], minlength=n_batch)
        dcg = np.bincount(rows[h], weights=1.0 / np.log2(ranks[h] + 1.0), minlength=n_batch)
        ap = np.bincount(rows[h], weights=nth[h] / ranks[h], minlength=n_batch)
        rr = np.zeros(n_batch)
        first_hit = h & (nth == 1)
        rr[rows[first_hit]] = 1.0 / ranks[first_hit]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_user = np.stack([hits / k, hits / n_rel, dcg / _idcg(n_rel, k),
                                 ap / np.minimum(n_rel, k), (hits > 0) * 1.0, rr])
        for b in range(len(BUCKETS)):
            sel = evaluated if b == 0 else evaluated & (bucket == b)
            stats["sums"][j, :, b] += per_user[:, sel].sum(axis=1)


def merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if value.dtype == bool:
            into[key] |= value
        else:
            into[key] += value


def summarise(stats: dict, spec: EvalSpec, n_catalogue: int) -> dict:
    """Means per k (and per activity bucket) from merged stats; the job's metrics.json
    ``ranking`` entry for one list."""
    out: dict = {"relevance_threshold": spec.threshold, "users": int(stats["users"][0]),
                 "at": {}}
    for j, k in enumerate(spec.ks):
        at: dict = {}
        for m, name in enumerate(METRICS):
            at[name] = float(stats["sums"][j, m, 0] / max(1.0, stats["users"][0]))
        at["coverage"] = float(stats["covered"][j].sum() / max(1, n_catalogue))
        at["novelty"] = float(stats["novelty"][j] / max(1.0, stats["pairs"][j]))
        at["by_activity"] = {
            name: {"users": int(stats["users"][b]),
                   **{m: float(stats["sums"][j, METRICS.index(m), b]
                               / max(1.0, stats["users"][b])) for m in ("precision", "ndcg")}}
            for b, name in enumerate(BUCKETS) if b > 0}
        out["at"][str(k)] = at
    return out


def self_information(item_counts: np.ndarray, n_users: int) -> np.ndarray:
    """-log2(share of users who rated each item); 0 for items without training ratings."""
    with np.errstate(divide="ignore"):
        info = -np.log2(np.maximum(item_counts, 0) / max(1, n_users))
    return np.where(item_counts > 0, info, 0.0)


def activity_edges(user_counts: np.ndarray) -> tuple[float, float]:
    """Training counts at the terciles of the trained users: light < e1 <= medium < e2
    <= heavy."""
    c = user_counts[user_counts > 0]
    if c.size == 0:
        return (math.inf, math.inf)
    lo, hi = np.quantile(c, [1 / 3, 2 / 3])
    return (float(lo), float(max(hi, lo + 1)))
