"""What every model strategy shares: the typed half-step payload, the kernel task the
engine runs, the training state, the trained factors, and the strategy interface.

A strategy is one model's math and nothing else. Per half-step it says what to
broadcast (a frozen payload dataclass) and which top-level block kernel solves a
chunk of rows against it (:class:`KernelTask`); after the half-step it takes the
solved rows into the state (:meth:`Strategy.absorb`); after each epoch it updates
what lives on the driver (:meth:`Strategy.after_epoch`: priors, noise, samples).
The loop (:mod:`pmf_spark.train.loop`) and the engine (:mod:`pmf_spark.engine.spark`) are
written once for all of them. Pure numpy: the kernels run in the Python workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import ReadOut, row_dots

SIDES = ("user", "item")


@dataclass(frozen=True)
class HalfPayload:
    """What every half-step broadcasts (subclassed by each model).

    Attributes:
        design: float64 (n_fixed, k) the fixed side's factors, with a column of ones
            appended when biases are on.
        offset: float64 (n_fixed,) the fixed side's biases, or None without biases.
        readout: z units <-> ratings, for the targets and the metrics.
        gram_dtype: dtype name of the Gram accumulation.
        kernel: 'auto', 'numba' or 'numpy' (:data:`pmf_spark.kernels.rows.BACKENDS`).
    """

    design: np.ndarray
    offset: np.ndarray | None
    readout: ReadOut
    gram_dtype: str
    kernel: str

    def fitted_z(self, c: Chunk, fitted: np.ndarray) -> np.ndarray:
        """Predictions (z units) of the chunk's training entries from the kernel's
        fitted values ``design[cols] . x``."""
        return fitted + (self.offset[c.cols] if self.offset is not None else 0.0)

    def predict_z(self, cols: np.ndarray, x_rows: np.ndarray) -> np.ndarray:
        z = row_dots(self.design[cols], x_rows)
        return z + self.offset[cols] if self.offset is not None else z

    def targets(self, c: Chunk) -> np.ndarray:
        """z-scored ratings minus the fixed side's bias: a rating model's targets."""
        z = self.readout.to_z(c.vals)
        return z - self.offset[c.cols] if self.offset is not None else z


@dataclass(frozen=True)
class BlockSolve:
    """A kernel's answer for one chunk: rows x float64 (n, k), the fitted values
    float64 (nnz,) of its training entries (``design[cols] . x``; when asked), and for
    variational models the rows' posterior variances (n, k) and the expected squared
    error beyond the fitted residuals."""

    x: np.ndarray
    fitted: np.ndarray | None = None
    var: np.ndarray | None = None
    esse: float = 0.0


#: a block kernel: (chunk, payload, want_fitted) -> BlockSolve; top-level, pure
Kernel = Callable[[Chunk, Any, bool], BlockSolve]


@dataclass(frozen=True)
class KernelTask:
    """One model's share of a half-step job: the kernel, what it is given, and what
    comes back. ``width`` is the collected row width (rank + 1: factors, then bias);
    ``rating_model``: its predictions are ratings, so the job computes RMSE/MAE from
    them when metrics are asked for; ``variances``: collect per-row variances too."""

    kernel: Kernel
    payload: HalfPayload
    width: int
    rating_model: bool = True
    variances: bool = False


@dataclass
class HalfResult:
    """A half-step's collected answer for one task: ``factors`` (n_side, width),
    ``variances`` (n_side, width) or None, and the summed statistics."""

    factors: np.ndarray
    variances: np.ndarray | None
    stats: dict[str, float]


@dataclass
class TrainState:
    """Everything a run carries from epoch to epoch (and what a checkpoint holds).

    ``user``/``item``: float64 (n, rank + 1) factors, then bias. ``reg_user``/``reg_item``:
    (k,) the current diagonal prior precisions (λ per unknown). ``noise_var``: the
    noise variance in z units. ``extra``: the strategy's own state, each value an
    ndarray, a number or a list of ndarrays (posterior variances, BPMF's kept samples).
    Early stopping keeps the best epoch in ``best``.
    """

    user: np.ndarray
    item: np.ndarray
    reg_user: np.ndarray
    reg_item: np.ndarray
    noise_var: float = 1.0
    epoch: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    stale: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: the states of models trained beside this one in the same jobs (the ranking model)
    companions: list[TrainState] = field(default_factory=list)

    def side(self, name: str) -> np.ndarray:
        return self.user if name == "user" else self.item

    def set_side(self, name: str, value: np.ndarray) -> None:
        setattr(self, name, value)

    def reg(self, name: str) -> np.ndarray:
        return self.reg_user if name == "user" else self.reg_item


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
    readout: ReadOut

    def predict_z(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return row_dots(self.U[u], self.V[i]) + self.user_bias[u] + self.item_bias[i]

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return self.readout.to_rating(self.predict_z(u, i))


@dataclass(frozen=True)
class TrainContext:
    """What a strategy knows about the data: sizes, training counts per row (int64
    (n,)), the read-out, the Gram dtype and the kernel backend."""

    n_users: int
    n_items: int
    user_counts: np.ndarray
    item_counts: np.ndarray
    readout: ReadOut
    gram_dtype: str
    kernel: str = "auto"

    def counts(self, side: str) -> np.ndarray:
        return self.user_counts if side == "user" else self.item_counts

    def size(self, side: str) -> int:
        return self.n_users if side == "user" else self.n_items


def other(side: str) -> str:
    return "item" if side == "user" else "user"


class Strategy:
    """A model: its math for the loop in :mod:`pmf_spark.train.loop`.

    Subclasses set ``name`` and implement :meth:`tasks`; the defaults here are those
    of a MAP model with fixed diagonal priors.
    """

    name: ClassVar[str] = ""
    #: early stopping keeps the best epoch's factors (a sampler has none to keep)
    supports_early_stopping: ClassVar[bool] = True
    #: the epoch's objective (MAP loss) is meaningful
    has_objective: ClassVar[bool] = True
    #: a ranking model: may be trained beside the rating model to order the top-k lists
    ranks: ClassVar[bool] = False
    #: its predictions are ratings (a model of preferences, like implicit ALS, is not):
    #: RMSE applies, answers fill ``predicted_rating``, the read-out is the rating link
    predicts_ratings: ClassVar[bool] = True
    #: fits which pairs were observed (events), not rating values: the model
    #: ``--feedback implicit`` trains, and beside a rating model it takes every rated
    #: pair as an event (``confidence`` 'presence')
    fits_events: ClassVar[bool] = False
    #: the registry name of the model whose user half-step folds in a new user when
    #: this model's own cannot (a sampler's saved model holds averaged samples, not a
    #: posterior to draw from); None: its own
    fold_in_as: ClassVar[str | None] = None
    #: (parameter, short name) of the hyperparameters only this model has, that a
    #: search draws and a trial line shows
    own_params: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, params, ctx: TrainContext):
        self.params = params
        self.model = params.model
        self.fit = params.fit
        self.ctx = ctx

    @classmethod
    def check(cls, fit) -> None:
        """Model-specific parameter checks (raise ConfigError naming the field)."""

    @classmethod
    def normalize_model(cls, model):
        """The model parameters this model uses (e.g. without biases); by default as given."""
        return model

    @classmethod
    def driver_copies(cls, fit) -> tuple[int, int]:
        """(copies of both sides' (n, rank + 1) state the Python driver holds, copies of
        the larger side the driver JVM holds): the state, a design copy for the
        broadcast and its pickle, the collected half-step; the JVM one broadcast, one
        collected side and the factor tables being written."""
        return 6, 3

    @classmethod
    def memory_note(cls, fit) -> str:
        """What the memory estimate counts beyond the factors, for its message."""
        return ""

    @classmethod
    def create(cls, params, ctx: TrainContext) -> Strategy:
        """The strategy for these parameters (a model may pick a variant)."""
        return cls(params, ctx)

    # ---------------------------------------------------------------- state
    def total_epochs(self) -> int:
        return self.fit.epochs

    def initial_reg(self, side: str) -> np.ndarray:
        f = self.fit
        reg = np.full(self.model.k, float(f.lambda_u if side == "user" else f.lambda_v))
        if self.model.biases:
            reg[self.model.rank] = f.lambda_bias
        return reg

    def row_scale(self, side: str) -> np.ndarray:
        """s_i of the prior term: the row's count (ALS-WR) or 1 (PMF)."""
        counts = self.ctx.counts(side)
        if self.fit.reg_scaling == "count":
            return counts.astype(np.float64)
        return np.ones(counts.size)

    def init_state(self) -> TrainState:
        """Seeded Gaussian factors with the prior's variance; biases 0; rows without
        training ratings at the prior mean 0."""
        f, rank = self.fit, self.model.rank
        rng = np.random.default_rng(f.seed)
        mats = []
        for side in SIDES:
            n, counts = self.ctx.size(side), self.ctx.counts(side)
            lam = f.lambda_u if side == "user" else f.lambda_v
            if f.init_std > 0:
                std = np.full(n, f.init_std)
            elif lam > 0:
                std = 1.0 / np.sqrt(lam * np.maximum(self.row_scale(side), 1.0))
            else:
                std = np.full(n, 1.0 / math.sqrt(rank))
            m = np.zeros((n, rank + 1))
            m[:, :rank] = rng.standard_normal((n, rank)) * std[:, None]
            m[counts == 0] = 0.0
            mats.append(m)
        return TrainState(user=mats[0], item=mats[1], reg_user=self.initial_reg("user"),
                          reg_item=self.initial_reg("item"))

    def design(self, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(design, offset) of a fixed side: [factors, 1] and the biases, or factors only."""
        r = self.model.rank
        if self.model.biases:
            design = np.empty((fixed.shape[0], r + 1))
            design[:, :r] = fixed[:, :r]
            design[:, r] = 1.0
            return design, fixed[:, r].copy()
        return np.ascontiguousarray(fixed[:, :r]), None

    # ---------------------------------------------------------------- the half-steps
    def epoch_rng(self, epoch: int) -> np.random.Generator | None:
        """The random draws of an epoch depend only on (seed, epoch); None when the
        model draws nothing."""
        return None

    def tasks(self, state: TrainState, solving: str, epoch: int,
              rng: np.random.Generator | None) -> list[KernelTask]:
        raise NotImplementedError

    def absorb(self, state: TrainState, solving: str, results: list[HalfResult]) -> None:
        """Take a half-step's solved rows into the state."""
        state.set_side(solving, results[0].factors)

    def after_epoch(self, state: TrainState, sums: dict, epoch: int,
                    rng: np.random.Generator | None) -> None:
        """Driver-side updates after an epoch (priors, noise, samples)."""

    # ---------------------------------------------------------------- reporting
    def objective(self, state: TrainState, sse_z: float) -> float:
        r"""E = ½ SSE_z + ½ Σ_rows s_i Σ_d reg_d x_id² over rows with training ratings."""
        k = self.model.k
        total = 0.5 * sse_z
        for side in SIDES:
            counts = self.ctx.counts(side)
            s = counts.astype(np.float64) if self.fit.reg_scaling == "count" else (counts > 0) * 1.0
            x = state.side(side)[:, :k]
            total += 0.5 * float(s @ ((x ** 2) @ state.reg(side)))
        return total

    def factor_model(self, state: TrainState, user=None, item=None) -> FactorModel:
        """The model to save: from ``user``/``item`` (the best epoch's, with early
        stopping) or the state's current factors."""
        r = self.model.rank
        user = state.user if user is None else user
        item = state.item if item is None else item
        return FactorModel(U=user[:, :r].copy(), V=item[:, :r].copy(),
                           user_bias=user[:, r].copy(), item_bias=item[:, r].copy(),
                           readout=self.ctx.readout)

    def kept_samples(self, state: TrainState) -> int:
        """Samples averaged into the saved model (0 for a point estimate)."""
        return 0

    def reports_averaged_model(self, state: TrainState) -> bool:
        """The final metrics are those of :meth:`factor_model` evaluated afresh (BPMF's
        averaged samples) rather than the last (or best) epoch's."""
        return False
