"""The answers about one user or one item that both ways of reading a model give -- the
Spark-free :class:`pmf_spark.serve.LocalModel` (pyarrow) and
:class:`pmf_spark.serve.saved.SavedModel` (Spark): one user's top-k, a new user's
fold-in, many new users' fold-in, similar items and users, the users to target with an
item. Pure numpy on the model's arrays, in the order of the dense index, through the
kernels the training job's tables come from (:mod:`pmf_spark.recommend.topk`,
:mod:`pmf_spark.recommend.foldin`), so every engine gives the same lists.

When the run trained a ranking model beside the rating model (``model.json`` ->
``ranking_model``, tables ``ranking_*_factors``), it orders the lists and the rating
model fills ``predicted_rating``, as in the job's ``recommendations``.

Scores agree with the Spark path's to the last bits, not always in them (a batch of
rows and one row go through BLAS differently), so two items whose scores tie to ~1e-15
may come in the other order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pmf_spark.config.params import PMFParams, group_of
from pmf_spark.errors import InputDataError
from pmf_spark.kernels.rows import ReadOut
from pmf_spark.models import capabilities
from pmf_spark.outputs.modeldir import (
    ITEM_USERS_COLUMNS,
    RECS_COLUMNS,
    model_sections,
)
from pmf_spark.recommend.foldin import FoldIn, fold_in_user, folded_users
from pmf_spark.recommend.topk import (
    candidate_items,
    neighbor_rows,
    neighbour_support,
    recommend_rows,
    unit_rows,
    users_block,
)

#: a preference model's read-out: scores as they are
IDENTITY = ReadOut(mu=0.0, sigma=1.0, lo=-np.inf, hi=np.inf, clip=False)


def relevance_threshold(given: float | None, lo: float, hi: float,
                        implicit: bool = False) -> float:
    """The rating at or above which a test rating counts as relevant: ``given``, or
    three quarters of the way up the scale, or 0 with implicit feedback (as
    :mod:`pmf_spark.evaluate.metrics` computes it)."""
    if given is not None:
        return float(given)
    if implicit:
        return 0.0
    return float(lo + np.ceil(2 * 0.75 * (hi - lo)) / 2)


@dataclass
class Side:
    """One side of a model in dense-index order: ``ids`` (n,) original ids, ``F``
    float64 (n, rank) factors, ``bias`` (n,), ``counts`` int64 (n,) training ratings;
    ``tiebreak`` int64 (n,) each row's position in original-id order."""

    ids: np.ndarray
    F: np.ndarray
    bias: np.ndarray
    counts: np.ndarray

    def __post_init__(self):
        self.index = pd.Index(self.ids)
        order = np.argsort(self.ids, kind="stable")
        self.tiebreak = np.empty(self.ids.size, dtype=np.int64)
        self.tiebreak[order] = np.arange(self.ids.size)

    @classmethod
    def from_arrow(cls, factors: pa.Table, vocab: pa.Table, id_col: str, rank: int) -> Side:
        """From a factor table (id, features, bias[, n_ratings]) and its vocabulary (id,
        idx[, n_ratings]): rows placed at their dense index."""
        n = vocab.num_rows
        pos = pd.Index(vocab.column(id_col).to_numpy(zero_copy_only=False)).get_indexer(
            pd.Index(factors.column(id_col).to_numpy(zero_copy_only=False)))
        if (pos < 0).any() or factors.num_rows != n:
            raise InputDataError(f"{id_col}: the factor table and the vocabulary disagree")
        at = vocab.column("idx").to_numpy().astype(np.int64)[pos]
        ids = np.empty(n, dtype=np.int64 if pa.types.is_integer(vocab.column(id_col).type)
                       else object)
        ids[at] = factors.column(id_col).to_numpy(zero_copy_only=False)
        F = np.empty((n, rank))
        F[at] = factors.column("features").combine_chunks().flatten().to_numpy().reshape(
            n, rank)
        bias, counts = np.empty(n), np.zeros(n, dtype=np.int64)
        bias[at] = factors.column("bias").to_numpy()
        source = factors if "n_ratings" in factors.column_names else None
        if source is not None:
            counts[at] = source.column("n_ratings").to_numpy()
        return cls(ids=ids, F=F, bias=bias, counts=counts)

    def idx(self, ids) -> np.ndarray:
        """Dense indices of ``ids`` (-1 for ids the model does not know)."""
        return self.index.get_indexer(pd.Index(list(ids) if not isinstance(ids, np.ndarray)
                                               else ids))


