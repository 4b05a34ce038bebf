r"""Prior and noise updates: adaptive PMF priors (variational EM) and BPMF's hyperparameters.

Adaptive priors (PMF §"automatic complexity control")
-----------------------------------------------------
The paper re-estimates the noise variance and the prior variances from the
current factors and sets :math:`\lambda = \sigma^2 / \sigma_p^2`, per side, one
variance per side (``spherical``) or per latent dimension (``diagonal``).
With point estimates that feeds on itself: the literal update collapses every
factor to zero, and an EM update that only adds each row's own conditional
variance does the opposite (λ falls, the model overfits), because it treats the
other side as known.

So the adaptive modes run variational EM with a mean-field Gaussian posterior
with diagonal covariances (Lim & Teh 2007): each row keeps its posterior
variances :math:`C_i = \sigma^2 \mathrm{diag}(A_i^{-1})`, a row's solve adds the
fixed side's variances over its ratings to its normal matrix,
:math:`A_i = F_I^\top F_I + \mathrm{diag}(\sum_{j \in I} C_j) + \Lambda`, and the
updates use expectations under that posterior, with a weak conjugate Gamma(a0, b0)
hyperprior on each precision and a floor:

.. math::

    \sigma^2 = \frac{2 b_0 + E[\mathrm{SSE}]}{N + 2 a_0 - 2}, \qquad
    \sigma_{p,d}^2 = \frac{2 b_0 + \sum_i (\hat x_{id}^2 + C_{id})}{n + 2 a_0 - 2}

where :math:`E[\mathrm{SSE}] = \sum (z - \hat z)^2 + \sum_{ij} \sum_d (\bar u_d^2 C_{vd} +
\bar v_d^2 C_{ud} + C_{ud} C_{vd}) + \sum_{ij} (C_{a_i} + C_{b_j})` (spherical sums over
d as well). The biases get their own (spherical) prior variance per side.

BPMF (Salakhutdinov & Mnih 2008)
--------------------------------
Each side's rows have a Gaussian prior N(mu, Lambda^{-1}) with a Normal-Wishart
hyperprior (mu0 = 0, beta0, W0 = I, nu0 = k); given the rows, (mu, Lambda) are
drawn from the Normal-Wishart posterior on the driver. The noise precision alpha
has a Gamma(a0, b0) prior and is drawn from its posterior given the residuals.
"""

from __future__ import annotations

import numpy as np

#: floor of any prior variance (z units), so λ stays finite
MIN_VARIANCE = 1e-6


def noise_variance(expected_sse: float, n: int, a0: float = 1.0, b0: float = 1e-3) -> float:
    """Variational-EM (MAP under Gamma(a0, b0)) noise variance in z units."""
    return max((2.0 * b0 + expected_sse) / max(n + 2.0 * a0 - 2.0, 1.0), MIN_VARIANCE)


def prior_variances(x: np.ndarray, var: np.ndarray, mode: str, a0: float = 1.0,
                    b0: float = 1e-3) -> np.ndarray:
    """Prior variance per dimension of one side.

    Args:
        x: (n, d) posterior means of the rows that have training ratings.
        var: (n, d) their posterior variances.
        mode: 'spherical' (one variance, repeated) or 'diagonal' (one per dimension).
    """
    n, d = x.shape
    second = (x ** 2 + var).sum(axis=0)                 # (d,)
    if mode == "spherical":
        v = (2.0 * b0 + second.sum()) / max(n * d + 2.0 * a0 - 2.0, 1.0)
        return np.full(d, max(v, MIN_VARIANCE))
    if mode == "diagonal":
        v = (2.0 * b0 + second) / max(n + 2.0 * a0 - 2.0, 1.0)
        return np.maximum(v, MIN_VARIANCE)
    raise ValueError(f"unknown prior mode {mode!r}")


# --------------------------------------------------------------------------- BPMF

def sample_wishart(rng: np.random.Generator, df: float, scale: np.ndarray) -> np.ndarray:
    """One draw from Wishart(df, scale) by the Bartlett decomposition."""
    k = scale.shape[0]
    L = np.linalg.cholesky(scale)
    A = np.zeros((k, k))
    A[np.diag_indices(k)] = np.sqrt(rng.chisquare(df - np.arange(k)))
    A[np.tril_indices(k, -1)] = rng.standard_normal(k * (k - 1) // 2)
    LA = L @ A
    return LA @ LA.T


def sample_normal_wishart(rng: np.random.Generator, x: np.ndarray, beta0: float = 2.0,
                          nu0: float | None = None, W0: np.ndarray | None = None):
    """(mu, Lambda) from the Normal-Wishart posterior given rows x (n, k), with
    mu0 = 0. Returns mu (k,) and the precision Lambda (k, k)."""
    n, k = x.shape
    nu0 = float(k) if nu0 is None else nu0
    W0inv = np.eye(k) if W0 is None else np.linalg.inv(W0)
    xbar = x.mean(axis=0) if n else np.zeros(k)
    S = np.cov(x, rowvar=False, bias=True) * n if n > 1 else np.zeros((k, k))
    beta_n = beta0 + n
    nu_n = nu0 + n
    mu_n = n * xbar / beta_n
    Wn_inv = W0inv + S + (beta0 * n / beta_n) * np.outer(xbar, xbar)
    Wn = np.linalg.inv(Wn_inv)
    Wn = (Wn + Wn.T) / 2.0
    Lam = sample_wishart(rng, nu_n, Wn)
    cov = np.linalg.inv(beta_n * Lam)
    mu = rng.multivariate_normal(mu_n, (cov + cov.T) / 2.0)
    return mu, Lam


def sample_noise_precision(rng: np.random.Generator, sse: float, n: int, a0: float = 1.0,
                           b0: float = 1.0) -> float:
    """alpha ~ Gamma(a0 + n/2, rate b0 + sse/2)."""
    return float(rng.gamma(a0 + n / 2.0, 1.0 / (b0 + sse / 2.0)))
