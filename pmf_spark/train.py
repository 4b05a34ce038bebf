r"""PMF by alternating least squares on Spark.

The model
---------
Ratings are standardised with the training mean and standard deviation,
:math:`z_{ij} = (r_{ij} - \mu) / \sigma`. PMF (Salakhutdinov & Mnih 2007) puts
Gaussian noise on the ratings and zero-mean Gaussian priors on the factors,

.. math::

    z_{ij} \sim N(u_i^\top v_j + a_i + b_j,\ \sigma_z^2), \quad
    u_i \sim N(0, \sigma_U^2 I), \quad v_j \sim N(0, \sigma_V^2 I), \quad
    a_i, b_j \sim N(0, \sigma_B^2)

(the biases a, b are on by default; ``biases=False`` gives the paper's plain
PMF). Its MAP estimate minimises the L2-regularised squared error

.. math::

    E = \tfrac12 \sum_{(i,j) \in \mathrm{train}} (z_{ij} - u_i^\top v_j - a_i - b_j)^2
        + \tfrac12 \sum_i s_i (\lambda_U \lVert u_i\rVert^2 + \lambda_B a_i^2)
        + \tfrac12 \sum_j s_j (\lambda_V \lVert v_j\rVert^2 + \lambda_B b_j^2)

with :math:`\lambda_U = \sigma_z^2/\sigma_U^2`, :math:`\lambda_V = \sigma_z^2/\sigma_V^2`,
:math:`\lambda_B = \sigma_z^2/\sigma_B^2`. **Regularisation scaling**: with
``reg_scaling="none"`` (the default, as in the PMF paper) :math:`s_i = 1`: λ is
*not* scaled by the row's rating count. With ``reg_scaling="count"``,
:math:`s_i = n_i`, the row's number of training ratings (ALS-WR, Zhou et al.
2008, which is what Spark MLlib's explicit ALS does; MLlib's ``regParam``
corresponds to our λ with ``count`` scaling, up to the z-scoring of ratings).

With one side fixed each row is a ridge regression. For user i with rated
items I (the fixed design gets a column of ones for the user's bias):

.. math::

    [u_i; a_i] = (\tilde V_I^\top \tilde V_I + s_i \Lambda)^{-1} \tilde V_I^\top (z_{iI} - b_I),
    \quad \tilde V = [V, 1], \ \Lambda = \mathrm{diag}(\lambda_U, \dots, \lambda_U, \lambda_B)

and symmetrically for items. Each half-step minimises E exactly over one side,
so E never increases across half-steps. Rows without training ratings stay at
the prior mean (0); they then predict the mean plus the known side's bias.

Predictions: ``linear`` link, :math:`\hat r = \mathrm{clip}(\mu + \sigma \hat z)` to the
training rating range; ``sigmoid`` link, :math:`\hat r = lo + (hi - lo)\,
\mathrm{sigmoid}(\hat z)` (the seed document's read-out).

The Spark shape
---------------
Ratings are packed once per side into B blocks (``index % B``, labels chosen
so each block lands in its own partition; dense indices are in descending count
order, so blocks carry nearly equal numbers of ratings), repartitioned by block,
sorted within partitions and cached. A half-epoch broadcasts the fixed side's
design matrix as numpy, runs ``groupBy("block").applyInPandas(solve_block)``
over the cached layout -- its plan is ``FlatMapGroupsInPandas <-
InMemoryTableScan``, no shuffle, no sort -- and collects the solved rows
(Arrow) to the driver. The item half-step also returns the epoch's training
and test error sums, so metrics cost no extra pass.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field, asdict
from typing import Callable

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .errors import PMFUserError
from .params import PMFParams
from .prepare import PreparedData
from .solvers import to_rating
from .udfs import PACKED_SCHEMA, SOLVED_SCHEMA, pack_block, solve_block

log = logging.getLogger("pmf_spark")


class TrainingDiverged(PMFUserError):
    """Factors became non-finite; the message suggests a remedy."""


@dataclass
class EpochMetrics:
    """One line of the training log (errors in rating units, objective in z units)."""

    epoch: int
    train_rmse: float
    train_mae: float
    test_rmse: float
    test_mae: float
    objective: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FactorModel:
    """The trained model on the driver: dense-index factors and biases.

    Shapes: U float64 (n_users, rank), V float64 (n_items, rank), user_bias
    (n_users,), item_bias (n_items,); all zero for rows without training ratings.
    """

    U: np.ndarray
    V: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    mu: float
    sigma: float
    lo: float
    hi: float
    link: str
    clip: bool

    def predict_z(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return (np.einsum("ij,ij->i", self.U[u], self.V[i]) + self.user_bias[u]
                + self.item_bias[i])

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return to_rating(self.predict_z(u, i), mu=self.mu, sigma=self.sigma, lo=self.lo,
                         hi=self.hi, link=self.link, clip=self.clip)


def block_labels(spark: SparkSession, blocks: int) -> list[int]:
    """For each partition p of ``repartition(blocks, int_col)``, the smallest int
    label that Spark's hash partitioner sends to p: one block per partition."""
    cand = spark.range(0, 64 * blocks).select(F.col("id").cast("int").alias("k"))
    rows = (cand.select("k", F.pmod(F.hash("k"), F.lit(blocks)).alias("p"))
            .groupBy("p").agg(F.min("k").alias("k")).collect())
    by_p = {r["p"]: r["k"] for r in rows}
    return [by_p[p] for p in range(blocks)]


