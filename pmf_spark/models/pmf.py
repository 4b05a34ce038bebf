r"""PMF by alternating least squares: the MAP estimate with fixed Gaussian priors.

The model
---------
Ratings are standardised with the training mean and standard deviation,
:math:`z_{ij} = (r_{ij} - \mu) / \sigma`. PMF (Salakhutdinov & Mnih 2007) puts
Gaussian noise on the ratings and zero-mean Gaussian priors on the factors,

.. math::

    z_{ij} \sim N(u_i^\top v_j + a_i + b_j,\ \sigma_z^2), \quad
    u_i \sim N(0, \sigma_U^2 I), \quad v_j \sim N(0, \sigma_V^2 I), \quad
    a_i, b_j \sim N(0, \sigma_B^2)

(the biases a, b are on by default; ``biases=False`` gives the paper's plain PMF).
Its MAP estimate minimises the L2-regularised squared error

.. math::

    E = \tfrac12 \sum_{(i,j) \in \mathrm{train}} (z_{ij} - u_i^\top v_j - a_i - b_j)^2
        + \tfrac12 \sum_i s_i (\lambda_U \lVert u_i\rVert^2 + \lambda_B a_i^2)
        + \tfrac12 \sum_j s_j (\lambda_V \lVert v_j\rVert^2 + \lambda_B b_j^2)

with :math:`\lambda_U = \sigma_z^2/\sigma_U^2`, :math:`\lambda_V = \sigma_z^2/\sigma_V^2`,
:math:`\lambda_B = \sigma_z^2/\sigma_B^2`. **Regularisation scaling**: with
``reg_scaling="none"`` (the default, as in the PMF paper) :math:`s_i = 1`: λ is *not*
scaled by the row's rating count. With ``reg_scaling="count"``, :math:`s_i = n_i`, the
row's number of training ratings (ALS-WR, Zhou et al. 2008, which is what Spark
MLlib's explicit ALS does; MLlib's ``regParam`` corresponds to our λ with ``count``
scaling, up to the z-scoring of ratings).

The update
----------
With one side fixed each row is a ridge regression. For user i with rated items I
(the fixed design gets a column of ones for the user's bias):

.. math::

    [u_i; a_i] = (\tilde V_I^\top \tilde V_I + s_i \Lambda)^{-1} \tilde V_I^\top (z_{iI} - b_I),
    \quad \tilde V = [V, 1], \ \Lambda = \mathrm{diag}(\lambda_U, \dots, \lambda_U, \lambda_B)

and symmetrically for items. Each half-step minimises E exactly over one side, so E
never increases across half-steps. Rows without training ratings stay at the prior
mean (0); they then predict the mean plus the known side's bias.

- **Broadcast** per half-step (:class:`RidgePayload`): the fixed side's design
  ``[V, 1]`` (n_fixed, k), its biases, the diagonal Λ (k,), the read-out.
- **Block kernel** (:func:`ridge_kernel`): the ridge rows of a chunk.
- **Driver update** after an epoch: none (the priors are fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import ridge_rows

from .base import BlockSolve, HalfPayload, KernelTask, Strategy, TrainState


@dataclass(frozen=True)
class RidgePayload(HalfPayload):
    """Ridge rows: ``reg`` float64 (k,) the diagonal prior precision Λ; with
    ``count_scaling`` each row's Λ is multiplied by its number of ratings."""

    reg: np.ndarray
    count_scaling: bool


def ridge_kernel(c: Chunk, p: RidgePayload, want_fitted: bool) -> BlockSolve:
    """Solve every row of chunk ``c`` against the broadcast fixed side."""
    scale = c.counts.astype(np.float64) if p.count_scaling else None
    sol = ridge_rows(c.indptr, c.cols, p.targets(c), p.design, p.reg, row_scale=scale,
                     with_fitted=want_fitted, gram_dtype=p.gram_dtype, backend=p.kernel)
    return BlockSolve(sol.x, sol.fitted)


class MapPMF(Strategy):
    """PMF's MAP estimate by ALS with fixed priors (see the module docstring)."""

    name = "pmf"

    @classmethod
    def driver_copies(cls, fit) -> tuple[int, int]:
        # adaptive priors also hold both sides' posterior variances
        return (6 if fit.priors == "fixed" else 8), 3

    def tasks(self, state: TrainState, solving: str, epoch: int, rng) -> list[KernelTask]:
        design, offset = self.design(state.side("item" if solving == "user" else "user"))
        payload = RidgePayload(design=design, offset=offset, readout=self.ctx.readout,
                               gram_dtype=self.ctx.gram_dtype, kernel=self.ctx.kernel,
                               reg=np.asarray(state.reg(solving), dtype=np.float64),
                               count_scaling=self.fit.reg_scaling == "count")
        return [KernelTask(ridge_kernel, payload, self.model.rank + 1)]
