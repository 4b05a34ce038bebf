"""Fold-in: a new user's factors from their ratings against a trained model's fixed item
factors, by the model's own user half-step for one row (the same strategy, payload and
kernel as training), so a folded-in user is exactly what training would have made of
them with the items held fixed. Pure numpy, no Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pmf_spark.config.params import PMFParams
from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import ReadOut
from pmf_spark.models import REGISTRY, strategy_for
from pmf_spark.models.base import TrainContext, TrainState


def one_row_chunk(items: np.ndarray, values: np.ndarray) -> Chunk:
    """A chunk holding one row with the given (item, value) entries."""
    order = np.argsort(items, kind="stable")
    items = np.asarray(items, np.int64)[order]
    values = np.asarray(values, np.float64)[order]
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0)
    return Chunk(block=0, chunk=0, row_ids=np.zeros(1, np.int32),
                 indptr=np.array([0, items.size], np.int64), cols=items.astype(np.int32),
                 vals=values, test_rows=empty_i, test_cols=empty_i, test_vals=empty_f,
                 test_kind=np.zeros(0, np.int8))


def rows_chunk(indptr: np.ndarray, items: np.ndarray, values: np.ndarray) -> Chunk:
    """A chunk of rows given as CSR (items sorted within each row)."""
    n = len(indptr) - 1
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0)
    return Chunk(block=0, chunk=0, row_ids=np.arange(n, dtype=np.int32),
                 indptr=np.asarray(indptr, np.int64), cols=np.asarray(items, np.int32),
                 vals=np.asarray(values, np.float64), test_rows=empty_i, test_cols=empty_i,
                 test_vals=empty_f, test_kind=np.zeros(0, np.int8))


def fold_in_rows(params: PMFParams, V: np.ndarray, item_bias: np.ndarray,
                 item_counts: np.ndarray, readout: ReadOut, indptr: np.ndarray,
                 items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(factors (n, rank), biases (n,)) of n new users given as CSR (dense item indices
    sorted within each row, their values), against fixed items V (n_items, rank) and
    their biases: one user half-step of the model for all of them. Rows without
    entries are the prior mean, 0.

    A model whose own update cannot fold in (a sampler: a saved BPMF model holds
    averaged samples, not a posterior to draw from) folds in with the one it names
    (``fold_in_as``, BPMF's MAP update).
    """
    instead = REGISTRY[params.fit.model].fold_in_as
    if instead is not None:
        params = params.replace(model=instead)
    rank = params.model.rank
    n = len(indptr) - 1
    ctx = TrainContext(n_users=n, n_items=V.shape[0],
                       user_counts=np.diff(np.asarray(indptr, np.int64)),
                       item_counts=np.asarray(item_counts, np.int64), readout=readout,
                       gram_dtype="float64", kernel="numpy")
    strategy = strategy_for(params, ctx)
    item = np.zeros((V.shape[0], rank + 1))
    item[:, :rank] = V
    item[:, rank] = item_bias
    state = TrainState(user=np.zeros((n, rank + 1)), item=item,
                       reg_user=strategy.initial_reg("user"), reg_item=strategy.initial_reg("item"))
    if params.fit.priors != "fixed":
        state.extra["item_var"] = np.zeros_like(item)
    task = strategy.tasks(state, "user", 1, None)[0]
    x = task.kernel(rows_chunk(indptr, items, values), task.payload, False).x
    return x[:, :rank].copy(), (x[:, rank].copy() if params.model.biases else np.zeros(n))


def fold_in_user(params: PMFParams, V: np.ndarray, item_bias: np.ndarray,
                 item_counts: np.ndarray, readout: ReadOut, items: np.ndarray,
                 values: np.ndarray) -> tuple[np.ndarray, float]:
    """(factors (rank,), bias) of one new user with ``values`` on dense item indices
    ``items`` (:func:`fold_in_rows` for one row)."""
    order = np.argsort(items, kind="stable")
    f, b = fold_in_rows(params, V, item_bias, item_counts, readout,
                        np.array([0, len(items)]), np.asarray(items, np.int64)[order],
                        np.asarray(values, np.float64)[order])
    return f[0], float(b[0])


@dataclass(frozen=True)
class FoldIn:
    """How a saved model folds in new users: its parameters, fixed item side (V, biases,
    training counts) and the read-out its targets are standardised with."""

    params: PMFParams
    V: np.ndarray
    item_bias: np.ndarray
    item_counts: np.ndarray
    readout: ReadOut

    def rows(self, indptr, items, values):
        return fold_in_rows(self.params, self.V, self.item_bias, self.item_counts,
                            self.readout, indptr, items, values)


def folded_users(user_ids, item_idx, ratings, model: FoldIn,
                 ranking: FoldIn | None = None) -> pd.DataFrame:
    """New users folded in from their ratings: one row per distinct user id (in order of
    first appearance) with ``features`` (None when no rated item is known), ``bias``,
    ``n_ratings`` (known items used), ``rated`` (their dense indices) and, with a ranking
    model, the same user's ``rfeatures``/``rbias`` under it.

    Args:
        user_ids: (nnz,) the users' ids; item_idx: int (nnz,) dense item indices, -1 for
            items the model does not know (ignored); ratings: (nnz,) in rating units.
    """
    users = pd.Index(pd.unique(np.asarray(user_ids)))
    u = users.get_indexer(np.asarray(user_ids))
    item_idx = np.asarray(item_idx, dtype=np.int64)
    ok = item_idx >= 0
    u, cols, vals = u[ok], item_idx[ok], np.asarray(ratings, dtype=np.float64)[ok]
    order = np.lexsort((cols, u))
    u, cols, vals = u[order], cols[order], vals[order]
    indptr = np.zeros(users.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=users.size), out=indptr[1:])
    n = np.diff(indptr)
    out = {"user_id": users.to_numpy()}
    for prefix, m in (("", model), ("r", ranking)):
        if m is None:
            continue
        f, b = m.rows(indptr, cols, vals)
        out[f"{prefix}features"] = [f[j] if n[j] else None for j in range(users.size)]
        out[f"{prefix}bias"] = np.where(n > 0, b, 0.0)
        if not prefix:
            out["n_ratings"] = n.astype(np.int32)
            out["rated"] = [cols[indptr[j]:indptr[j + 1]].astype(np.int32)
                            for j in range(users.size)]
    return pd.DataFrame(out)


def fold_in_block(key, pdf, *, shared):
    """:func:`folded_users` for the rows (user_id, idx (null: an unknown item), rating) of
    one block of new users. ``shared``: (FoldIn of the model, FoldIn of the ranking model
    or None), or a Broadcast of it."""
    from pmf_spark.engine.layout import limit_blas_threads

    limit_blas_threads()
    model, ranking = shared.value if hasattr(shared, "value") else shared
    idx = pdf["idx"].fillna(-1).to_numpy(dtype=np.int64)
    return folded_users(pdf["user_id"].to_numpy(), idx, pdf["rating"].to_numpy(), model,
                        ranking)