def block_of(idx_col: str, labels: list[int]) -> F.Column:
    """The block label of a dense index column: ``labels[idx % B]``."""
    arr = F.array(*[F.lit(int(x)) for x in labels])
    return F.element_at(arr, (F.col(idx_col) % F.lit(len(labels))) + 1).cast("int")


def pack_side(ratings: DataFrame, row: str, col: str, labels: list[int], *,
              with_test: bool, chunk_ratings: int, val_dtype: str) -> DataFrame:
    """Pack one side's ratings into the cached block layout (see :mod:`udfs`)."""
    df = ratings if with_test else ratings.filter(~F.col("is_test"))
    cols = [F.col(row).alias("row"), F.col(col).alias("col"), "rating"]
    if with_test:
        cols.append("is_test")
    df = df.select(*cols, block_of(row, labels).alias("block"))
    fn = functools.partial(pack_block, chunk_ratings=chunk_ratings, val_dtype=val_dtype,
                           with_test=with_test)
    packed = (df.groupBy("block").applyInPandas(fn, PACKED_SCHEMA)
              .repartition(len(labels), "block")
              .sortWithinPartitions("block", "chunk")
              .persist(StorageLevel.MEMORY_AND_DISK))
    return packed


def solve_frame(packed: DataFrame, fixed, **kw) -> DataFrame:
    """The half-epoch DataFrame: every block solved against the broadcast ``fixed``."""
    fn = functools.partial(solve_block, fixed=fixed, **kw)
    return packed.groupBy("block").applyInPandas(fn, SOLVED_SCHEMA)


def _collect_solved(df: DataFrame, out: np.ndarray) -> dict:
    """Collect a SOLVED frame into ``out`` (n, rank+1) and sum its statistics."""
    tbl = df.toArrow()
    width = out.shape[1]
    ids = tbl.column("row_ids").to_pylist()
    facs = tbl.column("factors").to_pylist()
    for rid, fac in zip(ids, facs):
        r = np.frombuffer(rid, dtype=np.int32)
        out[r] = np.frombuffer(fac, dtype=np.float64).reshape(r.size, width)
    sums = {}
    for name in ("n_train", "sse", "sae", "sse_z", "n_test", "test_sse", "test_sae"):
        sums[name] = float(np.sum(tbl.column(name).to_numpy())) if tbl.num_rows else 0.0
    return sums


def _read_counts(vocab: DataFrame, n: int) -> np.ndarray:
    tbl = vocab.select("idx", "n_ratings").toArrow()
    counts = np.zeros(n, dtype=np.int64)
    counts[tbl.column("idx").to_numpy()] = tbl.column("n_ratings").to_numpy()
    return counts