class ListAnswers:
    """The model's settings, its item side (and the ranking model's), the hooks that
    read the tables and one user's top-k. The rest of the answers build on it
    (:class:`FoldInAnswers`, :class:`ModelAnswers`)."""

    #: the SparkSession a Spark-backed model reads through (None without Spark)
    spark_session: Any = None

    def __init__(self, meta: dict, path: str, items: Side, ranking_items: Side | None = None):
        self.meta, self.path = meta, path
        self.params = model_sections(meta)
        self.rank = int(meta["rank"])
        lo, hi = map(float, meta["rating_range"])
        self.lo, self.hi = lo, hi
        #: the standardisation of the data (what fold-in targets are z-scored with)
        self.data_readout = ReadOut(mu=float(meta["mu"]), sigma=float(meta["sigma"]), lo=lo,
                                    hi=hi)
        self.readout = ReadOut(mu=float(meta["mu"]), sigma=float(meta["sigma"]), lo=lo, hi=hi,
                               link=self.params["link"], clip=bool(self.params["clip"]))
        #: the model predicts ratings (implicit ALS scores preferences)
        self.rates = capabilities(self.params.get("model")).predicts_ratings
        if not self.rates:
            self.readout = IDENTITY
        self.id_type = meta["data"]["id_type"]
        self.items = items
        spec = meta.get("ranking_model")
        self.ranking_params = PMFParams.from_dict(spec) if spec and ranking_items else None
        #: (V, item_bias, read-out, rank) of the ranking model, or None
        self.ranker = None
        if self.ranking_params is not None and ranking_items is not None:
            rates = capabilities(self.ranking_params.fit.model).predicts_ratings
            ro = self.readout if rates else IDENTITY
            self.ranker = (ranking_items.F, ranking_items.bias, ro,
                           self.ranking_params.model.rank)
        job = meta.get("job", {})
        self.default_k = int(job.get("top_k") or 10)
        self.default_min_item_ratings = int(job.get("min_item_ratings", 1))
        self.default_threshold = relevance_threshold(job.get("relevance_threshold"), lo, hi,
                                                     job.get("feedback") == "implicit")

    # the item side under the names the Spark path has always used
    @property
    def item_ids(self) -> np.ndarray:
        return self.items.ids

    @property
    def V(self) -> np.ndarray:
        return self.items.F

    @property
    def item_bias(self) -> np.ndarray:
        return self.items.bias

    @property
    def item_counts(self) -> np.ndarray:
        return self.items.counts

    @property
    def tiebreak(self) -> np.ndarray:
        return self.items.tiebreak

    def item_idx(self, ids) -> np.ndarray:
        return self.items.idx(ids)

    # ---------------------------------------------------------------- hooks
    def user_row(self, user_id) -> tuple[np.ndarray, float, int] | None:
        """(features, bias, n_ratings) of a user, None when the model does not know them."""
        raise NotImplementedError

    def ranking_row(self, user_id) -> tuple[np.ndarray, float] | None:
        """(features, bias) of a user under the ranking model (only with a ranker)."""
        raise NotImplementedError

    def rated_items(self, user_id) -> np.ndarray:
        """The item ids the user rated in training (never recommended to them)."""
        raise NotImplementedError

    def user_side(self, ranking: bool = False) -> Side:
        """Every user's factors (the ranking model's with ``ranking``)."""
        raise NotImplementedError

    def raters(self, item_id) -> np.ndarray:
        """The user ids who rated the item in training."""
        raise NotImplementedError

    # ---------------------------------------------------------------- ids and rules
    def id_array(self, ids) -> np.ndarray:
        """Ids as a typed array: int64 for integer-id models, else object (str)."""
        return np.asarray(list(ids), dtype=np.int64 if self.id_type == "long" else object)

    def parse_id(self, raw, what: str = "user"):
        """An id as the model stores it: an integer for integer-id models."""
        if self.id_type != "long":
            return str(raw)
        try:
            return int(str(raw).strip())
        except ValueError:
            raise InputDataError(f"{what} id {raw!r}: this model's ids are integers") from None

    def candidates(self, min_item_ratings: int | None = None, exclude=None,
                   allowed=None) -> np.ndarray:
        """bool (n_items,): the items that may be recommended -- trained, with at least
        ``min_item_ratings`` training ratings (default: the model's setting), in the
        ``allowed`` ids when given, and not in the ``exclude`` ids."""
        min_r = self.default_min_item_ratings if min_item_ratings is None else min_item_ratings

        def known(ids):
            if ids is None:
                return None
            idx = self.item_idx([self.parse_id(x, "item") for x in ids])
            return idx[idx >= 0].astype(np.int64)

        return candidate_items(self.item_counts, min_r, known(exclude), known(allowed))

    # ---------------------------------------------------------------- top-k
    def recommend_one(self, factors, bias, rated_items, k: int, candidates: np.ndarray,
                      ranking=None) -> pd.DataFrame:
        """Top-k for one user given as (factors, bias, rated item ids); a user without
        factors (None) gets the most popular items. With a ranking model, ``ranking`` is
        the user's (factors, bias) under it and orders the list."""
        rated = self.item_idx(rated_items)
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        cold = factors is None
        U = np.zeros((1, self.rank)) if cold else np.asarray(factors, dtype=np.float64)[None, :]
        ub = np.array([0.0 if cold else float(bias)])
        indptr = np.array([0, rated.size])
        if not cold and self.ranker is not None and ranking is not None:
            rV, rib, rro, _ = self.ranker
            recs = recommend_rows(np.asarray(ranking[0], np.float64)[None, :],
                                  np.array([float(ranking[1])]), indptr, rated, rV, rib,
                                  candidates, self.tiebreak, k, rro,
                                  rating=(U, ub, self.V, self.item_bias, self.readout)
                                  if self.rates else None)
        else:
            recs = recommend_rows(U, ub, indptr, rated, self.V, self.item_bias, candidates,
                                  self.tiebreak, k, self.readout,
                                  popularity=self.item_counts if cold else None,
                                  rating="self" if self.rates else None)
        recs["item_id"] = self.item_ids[recs["i"].to_numpy()]
        recs["cold_start"] = cold
        return recs

    def recommend(self, user_id, k: int | None = None, candidates: np.ndarray | None = None,
                  **rules) -> pd.DataFrame:
        """One user's top-k (columns RECS_COLUMNS), never an item they rated in training;
        a user the model does not know, or knows without training ratings, gets the
        most popular items (``cold_start``). ``candidates``: a mask from
        :meth:`candidates`, or its keywords (``allowed=``, ``exclude=``,
        ``min_item_ratings=``)."""
        uid = self.parse_id(user_id)
        cand = self.candidates(**rules) if candidates is None else candidates
        row = self.user_row(uid)
        factors, bias = (row[0], row[1]) if row is not None and row[2] > 0 else (None, 0.0)
        ranking = self.ranking_row(uid) if self.ranker is not None and factors is not None \
            else None
        recs = self.recommend_one(factors, bias, self.rated_items(uid), k or self.default_k,
                                  cand, ranking)
        recs.insert(0, "user_id", uid)
        return recs[RECS_COLUMNS].reset_index(drop=True)


