"""Ranking-aware models (missing-data PMF, implicit ALS) against dense references that
sum over every cell, on Spark and in numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmf_spark.config.params import PMFParams
from pmf_spark.kernels import reference
from pmf_spark.kernels.rows import ridge_rows
from pmf_spark.train.loop import Trainer

from helpers import dense_split, prepared, random_ratings

P = PMFParams.of


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 15), n_fixed=st.integers(1, 25),
       k=st.integers(1, 6), w=st.floats(0.0, 0.9))
def test_all_items_gram_trick_equals_the_explicit_sum(seed, n_rows, n_fixed, k, w):
    """(w G + (1-w) F_I^T F_I + L) x = w h + F_I^T t' is the weighted least squares over
    all cells, observed ones weight 1 / target z, the rest weight w / target z_m."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n_fixed, k))
    mask = rng.random((n_rows, n_fixed)) < 0.4
    Z = rng.normal(size=(n_rows, n_fixed))
    zm = -1.3
    reg = rng.uniform(0.1, 2.0, k)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))])
    cols = np.concatenate([np.flatnonzero(m) for m in mask]).astype(np.int32) \
        if mask.any() else np.zeros(0, np.int32)
    z = Z[mask]
    G, h = F.T @ F, F.T @ np.full(n_fixed, zm)
    got = ridge_rows(indptr, cols, z - w * zm, F, reg, gram_scale=1 - w, base_gram=w * G,
                     base_rhs=w * h).x
    for i in range(n_rows):
        if not mask[i].any():
            assert not got[i].any()
            continue
        wt = np.where(mask[i], 1.0, w)
        t = np.where(mask[i], Z[i], zm)
        want = np.linalg.solve(F.T @ (wt[:, None] * F) + np.diag(reg), F.T @ (wt * t))
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-10)


def test_weighted_gram_entries():
    rng = np.random.default_rng(3)
    F = rng.normal(size=(9, 3))
    cols = np.array([0, 4, 5, 8], np.int32)
    w = np.array([0.5, 2.0, 0.0, 7.0])
    t = rng.normal(size=4)
    got = ridge_rows(np.array([0, 4]), cols, t, F, np.ones(3), weights=w).x[0]
    X = F[cols]
    np.testing.assert_allclose(got, np.linalg.solve(X.T @ (w[:, None] * X) + np.eye(3), X.T @ t),
                               atol=1e-12)




@pytest.fixture(scope="module")
def small(spark):
    data = prepared(spark, random_ratings(4, 60, 40, 0.25), test_fraction=0.2)
    yield data
    data.release()


MISSING = [P(model="missing-data", rank=4, blocks=3, lambda_u=2.0, lambda_v=3.0,
             lambda_bias=1.0, missing_weight=0.15, missing_rating=1.0),
           P(model="missing-data", rank=3, blocks=2, biases=False, lambda_u=1.0, lambda_v=1.0,
             missing_weight=0.4)]


@pytest.mark.spark
@pytest.mark.parametrize("params", MISSING, ids=["biases", "no-biases"])
def test_missing_data_half_steps_equal_the_dense_reference(spark, small, params):
    trainer = Trainer(spark, small, params)
    trainer.setup()
    try:
        state = trainer.initial_state()
        R, _ = dense_split(small)
        m, f = params.model, params.fit
        r_m = f.missing_rating if f.missing_rating is not None else small.rating_lo
        kw = dict(rank=m.rank, lam_bias=f.lambda_bias, biases=m.biases, mu=small.mu,
                  sigma=small.sigma, weight=f.missing_weight, missing_rating=r_m)
        init_items = state.item.copy()
        trainer.half_step(state, "user")
        want_u = reference.missing_data_half_step(
            R, init_items, lam=f.lambda_u, fixed_trained=trainer.counts["item"] > 0, **kw)
        np.testing.assert_allclose(state.user, want_u, rtol=0, atol=1e-8)
        trainer.half_step(state, "item", metrics=True)
        want_i = reference.missing_data_half_step(
            R.T, want_u, lam=f.lambda_v, fixed_trained=trainer.counts["user"] > 0, **kw)
        np.testing.assert_allclose(state.item, want_i, rtol=0, atol=1e-8)
    finally:
        trainer.release()


@pytest.mark.spark
@pytest.mark.parametrize("confidence", ["linear", "log"])
def test_implicit_half_steps_equal_the_dense_reference(spark, small, confidence):
    params = P(model="implicit", rank=4, blocks=3, lambda_u=0.5, lambda_v=0.8, alpha=3.0,
               confidence=confidence, epsilon=2.0)
    assert params.model.biases is False
    trainer = Trainer(spark, small, params)
    trainer.setup()
    try:
        state = trainer.initial_state()
        R, _ = dense_split(small)
        kw = dict(rank=4, alpha=3.0, confidence=confidence, epsilon=2.0)
        init_items = state.item.copy()
        trainer.half_step(state, "user")
        want_u = reference.implicit_half_step(R, init_items, lam=0.5,
                                              fixed_trained=trainer.counts["item"] > 0, **kw)
        np.testing.assert_allclose(state.user, want_u, rtol=0, atol=1e-8)
        trainer.half_step(state, "item", metrics=True)
        want_i = reference.implicit_half_step(R.T, want_u, lam=0.8,
                                              fixed_trained=trainer.counts["user"] > 0, **kw)
        np.testing.assert_allclose(state.item, want_i, rtol=0, atol=1e-8)
    finally:
        trainer.release()


@pytest.mark.spark
def test_objectives_match_the_dense_sums_and_never_rise(spark, small):
    R, _ = dense_split(small)
    cases = [(MISSING[0], lambda st, p: reference.missing_data_objective(
        R, st.user, st.item, rank=4, lam_u=2.0, lam_v=3.0, lam_bias=1.0, biases=True,
        mu=small.mu, sigma=small.sigma, weight=0.15, missing_rating=1.0)),
        (P(model="implicit", rank=4, blocks=2, lambda_u=0.5, lambda_v=0.5, alpha=2.0),
         lambda st, p: reference.implicit_objective(R, st.user, st.item, rank=4, lam_u=0.5,
                                                    lam_v=0.5, alpha=2.0))]
    for params, dense in cases:
        trainer = Trainer(spark, small, params.replace(epochs=5))
        try:
            state = trainer.fit()
            objs = [m.objective for m in state.history]
            assert objs[-1] == pytest.approx(dense(state, params), rel=1e-9)
            assert all(b <= a * (1 + 1e-12) for a, b in zip(objs, objs[1:])), objs
        finally:
            trainer.release()
