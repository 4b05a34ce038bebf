r"""Implicit-feedback ALS (Hu, Koren & Volinsky, "Collaborative filtering for implicit
feedback datasets", ICDM 2008): what Spark MLlib's ``implicitPrefs`` fits.

The data are events, not ratings: plays, clicks, purchases, or ratings taken as mere
presence. Every (user, item) cell of the trained catalogue has a preference
:math:`p_{ij} = 1` if the pair was observed, else 0, and a confidence

.. math::

    c_{ij} = 1 + \alpha\, g(r_{ij}), \qquad g(r) = r \ (\texttt{confidence="linear"}),
    \ \log(1 + r / \epsilon) \ (\texttt{"log"}) \ \text{or}\ 1 \ (\texttt{"presence"}),

with :math:`c = 1` for unobserved cells (:math:`r_{ij}` is the event count or weight;
duplicates are summed at input). There are no biases and no z-scoring.

The objective
-------------

.. math::

    E = \tfrac12 \sum_{i,j} c_{ij} (p_{ij} - u_i^\top v_j)^2
        + \tfrac12 \lambda_U \sum_i \lVert u_i \rVert^2
        + \tfrac12 \lambda_V \sum_j \lVert v_j \rVert^2

The update
----------
With the items fixed, user i's normal equations are

.. math::

    (V^\top V + V_I^\top (C_I - I) V_I + \lambda_U I)\, u_i = V_I^\top C_I\, p_I

-- the all-items Gram :math:`V^\top V` (k x k) is computed once per half-step and
broadcast; each row adds only its own entries with weights :math:`c - 1 = \alpha g(r)`
and targets :math:`c`. Symmetrically for items. The scores :math:`u_i^\top v_j` rank
items; they are preferences, not ratings, so RMSE means nothing here: the model is
judged by ranking metrics.

- **Broadcast** (:class:`ImplicitPayload`): the fixed side's factors, λ, α, the
  confidence function and :math:`V^\top V`.
- **Block kernel** (:func:`implicit_kernel`): the rows' solves; with fitted values, the
  block's observed-cell part of E.
- **Driver update**: none; the objective's all-cells part :math:`\sum_i u_i^\top (V^\top V)
  u_i` is computed on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import ReadOut, ridge_rows

from ..errors import ConfigError
from .base import (
    SIDES,
    BlockSolve,
    FactorModel,
    HalfPayload,
    KernelTask,
    Strategy,
    TrainState,
    other,
)


def confidence_weight(values: np.ndarray, alpha: float, kind: str, epsilon: float) -> np.ndarray:
    """α g(r): the extra confidence of observed cells (c - 1)."""
    v = np.asarray(values, dtype=np.float64)
    if kind == "presence":
        return np.full(v.shape, float(alpha))
    return alpha * (v if kind == "linear" else np.log1p(v / epsilon))


@dataclass(frozen=True)
class ImplicitPayload(HalfPayload):
    """``reg`` (k,) λ; ``alpha``, ``confidence`` ('linear'|'log'), ``epsilon``; ``base_gram``
    (k, k) the fixed side's F^T F over its trained rows."""

    reg: np.ndarray
    alpha: float
    confidence: str
    epsilon: float
    base_gram: np.ndarray


def implicit_kernel(c: Chunk, p: ImplicitPayload, want_fitted: bool) -> BlockSolve:
    """Solve every row of chunk ``c``: preference 1 with confidence 1 + α g(value)."""
    w = confidence_weight(c.vals, p.alpha, p.confidence, p.epsilon)
    sol = ridge_rows(c.indptr, c.cols, 1.0 + w, p.design, p.reg, with_fitted=want_fitted,
                     gram_dtype=p.gram_dtype, backend=p.kernel, weights=w, base_gram=p.base_gram)
    extra = 0.0
    if sol.fitted is not None:
        # observed cells' part of E: c (1 - s)^2 - s^2 (the s^2 of every cell is added
        # on the driver from the Gram matrices)
        s = sol.fitted
        extra = float(((1.0 + w) * (1.0 - s) ** 2 - s ** 2).sum())
    return BlockSolve(sol.x, sol.fitted, esse=extra)


class ImplicitALS(Strategy):
    """Implicit-feedback ALS (see the module docstring)."""

    name = "implicit"
    ranks = True
    predicts_ratings = False
    fits_events = True
    own_params = (("alpha", "alpha"),)

    @classmethod
    def check(cls, fit) -> None:
        if fit.priors != "fixed":
            raise ConfigError("priors: implicit ALS uses fixed priors")

    @classmethod
    def normalize_model(cls, model):
        """Implicit ALS has no biases."""
        return model.replace(biases=False)

    def design(self, fixed: np.ndarray):
        return np.ascontiguousarray(fixed[:, :self.model.rank]), None

    def factor_model(self, state: TrainState, user=None, item=None) -> FactorModel:
        """Scores are preferences u.v: the read-out is the identity, not a rating scale."""
        m = super().factor_model(state, user, item)
        m.readout = ReadOut(mu=0.0, sigma=1.0, lo=-np.inf, hi=np.inf, clip=False)
        return m

    def tasks(self, state: TrainState, solving: str, epoch: int, rng) -> list[KernelTask]:
        fixed = other(solving)
        design, _ = self.design(state.side(fixed))
        trained = design[self.ctx.counts(fixed) > 0]
        payload = ImplicitPayload(design=design, offset=None, readout=self.ctx.readout,
                                  gram_dtype=self.ctx.gram_dtype, kernel=self.ctx.kernel,
                                  reg=np.asarray(state.reg(solving), dtype=np.float64),
                                  alpha=self.fit.alpha, confidence=self.fit.confidence,
                                  epsilon=self.fit.epsilon, base_gram=trained.T @ trained)
        return [KernelTask(implicit_kernel, payload, self.model.rank + 1, rating_model=False)]

    def after_epoch(self, state: TrainState, sums: dict, epoch: int, rng) -> None:
        state.extra["obs_part"] = float(sums["esse"])

    def objective(self, state: TrainState, sse_z: float) -> float:
        r = self.model.rank
        V = state.item[self.ctx.item_counts > 0, :r]
        U = state.user[self.ctx.user_counts > 0, :r]
        all_sq = float(np.einsum("ij,jk,ik->", U, V.T @ V, U))
        total = 0.5 * (all_sq + state.extra.get("obs_part", float("nan")))
        for side in SIDES:
            s = (self.ctx.counts(side) > 0) * 1.0
            total += 0.5 * float(s @ ((state.side(side)[:, :r] ** 2) @ state.reg(side)))
        return total
