r"""Bayesian PMF (Salakhutdinov & Mnih 2008) by Gibbs sampling on the ALS machinery.

The model: :math:`z_{ij} \sim N(u_i^\top v_j + a_i + b_j, \alpha^{-1})`; each side's
rows :math:`x_i = [u_i; a_i] \sim N(\mu, \Lambda^{-1})` with a Normal-Wishart
hyperprior (μ0 = 0, β0, W0 = I, ν0 = k), and α ~ Gamma(a0, b0). Predictions average
the kept samples' predictions (the posterior predictive mean); there is no objective.

The update (one Gibbs sweep per epoch):

1. on the driver, draw the user side's (μ_U, Λ_U) from their Normal-Wishart posterior
   given the current user rows (:func:`pmf_spark.models.priors.sample_normal_wishart`);
2. draw every user row from its Gaussian conditional given the items, in parallel:

   .. math::

       A_i = \alpha \tilde V_I^\top \tilde V_I + s_i \Lambda_U, \quad
       b_i = \alpha \tilde V_I^\top (z_{iI} - b_I) + \Lambda_U \mu_U, \quad
       x_i = A_i^{-1} b_i + L_i^{-\top} \epsilon_i, \ A_i = L_i L_i^\top,
       \ \epsilon_i \sim N(0, I)

3. the same for the items given the users; 4. draw α from its Gamma posterior given
   the residuals. After ``burn_in`` epochs every ``thin``-th sample is kept.

All draws of epoch e come from ``default_rng([seed, e])`` in that order, so a
resumed run repeats exactly what the uninterrupted run would have drawn.

- **Broadcast** (:class:`GibbsPayload`): the fixed side's design and offsets, Λ (k, k),
  Λμ (k,), α, and the standard normal draws ε (n_rows_of_this_side, k).
- **Block kernel** (:func:`gibbs_kernel`): one draw of every row of a chunk.
- **Driver update**: the hyperparameters (before each half-step), α and the kept
  samples (after each epoch). The saved model holds the kept samples side by side,
  scaled by 1/sqrt(samples), so a dot product *is* their averaged prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pmf_spark.engine.layout import Chunk
from pmf_spark.kernels.rows import gibbs_rows
from pmf_spark.models.priors import sample_noise_precision, sample_normal_wishart

from ..errors import ConfigError
from .base import BlockSolve, FactorModel, HalfPayload, KernelTask, Strategy, TrainState, other


@dataclass(frozen=True)
class GibbsPayload(HalfPayload):
    """``prior_precision`` (k, k) Λ, ``prior_shift`` (k,) Λμ, ``alpha`` the noise
    precision, ``noise`` (n_rows_of_the_side_solved, k) standard normal draws;
    with ``count_scaling`` each row's Λ is multiplied by its number of ratings."""

    prior_precision: np.ndarray
    prior_shift: np.ndarray
    alpha: float
    noise: np.ndarray
    count_scaling: bool


def gibbs_kernel(c: Chunk, p: GibbsPayload, want_fitted: bool) -> BlockSolve:
    """One draw of every row of chunk ``c`` from its conditional posterior."""
    scale = c.counts.astype(np.float64) if p.count_scaling else None
    sol = gibbs_rows(c.indptr, c.cols, p.targets(c), p.design, p.prior_precision,
                     p.prior_shift, p.alpha, p.noise[c.row_ids], row_scale=scale,
                     with_fitted=want_fitted, gram_dtype=p.gram_dtype, backend=p.kernel)
    return BlockSolve(sol.x, sol.fitted)


class GibbsBPMF(Strategy):
    """Bayesian PMF by Gibbs sampling (see the module docstring)."""

    name = "bpmf"
    supports_early_stopping = False
    has_objective = False
    fold_in_as = "pmf"            # its MAP update against the averaged samples

    @classmethod
    def check(cls, fit) -> None:
        if fit.priors != "fixed" or fit.early_stopping:
            raise ConfigError("model: bpmf samples its own hyperparameters; use priors 'fixed' "
                              "and early_stopping 0 with it")

    @classmethod
    def driver_copies(cls, fit) -> tuple[int, int]:
        kept = max(1, fit.samples // fit.thin)
        return 6 + 2 * kept, max(3, 2 * kept)

    @classmethod
    def memory_note(cls, fit) -> str:
        return f" with {fit.samples // fit.thin} BPMF samples kept"

    def total_epochs(self) -> int:
        return self.fit.burn_in + self.fit.samples

    def init_state(self) -> TrainState:
        st = super().init_state()
        st.extra.update(alpha=1.0, samples_user=[], samples_item=[])
        return st

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.fit.seed, epoch])

    def tasks(self, state: TrainState, solving: str, epoch: int, rng) -> list[KernelTask]:
        k = self.model.k
        side = state.side(solving)
        x = side[self.ctx.counts(solving) > 0, :k]
        mu, lam = sample_normal_wishart(rng, x)
        noise = rng.standard_normal((side.shape[0], k))
        design, offset = self.design(state.side(other(solving)))
        payload = GibbsPayload(design=design, offset=offset, readout=self.ctx.readout,
                               gram_dtype=self.ctx.gram_dtype, kernel=self.ctx.kernel,
                               prior_precision=lam,
                               prior_shift=lam @ mu, alpha=float(state.extra["alpha"]),
                               noise=noise, count_scaling=self.fit.reg_scaling == "count")
        return [KernelTask(gibbs_kernel, payload, self.model.rank + 1)]

    def after_epoch(self, state: TrainState, sums: dict, epoch: int, rng) -> None:
        alpha = sample_noise_precision(rng, sums["sse_z"], int(sums["n_train"]))
        state.extra["alpha"] = alpha
        state.noise_var = 1.0 / alpha
        f = self.fit
        if epoch > f.burn_in and (epoch - f.burn_in) % f.thin == 0:
            state.extra["samples_user"].append(state.user.copy())
            state.extra["samples_item"].append(state.item.copy())

    def objective(self, state: TrainState, sse_z: float) -> float:
        return float("nan")

    def factor_model(self, state: TrainState, user=None, item=None) -> FactorModel:
        us, its = state.extra["samples_user"], state.extra["samples_item"]
        if not us:
            return super().factor_model(state, user, item)
        r, n = self.model.rank, len(us)
        U = np.hstack([u[:, :r] for u in us]) / math.sqrt(n)
        V = np.hstack([v[:, :r] for v in its]) / math.sqrt(n)
        ub = np.mean([u[:, r] for u in us], axis=0)
        ib = np.mean([v[:, r] for v in its], axis=0)
        return FactorModel(U=U, V=V, user_bias=ub, item_bias=ib, readout=self.ctx.readout)

    def kept_samples(self, state: TrainState) -> int:
        return len(state.extra["samples_user"])

    def reports_averaged_model(self, state: TrainState) -> bool:
        return bool(state.extra["samples_user"])
