r"""PMF with adaptive priors: variational EM over the noise and prior variances.

PMF's "automatic complexity control" re-estimates the noise variance and the prior
variances from the current factors and sets :math:`\lambda = \sigma^2/\sigma_p^2`
per side, one variance per side (``priors="spherical"``) or per latent dimension
(``"diagonal"``). With point estimates that collapses every factor to zero, so this
runs mean-field variational EM with diagonal posterior covariances (Lim & Teh 2007);
the hyperparameter updates and their derivation are in :mod:`pmf_spark.models.priors`.

The objective is the model's evidence lower bound; per half-step, with the other
side's posterior means :math:`\bar F` and variances :math:`C_j` fixed, row i's
posterior is Gaussian with

.. math::

    A_i = \bar F_I^\top \bar F_I + \mathrm{diag}\Big(\sum_{j \in I} C_j\Big) + \Lambda,
    \qquad \bar x_i = A_i^{-1} \bar F_I^\top t_i, \qquad
    C_i = \sigma^2 \mathrm{diag}(A_i^{-1})

(the ones column of the bias is certain: its variance is 0). The E-step also returns
each block's expected squared error beyond the fitted residuals,
:math:`\sum_d C_{id} (\mathrm{diag}(\bar F_I^\top \bar F_I) + \sum_j C_j)_d +
\sum_d \bar x_{id}^2 \sum_j C_{jd}` plus the fixed side's bias variances.

- **Broadcast** (:class:`VariationalPayload`): the design and offsets of the fixed
  side's posterior means, their posterior variances (n_fixed, k) and (n_fixed,), Λ,
  the current noise variance.
- **Block kernel** (:func:`variational_kernel`): the rows' means, variances, and
  the block's expected squared error.
- **Driver update** every ``prior_update_every`` epochs: the noise variance from
  :math:`E[\mathrm{SSE}]` and each side's prior variances from the rows' second
  moments (M-step), i.e. new λ = σ²/σ_p².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import vb_rows
from pmf_spark.models.priors import noise_variance, prior_variances

from .base import SIDES, BlockSolve, HalfPayload, KernelTask, Strategy, TrainState, other
from .pmf import MapPMF


@dataclass(frozen=True)
class VariationalPayload(HalfPayload):
    """``reg`` (k,) Λ; ``design_var`` (n_fixed, k) the fixed side's posterior variances
    of its design columns; ``offset_var`` (n_fixed,) its bias variances or None;
    ``noise_var`` σ² in z units."""

    reg: np.ndarray
    design_var: np.ndarray
    offset_var: np.ndarray | None
    noise_var: float


def variational_kernel(c: Chunk, p: VariationalPayload, want_fitted: bool) -> BlockSolve:
    """Posterior means and variances of a chunk's rows, and its E[SSE] excess."""
    sol = vb_rows(c.indptr, c.cols, p.targets(c), p.design, p.reg, p.design_var,
                  with_fitted=want_fitted, gram_dtype=p.gram_dtype, backend=p.kernel)
    assert sol.inv_diag is not None and sol.gram_diag is not None and sol.var_sum is not None
    var = p.noise_var * sol.inv_diag
    esse = float((var * (sol.gram_diag + sol.var_sum)).sum()
                 + (sol.x ** 2 * sol.var_sum).sum())
    if p.offset_var is not None:
        esse += float(p.offset_var[c.cols].sum())
    return BlockSolve(sol.x, sol.fitted, var=var, esse=esse)


class AdaptivePriorPMF(MapPMF):
    """PMF with priors re-estimated by variational EM (see the module docstring)."""

    name = "pmf"

    def init_state(self) -> TrainState:
        st = super().init_state()
        k, rank = self.model.k, self.model.rank
        # the prior's variances (noise variance 1 in z units) as the starting posterior
        for side in SIDES:
            var = np.zeros((self.ctx.size(side), rank + 1))
            var[:, :k] = 1.0 / np.maximum(st.reg(side), 1e-6)
            var[self.ctx.counts(side) == 0] = 0.0
            st.extra[f"{side}_var"] = var
        return st

    def _design_var(self, fixed_var: np.ndarray):
        r = self.model.rank
        if self.model.biases:
            design_var = np.zeros((fixed_var.shape[0], r + 1))
            design_var[:, :r] = fixed_var[:, :r]        # the ones column is certain
            return design_var, fixed_var[:, r].copy()
        return np.ascontiguousarray(fixed_var[:, :r]), None

    def tasks(self, state: TrainState, solving: str, epoch: int, rng) -> list[KernelTask]:
        fixed = other(solving)
        design, offset = self.design(state.side(fixed))
        design_var, offset_var = self._design_var(state.extra[f"{fixed}_var"])
        payload = VariationalPayload(
            design=design, offset=offset, readout=self.ctx.readout,
            gram_dtype=self.ctx.gram_dtype, kernel=self.ctx.kernel,
            reg=np.asarray(state.reg(solving), np.float64),
            design_var=design_var, offset_var=offset_var, noise_var=state.noise_var)
        return [KernelTask(variational_kernel, payload, self.model.rank + 1, variances=True)]

    def absorb(self, state: TrainState, solving: str, results) -> None:
        state.set_side(solving, results[0].factors)
        state.extra[f"{solving}_var"] = results[0].variances

    def after_epoch(self, state: TrainState, sums: dict, epoch: int, rng) -> None:
        if epoch % self.fit.prior_update_every:
            return
        state.noise_var = noise_variance(sums["sse_z"] + sums["esse"], int(sums["n_train"]))
        rank, k = self.model.rank, self.model.k
        for side in SIDES:
            has = self.ctx.counts(side) > 0
            x = state.side(side)[has, :k]
            var = state.extra[f"{side}_var"][has, :k]
            reg = np.empty(k)
            fac = slice(0, rank)
            reg[fac] = state.noise_var / prior_variances(x[:, fac], var[:, fac],
                                                         self.fit.priors)
            if self.model.biases:
                b = [rank]
                reg[rank] = state.noise_var / prior_variances(x[:, b], var[:, b],
                                                              "spherical")[0]
            if side == "user":
                state.reg_user = reg
            else:
                state.reg_item = reg


class PMFFamily(MapPMF):
    """``--model pmf``: :class:`MapPMF` with fixed priors, :class:`AdaptivePriorPMF`
    (the same model with its prior and noise variances learned) with
    ``--priors adaptive``: the registry's ``pmf`` entry. The choice lives here, beside
    the subclass, so that :mod:`pmf_spark.models.pmf` never imports this module."""

    @classmethod
    def create(cls, params, ctx) -> Strategy:
        return (MapPMF if params.fit.priors == "fixed" else AdaptivePriorPMF)(params, ctx)