class FoldInAnswers(ListAnswers):
    """New users: their factors from their ratings, by the model's own user half-step,
    and their lists."""

    def fold_in_spec(self) -> FoldIn:
        """How this model folds in new users: its own user half-step."""
        params = PMFParams.of(**{k: v for k, v in self.params.items()
                                 if group_of(k) is not None})
        return FoldIn(params, self.V, self.item_bias, self.item_counts, self.readout)

    def ranking_fold_in_spec(self) -> FoldIn | None:
        """How the ranking model folds in new users, or None without one."""
        if self.ranker is None or self.ranking_params is None:
            return None
        rV, rib, _, _ = self.ranker
        return FoldIn(self.ranking_params, rV, rib, self.item_counts, self.data_readout)

    def fold_in(self, items, ratings):
        """Factors and bias of a new user from (item id, rating) pairs (unknown items are
        ignored), by the model's own user half-step for one row. Returns (factors, bias,
        n_used); factors is None when no item is known."""
        idx = self.item_idx(items)
        keep = idx >= 0
        if not keep.any():
            return None, 0.0, 0
        spec = self.fold_in_spec()
        f, b = fold_in_user(spec.params, spec.V, spec.item_bias, spec.item_counts,
                            spec.readout, idx[keep], np.asarray(ratings, np.float64)[keep])
        return f, b, int(keep.sum())

    def fold_in_ranking(self, items, ratings):
        """(factors, bias) of a new user under the ranking model, or None."""
        spec = self.ranking_fold_in_spec()
        idx = self.item_idx(items)
        keep = idx >= 0
        if spec is None or not keep.any():
            return None
        return fold_in_user(spec.params, spec.V, spec.item_bias, spec.item_counts,
                            spec.readout, idx[keep], np.asarray(ratings, np.float64)[keep])

    def typical_user_ratings(self) -> float:
        """The median count of training ratings of the trained users."""
        counts = self.user_side().counts
        counts = counts[counts > 0]
        return float(np.median(counts)) if counts.size else 0.0

    def fold_in_users(self, ratings: pd.DataFrame) -> pd.DataFrame:
        """New users from a frame (user_id, item_id, rating): one row per user with
        (user_id, features, bias, n_ratings = the ratings of known items used, rated =
        the dense indices of those items[, rfeatures, rbias under the ranking model]); a
        user none of whose items the model knows has no features (None), n_ratings 0.
        The Spark path runs the same function per block."""
        return folded_users(ratings["user_id"].to_numpy(),
                            self.item_idx(ratings["item_id"].to_numpy()),
                            ratings["rating"].to_numpy(), self.fold_in_spec(),
                            self.ranking_fold_in_spec())

    def lists_shared(self, candidates: np.ndarray) -> tuple:
        """What :func:`pmf_spark.recommend.topk.users_block` is given for this model."""
        return (self.V, self.item_bias, candidates, self.tiebreak, self.item_counts,
                self.readout, self.rates, self.ranker)

    def recommend_folded(self, folded: pd.DataFrame, k: int,
                         candidates: np.ndarray) -> pd.DataFrame:
        """Top-k (RECS_COLUMNS) for the rows of :meth:`fold_in_users` (or any frame of
        user_id, features, bias, n_ratings, rated[, rfeatures, rbias]): the numpy the
        Spark blocks run."""
        recs = users_block(None, folded, shared=self.lists_shared(candidates), k=k,
                           rank=self.rank)
        recs["item_id"] = self.item_ids[recs["i"].to_numpy(dtype=np.int64)]
        return recs.sort_values(["user_id", "rank"], kind="stable")[RECS_COLUMNS] \
            .reset_index(drop=True)


