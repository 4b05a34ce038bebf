"""Prior updates, BPMF's samplers and the conditional sampler (numpy, no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from pmf_spark.kernels.rows import gibbs_rows, vb_rows
from pmf_spark.models.priors import (
    noise_variance,
    prior_variances,
    sample_noise_precision,
    sample_normal_wishart,
    sample_wishart,
)


def test_prior_variances_spherical_and_diagonal():
    x = np.array([[1.0, 0.0], [3.0, 2.0]])
    var = np.array([[0.5, 0.5], [0.5, 0.5]])
    # a0 = 1: the hyperprior only adds 2*b0 to the sums
    sph = prior_variances(x, var, "spherical", a0=1.0, b0=0.0)
    assert sph == pytest.approx([(1 + 9 + 4 + 4 * 0.5) / 4] * 2)
    dia = prior_variances(x, var, "diagonal", a0=1.0, b0=0.0)
    assert dia == pytest.approx([(1 + 9 + 1) / 2, (4 + 1) / 2])
    # all-zero factors with zero variance hit the floor, never 0 (lambda stays finite)
    assert prior_variances(np.zeros((3, 2)), np.zeros((3, 2)), "diagonal", b0=0.0).min() > 0
    assert noise_variance(10.0, 21, a0=1.0, b0=0.0) == pytest.approx(10.0 / 21)


def test_wishart_and_gamma_draws_have_the_right_moments():
    rng = np.random.default_rng(0)
    scale = np.array([[2.0, 0.3], [0.3, 0.5]])
    draws = np.array([sample_wishart(rng, 6.0, scale) for _ in range(20000)])
    np.testing.assert_allclose(draws.mean(axis=0), 6.0 * scale, rtol=0.03, atol=0.03)
    alphas = np.array([sample_noise_precision(rng, sse=50.0, n=100, a0=1.0, b0=1.0)
                       for _ in range(20000)])
    assert alphas.mean() == pytest.approx((1 + 50) / (1 + 25), rel=0.02)


def test_normal_wishart_posterior_concentrates_on_the_data():
    rng = np.random.default_rng(1)
    true_mu = np.array([1.0, -2.0, 0.5])
    true_cov = np.diag([0.5, 2.0, 1.0])
    x = rng.multivariate_normal(true_mu, true_cov, 5000)
    draws = [sample_normal_wishart(rng, x) for _ in range(200)]
    mu = np.mean([d[0] for d in draws], axis=0)
    cov = np.mean([np.linalg.inv(d[1]) for d in draws], axis=0)
    np.testing.assert_allclose(mu, true_mu, atol=0.08)
    np.testing.assert_allclose(cov, true_cov, atol=0.12)


def test_sampled_rows_match_the_analytic_conditional_posterior():
    """BPMF's draw for a row: mean and covariance of many draws equal
    A^{-1}(alpha F^T t + Lambda mu) and A^{-1}, A = alpha F^T F + Lambda."""
    rng = np.random.default_rng(2)
    k, n_fixed = 3, 8
    F = rng.normal(size=(n_fixed, k))
    cols = np.array([0, 2, 3, 7], dtype=np.int32)
    t = rng.normal(size=4)
    Lam = np.array([[2.0, 0.4, 0.0], [0.4, 1.5, 0.2], [0.0, 0.2, 1.0]])
    mu = np.array([0.3, -0.1, 0.5])
    alpha = 1.7
    S = 40000
    # S copies of the same row, each with its own standard normal draw
    indptr = np.arange(S + 1, dtype=np.int64) * cols.size
    sol = gibbs_rows(indptr, np.tile(cols, S), np.tile(t, S), F, Lam, Lam @ mu, alpha,
                     rng.standard_normal((S, k)))
    A = alpha * F[cols].T @ F[cols] + Lam
    mean = np.linalg.solve(A, alpha * F[cols].T @ t + Lam @ mu)
    cov = np.linalg.inv(A)
    se = np.sqrt(cov.diagonal() / S)
    assert (np.abs(sol.x.mean(axis=0) - mean) < 4 * se).all(), (sol.x.mean(axis=0), mean, se)
    np.testing.assert_allclose(np.cov(sol.x, rowvar=False), cov, atol=0.02)
    # with zero noise the same call returns exactly that mean
    one = gibbs_rows(np.array([0, 4]), cols, t, F, Lam, Lam @ mu, alpha, np.zeros((1, k)))
    np.testing.assert_allclose(one.x[0], mean, atol=1e-12)


def test_variational_rows_add_the_fixed_sides_variances():
    rng = np.random.default_rng(3)
    F = rng.normal(size=(6, 2))
    fixed_var = rng.uniform(0.1, 0.5, size=(6, 2))
    cols = np.array([1, 4, 5], dtype=np.int32)
    t = rng.normal(size=3)
    reg = np.array([2.0, 3.0])
    sol = vb_rows(np.array([0, 3]), cols, t, F, reg, fixed_var)
    A = F[cols].T @ F[cols] + np.diag(fixed_var[cols].sum(0) + reg)
    np.testing.assert_allclose(sol.x[0], np.linalg.solve(A, F[cols].T @ t), atol=1e-12)
    np.testing.assert_allclose(sol.inv_diag[0], np.diag(np.linalg.inv(A)), atol=1e-12)
    np.testing.assert_allclose(sol.var_sum[0], fixed_var[cols].sum(0))
    np.testing.assert_allclose(sol.gram_diag[0], (F[cols] ** 2).sum(0))
