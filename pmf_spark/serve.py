"""Answers from a trained model without Spark: one user's top-k, a new user's fold-in,
similar items and users, and the users to target with an item, read from the model
directory with pyarrow and numpy only -- no JVM, no pyspark import -- so a question
about one user takes about a second, not the half minute a Spark session costs.

    from pmf_spark.serve import LocalModel
    model = LocalModel("out/ml100k")
    model.recommend(18, k=10)                    # (user_id, rank, item_id, ...)
    model.recommend(18, candidates=[1, 50, 181]) # only from an allow-list
    model.fold_in([50, 172, 181], [5, 5, 4])     # a new user's factors and bias
    model.similar_items(50, k=5)
    model.users_for_item(50, k=20)               # whom to show item 50 to
    model.similar_users(18, k=5)

The answers are the Spark path's (:class:`pmf_spark.saved.SavedModel`): both build
on :class:`ModelAnswers` below -- the same item arrays in the same order, the same
candidate rules and kernels (:mod:`pmf_spark.topk`) -- and differ only in how they
read the tables. One user's row and ratings are read with a filter on the sorted id
column, so Parquet's row-group statistics skip most of the files; the user side is
read whole only for questions about all users (users for an item, similar users).

Paths: a local directory, or a URI one of pyarrow's filesystems reads (``s3://``,
``gs://``, ``hdfs://`` with libhdfs).

Scores agree with the Spark path's to the last bits, not always in them (a batch of
rows and one row go through BLAS differently), so two items whose scores tie to
~1e-15 may come in the other order. (The module is a little over 400 lines: the
answers both engines share and their pyarrow reader belong together; the small input
and output files are :mod:`pmf_spark.localio`'s.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from .errors import InputDataError
from .kernels import ReadOut
from .topk import (
    candidate_items,
    fold_in_rows,
    folded_users,
    neighbor_rows,
    recommend_rows,
    unit_rows,
    users_block,
)

RECS_COLUMNS = ["user_id", "rank", "item_id", "predicted_rating", "score", "cold_start"]
ITEM_USERS_COLUMNS = ["item_id", "rank", "user_id", "predicted_rating", "score"]


def model_sections(meta: dict) -> dict:
    """The flat parameters of a model.json (format 2: model/fit/engine sections;
    format 1 kept every parameter under ``model``)."""
    flat = dict(meta.get("model", {}))
    for section in ("fit", "engine"):
        flat.update(meta.get(section, {}))
    return flat


def relevance_threshold(given: float | None, lo: float, hi: float) -> float:
    """The rating at or above which a test rating counts as relevant: ``given``, or
    three quarters of the way up the scale (as :mod:`pmf_spark.evaluate` computes it)."""
    if given is not None:
        return float(given)
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
        """From a factor table (id, features, bias, n_ratings) and its vocabulary (id,
        idx): rows placed at their dense index."""
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
        bias, counts = np.empty(n), np.empty(n, dtype=np.int64)
        bias[at] = factors.column("bias").to_numpy()
        counts[at] = factors.column("n_ratings").to_numpy()
        return cls(ids=ids, F=F, bias=bias, counts=counts)

    def idx(self, ids) -> np.ndarray:
        """Dense indices of ``ids`` (-1 for ids the model does not know)."""
        return self.index.get_indexer(pd.Index(list(ids) if not isinstance(ids, np.ndarray)
                                               else ids))


class ModelAnswers:
    """What both engines share: the model's settings, its item side and every answer
    computed from them in numpy. Subclasses read the tables (:class:`LocalModel` with
    pyarrow, :class:`pmf_spark.saved.SavedModel` with Spark) through four hooks:
    :meth:`user_row`, :meth:`rated_items`, :meth:`user_side` and :meth:`raters`."""

    #: the SparkSession a Spark-backed model reads through (None without Spark)
    spark_session: Any = None

    def __init__(self, meta: dict, path: str, items: Side):
        self.meta, self.path = meta, path
        self.params = model_sections(meta)
        self.rank = int(meta["rank"])
        lo, hi = map(float, meta["rating_range"])
        self.lo, self.hi = lo, hi
        self.readout = ReadOut(mu=float(meta["mu"]), sigma=float(meta["sigma"]), lo=lo, hi=hi,
                               link=self.params["link"], clip=bool(self.params["clip"]))
        self.id_type = meta["data"]["id_type"]
        self.items = items
        job = meta.get("job", {})
        self.default_k = int(job.get("top_k") or 10)
        self.default_min_item_ratings = int(job.get("min_item_ratings", 1))
        self.default_threshold = relevance_threshold(job.get("relevance_threshold"), lo, hi)

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

    def rated_items(self, user_id) -> np.ndarray:
        """The item ids the user rated in training (never recommended to them)."""
        raise NotImplementedError

    def user_side(self) -> Side:
        """Every user's factors (for questions about all users)."""
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
    def recommend_one(self, factors, bias, rated_items, k: int,
                      candidates: np.ndarray) -> pd.DataFrame:
        """Top-k for one user given as (factors, bias, rated item ids); a user
        without factors (None) gets the most popular items."""
        rated = self.item_idx(rated_items)
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        cold = factors is None
        U = np.zeros((1, self.rank)) if cold else np.asarray(factors, dtype=np.float64)[None, :]
        recs = recommend_rows(U, np.array([0.0 if cold else float(bias)]),
                              np.array([0, rated.size]), rated, self.V, self.item_bias,
                              candidates, self.tiebreak, k, self.readout,
                              popularity=self.item_counts if cold else None)
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
        recs = self.recommend_one(factors, bias, self.rated_items(uid), k or self.default_k,
                                  cand)
        recs.insert(0, "user_id", uid)
        return recs[RECS_COLUMNS].reset_index(drop=True)

    # ---------------------------------------------------------------- fold-in
    def fold_in_rows(self, indptr, items, ratings):
        """Factors (n, rank) and biases (n,) of new users from CSR (dense item indices,
        sorted within rows; ratings in rating units), against the fixed item factors."""
        p = self.params
        return fold_in_rows(self.V, self.item_bias, indptr, items, ratings,
                            lam=float(p["lambda_u"]), lam_bias=float(p["lambda_bias"]),
                            biases=bool(p["biases"]), count_scaling=p["reg_scaling"] == "count",
                            ro=self.readout)

    def fold_in(self, items, ratings):
        """Factors and bias of a new user from (item id, rating) pairs; unknown items
        are ignored. Returns (factors, bias, n_used); factors is None when no item is
        known."""
        idx = self.item_idx(items)
        keep = idx >= 0
        if not keep.any():
            return None, 0.0, 0
        items_k, r = idx[keep], np.asarray(ratings, dtype=np.float64)[keep]
        order = np.argsort(items_k, kind="stable")
        f, b = self.fold_in_rows(np.array([0, order.size]), items_k[order], r[order])
        return f[0], float(b[0]), int(keep.sum())

    def fold_in_users(self, ratings: pd.DataFrame) -> pd.DataFrame:
        """New users from a frame (user_id, item_id, rating): one row per user with
        (user_id, features, bias, n_ratings = the ratings of known items used, rated =
        the dense indices of those items); a user none of whose items the model knows
        has no features (None) and n_ratings 0. The Spark path runs the same function
        per block (:meth:`pmf_spark.saved.SavedModel.fold_in_users_frame`)."""
        p = self.params
        return folded_users(ratings["user_id"].to_numpy(),
                            self.item_idx(ratings["item_id"].to_numpy()),
                            ratings["rating"].to_numpy(), self.V, self.item_bias, self.readout,
                            lam=float(p["lambda_u"]), lam_bias=float(p["lambda_bias"]),
                            biases=bool(p["biases"]), count_scaling=p["reg_scaling"] == "count")

    def recommend_folded(self, folded: pd.DataFrame, k: int,
                         candidates: np.ndarray) -> pd.DataFrame:
        """Top-k (RECS_COLUMNS) for the rows of :meth:`fold_in_users` (or any frame of
        user_id, features, bias, n_ratings, rated): the same numpy the Spark blocks run."""
        shared = (self.V, self.item_bias, candidates, self.tiebreak, self.item_counts,
                  self.readout)
        recs = users_block(None, folded, shared=shared, k=k, rank=self.rank)
        recs["item_id"] = self.item_ids[recs["i"].to_numpy(dtype=np.int64)]
        return recs.sort_values(["user_id", "rank"], kind="stable")[RECS_COLUMNS] \
            .reset_index(drop=True)

    # ---------------------------------------------------------------- neighbours
    def similar_items(self, item_id, k: int = 10) -> pd.DataFrame:
        """The k items most cosine-similar to ``item_id`` by their factors (trained
        items only): (item_id, rank, neighbor_id, similarity), as ``item_neighbors/``."""
        iid = self.parse_id(item_id, "item")
        at = self.item_idx([iid])[0]
        if at < 0:
            raise InputDataError(f"item {iid!r} is not in the model")
        Vn, valid = unit_rows(self.V, self.item_counts)
        nb = neighbor_rows(Vn, valid, [at], self.tiebreak, k)
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
        Un, valid = unit_rows(users.F, users.counts)
        nb = neighbor_rows(Un, valid, [at], users.tiebreak, k)
        return pd.DataFrame({"user_id": uid, "rank": nb["rank"].to_numpy(),
                             "neighbor_id": users.ids[nb["j"].to_numpy()],
                             "similarity": nb["similarity"].to_numpy()})

    def users_for_item(self, item_id, k: int = 10) -> pd.DataFrame:
        """The k users with the highest predicted rating for ``item_id``, never one who
        rated it in training (users with training ratings only): ITEM_USERS_COLUMNS,
        as ``item_users/``."""
        iid = self.parse_id(item_id, "item")
        at = self.item_idx([iid])[0]
        if at < 0 or self.item_counts[at] == 0:
            why = "is not in the model" if at < 0 else "has no training ratings"
            raise InputDataError(f"item {iid!r} {why}")
        users = self.user_side()
        rated = users.idx(self.raters(iid))
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        recs = recommend_rows(self.V[at:at + 1], self.item_bias[at:at + 1],
                              np.array([0, rated.size]), rated, users.F, users.bias,
                              users.counts > 0, users.tiebreak, k, self.readout)
        return pd.DataFrame({"item_id": iid, "rank": recs["rank"].to_numpy(),
                             "user_id": users.ids[recs["i"].to_numpy()],
                             "predicted_rating": recs["predicted_rating"].to_numpy(),
                             "score": recs["score"].to_numpy()})[ITEM_USERS_COLUMNS]


