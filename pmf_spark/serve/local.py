"""Answers from a trained model without Spark: one user's top-k, a new user's fold-in,
similar items and users, and the users to target with an item, read from the model
directory with pyarrow and numpy only -- no JVM, no pyspark import -- so a question
about one user takes about a second, not the half minute a Spark session costs.

    from pmf_spark.serve import LocalModel
    model = LocalModel("out/ml100k")
    model.recommend(18, k=10)                    # (user_id, rank, item_id, ...)
    model.recommend(18, allowed=[1, 50, 181])    # only from an allow-list
    model.fold_in([50, 172, 181], [5, 5, 4])     # a new user's factors and bias
    model.similar_items(50, k=5)
    model.users_for_item(50, k=20)               # whom to show item 50 to
    model.similar_users(18, k=5)

The answers are the Spark path's (:class:`pmf_spark.serve.saved.SavedModel`): both are
:class:`~pmf_spark.serve.answers.ModelAnswers` and differ only in how they read the tables.
One user's rows are read with a filter on the sorted id column, so Parquet's row-group
statistics skip most of the files; a side is read whole only for questions about all
users (users for an item, similar users, a list of users).

Paths: a local directory, or a URI one of pyarrow's filesystems reads (``s3://``,
``gs://``, ``hdfs://`` with libhdfs).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pmf_spark.errors import InputDataError
from pmf_spark.outputs.modeldir import (
    TEST_RATINGS,
    TRAIN_RATINGS,
    factors_table,
    ranking_rank,
    read_meta,
    vocabulary_table,
)
from pmf_spark.serve.answers import (
    ITEM_USERS_COLUMNS,
    RECS_COLUMNS,
    ModelAnswers,
    Side,
    model_sections,
    relevance_threshold,
)

__all__ = ["LocalModel", "ModelAnswers", "RECS_COLUMNS", "ITEM_USERS_COLUMNS", "Side",
           "model_sections", "relevance_threshold"]

class LocalModel(ModelAnswers):
    """A model directory read with pyarrow (see the module docstring)."""

    def __init__(self, path: str):
        self.fs, self.root = _filesystem(path)
        meta = read_meta(self.root, self._text)
        vocab = self._table(vocabulary_table("item"), ["item_id", "idx"])
        items = Side.from_arrow(self._table(factors_table("item")), vocab, "item_id",
                                int(meta["rank"]))
        ranking = None
        rank_r = ranking_rank(meta)
        if rank_r and self._exists(factors_table("item", ranking=True)):
            ranking = Side.from_arrow(self._table(factors_table("item", ranking=True)), vocab,
                                      "item_id", rank_r)
        self._sides: dict[bool, Side] = {}
        super().__init__(meta, path.rstrip("/"), items, ranking)

    # ---------------------------------------------------------------- reading
    def _text(self, where: str) -> str | None:
        try:
            with self.fs.open_input_stream(where) as fh:
                return fh.read().decode("utf-8")
        except (FileNotFoundError, OSError):
            return None

    def _exists(self, name: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{name}").type == pafs.FileType.Directory

    def _dataset(self, name: str) -> ds.Dataset:
        where = f"{self.root}/{name}"
        if not self._exists(name):
            raise InputDataError(f"model {self.root}: no {name}/ table (an incomplete or "
                                 f"older output?)")
        return ds.dataset(where, format="parquet", filesystem=self.fs)

    def _table(self, name: str, columns: list[str] | None = None, where=None) -> pa.Table:
        return self._dataset(name).to_table(columns=columns, filter=where)

    def _key(self, column: str, value):
        typ = pa.int64() if self.id_type == "long" else pa.string()
        return ds.field(column) == pa.scalar(value, typ)

    # ---------------------------------------------------------------- hooks
    def _row(self, ranking: bool, user_id):
        side = self._sides.get(ranking)
        if side is not None:
            at = side.idx([user_id])[0]
            return None if at < 0 else (side.F[at], float(side.bias[at]), int(side.counts[at]))
        t = self._table(factors_table("user", ranking),
                        ["features", "bias", "n_ratings"], self._key("user_id", user_id))
        if t.num_rows == 0:
            return None
        feats = np.asarray(t.column("features")[0].as_py(), dtype=np.float64)
        return feats, float(t.column("bias")[0].as_py()), int(t.column("n_ratings")[0].as_py())

    def user_row(self, user_id):
        return self._row(False, user_id)

    def ranking_row(self, user_id):
        row = self._row(True, user_id)
        return None if row is None else row[:2]

    def rated_items(self, user_id) -> np.ndarray:
        t = self._table(TRAIN_RATINGS, ["item_id"], self._key("user_id", user_id))
        return t.column("item_id").to_numpy(zero_copy_only=False)

    def test_ratings(self, user_id, threshold: float) -> pd.DataFrame:
        """The user's test ratings at or above ``threshold``, best first, then by item id."""
        t = self._table(TEST_RATINGS, ["item_id", "rating"],
                        self._key("user_id", user_id) & (ds.field("rating") >= threshold))
        df = t.to_pandas()
        return df.sort_values(["rating", "item_id"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)

    def user_side(self, ranking: bool = False) -> Side:
        if ranking not in self._sides:
            assert not ranking or self.ranker is not None
            self._sides[ranking] = Side.from_arrow(
                self._table(factors_table("user", ranking)),
                self._table(vocabulary_table("user"), ["user_id", "idx"]), "user_id",
                self.ranker[3] if ranking and self.ranker else self.rank)
        return self._sides[ranking]

    def raters(self, item_id) -> np.ndarray:
        t = self._table(TRAIN_RATINGS, ["user_id"], self._key("item_id", item_id))
        return t.column("user_id").to_numpy(zero_copy_only=False)

    # ---------------------------------------------------------------- a few users
    def recommend_users(self, ids, k: int, candidates: np.ndarray) -> pd.DataFrame:
        """Top-k (RECS_COLUMNS) for a list of user ids, in numpy: the answer of
        :meth:`pmf_spark.serve.saved.SavedModel.recommend_users` for a handful of users."""
        users = self.user_side()
        wanted = self.id_array(pd.unique(self.id_array([self.parse_id(x) for x in ids])))
        at = users.idx(wanted)
        typ = pa.int64() if self.id_type == "long" else pa.string()
        got = self._table(TRAIN_RATINGS, ["user_id", "item_id"],
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
        if self.ranker is not None:
            ranking = self.user_side(ranking=True)
            frame["rfeatures"] = [ranking.F[a] if ok else None for a, ok in zip(safe, known)]
            frame["rbias"] = np.where(known, ranking.bias[safe], 0.0)
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
