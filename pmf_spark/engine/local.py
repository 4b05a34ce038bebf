"""A single-process engine with the Spark engine's interface: the same strategies and
kernels on whole sides in one Python process, no Spark.

For studies that train many small models (choosing defaults on validation data),
tests of the strategies without Spark, and single-machine uses where the data is a
few million ratings at most. The job itself runs on :mod:`pmf_spark.engine.spark`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmf_spark.engine.blocks import SUMS, rating_metrics
from pmf_spark.engine.layout import TRAIN, VALIDATION, Chunk
from pmf_spark.models.base import HalfResult, KernelTask


@dataclass
class LocalData:
    """Indexed ratings in memory: dense indices ``u``, ``i`` (int64 (n,)), ``rating``
    (float64 (n,)), ``kind`` (int8 (n,): 0 train, 1 test, 2 validation), sizes and the
    training statistics (the fields of :class:`~pmf_spark.prepare.ratings.PreparedData` the
    trainer reads)."""

    u: np.ndarray
    i: np.ndarray
    rating: np.ndarray
    kind: np.ndarray
    n_users: int
    n_items: int
    mu: float
    sigma: float
    rating_lo: float
    rating_hi: float
    n_val: int = 0

    @classmethod
    def from_arrays(cls, u, i, rating, kind, n_users=None, n_items=None, lo=None, hi=None):
        u, i = np.asarray(u, np.int64), np.asarray(i, np.int64)
        rating, kind = np.asarray(rating, np.float64), np.asarray(kind, np.int8)
        tr = rating[kind == TRAIN]
        sigma = float(tr.std()) or 1.0
        return cls(u, i, rating, kind, int(n_users or u.max() + 1), int(n_items or i.max() + 1),
                   float(tr.mean()), sigma, float(lo if lo is not None else tr.min()),
                   float(hi if hi is not None else tr.max()), int((kind == VALIDATION).sum()))


def _chunk(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, kind: np.ndarray,
           n_rows: int, with_held: bool) -> Chunk:
    """One chunk holding every row of a side (rows without training entries included
    when they have held-out entries)."""
    keep = np.ones(rows.size, bool) if with_held else kind == TRAIN
    rows, cols, vals, kind = rows[keep], cols[keep], vals[keep], kind[keep]
    order = np.lexsort((cols, rows))
    rows, cols, vals, kind = rows[order], cols[order], vals[order], kind[order]
    row_ids = np.unique(rows)
    local = np.searchsorted(row_ids, rows)
    tr = kind == TRAIN
    indptr = np.zeros(row_ids.size + 1, np.int64)
    np.cumsum(np.bincount(local[tr], minlength=row_ids.size), out=indptr[1:])
    return Chunk(block=0, chunk=0, row_ids=row_ids.astype(np.int32), indptr=indptr,
                 cols=cols[tr].astype(np.int32), vals=vals[tr],
                 test_rows=local[~tr].astype(np.int32),
                 test_cols=cols[~tr].astype(np.int32), test_vals=vals[~tr],
                 test_kind=kind[~tr].astype(np.int8))


class LocalEngine:
    """Runs half-steps in this process (the :class:`~pmf_spark.engine.spark.Engine` interface
    the trainer uses)."""

    spark = None
    blocks = 1
    setup_seconds = 0.0

    def __init__(self, data: LocalData, params=None):
        self.data = data
        self.params = params
        self.layout: dict[str, Chunk] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.sizes = {"user": data.n_users, "item": data.n_items}

    @property
    def packed(self) -> bool:
        return bool(self.layout)

    def pack(self) -> None:
        d = self.data
        self.layout["user"] = _chunk(d.u, d.i, d.rating, d.kind, d.n_users, with_held=False)
        self.layout["item"] = _chunk(d.i, d.u, d.rating, d.kind, d.n_items, with_held=True)
        tr = d.kind == TRAIN
        self.counts = {"user": np.bincount(d.u[tr], minlength=d.n_users).astype(np.int64),
                       "item": np.bincount(d.i[tr], minlength=d.n_items).astype(np.int64)}

    def half_step(self, solving: str, tasks: list[KernelTask],
                  metrics: bool = False) -> list[HalfResult]:
        c = self.layout[solving]
        out = []
        for task in tasks:
            sol = task.kernel(c, task.payload, metrics)
            n = self.sizes[solving]
            factors = np.zeros((n, task.width))
            factors[c.row_ids, :sol.x.shape[1]] = sol.x
            var = None
            if task.variances and sol.var is not None:
                var = np.zeros((n, task.width))
                var[c.row_ids, :sol.var.shape[1]] = sol.var
            stats = dict.fromkeys(SUMS, 0.0)
            stats.update(n_train=float(c.cols.size), esse=sol.esse)
            if metrics and task.rating_model:
                rating_metrics(stats, c, task.payload, sol)
            out.append(HalfResult(factors, var, stats))
        return out

    def release(self) -> None:
        self.layout = {}
