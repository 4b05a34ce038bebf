r"""Missing-data PMF (Steck, "Training and testing of recommender systems on data
missing not at random", KDD 2010): a ranking-aware model on the ALS machinery.

Ratings are missing not at random: people rate what they chose to watch, so a model
fitted only to observed ratings ranks obscure items with a few high ratings first.
Missing-data PMF treats every unobserved (user, item) cell of the trained catalogue as
an imputed rating :math:`r_m` (low: ``missing_rating``, by default the bottom of the
rating scale) with a small weight :math:`w_m` (``missing_weight``).

The objective
-------------
In z units (:math:`z_m = (r_m - \mu)/\sigma`), with :math:`\hat z_{ij} = u_i^\top v_j
+ a_i + b_j` and the same priors as MAP PMF (:mod:`pmf_spark.models.pmf`),

.. math::

    E = \tfrac12 \sum_{(i,j) \in \mathrm{obs}} (z_{ij} - \hat z_{ij})^2
        + \tfrac12 w_m \sum_{(i,j) \notin \mathrm{obs}} (z_m - \hat z_{ij})^2
        + \tfrac12 \sum_i (\lambda_U \lVert u_i \rVert^2 + \lambda_B a_i^2)
        + \tfrac12 \sum_j (\lambda_V \lVert v_j \rVert^2 + \lambda_B b_j^2)

over the users and items with training ratings.

The update
----------
With the items fixed (:math:`f_j = [v_j; 1]`, offsets :math:`b_j`), user i's normal
equations are, writing the sum over unobserved cells as all cells minus observed ones,

.. math::

    \big(w_m G + (1 - w_m) F_I^\top F_I + \Lambda\big) x_i
      = w_m h + F_I^\top \big((z_{iI} - b_I) - w_m (z_m - b_I)\big),
    \qquad G = \sum_j f_j f_j^\top,\ h = \sum_j f_j (z_m - b_j)

The all-items terms G (k x k) and h (k) are computed once per half-step from the fixed
factors and broadcast with them, so a row costs what a ridge row costs; symmetrically
for items. Each half-step minimises E exactly over one side.

- **Broadcast** (:class:`MissingDataPayload`): the fixed side's design and offsets, Λ,
  w_m, z_m, and the all-items terms w_m G and w_m h.
- **Block kernel** (:func:`missing_data_kernel`): the rows' solves; with fitted values,
  also the block's :math:`\sum_{\mathrm{obs}} (z_m - \hat z)^2` for the objective.
- **Driver update**: none (fixed priors); the objective's all-cells part is computed on
  the driver from the factors (one k x k product per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import ridge_rows

from ..errors import ConfigError
from .base import SIDES, BlockSolve, HalfPayload, KernelTask, Strategy, TrainState, other


@dataclass(frozen=True)
class MissingDataPayload(HalfPayload):
    """``reg`` (k,) Λ; ``weight`` w_m; ``z_missing`` z_m; ``base_gram`` (k, k) w_m G and
    ``base_rhs`` (k,) w_m h over the fixed side's trained rows."""

    reg: np.ndarray
    weight: float
    z_missing: float
    base_gram: np.ndarray
    base_rhs: np.ndarray


def missing_data_kernel(c: Chunk, p: MissingDataPayload, want_fitted: bool) -> BlockSolve:
    """Solve every row of chunk ``c``: observed cells weigh 1, unobserved w_m."""
    off = p.offset[c.cols] if p.offset is not None else 0.0
    z = p.readout.to_z(c.vals)
    targets = (z - off) - p.weight * (p.z_missing - off)
    sol = ridge_rows(c.indptr, c.cols, targets, p.design, p.reg, with_fitted=want_fitted,
                     gram_dtype=p.gram_dtype, backend=p.kernel, gram_scale=1.0 - p.weight,
                     base_gram=p.base_gram, base_rhs=p.base_rhs)
    extra = 0.0
    if sol.fitted is not None:
        extra = float(((p.z_missing - (sol.fitted + off)) ** 2).sum())
    return BlockSolve(sol.x, sol.fitted, esse=extra)


def all_cells_terms(design: np.ndarray, offset: np.ndarray | None, z: float,
                    trained: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(G, h, c) over the trained fixed rows: G = Σ f f^T, h = Σ f (z - b),
    c = Σ (z - b)^2, so that Σ_j (z - f_j.x - b_j)^2 = x^T G x - 2 x.h + c."""
    F = design[trained]
    t = np.full(F.shape[0], z) - (offset[trained] if offset is not None else 0.0)
    return F.T @ F, F.T @ t, float(t @ t)


class MissingDataPMF(Strategy):
    """Missing-data PMF (see the module docstring)."""

    name = "missing-data"
    ranks = True
    own_params = (("missing_weight", "w_m"),)

    @classmethod
    def check(cls, fit) -> None:
        if fit.priors != "fixed":
            raise ConfigError("priors: missing-data PMF uses fixed priors")
        if fit.reg_scaling != "none":
            raise ConfigError("reg_scaling: missing-data PMF regularises every row the same "
                              "(every row has the whole catalogue as cells): use 'none'")

    def z_missing(self) -> float:
        ro = self.ctx.readout
        r_m = self.fit.missing_rating if self.fit.missing_rating is not None else ro.lo
        return float((r_m - ro.mu) / ro.sigma)

    def tasks(self, state: TrainState, solving: str, epoch: int, rng) -> list[KernelTask]:
        fixed = other(solving)
        design, offset = self.design(state.side(fixed))
        w, zm = self.fit.missing_weight, self.z_missing()
        G, h, _ = all_cells_terms(design, offset, zm, self.ctx.counts(fixed) > 0)
        payload = MissingDataPayload(design=design, offset=offset, readout=self.ctx.readout,
                                     gram_dtype=self.ctx.gram_dtype, kernel=self.ctx.kernel,
                                     reg=np.asarray(state.reg(solving), dtype=np.float64),
                                     weight=w, z_missing=zm, base_gram=w * G, base_rhs=w * h)
        return [KernelTask(missing_data_kernel, payload, self.model.rank + 1)]

    def objective(self, state: TrainState, sse_z: float) -> float:
        """E of the module docstring; ``sse_z`` is the observed cells' squared error and
        the item half-step's extra sum their Σ (z_m - ẑ)^2 (see :meth:`after_epoch`)."""
        obs_missing = state.extra.get("obs_missing_sq", float("nan"))
        design, offset = self.design(state.item)
        G, h, c = all_cells_terms(design, offset, self.z_missing(),
                                  self.ctx.item_counts > 0)
        k = self.model.k
        # user i's cells: Σ_j (z_m - b_j - f_j.x_i)^2 = x^T G x - 2 x.h + c, x = [u_i; a_i]
        X = state.user[self.ctx.user_counts > 0, :k]
        all_sq = float(np.einsum("ij,jk,ik->", X, G, X) - 2 * (X @ h).sum() + X.shape[0] * c)
        total = 0.5 * sse_z + 0.5 * self.fit.missing_weight * (all_sq - obs_missing)
        for side in SIDES:
            s = (self.ctx.counts(side) > 0) * 1.0
            total += 0.5 * float(s @ ((state.side(side)[:, :k] ** 2) @ state.reg(side)))
        return total

    def after_epoch(self, state: TrainState, sums: dict, epoch: int, rng) -> None:
        state.extra["obs_missing_sq"] = float(sums["esse"])
