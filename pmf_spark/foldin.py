"""Fold-in: a new user's factors from their ratings against a trained model's fixed item
factors, by the model's own user half-step for one row (the same strategy, payload and
kernel as training), so a folded-in user is exactly what training would have made of
them with the items held fixed. Pure numpy, no Spark.
"""

from __future__ import annotations

import numpy as np

from .kernels import ReadOut
from .layout import Chunk
from .models import strategy_for
from .models.base import TrainContext, TrainState
from .params import PMFParams


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


def fold_in_user(params: PMFParams, V: np.ndarray, item_bias: np.ndarray,
                 item_counts: np.ndarray, readout: ReadOut, items: np.ndarray,
                 values: np.ndarray) -> tuple[np.ndarray, float]:
    """(factors (rank,), bias) of one new user with ``values`` on dense item indices
    ``items``, against fixed items V (n_items, rank) and their biases.

    A sampler (BPMF) folds in with its MAP update: a saved BPMF model holds averaged
    samples, not a posterior to draw from.
    """
    if params.fit.model == "bpmf":
        params = params.replace(model="pmf")
    rank = params.model.rank
    ctx = TrainContext(n_users=1, n_items=V.shape[0],
                       user_counts=np.array([len(items)], np.int64),
                       item_counts=np.asarray(item_counts, np.int64), readout=readout,
                       gram_dtype="float64", kernel="numpy")
    strategy = strategy_for(params, ctx)
    item = np.zeros((V.shape[0], rank + 1))
    item[:, :rank] = V
    item[:, rank] = item_bias
    state = TrainState(user=np.zeros((1, rank + 1)), item=item,
                       reg_user=strategy.initial_reg("user"), reg_item=strategy.initial_reg("item"))
    if params.fit.priors != "fixed":
        state.extra["item_var"] = np.zeros_like(item)
    task = strategy.tasks(state, "user", 1, None)[0]
    x = task.kernel(one_row_chunk(items, values), task.payload, False).x[0]
    return x[:rank].copy(), float(x[rank]) if params.model.biases else 0.0
