"""The batched row kernels against numpy's least squares (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmf_spark.kernels.reference import reference_ridge_rows
from pmf_spark.kernels.rows import ReadOut, ridge_rows, row_chunks, vb_rows


def random_csr(rng, n_rows, n_fixed, max_per_row, empty_fraction=0.0):
    counts = rng.integers(0, max_per_row + 1, n_rows)
    counts[rng.random(n_rows) < empty_fraction] = 0
    counts = np.minimum(counts, n_fixed)
    cols = [np.sort(rng.choice(n_fixed, c, replace=False)) for c in counts]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cols = np.concatenate(cols).astype(np.int32) if cols else np.zeros(0, np.int32)
    return indptr, cols, rng.normal(size=cols.size)


def lstsq_rows(indptr, cols, targets, design, reg, row_scale=None):
    """Each row as an augmented least-squares problem [F; sqrt(L)] x = [t; 0]."""
    k = design.shape[1]
    out = np.zeros((indptr.size - 1, k))
    for i in range(indptr.size - 1):
        sl = slice(indptr[i], indptr[i + 1])
        if indptr[i + 1] == indptr[i]:
            continue
        s = 1.0 if row_scale is None else row_scale[i]
        A = np.vstack([design[cols[sl]], np.diag(np.sqrt(reg * s))])
        b = np.concatenate([targets[sl], np.zeros(k)])
        out[i] = np.linalg.lstsq(A, b, rcond=None)[0]
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 40), n_fixed=st.integers(1, 60),
       k=st.integers(1, 12), max_per_row=st.integers(0, 70),
       lam=st.floats(1e-3, 50.0), scaled=st.booleans())
def test_batched_solve_matches_lstsq(seed, n_rows, n_fixed, k, max_per_row, lam, scaled):
    rng = np.random.default_rng(seed)
    indptr, cols, t = random_csr(rng, n_rows, n_fixed, max_per_row, empty_fraction=0.2)
    design = rng.normal(size=(n_fixed, k))
    reg = np.full(k, lam)
    reg[-1] = lam / 3.0
    scale = np.diff(indptr).astype(float) if scaled else None
    got = ridge_rows(indptr, cols, t, design, reg, row_scale=scale, with_fitted=True)
    want = lstsq_rows(indptr, cols, t, design, reg, scale)
    np.testing.assert_allclose(got.x, want, rtol=1e-7, atol=1e-9)
    # fitted values are the design row times the solution, entry by entry
    rows = np.repeat(np.arange(n_rows), np.diff(indptr))
    np.testing.assert_allclose(got.fitted, np.einsum("ij,ij->i", design[cols], got.x[rows]),
                               rtol=1e-9, atol=1e-9)


def test_rows_with_fewer_ratings_than_rank_satisfy_the_normal_equations():
    rng = np.random.default_rng(1)
    k = 30
    indptr, cols, t = random_csr(rng, 50, 200, 10)          # every row has <= 10 < k entries
    design = rng.normal(size=(200, k))
    reg = np.full(k, 0.5)
    x = ridge_rows(indptr, cols, t, design, reg).x
    for i in range(50):
        sl = slice(indptr[i], indptr[i + 1])
        F = design[cols[sl]]
        resid = (F.T @ F + np.diag(reg)) @ x[i] - F.T @ t[sl]
        assert np.abs(resid).max() < 1e-9


def test_empty_rows_are_zero_and_empty_block_is_fine():
    design = np.ones((5, 3))
    sol = ridge_rows(np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0), design,
                          np.ones(3), with_fitted=True)
    assert sol.x.shape == (3, 3) and not sol.x.any()
    assert sol.fitted.shape == (0,)
    indptr = np.array([0, 0, 2, 2])
    x = ridge_rows(indptr, np.array([1, 3], np.int32), np.array([1.0, 2.0]),
                        np.arange(15.0).reshape(5, 3), np.ones(3)).x
    assert not x[0].any() and not x[2].any() and np.abs(x[1]).sum() > 0


def test_zero_regularisation_on_a_singular_row_falls_back_to_least_squares():
    # one entry, two unknowns and no prior: the minimum-norm solution, never NaN
    design = np.array([[1.0, 1.0], [2.0, 0.0]])
    x = ridge_rows(np.array([0, 1]), np.array([0], np.int32), np.array([2.0]), design,
                        np.zeros(2)).x
    assert np.isfinite(x).all()
    np.testing.assert_allclose(design[0] @ x[0], 2.0, atol=1e-9)


def test_nan_free_on_large_values():
    rng = np.random.default_rng(3)
    indptr, cols, t = random_csr(rng, 20, 30, 25)
    design = rng.normal(size=(30, 4)) * 1e6
    x = ridge_rows(indptr, cols, t * 1e6, design, np.full(4, 1e-3)).x
    assert np.isfinite(x).all()


def test_float32_gram_is_close_to_float64():
    rng = np.random.default_rng(4)
    indptr, cols, t = random_csr(rng, 200, 300, 150)
    design = rng.normal(size=(300, 11)) * 0.3
    reg = np.full(11, 5.0)
    a = ridge_rows(indptr, cols, t, design, reg).x
    b = ridge_rows(indptr, cols, t, design, reg, gram_dtype=np.float32).x
    assert np.abs(a - b).max() < 1e-4
    assert np.abs(a - b).max() > 0  # really a different code path


def test_matches_row_by_row_reference_on_skewed_rows():
    rng = np.random.default_rng(5)
    counts = np.array([1, 2, 3, 500, 40, 41, 42, 0, 900, 7])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cols = np.concatenate([rng.choice(1000, c, replace=False) for c in counts]).astype(np.int32)
    t = rng.normal(size=cols.size)
    design = rng.normal(size=(1000, 8))
    reg = np.linspace(0.1, 3.0, 8)
    got = ridge_rows(indptr, cols, t, design, reg).x
    np.testing.assert_allclose(got, reference_ridge_rows(indptr, cols, t, design, reg),
                               rtol=1e-9, atol=1e-11)


@given(counts=st.lists(st.integers(0, 400), min_size=0, max_size=300),
       budget=st.integers(1, 2000))
@settings(max_examples=80, deadline=None)
def test_row_chunks_cover_each_nonempty_row_once_in_order(counts, budget):
    counts = np.array(counts, dtype=np.int64)
    chunks = row_chunks(counts, budget)
    seen = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    assert seen.tolist() == np.flatnonzero(counts > 0).tolist()
    for rows in chunks:
        # within budget unless a single row is larger than it
        assert counts[rows].sum() <= budget or rows.size == 1


def test_chunked_solve_equals_one_chunk(monkeypatch):
    import pmf_spark.kernels.rows as kernels
    rng = np.random.default_rng(6)
    indptr, cols, t = random_csr(rng, 300, 80, 40, empty_fraction=0.3)
    design = rng.normal(size=(80, 6))
    fixed_var = rng.uniform(0, 0.2, size=(80, 6))
    kw = dict(with_fitted=True)
    whole = vb_rows(indptr, cols, t, design, np.full(6, 2.0), fixed_var, **kw)
    ridge = ridge_rows(indptr, cols, t, design, np.full(6, 2.0), **kw)
    monkeypatch.setattr(kernels, "CHUNK_ENTRIES", 37)
    parts = kernels.vb_rows(indptr, cols, t, design, np.full(6, 2.0), fixed_var, **kw)
    ridge_parts = kernels.ridge_rows(indptr, cols, t, design, np.full(6, 2.0), **kw)
    assert len(kernels.row_chunks(np.diff(indptr), 37)) > 10     # really chunked
    for a, b in ((whole.x, parts.x), (whole.fitted, parts.fitted),
                 (whole.inv_diag, parts.inv_diag), (whole.var_sum, parts.var_sum),
                 (ridge.x, ridge_parts.x), (ridge.fitted, ridge_parts.fitted)):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_to_rating_links():
    z = np.array([-10.0, 0.0, 0.5, 10.0])
    lin = ReadOut(mu=3.0, sigma=1.0, lo=1.0, hi=5.0).to_rating(z)
    np.testing.assert_allclose(lin, [1.0, 3.0, 3.5, 5.0])
    raw = ReadOut(mu=3.0, sigma=1.0, lo=1.0, hi=5.0, clip=False).to_rating(z)
    assert raw[0] == -7.0
    sig = ReadOut(mu=3.0, sigma=1.0, lo=1.0, hi=5.0, link="sigmoid").to_rating(z)
    assert sig[1] == pytest.approx(3.0) and 1.0 < sig[0] < 1.001 and 4.999 < sig[3] < 5.0


# ----------------------------------------------------------------------- compiled kernels

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 30), n_fixed=st.integers(1, 50),
       k=st.integers(1, 13), max_per_row=st.integers(0, 60), weighted=st.booleans(),
       base=st.booleans(), shift=st.booleans(), scaled=st.booleans())
def test_compiled_ridge_rows_equal_the_numpy_oracle(seed, n_rows, n_fixed, k, max_per_row,
                                                    weighted, base, shift, scaled):
    # B and b independently: implicit ALS passes B without b (reading a missing b once
    # added heap garbage to every right-hand side)
    rng = np.random.default_rng(seed)
    indptr, cols, t = random_csr(rng, n_rows, n_fixed, max_per_row, empty_fraction=0.2)
    design = rng.normal(size=(n_fixed, k))
    reg = rng.uniform(0.05, 3.0, k)
    kw = dict(row_scale=np.diff(indptr).astype(float) if scaled else None, with_fitted=True,
              weights=rng.uniform(0, 4, cols.size) if weighted else None,
              gram_scale=0.6 if base else 1.0,
              base_gram=(lambda B: B @ B.T)(rng.normal(size=(k, k))) if base else None,
              base_rhs=rng.normal(size=k) if shift else None)
    got = ridge_rows(indptr, cols, t, design, reg, backend="numba", **kw)
    want = ridge_rows(indptr, cols, t, design, reg, backend="numpy", **kw)
    np.testing.assert_allclose(got.x, want.x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.fitted, want.fitted, rtol=0, atol=1e-10)


def test_compiled_variational_and_gibbs_rows_equal_the_numpy_oracle():
    from pmf_spark.kernels.rows import gibbs_rows

    rng = np.random.default_rng(9)
    indptr, cols, t = random_csr(rng, 200, 120, 50, empty_fraction=0.1)
    design = rng.normal(size=(120, 7))
    fixed_var = rng.uniform(0, 0.3, size=(120, 7))
    a = vb_rows(indptr, cols, t, design, np.full(7, 1.5), fixed_var, with_fitted=True,
                backend="numba")
    b = vb_rows(indptr, cols, t, design, np.full(7, 1.5), fixed_var, with_fitted=True,
                backend="numpy")
    for x, y in ((a.x, b.x), (a.fitted, b.fitted), (a.inv_diag, b.inv_diag),
                 (a.gram_diag, b.gram_diag)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-10)
    L = rng.normal(size=(7, 7))
    P = L @ L.T + np.eye(7)
    noise = rng.standard_normal((200, 7))
    c = gibbs_rows(indptr, cols, t, design, P, rng.normal(size=7), 1.7, noise, backend="numba")
    d = gibbs_rows(indptr, cols, t, design, P, P @ np.ones(7) * 0, 1.7, noise, backend="numpy")
    e = gibbs_rows(indptr, cols, t, design, P, np.zeros(7), 1.7, noise, backend="numba")
    np.testing.assert_allclose(e.x, d.x, rtol=0, atol=1e-10)
    assert np.abs(c.x - e.x).max() > 0            # the shift matters


def test_kernel_backends_say_which_ran_and_auto_falls_back(monkeypatch):
    import pmf_spark.kernels.rows as kernels

    rng = np.random.default_rng(2)
    indptr, cols, t = random_csr(rng, 20, 30, 10)
    design = rng.normal(size=(30, 4))
    ridge_rows(indptr, cols, t, design, np.ones(4), backend="numba")
    assert kernels.kernel_backend() == "numba"
    want = ridge_rows(indptr, cols, t, design, np.ones(4), backend="numpy").x
    assert kernels.kernel_backend() == "numpy"
    # numba that cannot be loaded: 'auto' runs the numpy kernels and says why,
    # 'numba' refuses
    from pmf_spark.kernels import backends

    monkeypatch.setattr(backends._Compiled, "module", None)
    monkeypatch.setattr(backends._Compiled, "error", "ModuleNotFoundError: No module named 'numba'")
    got = ridge_rows(indptr, cols, t, design, np.ones(4), backend="auto").x
    np.testing.assert_array_equal(got, want)
    assert kernels.kernel_backend() == "numpy (ModuleNotFoundError: No module named 'numba')"
    with pytest.raises(RuntimeError, match="the numba kernels cannot be loaded") as err:
        ridge_rows(indptr, cols, t, design, np.ones(4), backend="numba")
    # raised in a Python worker, it reaches the driver inside Spark's traceback text;
    # the job reports it as one line (exit 2), not as a crash
    from pmf_spark.errors import PMFUserError
    from pmf_spark.runtime.failures import user_failure

    wrapped = Exception(f"Traceback (most recent call last):\n  File \"worker.py\"\n"
                        f"RuntimeError: {err.value}\n\tat org.apache.spark.api.python")
    one = user_failure(wrapped)
    assert isinstance(one, PMFUserError) and "\n" not in str(one)
    assert str(one) == ("--kernel numba: the numba kernels cannot be loaded in the Python "
                        "workers (ModuleNotFoundError: No module named 'numba'); install "
                        "numba there or run with --kernel auto (falls back to numpy) or numpy")