@dataclass
class TrainState:
    """Everything a run carries from epoch to epoch (and what a checkpoint holds)."""

    user: np.ndarray          # (n_users, rank+1): factors and bias
    item: np.ndarray          # (n_items, rank+1)
    epoch: int = 0
    history: list = field(default_factory=list)


class ALSTrainer:
    """Runs the ALS loop for prepared data. Nothing here creates a SparkSession.

    Args:
        spark: the active session.
        data: indexed ratings and statistics (:func:`pmf_spark.prepare.prepare`).
        params: model parameters.
        callback: called with each epoch's :class:`EpochMetrics` after logging;
            returning ``False`` stops training early.
    """

    def __init__(self, spark: SparkSession, data: PreparedData, params: PMFParams,
                 callback: Callable[[EpochMetrics], object] | None = None):
        self.spark = spark
        self.data = data
        self.params = params
        self.callback = callback
        sc = spark.sparkContext
        self.blocks = params.blocks or max(1, sc.defaultParallelism)
        self.val_dtype = "float32" if data.float32_exact else "float64"
        self.packed_users: DataFrame | None = None
        self.packed_items: DataFrame | None = None
        self.user_counts: np.ndarray | None = None
        self.item_counts: np.ndarray | None = None
        self.setup_seconds = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        t0 = time.perf_counter()
        p, d = self.params, self.data
        sc = self.spark.sparkContext
        sc.setJobDescription("setup: pack ratings into blocks")
        labels = block_labels(self.spark, self.blocks)
        self.packed_users = pack_side(d.ratings, "u", "i", labels, with_test=False,
                                      chunk_ratings=p.chunk_ratings, val_dtype=self.val_dtype)
        self.packed_items = pack_side(d.ratings, "i", "u", labels, with_test=True,
                                      chunk_ratings=p.chunk_ratings, val_dtype=self.val_dtype)
        for name, packed in (("user", self.packed_users), ("item", self.packed_items)):
            rows = packed.groupBy("block").agg(F.sum("nnz").alias("nnz"),
                                               F.sum("n_rows").alias("rows"),
                                               F.count(F.lit(1)).alias("chunks")).collect()
            nnz = sorted(int(r["nnz"]) for r in rows)
            log.info("%s blocks: %d, ratings per block %s..%s, %d chunk(s)", name, len(rows),
                     nnz[0] if nnz else 0, nnz[-1] if nnz else 0,
                     sum(int(r["chunks"]) for r in rows))
        self.user_counts = _read_counts(d.users, d.n_users)
        self.item_counts = _read_counts(d.items, d.n_items)
        sc.setJobDescription(None)
        self.setup_seconds = time.perf_counter() - t0

    def initial_state(self) -> TrainState:
        """Seeded Gaussian factors with the prior's variance; biases 0; rows
        without training ratings at the prior mean 0."""
        p = self.params
        rng = np.random.default_rng(p.seed)
        state = []
        for n, counts, lam in ((self.data.n_users, self.user_counts, p.lambda_u),
                               (self.data.n_items, self.item_counts, p.lambda_v)):
            scale = counts.astype(np.float64) if p.reg_scaling == "count" else np.ones(n)
            if p.init_std > 0:
                std = np.full(n, p.init_std)
            elif lam > 0:
                std = 1.0 / np.sqrt(lam * np.maximum(scale, 1.0))
            else:
                std = np.full(n, 1.0 / math.sqrt(p.rank))
            m = np.zeros((n, p.rank + 1))
            m[:, :p.rank] = rng.standard_normal((n, p.rank)) * std[:, None]
            m[counts == 0] = 0.0
            state.append(m)
        return TrainState(user=state[0], item=state[1])

    # ------------------------------------------------------------------ epochs
    def _design(self, side: np.ndarray):
        """(design, offset) of a fixed side: [factors, 1] and the biases, or factors only."""
        r = self.params.rank
        if self.params.biases:
            design = np.empty((side.shape[0], r + 1))
            design[:, :r] = side[:, :r]
            design[:, r] = 1.0
            return design, side[:, r].copy()
        return np.ascontiguousarray(side[:, :r]), None

    def solve_kwargs(self, solving: str, metrics: bool) -> dict:
        p, d = self.params, self.data
        return dict(rank=p.rank, biases=p.biases,
                    lam=p.lambda_u if solving == "user" else p.lambda_v,
                    lam_bias=p.lambda_bias, count_scaling=p.reg_scaling == "count",
                    mu=d.mu, sigma=d.sigma, lo=d.rating_lo, hi=d.rating_hi, link=p.link,
                    clip=p.clip, val_dtype=self.val_dtype, gram_dtype=p.gram_dtype,
                    metrics=metrics)

    def half_epoch_frame(self, solving: str, fixed_side: np.ndarray, metrics: bool = False):
        """(DataFrame, broadcast) for solving ``solving`` ('user'/'item') against
        ``fixed_side``; the caller destroys the broadcast after collecting."""
        bc = self.spark.sparkContext.broadcast(self._design(fixed_side))
        packed = self.packed_users if solving == "user" else self.packed_items
        return solve_frame(packed, bc, **self.solve_kwargs(solving, metrics)), bc

    def half_epoch(self, solving: str, fixed_side: np.ndarray, out: np.ndarray,
                   metrics: bool = False) -> dict:
        df, bc = self.half_epoch_frame(solving, fixed_side, metrics)
        try:
            return _collect_solved(df, out)
        finally:
            bc.destroy(blocking=False)

    def objective(self, state: TrainState, sse_z: float) -> float:
        p = self.params
        total = 0.5 * sse_z
        for m, counts, lam in ((state.user, self.user_counts, p.lambda_u),
                               (state.item, self.item_counts, p.lambda_v)):
            s = counts.astype(np.float64) if p.reg_scaling == "count" else (counts > 0) * 1.0
            total += 0.5 * lam * float(s @ np.einsum("ij,ij->i", m[:, :p.rank], m[:, :p.rank]))
            if p.biases:
                total += 0.5 * p.lambda_bias * float(s @ (m[:, p.rank] ** 2))
        return total

    def run_epoch(self, state: TrainState) -> EpochMetrics:
        p = self.params
        e = state.epoch + 1
        sc = self.spark.sparkContext
        t0 = time.perf_counter()
        sc.setJobDescription(f"epoch {e}/{p.epochs}: solve users")
        self.half_epoch("user", state.item, state.user)
        sc.setJobDescription(f"epoch {e}/{p.epochs}: solve items")
        sums = self.half_epoch("item", state.user, state.item, metrics=True)
        sc.setJobDescription(None)
        if not (np.isfinite(state.user).all() and np.isfinite(state.item).all()):
            raise TrainingDiverged(f"training diverged at epoch {e}: non-finite factors "
                                   f"(raise --lambda-u/--lambda-v)")
        n_tr, n_te = max(sums["n_train"], 1.0), max(sums["n_test"], 1.0)
        m = EpochMetrics(
            epoch=e,
            train_rmse=math.sqrt(sums["sse"] / n_tr), train_mae=sums["sae"] / n_tr,
            test_rmse=math.sqrt(sums["test_sse"] / n_te) if sums["n_test"] else float("nan"),
            test_mae=sums["test_sae"] / n_te if sums["n_test"] else float("nan"),
            objective=self.objective(state, sums["sse_z"]),
            seconds=time.perf_counter() - t0)
        state.epoch = e
        state.history.append(m)
        return m

    def fit(self, state: TrainState | None = None) -> TrainState:
        """Run the remaining epochs; returns the final state."""
        if self.packed_users is None:
            self.setup()
        state = state or self.initial_state()
        while state.epoch < self.params.epochs:
            m = self.run_epoch(state)
            if self.callback is not None and self.callback(m) is False:
                break
        return state

    def model(self, state: TrainState) -> FactorModel:
        r, d, p = self.params.rank, self.data, self.params
        return FactorModel(U=state.user[:, :r].copy(), V=state.item[:, :r].copy(),
                           user_bias=state.user[:, r].copy(), item_bias=state.item[:, r].copy(),
                           mu=d.mu, sigma=d.sigma, lo=d.rating_lo, hi=d.rating_hi,
                           link=p.link, clip=p.clip)

    def release(self) -> None:
        for df in (self.packed_users, self.packed_items):
            if df is not None:
                df.unpersist()
