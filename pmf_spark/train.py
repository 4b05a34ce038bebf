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
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .errors import PMFUserError
from .params import PMFParams
from .prepare import PreparedData
from .priors import (noise_variance, prior_variances, sample_noise_precision,
                     sample_normal_wishart)
from .solvers import to_rating
from .udfs import (EVAL_SCHEMA, PACKED_SCHEMA, SOLVED_SCHEMA, TEST, evaluate_block, pack_block,
                   solve_block)

log = logging.getLogger("pmf_spark")

NAN = float("nan")
#: blocks smaller than this (MB sent to Python per half-epoch) are always sent in full
RESIDENT_MIN_BLOCK_MB = 32.0


class TrainingDiverged(PMFUserError):
    """Factors became non-finite; the message suggests a remedy."""


@dataclass
class EpochMetrics:
    """One line of the training log (errors in rating units, objective in z units).

    For BPMF the errors are those of the epoch's sample; the final metrics of a BPMF
    run are those of the prediction averaged over the kept samples.
    """

    epoch: int
    train_rmse: float
    train_mae: float
    test_rmse: float
    test_mae: float
    objective: float
    seconds: float
    val_rmse: float = NAN
    val_mae: float = NAN
    lambda_u: float = NAN
    lambda_v: float = NAN
    noise_var: float = NAN

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FactorModel:
    """The trained model on the driver: dense-index factors and biases.

    Shapes: U float64 (n_users, r), V float64 (n_items, r), user_bias (n_users,),
    item_bias (n_items,); all zero for rows without training ratings. For BPMF,
    r = kept samples x rank: the samples side by side, scaled by 1/sqrt(samples),
    so that ``U V^T`` is the average of the samples' predictions.
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
    return F.element_at(arr, ((F.col(idx_col) % F.lit(len(labels))) + 1).cast("int")).cast("int")


def pack_side(ratings: DataFrame, row: str, col: str, labels: list[int], *,
              with_test: bool, chunk_ratings: int, val_dtype: str,
              with_validation: bool = False) -> DataFrame:
    """Pack one side's ratings into the cached block layout (see :mod:`udfs`).

    ``with_test``: every held-out rating (test and validation) rides along, for the
    metrics. ``with_validation``: only the validation slice does, and only for rows
    with training ratings -- the user side keeps it so that top-k can mask it.
    """
    if with_test:
        df = ratings
    elif with_validation:
        df = ratings.filter(F.col("kind") != F.lit(TEST))
    else:
        df = ratings.filter(F.col("kind") == 0)
    cols = [F.col(row).alias("row"), F.col(col).alias("col"), "rating"]
    if with_test or with_validation:
        cols.append("kind")
    df = df.select(*cols, block_of(row, labels).alias("block"))
    fn = functools.partial(pack_block, chunk_ratings=chunk_ratings, val_dtype=val_dtype,
                           with_test=with_test or with_validation,
                           trained_rows_only=with_validation and not with_test)
    packed = (df.groupBy("block").applyInPandas(fn, PACKED_SCHEMA)
              .repartition(len(labels), "block")
              .sortWithinPartitions("block", "chunk")
              .persist(StorageLevel.MEMORY_AND_DISK))
    return packed


def solve_frame(packed: DataFrame, fixed, **kw) -> DataFrame:
    """The half-epoch DataFrame: every block solved against the broadcast ``fixed``."""
    fn = functools.partial(solve_block, fixed=fixed, **kw)
    return packed.groupBy("block").applyInPandas(fn, SOLVED_SCHEMA)


_SUMS = ("n_train", "sse", "sae", "sse_z", "n_test", "test_sse", "test_sae", "n_val",
         "val_sse", "val_sae", "esse")


def _collect_solved(tbl, out: np.ndarray, var_out: np.ndarray | None = None) -> dict:
    """Copy a collected SOLVED table (pyarrow) into ``out`` (n, rank+1) (and the
    posterior variances into ``var_out``) and sum its statistics."""
    width = out.shape[1]
    ids = [np.frombuffer(b, dtype=np.int32) for b in tbl.column("row_ids").to_pylist()]
    for r, fac in zip(ids, tbl.column("factors").to_pylist()):
        if r.size:
            out[r] = np.frombuffer(fac, dtype=np.float64).reshape(r.size, width)
    if var_out is not None:
        for r, var in zip(ids, tbl.column("variances").to_pylist()):
            if r.size:
                var_out[r] = np.frombuffer(var, dtype=np.float64).reshape(r.size, width)
    return {name: float(np.sum(tbl.column(name).to_numpy())) if tbl.num_rows else 0.0
            for name in _SUMS}


def _read_counts(vocab: DataFrame, n: int) -> np.ndarray:
    tbl = vocab.select("idx", "n_ratings").toArrow()
    counts = np.zeros(n, dtype=np.int64)
    counts[tbl.column("idx").to_numpy()] = tbl.column("n_ratings").to_numpy()
    return counts


@dataclass
class TrainState:
    """Everything a run carries from epoch to epoch (and what a checkpoint holds).

    ``user``/``item``: (n, rank + 1) factors and bias. ``reg_user``/``reg_item``:
    (k,) the current diagonal prior precisions (they move with adaptive priors,
    which also keep each row's posterior variances in ``user_var``/``item_var``).
    BPMF adds the kept samples and its noise precision; early stopping the best
    epoch's copy.
    """

    user: np.ndarray
    item: np.ndarray
    reg_user: np.ndarray
    reg_item: np.ndarray
    user_var: np.ndarray | None = None
    item_var: np.ndarray | None = None
    epoch: int = 0
    noise_var: float = 1.0
    alpha: float = 1.0
    history: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    best: dict | None = None
    stale: int = 0


class ALSTrainer:
    """Runs the ALS loop (or BPMF's Gibbs sampler) for prepared data. Nothing
    here creates a SparkSession.

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
        self.token = uuid.uuid4().hex        # names this packed layout in workers' stores
        self.warm = {"user": False, "item": False}
        self.block_mb = {"user": 0.0, "item": 0.0}
        self.resident_stats = {"light_chunks": 0, "resent_chunks": 0}

    @property
    def k(self) -> int:
        return self.params.k

    @property
    def total_epochs(self) -> int:
        p = self.params
        return p.burn_in + p.samples if p.model == "bpmf" else p.epochs

    def with_params(self, params: PMFParams, callback=None) -> "ALSTrainer":
        """A trainer for other parameters sharing this one's packed layout."""
        other = ALSTrainer(self.spark, self.data, params.replace(blocks=self.blocks), callback)
        other.packed_users, other.packed_items = self.packed_users, self.packed_items
        other.user_counts, other.item_counts = self.user_counts, self.item_counts
        other.val_dtype = self.val_dtype
        other.token, other.warm, other.block_mb = self.token, self.warm, self.block_mb
        return other

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        t0 = time.perf_counter()
        p, d = self.params, self.data
        sc = self.spark.sparkContext
        sc.setJobDescription("setup: pack ratings into blocks")
        labels = block_labels(self.spark, self.blocks)
        self.packed_users = pack_side(d.ratings, "u", "i", labels, with_test=False,
                                      with_validation=d.n_val > 0,
                                      chunk_ratings=p.chunk_ratings, val_dtype=self.val_dtype)
        self.packed_items = pack_side(d.ratings, "i", "u", labels, with_test=True,
                                      chunk_ratings=p.chunk_ratings, val_dtype=self.val_dtype)
        vbytes = 4 if self.val_dtype == "float32" else 8
        for name, packed in (("user", self.packed_users), ("item", self.packed_items)):
            rows = packed.groupBy("block").agg(F.sum("nnz").alias("nnz"),
                                               F.sum("n_test").alias("n_test"),
                                               F.count(F.lit(1)).alias("chunks")).collect()
            nnz = sorted(int(r["nnz"]) for r in rows)
            wire = sum(int(r["nnz"]) * (4 + vbytes) + int(r["n_test"]) * (9 + vbytes)
                       for r in rows)
            self.block_mb[name] = wire / max(1, len(rows)) / (1 << 20)
            log.info("%s blocks: %d, ratings per block %s..%s, %d chunk(s), %.1f MB per block%s",
                     name, len(rows), nnz[0] if nnz else 0, nnz[-1] if nnz else 0,
                     sum(int(r["chunks"]) for r in rows), self.block_mb[name],
                     " (kept in the Python workers between epochs)"
                     if self.uses_resident(name) else "")
        self.user_counts = _read_counts(d.users, d.n_users)
        self.item_counts = _read_counts(d.items, d.n_items)
        sc.setJobDescription(None)
        self.setup_seconds = time.perf_counter() - t0

    def initial_reg(self, lam: float) -> np.ndarray:
        p = self.params
        reg = np.full(self.k, float(lam))
        if p.biases:
            reg[p.rank] = p.lambda_bias
        return reg

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
        st = TrainState(user=state[0], item=state[1], reg_user=self.initial_reg(p.lambda_u),
                         reg_item=self.initial_reg(p.lambda_v))
        if p.priors != "fixed":
            # the prior's variances (noise variance 1 in z units) as the starting posterior
            for name, reg, counts in (("user_var", st.reg_user, self.user_counts),
                                      ("item_var", st.reg_item, self.item_counts)):
                var = np.zeros((counts.size, p.rank + 1))
                var[:, :self.k] = 1.0 / np.maximum(reg, 1e-6)
                var[counts == 0] = 0.0
                setattr(st, name, var)
        return st

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

    def solve_kwargs(self, solving: str, metrics: bool, reg=None) -> dict:
        p, d = self.params, self.data
        if reg is None:
            reg = self.initial_reg(p.lambda_u if solving == "user" else p.lambda_v)
        return dict(rank=p.rank, biases=p.biases, reg=tuple(float(x) for x in reg),
                    count_scaling=p.reg_scaling == "count", mu=d.mu, sigma=d.sigma,
                    lo=d.rating_lo, hi=d.rating_hi, link=p.link, clip=p.clip,
                    val_dtype=self.val_dtype, gram_dtype=p.gram_dtype, metrics=metrics)

    def half_epoch_frame(self, solving: str, fixed_side: np.ndarray, metrics: bool = False,
                         reg=None, extra=None, light: bool = False, blocks=None):
        """(DataFrame, broadcast) for solving ``solving`` ('user'/'item') against
        ``fixed_side``; the caller destroys the broadcast after collecting.

        ``light``: send only the chunks' keys (workers use their resident copies);
        ``blocks``: only these blocks (the full data, for chunks reported missing).
        """
        design, offset = self._design(fixed_side)
        bc = self.spark.sparkContext.broadcast((design, offset, extra))
        packed = self.packed_users if solving == "user" else self.packed_items
        if light:
            packed = packed.select("block", "chunk", "n_rows", "nnz", "n_test")
        if blocks is not None:
            packed = packed.where(F.col("block").isin([int(b) for b in blocks]))
        kw = self.solve_kwargs(solving, metrics, reg)
        if self.uses_resident(solving):
            kw["resident"] = ((self.token, solving), self.params.resident_mb)
        return solve_frame(packed, bc, **kw), bc

    def uses_resident(self, solving: str) -> bool:
        """Keep blocks in the workers only where it pays: a miss costs one more Spark job
        (~0.1 s), so blocks must be big enough for the saved transfer to outweigh it."""
        return (self.params.resident_mb > 0
                and self.block_mb[solving] >= RESIDENT_MIN_BLOCK_MB)

    def _run(self, solving, fixed_side, metrics, reg, extra, light=False, blocks=None):
        df, bc = self.half_epoch_frame(solving, fixed_side, metrics, reg, extra, light, blocks)
        try:
            return df.toArrow()
        finally:
            bc.destroy(blocking=False)

    def half_epoch(self, solving: str, fixed_side: np.ndarray, out: np.ndarray,
                   metrics: bool = False, reg=None, extra=None,
                   var_out: np.ndarray | None = None) -> dict:
        """Solve one side; returns the summed statistics."""
        import pyarrow.compute as pc

        resident = self.uses_resident(solving)
        if not (resident and self.warm[solving]):
            tbl = self._run(solving, fixed_side, metrics, reg, extra)
            self.warm[solving] = resident
            return _collect_solved(tbl, out, var_out)
        tbl = self._run(solving, fixed_side, metrics, reg, extra, light=True)
        missing = pc.filter(tbl.column("block"), tbl.column("missing")).to_pylist()
        self.resident_stats["light_chunks"] += tbl.num_rows
        if missing:
            # the workers that ran these blocks do not hold them: send those blocks again
            gone = sorted(set(missing))
            keep = pc.invert(pc.is_in(tbl.column("block"), value_set=pa.array(gone, pa.int32())))
            resent = self._run(solving, fixed_side, metrics, reg, extra, blocks=gone)
            self.resident_stats["resent_chunks"] += resent.num_rows
            tbl = pa.concat_tables([tbl.filter(keep), resent])
        return _collect_solved(tbl, out, var_out)

    def _variational(self, state: TrainState, fixed_var: np.ndarray) -> dict:
        """The fixed side's posterior variances for a variational half-epoch."""
        r = self.params.rank
        if self.params.biases:
            design_var = np.zeros((fixed_var.shape[0], r + 1))
            design_var[:, :r] = fixed_var[:, :r]        # the ones column is certain
            offset_var = fixed_var[:, r].copy()
        else:
            design_var, offset_var = np.ascontiguousarray(fixed_var[:, :r]), None
        return {"design_var": design_var, "offset_var": offset_var,
                "noise_var": state.noise_var}

    def objective(self, state: TrainState, sse_z: float) -> float:
        """E of the module docstring for the state's factors and priors."""
        p = self.params
        total = 0.5 * sse_z
        for m, counts, reg in ((state.user, self.user_counts, state.reg_user),
                               (state.item, self.item_counts, state.reg_item)):
            s = counts.astype(np.float64) if p.reg_scaling == "count" else (counts > 0) * 1.0
            x = m[:, :self.k]
            total += 0.5 * float(s @ ((x ** 2) @ reg))
        return total

    def _bayes(self, state: TrainState, solving: str, rng: np.random.Generator) -> dict:
        """BPMF: hyperparameters of ``solving``'s side drawn given its current rows,
        and the standard normal draws for its conditional samples."""
        side = state.user if solving == "user" else state.item
        counts = self.user_counts if solving == "user" else self.item_counts
        x = side[counts > 0, :self.k]
        mu, lam = sample_normal_wishart(rng, x)
        noise = rng.standard_normal((side.shape[0], self.k))
        return {"prior_precision": lam, "prior_shift": lam @ mu, "alpha": state.alpha,
                "noise": noise}

    def _update_priors(self, state: TrainState, expected_sse: float, n: int) -> None:
        """Variational-EM update of the noise variance and both sides' priors."""
        p = self.params
        state.noise_var = noise_variance(expected_sse, n)
        for side, counts in (("user", self.user_counts), ("item", self.item_counts)):
            m = state.user if side == "user" else state.item
            v = state.user_var if side == "user" else state.item_var
            x, var = m[counts > 0, :self.k], v[counts > 0, :self.k]
            reg = np.empty(self.k)
            fac = slice(0, p.rank)
            reg[fac] = state.noise_var / prior_variances(x[:, fac], var[:, fac], p.priors)
            if p.biases:
                b = [p.rank]
                reg[p.rank] = state.noise_var / prior_variances(x[:, b], var[:, b],
                                                                "spherical")[0]
            if side == "user":
                state.reg_user = reg
            else:
                state.reg_item = reg

    def run_epoch(self, state: TrainState) -> EpochMetrics:
        p = self.params
        e = state.epoch + 1
        total = self.total_epochs
        sc = self.spark.sparkContext
        t0 = time.perf_counter()
        bpmf = p.model == "bpmf"
        vb = p.priors != "fixed"
        rng = np.random.default_rng([p.seed, e]) if bpmf else None
        verb = "sample" if bpmf else "solve"
        sc.setJobDescription(f"epoch {e}/{total}: {verb} users")
        extra = (self._bayes(state, "user", rng) if bpmf
                 else self._variational(state, state.item_var) if vb else None)
        self.half_epoch("user", state.item, state.user, reg=state.reg_user, extra=extra,
                        var_out=state.user_var)
        sc.setJobDescription(f"epoch {e}/{total}: {verb} items")
        extra = (self._bayes(state, "item", rng) if bpmf
                 else self._variational(state, state.user_var) if vb else None)
        sums = self.half_epoch("item", state.user, state.item, metrics=True, reg=state.reg_item,
                               extra=extra, var_out=state.item_var)
        sc.setJobDescription(None)
        if not (np.isfinite(state.user).all() and np.isfinite(state.item).all()):
            raise TrainingDiverged(f"training diverged at epoch {e}: non-finite factors "
                                   f"(raise --lambda-u/--lambda-v)")
        if vb and e % p.prior_update_every == 0:
            self._update_priors(state, sums["sse_z"] + sums["esse"], int(sums["n_train"]))
        if bpmf:
            state.alpha = sample_noise_precision(rng, sums["sse_z"], int(sums["n_train"]))
            state.noise_var = 1.0 / state.alpha
            if e > p.burn_in and (e - p.burn_in) % p.thin == 0:
                state.samples.append((state.user.copy(), state.item.copy()))
        m = self._metrics(e, sums, state, time.perf_counter() - t0)
        state.epoch = e
        state.history.append(m)
        if p.early_stopping and np.isfinite(m.val_rmse):
            if state.best is None or m.val_rmse < state.best["metrics"].val_rmse:
                state.best = {"metrics": m, "user": state.user.copy(),
                              "item": state.item.copy()}
                state.stale = 0
            else:
                state.stale += 1
        return m

    def _metrics(self, e: int, sums: dict, state: TrainState, seconds: float) -> EpochMetrics:
        def rm(sse, n):
            return math.sqrt(sse / n) if n else NAN

        def ma(sae, n):
            return sae / n if n else NAN

        fac = slice(0, self.params.rank)
        return EpochMetrics(
            epoch=e,
            train_rmse=rm(sums["sse"], sums["n_train"]), train_mae=ma(sums["sae"], sums["n_train"]),
            test_rmse=rm(sums["test_sse"], sums["n_test"]),
            test_mae=ma(sums["test_sae"], sums["n_test"]),
            objective=self.objective(state, sums["sse_z"]) if self.params.model == "pmf" else NAN,
            seconds=seconds,
            val_rmse=rm(sums["val_sse"], sums["n_val"]), val_mae=ma(sums["val_sae"], sums["n_val"]),
            lambda_u=float(np.mean(state.reg_user[fac])),
            lambda_v=float(np.mean(state.reg_item[fac])),
            noise_var=state.noise_var)

    def fit(self, state: TrainState | None = None,
            after_epoch: Callable[[TrainState], None] | None = None) -> TrainState:
        """Run the remaining epochs; returns the final state (for early stopping,
        the best epoch's factors; for BPMF, the last sample and the kept ones).
        ``after_epoch`` sees the state after every epoch (checkpoints use it)."""
        if self.packed_users is None:
            self.setup()
        state = state or self.initial_state()
        p = self.params
        while state.epoch < self.total_epochs:
            m = self.run_epoch(state)
            stop = self.callback is not None and self.callback(m) is False
            if after_epoch is not None:
                after_epoch(state)
            if stop:
                break
            if p.early_stopping and state.stale >= p.early_stopping:
                log.info("early stopping after epoch %d: no better validation RMSE for %d "
                         "epoch(s); keeping epoch %d", m.epoch, state.stale,
                         state.best["metrics"].epoch)
                break
        return state

    def final_metrics(self, state: TrainState) -> EpochMetrics:
        """The metrics the run reports: the last epoch's, the best epoch's with early
        stopping, or those of the averaged prediction for BPMF."""
        if self.params.early_stopping and state.best is not None:
            return state.best["metrics"]
        if self.params.model == "bpmf" and state.samples:
            return self.evaluate(self.model(state), state)
        return state.history[-1]

    def evaluate(self, model: FactorModel, state: TrainState) -> EpochMetrics:
        """Train and test errors of a fixed model, one pass over the item layout."""
        t0 = time.perf_counter()
        shared = self.spark.sparkContext.broadcast(
            (model.U, model.user_bias, model.V, model.item_bias))
        d, p = self.data, self.params
        fn = functools.partial(evaluate_block, shared=shared, mu=d.mu, sigma=d.sigma,
                               lo=d.rating_lo, hi=d.rating_hi, link=p.link, clip=p.clip,
                               val_dtype=self.val_dtype)
        self.spark.sparkContext.setJobDescription("evaluate the averaged model")
        tbl = self.packed_items.groupBy("block").applyInPandas(fn, EVAL_SCHEMA).toArrow()
        self.spark.sparkContext.setJobDescription(None)
        shared.destroy(blocking=False)
        s = {c: float(np.sum(tbl.column(c).to_numpy())) for c in tbl.column_names
             if c not in ("block", "chunk")}
        last = state.history[-1]
        return EpochMetrics(
            epoch=state.epoch, train_rmse=math.sqrt(s["train_sse"] / max(s["n_train"], 1)),
            train_mae=s["train_sae"] / max(s["n_train"], 1),
            test_rmse=math.sqrt(s["test_sse"] / max(s["n_test"], 1)),
            test_mae=s["test_sae"] / max(s["n_test"], 1), objective=NAN,
            seconds=time.perf_counter() - t0, lambda_u=last.lambda_u, lambda_v=last.lambda_v,
            noise_var=last.noise_var)

    def model(self, state: TrainState) -> FactorModel:
        r, d, p = self.params.rank, self.data, self.params
        if p.model == "bpmf" and state.samples:
            n = len(state.samples)
            U = np.hstack([u[:, :r] for u, _ in state.samples]) / math.sqrt(n)
            V = np.hstack([v[:, :r] for _, v in state.samples]) / math.sqrt(n)
            ub = np.mean([u[:, r] for u, _ in state.samples], axis=0)
            ib = np.mean([v[:, r] for _, v in state.samples], axis=0)
        else:
            user, item = state.user, state.item
            if p.early_stopping and state.best is not None:
                user, item = state.best["user"], state.best["item"]
            U, V, ub, ib = user[:, :r], item[:, :r], user[:, r], item[:, r]
        return FactorModel(U=U.copy(), V=V.copy(), user_bias=ub.copy(), item_bias=ib.copy(),
                           mu=d.mu, sigma=d.sigma, lo=d.rating_lo, hi=d.rating_hi,
                           link=p.link, clip=p.clip)

    def release(self) -> None:
        for df in (self.packed_users, self.packed_items):
            if df is not None:
                df.unpersist()