class ModelAnswers(FoldInAnswers):
    """Every answer computed from a model: lists, fold-in, neighbours and the users to
    target with an item. Subclasses read the tables through the hooks:
    :meth:`user_row`, :meth:`ranking_row`, :meth:`rated_items`, :meth:`user_side`,
    :meth:`raters`."""

    def _neighbours(self, side: Side, at: int, k: int, at_least: int = 1) -> pd.DataFrame:
        Mn, valid = unit_rows(side.F, side.counts, neighbour_support(side.counts, at_least))
        return neighbor_rows(Mn, valid, [at], side.tiebreak, k)

    def neighbour_support(self, min_item_ratings: int | None = None) -> int:
        """The training ratings an item needs to be listed as a neighbour
        (:func:`pmf_spark.recommend.topk.neighbour_support`, never below ``min_item_ratings``,
        by default the model's setting)."""
        least = self.default_min_item_ratings if min_item_ratings is None else min_item_ratings
        return neighbour_support(self.item_counts, least)

    def similar_items(self, item_id, k: int = 10,
                      min_item_ratings: int | None = None) -> pd.DataFrame:
        """The k items most cosine-similar to ``item_id`` by their factors, among the
        trained items with :meth:`neighbour_support` training ratings: (item_id, rank,
        neighbor_id, similarity), as ``item_neighbors/``."""
        iid = self.parse_id(item_id, "item")
        at = self.item_idx([iid])[0]
        if at < 0:
            raise InputDataError(f"item {iid!r} is not in the model")
        nb = self._neighbours(self.items, at, k, self.neighbour_support(min_item_ratings))
        return pd.DataFrame({"item_id": iid, "rank": nb["rank"].to_numpy(),
                             "neighbor_id": self.item_ids[nb["j"].to_numpy()],
                             "similarity": nb["similarity"].to_numpy()})

    def similar_users(self, user_id, k: int = 10) -> pd.DataFrame:
        """The k users most cosine-similar to ``user_id`` (trained users only):
        (user_id, rank, neighbor_id, similarity), as ``user_neighbors/``."""
        uid = self.parse_id(user_id)
        users = self.user_side()
        at = users.idx([uid])[0]
        if at < 0:
            raise InputDataError(f"user {uid!r} is not in the model")
        nb = self._neighbours(users, at, k)
        return pd.DataFrame({"user_id": uid, "rank": nb["rank"].to_numpy(),
                             "neighbor_id": users.ids[nb["j"].to_numpy()],
                             "similarity": nb["similarity"].to_numpy()})

    def users_for_item(self, item_id, k: int = 10) -> pd.DataFrame:
        """The k users who come first for ``item_id`` by the model that orders the lists,
        never one who rated it in training (users with training ratings only):
        ITEM_USERS_COLUMNS, as ``item_users/``."""
        iid = self.parse_id(item_id, "item")
        at = self.item_idx([iid])[0]
        if at < 0 or self.item_counts[at] == 0:
            why = "is not in the model" if at < 0 else "has no training ratings"
            raise InputDataError(f"item {iid!r} {why}")
        users = self.user_side()
        rated = users.idx(self.raters(iid))
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        one = slice(at, at + 1)
        rating = (self.V[one], self.item_bias[one], users.F, users.bias, self.readout)
        if self.ranker is None:
            recs = recommend_rows(self.V[one], self.item_bias[one], np.array([0, rated.size]),
                                  rated, users.F, users.bias, users.counts > 0, users.tiebreak,
                                  k, self.readout, rating="self" if self.rates else None)
        else:
            rV, rib, rro, _ = self.ranker
            rusers = self.user_side(ranking=True)
            recs = recommend_rows(rV[one], rib[one], np.array([0, rated.size]), rated,
                                  rusers.F, rusers.bias, users.counts > 0, users.tiebreak, k,
                                  rro, rating=rating if self.rates else None)
        return pd.DataFrame({"item_id": iid, "rank": recs["rank"].to_numpy(),
                             "user_id": users.ids[recs["i"].to_numpy()],
                             "predicted_rating": recs["predicted_rating"].to_numpy(),
                             "score": recs["score"].to_numpy()})[ITEM_USERS_COLUMNS]