class LocalModel(ModelAnswers):
    """A model directory read with pyarrow (see the module docstring)."""

    def __init__(self, path: str):
        self.fs, self.root = _filesystem(path)
        meta = self._json("model.json")
        rank = int(meta["rank"])
        items = Side.from_arrow(self._table("item_factors"),
                                self._table("item_vocabulary", ["item_id", "idx"]),
                                "item_id", rank)
        self._users: Side | None = None
        super().__init__(meta, path.rstrip("/"), items)

    # ---------------------------------------------------------------- reading
    def _json(self, name: str) -> dict:
        where = f"{self.root}/{name}"
        try:
            with self.fs.open_input_stream(where) as fh:
                text = fh.read().decode("utf-8")
        except (FileNotFoundError, OSError):
            raise InputDataError(f"model {self.root}: no {name} (not a pmf-spark model "
                                 f"directory?)") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputDataError(f"model {self.root}/{name}: not valid JSON ({exc})") from None

    def _dataset(self, name: str) -> ds.Dataset:
        where = f"{self.root}/{name}"
        info = self.fs.get_file_info(where)
        if info.type != pafs.FileType.Directory:
            raise InputDataError(f"model {self.root}: no {name}/ table (an incomplete or "
                                 f"older output?)")
        return ds.dataset(where, format="parquet", filesystem=self.fs)

    def _table(self, name: str, columns: list[str] | None = None, where=None) -> pa.Table:
        return self._dataset(name).to_table(columns=columns, filter=where)

    def _key(self, column: str, value):
        typ = pa.int64() if self.id_type == "long" else pa.string()
        return ds.field(column) == pa.scalar(value, typ)

    # ---------------------------------------------------------------- hooks
    def user_row(self, user_id):
        if self._users is not None:
            at = self._users.idx([user_id])[0]
            u = self._users
            return None if at < 0 else (u.F[at], float(u.bias[at]), int(u.counts[at]))
        t = self._table("user_factors", ["features", "bias", "n_ratings"],
                        self._key("user_id", user_id))
        if t.num_rows == 0:
            return None
        feats = np.asarray(t.column("features")[0].as_py(), dtype=np.float64)
        return feats, float(t.column("bias")[0].as_py()), int(t.column("n_ratings")[0].as_py())

    def rated_items(self, user_id) -> np.ndarray:
        t = self._table("train_ratings", ["item_id"], self._key("user_id", user_id))
        return t.column("item_id").to_numpy(zero_copy_only=False)

    def test_ratings(self, user_id, threshold: float) -> pd.DataFrame:
        """The user's test ratings at or above ``threshold``, best first, then by item id."""
        t = self._table("test_ratings", ["item_id", "rating"],
                        self._key("user_id", user_id) & (ds.field("rating") >= threshold))
        df = t.to_pandas()
        return df.sort_values(["rating", "item_id"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)

    def user_side(self) -> Side:
        if self._users is None:
            self._users = Side.from_arrow(self._table("user_factors"),
                                          self._table("user_vocabulary", ["user_id", "idx"]),
                                          "user_id", self.rank)
        return self._users

    def raters(self, item_id) -> np.ndarray:
        t = self._table("train_ratings", ["user_id"], self._key("item_id", item_id))
        return t.column("user_id").to_numpy(zero_copy_only=False)

    # ---------------------------------------------------------------- a few users
    def recommend_users(self, ids, k: int, candidates: np.ndarray) -> pd.DataFrame:
        """Top-k (RECS_COLUMNS) for a list of user ids, in numpy: the answer of
        :meth:`pmf_spark.saved.SavedModel.recommend_users` for a handful of users."""
        users = self.user_side()
        wanted = self.id_array(pd.unique(self.id_array([self.parse_id(x) for x in ids])))
        at = users.idx(wanted)
        typ = pa.int64() if self.id_type == "long" else pa.string()
        got = self._table("train_ratings", ["user_id", "item_id"],
                          ds.field("user_id").isin(pa.array(wanted, typ)))
        row = pd.Index(wanted).get_indexer(got.column("user_id").to_numpy())
        it = self.item_idx(got.column("item_id").to_numpy(zero_copy_only=False))
        ok = it >= 0
        row, it = row[ok], it[ok].astype(np.int64)
        order = np.lexsort((it, row))
        row, it = row[order], it[order]
        bounds = np.searchsorted(row, np.arange(wanted.size + 1))
        known = at >= 0
        safe = np.maximum(at, 0)
        frame = pd.DataFrame({
            "user_id": wanted,
            "features": [users.F[a] if ok else None for a, ok in zip(safe, known)],
            "bias": np.where(known, users.bias[safe], 0.0),
            "n_ratings": np.where(known, users.counts[safe], 0),
            "rated": [it[bounds[j]:bounds[j + 1]] for j in range(wanted.size)]})
        return self.recommend_folded(frame, k, candidates)


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path or a URI."""
    if "://" in path and not path.startswith("file:"):
        try:
            fs, inner = pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise InputDataError(f"model {path}: cannot open this filesystem without Spark "
                                 f"({exc}); use --engine spark") from None
        return fs, inner.rstrip("/")
    local = path[len("file://"):] if path.startswith("file://") else \
        path[len("file:"):] if path.startswith("file:") else path
    return pafs.LocalFileSystem(), os.path.abspath(local).rstrip("/") or "/"
